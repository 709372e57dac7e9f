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

    Besides SB3's ``"MlpPolicy"``, ``"CnnPolicy"`` and ``"MultiInputPolicy"``, the dueling policies are
    accepted by name: ``"DuelingMlpPolicy"``, ``"DuelingCnnPolicy"``, ``"DuelingMultiInputPolicy"``.

    Differs from the paper: the paper keeps every other setting of Nature DQN (RMSProp, hard target updates);
    the defaults here are SB3's DQN defaults (Adam, ``learning_rate=1e-4``), as for :class:`stable_baselines3.DQN`.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer
    :param learning_starts: how many steps of the model to collect transitions for before learning starts
    :param batch_size: Minibatch size for each gradient update
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1) default 1 for hard update
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps. Alternatively pass a tuple of frequency and unit
        like ``(5, "step")`` or ``(2, "episode")``.
    :param gradient_steps: How many gradient steps to do after each rollout (see ``train_freq``)
        Set to ``-1`` means to do as many gradient steps as steps done in the environment
        during the rollout.
    :param replay_buffer_class: Replay buffer class to use (for instance ``PrioritizedReplayBuffer``).
        If ``None``, it will be automatically selected.
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation.
    :param optimize_memory_usage: Store each observation once, and each frame once for observations stacked by
        ``VecFrameStack`` (:class:`~sb3_dqn_ext.MemoryEfficientReplayBuffer`). Unlike SB3's, it works with
        timeout handling and ``n_steps > 1``.
    :param n_steps: When n_step > 1, uses n-step return when updating the Q-value network (SB3's
        ``NStepReplayBuffer``, or the n-step returns of this package's buffers, to which it is passed). Not
        supported for Dict observation spaces.
    :param target_update_interval: update the target network every ``target_update_interval``
        environment steps.
    :param exploration_fraction: fraction of entire training period over which the exploration rate is reduced
    :param exploration_initial_eps: initial value of random action probability
    :param exploration_final_eps: final value of random action probability
    :param max_grad_norm: The maximum value for the gradient clipping
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param double_q: Use Double-DQN targets (default). ``False`` gives DQN's ``max_a Q_target(s', a)``
        target, e.g. for the ablations of the PER and dueling papers.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
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
