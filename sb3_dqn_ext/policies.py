"""Dueling Q-networks (Wang et al. 2016) and the DQN policies that use them."""

import math
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MultiInputPolicy, QNetwork
from torch import nn


class DuelingHead(nn.Module):
    """
    What the dueling network computes from the features (Wang et al. 2016, Figure 1 and Eq. 9): the hidden layers
    shared by both streams, a value stream ``V(s)`` and an advantage stream ``A(s, a)``, combined as
    ``Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')`` (the mean is over the actions of each state, never over the
    batch). The gradient the streams send into the shared part is multiplied by ``trunk_gradient_scale``
    (Section 4.2); the forward pass does not depend on it.

    :param features_dim: Number of features coming out of the features extractor
    :param action_dim: Number of actions
    :param net_arch: Hidden layers shared by both streams (the layers a single-stream ``QNetwork`` would have)
    :param activation_fn: Activation function
    :param trunk_gradient_scale: Factor applied to the gradient entering the shared part
        (the shared layers and the features extractor)
    :param stream_net_arch: Hidden layers of each stream; ``None`` or ``[]``: each stream is one linear layer
    """

    def __init__(
        self,
        features_dim: int,
        action_dim: int,
        net_arch: list[int],
        activation_fn: type[nn.Module],
        trunk_gradient_scale: float,
        stream_net_arch: list[int] | None = None,
    ) -> None:
        super().__init__()
        stream_net_arch = [] if stream_net_arch is None else stream_net_arch
        self.trunk_gradient_scale = trunk_gradient_scale
        # output_dim=-1: hidden layers only, no output layer
        self.shared_net = nn.Sequential(*create_mlp(features_dim, -1, net_arch, activation_fn))
        latent_dim = net_arch[-1] if len(net_arch) > 0 else features_dim
        self.value_stream = nn.Sequential(*create_mlp(latent_dim, 1, stream_net_arch, activation_fn))
        self.advantage_stream = nn.Sequential(*create_mlp(latent_dim, action_dim, stream_net_arch, activation_fn))

    def forward(self, features: th.Tensor) -> th.Tensor:
        latent = self.shared_net(features)  # (batch_size, latent_dim)
        # Section 4.2: "we rescale the combined gradient entering the last convolutional layer by 1/sqrt(2)", i.e.
        # the gradient both streams send into the shared part. With c = latent.detach() (a constant for autograd):
        #   value:    c + scale * (latent - c) = c + scale * 0 = latent, exactly
        #   gradient: d/d(latent) [c + scale * (latent - c)] = scale
        latent = latent.detach() + self.trunk_gradient_scale * (latent - latent.detach())
        values = self.value_stream(latent)  # (batch_size, 1)
        advantages = self.advantage_stream(latent)  # (batch_size, n_actions)
        # Eq. 9: subtract the mean advantage of each state (mean over the actions, dim=1)
        return values + advantages - advantages.mean(dim=1, keepdim=True)  # (batch_size, n_actions)


