"""Dueling DQN: Double-DQN targets on a dueling Q-network."""

from typing import ClassVar

from stable_baselines3.common.policies import BasePolicy

from sb3_dqn_ext.double_dqn import DoubleDQN
from sb3_dqn_ext.policies import DuelingCnnPolicy, DuelingDQNPolicy, DuelingMultiInputPolicy


class DuelingDQN(DoubleDQN):
    """
    Dueling Double Deep Q-Network (Dueling DQN)

    Paper: https://arxiv.org/abs/1511.06581
    Double-DQN targets, as in the paper, on a dueling Q-network
    (:class:`~sb3_dqn_ext.policies.DuelingQNetwork`): the features extractor and the hidden layers of ``net_arch``
    are shared, then a value stream ``V`` and an advantage stream ``A`` are combined as
    ``Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')`` (Eq. 9, mean over the actions of each state). The gradient
    entering the shared part is rescaled by ``1 / sqrt(2)`` (Section 4.2).
    Parameters are those of :class:`~sb3_dqn_ext.DoubleDQN`.

    ``"MlpPolicy"``, ``"CnnPolicy"`` and ``"MultiInputPolicy"`` resolve to the dueling policies
    (:class:`~sb3_dqn_ext.policies.DuelingDQNPolicy`, ...), so zoo files and SB3 code written for DQN get the
    dueling network without changes. Their ``policy_kwargs`` are those of ``DQNPolicy``, where ``net_arch`` gives
    the hidden layers shared by both streams (``dict(net_arch=[256, 256])`` is DQN's ``[256, 256]`` network
    followed by a linear value stream and a linear advantage stream), plus ``stream_net_arch`` (hidden layers of
    each stream, default ``[]``) and ``trunk_gradient_scale`` (default ``1 / sqrt(2)``, ``1.0`` turns the
    rescaling off).

    Differs from the paper: the paper's Atari network splits right after the convolutions and gives each stream a
    512-unit hidden layer; with SB3's ``NatureCNN`` the 512-unit layer belongs to the features extractor and is
    shared by both streams, and each stream is one linear layer unless ``stream_net_arch`` gives it hidden layers.
    The defaults are SB3's DQN defaults (Adam, ``learning_rate=1e-4``), not the paper's RMSProp; its gradient
    clipping to norm 10 is SB3's default ``max_grad_norm=10``.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **DoubleDQN.policy_aliases,
        "MlpPolicy": DuelingDQNPolicy,
        "CnnPolicy": DuelingCnnPolicy,
        "MultiInputPolicy": DuelingMultiInputPolicy,
    }
