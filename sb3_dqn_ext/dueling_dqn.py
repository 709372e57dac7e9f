"""Dueling DQN: Double-DQN targets on a dueling Q-network."""

from typing import ClassVar

from stable_baselines3.common.policies import BasePolicy

from sb3_dqn_ext.double_dqn import DoubleDQN
from sb3_dqn_ext.policies import DuelingCnnPolicy, DuelingDQNPolicy, DuelingMultiInputPolicy


class DuelingDQN(DoubleDQN):
    """
    Dueling Double Deep Q-Network (Dueling DQN)

    Paper: https://arxiv.org/abs/1511.06581
    ``Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a')`` (Eq. 9) on a shared features extractor, trained with
    Double-DQN targets as in the paper. Parameters are those of :class:`~sb3_dqn_ext.DoubleDQN`.

    ``"MlpPolicy"``, ``"CnnPolicy"`` and ``"MultiInputPolicy"`` resolve to the dueling policies
    (:class:`~sb3_dqn_ext.policies.DuelingDQNPolicy`, ...), so zoo files and SB3 code written for DQN
    get the dueling network without changes. ``net_arch`` gives the hidden layers shared by both streams (the layers
    the single-stream network would have, so the dueling network costs about the same); each stream is one linear
    layer unless ``policy_kwargs=dict(stream_net_arch=[...])`` gives it hidden layers.

    Differs from the paper: the defaults are SB3's DQN defaults (Adam, ``learning_rate=1e-4``); the paper's
    gradient clipping to norm 10 is SB3's default ``max_grad_norm=10``; the 512-unit layer of ``NatureCNN`` is
    shared by the streams, as are the hidden layers of ``net_arch`` (see :class:`~sb3_dqn_ext.policies.DuelingQNetwork`).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **DoubleDQN.policy_aliases,
        "MlpPolicy": DuelingDQNPolicy,
        "CnnPolicy": DuelingCnnPolicy,
        "MultiInputPolicy": DuelingMultiInputPolicy,
    }
