"""Dueling Q-networks (Wang et al. 2016) and the DQN policies that use them."""

import math
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MultiInputPolicy, QNetwork
from torch import nn


def _train_modules(module: nn.Module, mode: bool) -> None:
    """
    ``module.train(mode)``, faster: the same ``training`` flags set on the same modules.

    ``nn.Module.train`` sets ``training`` through ``nn.Module.__setattr__`` (a few microseconds per module: it checks
    whether the name is a parameter, a submodule or a buffer) while recursing through ``children()``; ``predict``
    does it before every action. Here the flag is written directly on modules that use PyTorch's own ``train`` and
    ``__setattr__``; a module that overrides either gets its own ``train(mode)`` call, for its whole subtree, as
    ``nn.Module.train`` would call it.

    :param module: Root of the modules to switch
    :param mode: ``True`` for training mode, ``False`` for evaluation mode
    """
    if not isinstance(mode, bool):
        raise ValueError(f"training mode is expected to be boolean, got {mode!r}")
    stack = [module]
    while stack:
        current = stack.pop()
        module_class = type(current)
        if module_class.train is not nn.Module.train or module_class.__setattr__ is not nn.Module.__setattr__:
            current.train(mode)
            continue
        object.__setattr__(current, "training", mode)
        stack.extend(child for child in current._modules.values() if child is not None)


class DuelingHead(nn.Module):
    """
    The shared hidden layers, the two streams of the dueling architecture and their aggregation
    (Wang et al. 2016, Figure 1 and Eq. 9).

    ``features -> shared hidden layers (net_arch) -> {value stream -> V, advantage stream -> A}`` and
    ``Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')``: the mean is taken over the actions of each state, never over
    the batch.

    Implementation: the aggregation is one matrix product, ``[V, A] @ aggregation`` with
    ``aggregation = [[1, ..., 1], I - 1/n]``, so ``Q`` equals ``V + A - mean(A)`` up to float rounding. When each
    stream is a single linear layer (``stream_net_arch=[]``, the default), both are one
    ``nn.Linear(latent_dim, 1 + n_actions)`` (``streams``: output 0 is ``V``, outputs ``1..n`` are ``A``), the
    same computation as two layers in one matrix product. The gradient rescaling is one ``th.lerp`` on the shared
    layers' output (exact in the forward pass), only when gradients are recorded. Together these make a dueling head cost
    about what a single-stream head does (on CPU, the separate layers, mean and autograd function of a
    straightforward implementation cost up to a quarter of a gradient step of the zoo's CartPole network).

    :param features_dim: Number of features coming out of the features extractor
    :param action_dim: Number of actions
    :param net_arch: Hidden layers shared by both streams (the layers a single-stream ``QNetwork`` would have)
    :param activation_fn: Activation function
    :param trunk_gradient_scale: Factor applied to the gradient flowing from the streams into the shared layers
    :param stream_net_arch: Hidden layers of each stream; ``[]`` (default): each stream is one linear layer
    """

    aggregation: th.Tensor

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
        self.stream_net_arch = [] if stream_net_arch is None else list(stream_net_arch)
        self.trunk_gradient_scale = trunk_gradient_scale
        # output_dim=-1: hidden layers only, no output layer
        self.shared_net = nn.Sequential(*create_mlp(features_dim, -1, net_arch, activation_fn))
        latent_dim = net_arch[-1] if len(net_arch) > 0 else features_dim
        self.value_stream: nn.Module | None = None
        self.advantage_stream: nn.Module | None = None
        self.streams: nn.Linear | None = None
        if self.stream_net_arch:
            self.value_stream = nn.Sequential(*create_mlp(latent_dim, 1, self.stream_net_arch, activation_fn))
            self.advantage_stream = nn.Sequential(*create_mlp(latent_dim, action_dim, self.stream_net_arch, activation_fn))
        else:
            self.streams = nn.Linear(latent_dim, 1 + action_dim)
        # Eq. 9 as a (1 + n, n) matrix: column a of [V, A] @ aggregation is V + A_a - (A_1 + ... + A_n) / n
        aggregation = th.cat([th.ones(1, action_dim), th.eye(action_dim) - 1.0 / action_dim])
        # Not a parameter, not saved: rebuilt from action_dim, moved with the module by .to(device)
        self.register_buffer("aggregation", aggregation, persistent=False)

    def value_and_advantages(self, latent: th.Tensor) -> th.Tensor:
        """
        ``[V(s), A(s, a_1), ..., A(s, a_n)]`` of the shared layers' output (before the aggregation).

        :param latent: Output of the shared layers, shape ``(batch_size, latent_dim)``
        :return: Shape ``(batch_size, 1 + n_actions)``: column 0 is ``V``, the others ``A``
        """
        if self.streams is not None:
            return self.streams(latent)
        assert self.value_stream is not None and self.advantage_stream is not None
        return th.cat([self.value_stream(latent), self.advantage_stream(latent)], dim=1)

    def forward(self, features: th.Tensor) -> th.Tensor:
        latent = self.shared_net(features)
        if self.trunk_gradient_scale != 1.0 and latent.requires_grad:
            # Section 4.2: "we rescale the combined gradient entering the last convolutional layer by 1/sqrt(2)",
            # i.e. the gradient the two streams send into the shared part. lerp(detached, latent, scale) is
            # detached + scale * (latent - detached): exactly latent in the forward pass (the difference is 0),
            # and its gradient with respect to latent is scale. One native op: a Python autograd function or
            # tensor hook is called back from the backward pass, which cost ~5% of a CartPole gradient step.
            latent = th.lerp(latent.detach(), latent, self.trunk_gradient_scale)
        # Eq. 9: subtract the mean advantage of each state (mean over actions, per row)
        return self.value_and_advantages(latent) @ self.aggregation  # (batch_size, n_actions)


