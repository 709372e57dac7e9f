"""Prioritized DQN: Double-DQN targets with proportional prioritized experience replay."""

from gymnasium import spaces

from sb3_dqn_ext.buffers import DictPrioritizedReplayBuffer, PrioritizedReplayBuffer
from sb3_dqn_ext.double_dqn import DoubleDQN


class PrioritizedDQN(DoubleDQN):
    """
    Double DQN with proportional prioritized experience replay

    Paper: https://arxiv.org/abs/1511.05952 (the paper's headline configuration: Double DQN targets and
    proportional prioritization, Section 3.3, with importance-sampling weights, Section 3.4).
    The parameters are those of :class:`~sb3_dqn_ext.DoubleDQN`. The replay buffer defaults to
    :class:`~sb3_dqn_ext.PrioritizedReplayBuffer` (:class:`~sb3_dqn_ext.DictPrioritizedReplayBuffer` for ``Dict``
    observations), to which ``n_steps`` and ``gamma`` are forwarded; set the paper's ``alpha`` (0.6), ``beta``
    (0.4, annealed linearly to 1 over the run), ``eps`` and how the importance weights are normalised
    (``normalize_weights_by``) through ``replay_buffer_kwargs=dict(alpha=..., beta=..., eps=...)``.
    ``double_q=False`` gives the paper's "prioritized DQN without Double DQN" ablation; ``"DuelingCnnPolicy"``
    (etc.) adds the dueling network.

    Logged: ``train/beta``, ``train/is_weight_mean``, ``train/priority_max``, ``train/td_error_mean``.

    Differs from the paper: the loss is SB3's Huber loss, weighted per sample (the paper weights the squared
    TD error's gradient, ``w_i * delta_i``, with the error clipped to [-1, 1], which is the Huber gradient);
    the defaults are SB3's DQN defaults (Adam, ``learning_rate=1e-4``): the paper divides its step size by 4
    compared with Double DQN, so divide your DQN learning rate by 4 to follow it.

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

    def _setup_model(self) -> None:
        if self.replay_buffer_class is None:  # a zoo YAML cannot name our class
            if isinstance(self.observation_space, spaces.Dict):
                self.replay_buffer_class = DictPrioritizedReplayBuffer
            else:
                self.replay_buffer_class = PrioritizedReplayBuffer
        super()._setup_model()

    def _contradictions(self) -> list[str]:
        prioritized = (PrioritizedReplayBuffer, DictPrioritizedReplayBuffer)
        if self.replay_buffer_class is None or issubclass(self.replay_buffer_class, prioritized):
            return []
        return [
            f"the saved model uses replay_buffer_class={self.replay_buffer_class.__name__}, not the prioritized replay "
            "this class assumes: it trains as saved, without prioritization (pass "
            "replay_buffer_class=PrioritizedReplayBuffer to load() to prioritize a new buffer)"
        ]
