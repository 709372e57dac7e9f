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
        **DoubleDQN.policy_aliases,
        "MlpPolicy": DuelingDQNPolicy,
        "CnnPolicy": DuelingCnnPolicy,
        "MultiInputPolicy": DuelingMultiInputPolicy,
    }

    def _contradictions(self) -> list[str]:
        if issubclass(self.policy_class, DuelingDQNPolicy):
            return []
        return [
            f"the saved model has a {self.policy_class.__name__} (single-stream network), not the dueling network this "
            "class assumes: it trains as saved, with Double-DQN targets on that network"
        ]