class DuelingQNetwork(QNetwork):
    """
    Dueling Q-value network: SB3's :class:`~stable_baselines3.dqn.policies.QNetwork` whose head is a
    :class:`DuelingHead`: the hidden layers of ``net_arch`` are shared, then a value and an advantage stream.

    Paper: https://arxiv.org/abs/1511.06581

    With the same ``net_arch``, the dueling network has the hidden layers of the single-stream network and differs
    only in its output layers (``1 + n_actions`` outputs instead of ``n_actions``), so it costs about the same to
    train. ``forward``, ``_predict`` and the saved constructor parameters are those of ``QNetwork``: only the
    module behind ``self.q_net`` changes, so ``predict``, save and load behave as in SB3.

    Differs from the paper: the paper's Atari network splits right after the convolutions and gives each stream a
    512-unit layer; with SB3's ``NatureCNN`` the 512-unit layer belongs to the features extractor and is shared, and
    each stream is one linear layer unless ``stream_net_arch`` gives it hidden layers (``stream_net_arch=[512]`` adds
    a 512-unit layer to each stream, on top of the shared one).

    :param observation_space: Observation space
    :param action_space: Action space
    :param features_extractor: The features extractor
    :param features_dim: Number of features
    :param net_arch: Shared hidden layers; ``None`` means ``[64, 64]`` as in ``QNetwork``
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0 (True by default)
    :param trunk_gradient_scale: Factor applied to the gradient entering the shared layers;
        the paper's ``1 / sqrt(2)`` by default (both streams backpropagate into them)
    :param stream_net_arch: Hidden layers of each stream (``[]``: one linear layer each)
    """

    q_net: DuelingHead  # type: ignore[assignment]  # QNetwork declares nn.Sequential; the head is a drop-in module

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
        # Replace the single-stream head built by QNetwork (same attribute, so forward() is inherited)
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
    Policy class with a dueling Q-value net and its target net.

    Takes the arguments of :class:`stable_baselines3.dqn.policies.DQNPolicy` (``net_arch``: the shared hidden
    layers), plus, through ``policy_kwargs``:

    :param trunk_gradient_scale: Factor on the gradient entering the shared layers (paper: ``1 / sqrt(2)``;
        ``1.0`` turns the rescaling off), see :class:`DuelingQNetwork`
    :param stream_net_arch: Hidden layers of each stream (default ``[]``: linear streams)
    """

    q_net: DuelingQNetwork
    q_net_target: DuelingQNetwork

    def __init__(
        self,
        *args: Any,
        trunk_gradient_scale: float = 1 / math.sqrt(2),
        stream_net_arch: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        # Read by make_q_net(), which DQNPolicy.__init__ calls through _build()
        self.dueling_args = dict(trunk_gradient_scale=trunk_gradient_scale, stream_net_arch=stream_net_arch)
        super().__init__(*args, **kwargs)

    def make_q_net(self) -> DuelingQNetwork:  # type: ignore[override]
        # Make sure we always have separate networks for features extractors etc
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return DuelingQNetwork(**net_args, **self.dueling_args).to(self.device)  # type: ignore[arg-type]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.dueling_args)
        return data

    def set_training_mode(self, mode: bool) -> None:
        """
        Put the policy in either training or evaluation mode, as ``DQNPolicy.set_training_mode``: the online
        network and its modules switch, the target network stays as it is.

        Same flags as SB3's, set faster (``predict`` calls this before every action): see ``_train_modules``.

        :param mode: if true, set to training mode, else set to evaluation mode
        """
        if type(self.q_net).set_training_mode is BaseModel.set_training_mode:
            _train_modules(self.q_net, mode)
        else:  # a Q-network with its own rule
            self.q_net.set_training_mode(mode)
        self.training = mode


DuelingMlpPolicy = DuelingDQNPolicy


class DuelingCnnPolicy(DuelingDQNPolicy, CnnPolicy):
    """
    Dueling policy for image observations: ``NatureCNN`` features extractor by default, as SB3's ``CnnPolicy``.
    """


class DuelingMultiInputPolicy(DuelingDQNPolicy, MultiInputPolicy):
    """
    Dueling policy for ``Dict`` observations: ``CombinedExtractor`` by default, as SB3's ``MultiInputPolicy``.
    """