class DuelingQNetwork(QNetwork):
    """
    Dueling Q-value network: SB3's :class:`~stable_baselines3.dqn.policies.QNetwork` whose ``q_net`` is a
    :class:`DuelingHead`.

    Paper: https://arxiv.org/abs/1511.06581
    ``features extractor -> shared hidden layers (net_arch) -> {value stream -> V, advantage stream -> A}``, then
    ``Q = V + A - mean_a A`` (Eq. 9). ``net_arch`` gives the hidden layers shared by both streams, the layers the
    single-stream ``QNetwork`` would have: ``net_arch=[256, 256]`` is DQN's ``[256, 256]`` network followed by a
    linear value stream and a linear advantage stream. The gradient entering the shared part is rescaled by
    ``1 / sqrt(2)`` (Section 4.2). ``forward``, ``_predict`` and the saved constructor parameters (plus the two
    below) are those of ``QNetwork``, so ``predict``, save and load behave as in SB3.

    Differs from the paper: the paper's Atari network splits right after the convolutions and gives each stream a
    512-unit hidden layer; with SB3's ``NatureCNN`` the 512-unit layer belongs to the features extractor and is
    shared by both streams, and each stream is one linear layer unless ``stream_net_arch`` gives it hidden layers
    (``stream_net_arch=[512]`` adds a 512-unit layer to each stream, after the shared one).

    :param observation_space: Observation space
    :param action_space: Action space
    :param features_extractor: The features extractor
    :param features_dim: Number of features
    :param net_arch: Hidden layers shared by both streams; ``None`` means ``[64, 64]``, as in ``QNetwork``
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not,
         dividing by 255.0 (True by default)
    :param trunk_gradient_scale: Factor applied to the gradient entering the shared part (``net_arch`` and the
        features extractor): the paper's ``1 / sqrt(2)`` by default, ``1.0`` turns the rescaling off
    :param stream_net_arch: Hidden layers of each stream; ``None`` or ``[]``: each stream is one linear layer
    """

    q_net: DuelingHead  # type: ignore[assignment]  # QNetwork declares nn.Sequential; forward() only calls it

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        trunk_gradient_scale: float = 1 / math.sqrt(2),
        stream_net_arch: list[int] | None = None,
    ) -> None:
        if not (math.isfinite(trunk_gradient_scale) and trunk_gradient_scale > 0):
            raise ValueError(f"trunk_gradient_scale must be a finite number > 0, got {trunk_gradient_scale}")
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            features_dim=features_dim,
            net_arch=net_arch,
            activation_fn=activation_fn,
            normalize_images=normalize_images,
        )
        self.trunk_gradient_scale = trunk_gradient_scale
        self.stream_net_arch = [] if stream_net_arch is None else list(stream_net_arch)
        # Replace the single-stream MLP built by QNetwork: same attribute, so QNetwork.forward() is used as it is
        self.q_net = DuelingHead(
            self.features_dim,
            int(self.action_space.n),
            self.net_arch,
            self.activation_fn,
            trunk_gradient_scale,
            self.stream_net_arch,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(dict(trunk_gradient_scale=self.trunk_gradient_scale, stream_net_arch=self.stream_net_arch))
        return data


class DuelingDQNPolicy(DQNPolicy):
    """
    Policy class with a dueling Q-value net and its target net: :class:`~stable_baselines3.dqn.policies.DQNPolicy`
    with :class:`DuelingQNetwork` as ``q_net`` and ``q_net_target``.

    Paper: https://arxiv.org/abs/1511.06581
    ``net_arch`` gives the hidden layers shared by both streams, so ``dict(net_arch=[256, 256])`` is DQN's
    ``[256, 256]`` network followed by a linear value stream and a linear advantage stream.

    Differs from the paper: the paper's Atari network splits right after the convolutions and gives each stream a
    512-unit hidden layer; with SB3's ``NatureCNN`` the 512-unit layer belongs to the features extractor and is
    shared by both streams, and each stream is one linear layer unless ``stream_net_arch`` gives it hidden layers.

    :param observation_space: Observation space
    :param action_space: Action space
    :param lr_schedule: Learning rate schedule (could be constant)
    :param net_arch: Hidden layers shared by both streams (``None``: ``[64, 64]``, or ``[]`` with ``NatureCNN``,
        as for ``DQNPolicy``)
    :param activation_fn: Activation function
    :param features_extractor_class: Features extractor to use.
    :param features_extractor_kwargs: Keyword arguments
        to pass to the features extractor.
    :param normalize_images: Whether to normalize images or not,
         dividing by 255.0 (True by default)
    :param optimizer_class: The optimizer to use,
        ``th.optim.Adam`` by default
    :param optimizer_kwargs: Additional keyword arguments,
        excluding the learning rate, to pass to the optimizer
    :param trunk_gradient_scale: Factor applied to the gradient entering the shared part: the paper's
        ``1 / sqrt(2)`` by default, ``1.0`` turns the rescaling off (see :class:`DuelingQNetwork`)
    :param stream_net_arch: Hidden layers of each stream; ``None`` or ``[]``: each stream is one linear layer
    """

    q_net: DuelingQNetwork
    q_net_target: DuelingQNetwork

    def __init__(
        self,
        # DQNPolicy's arguments, passed on unchanged: DuelingCnnPolicy and DuelingMultiInputPolicy get the
        # features extractor defaults of CnnPolicy and MultiInputPolicy, which come next in their MRO
        *args: Any,
        trunk_gradient_scale: float = 1 / math.sqrt(2),
        stream_net_arch: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        # Read by make_q_net(), which DQNPolicy.__init__ calls through _build()
        self.dueling_args: dict[str, Any] = dict(trunk_gradient_scale=trunk_gradient_scale, stream_net_arch=stream_net_arch)
        super().__init__(*args, **kwargs)

    def make_q_net(self) -> DuelingQNetwork:
        # Make sure we always have separate networks for features extractors etc
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return DuelingQNetwork(**net_args, **self.dueling_args).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.dueling_args)
        return data


DuelingMlpPolicy = DuelingDQNPolicy


class DuelingCnnPolicy(DuelingDQNPolicy, CnnPolicy):
    """
    Dueling policy for image observations: ``NatureCNN`` features extractor by default, as SB3's ``CnnPolicy``.
    Takes the arguments of :class:`DuelingDQNPolicy`.
    """


class DuelingMultiInputPolicy(DuelingDQNPolicy, MultiInputPolicy):
    """
    Dueling policy for ``Dict`` observations: ``CombinedExtractor`` by default, as SB3's ``MultiInputPolicy``.
    Takes the arguments of :class:`DuelingDQNPolicy`.
    """
