"""Double DQN: the online network selects the next action, the target network evaluates it."""

from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.dqn.policies import DQNPolicy

from sb3_dqn_ext.dqn import BaseDQN
from sb3_dqn_ext.policies import DuelingCnnPolicy, DuelingDQNPolicy, DuelingMultiInputPolicy


class DoubleDQN(BaseDQN):
    """
    Double Deep Q-Network (Double DQN)

    Paper: https://arxiv.org/abs/1509.06461
    The online network picks the greedy next action; the target network scores it (Eq. 4):
    ``y = r + discount * (1 - done) * Q_target(s', argmax_a Q_online(s', a))``, where ``discount`` is
    ``gamma`` or, with ``n_steps > 1``, the n-step discount of each sample.
    Parameters are those of :class:`stable_baselines3.DQN`, plus:

    :param double_q: Use Double-DQN targets (default). ``False`` gives DQN's ``max_a Q_target(s', a)``
        target, e.g. for the ablations of the PER and dueling papers.

    Besides SB3's ``"MlpPolicy"``, ``"CnnPolicy"`` and ``"MultiInputPolicy"``, the dueling policies are
    accepted by name: ``"DuelingMlpPolicy"``, ``"DuelingCnnPolicy"``, ``"DuelingMultiInputPolicy"``.

    Differs from the paper: the paper keeps every other setting of Nature DQN (RMSProp, hard target updates);
    the defaults here are SB3's DQN defaults (Adam, ``learning_rate=1e-4``), as for :class:`stable_baselines3.DQN`.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **BaseDQN.policy_aliases,
        "DuelingMlpPolicy": DuelingDQNPolicy,
        "DuelingCnnPolicy": DuelingCnnPolicy,
        "DuelingMultiInputPolicy": DuelingMultiInputPolicy,
    }

    def __init__(
        self,
        policy: str | type[DQNPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,  # 1e6
        learning_starts: int = 100,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        target_update_interval: int = 10000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        max_grad_norm: float = 10,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        double_q: bool = True,
        _init_setup_model: bool = True,
    ) -> None:
        self.double_q = double_q
        super().__init__(
            policy=policy,
            env=env,
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            target_update_interval=target_update_interval,
            exploration_fraction=exploration_fraction,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            max_grad_norm=max_grad_norm,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _setup_model(self) -> None:
        # Checked here rather than in __init__ so that load(..., double_q=...) is checked too
        if not isinstance(self.double_q, bool):
            raise TypeError(f"double_q must be a bool, got {self.double_q!r}")
        super()._setup_model()

    def _next_q_values(self, next_observations: th.Tensor) -> th.Tensor:
        """
        Double-DQN value of the next states (Eq. 4), or DQN's when ``double_q=False``.

        :param next_observations: Next observations of the batch
        :return: ``Q_target(s', argmax_a Q_online(s', a))``, shape ``(batch_size, 1)``
        """
        if not self.double_q:
            return super()._next_q_values(next_observations)
        # Selection by the online network...
        next_actions = self.q_net(next_observations).argmax(dim=1, keepdim=True)  # (batch_size, 1)
        # ...evaluation by the target network
        next_q_values = self.q_net_target(next_observations)  # (batch_size, n_actions)
        return th.gather(next_q_values, dim=1, index=next_actions)  # (batch_size, 1)
