"""Prioritized DQN: Double-DQN targets with proportional prioritized experience replay."""

from gymnasium import spaces

from sb3_dqn_ext.buffers import DictPrioritizedReplayBuffer, PrioritizedReplayBuffer
from sb3_dqn_ext.double_dqn import DoubleDQN


class PrioritizedDQN(DoubleDQN):
    """
    Double DQN with proportional prioritized experience replay

    Paper: https://arxiv.org/abs/1511.05952 (the paper's headline configuration: Double DQN targets and
    proportional prioritization, Section 3.3, with importance-sampling weights, Section 3.4).
    Parameters are those of :class:`~sb3_dqn_ext.DoubleDQN`. The replay buffer defaults to
    :class:`~sb3_dqn_ext.PrioritizedReplayBuffer` (:class:`~sb3_dqn_ext.DictPrioritizedReplayBuffer` for ``Dict``
    observations), to which ``n_steps`` and ``gamma`` are forwarded; set the paper's ``alpha`` (0.6), ``beta``
    (0.4, annealed linearly to 1 over the run) and ``eps`` through
    ``replay_buffer_kwargs=dict(alpha=..., beta=..., eps=...)``. ``double_q=False`` gives the paper's
    "prioritized DQN without Double DQN" ablation; ``"DuelingCnnPolicy"`` (etc.) adds the dueling network.

    Logged: ``train/beta``, ``train/is_weight_mean``, ``train/priority_max``, ``train/td_error_mean``.

    Differs from the paper: the loss is SB3's Huber loss, weighted per sample (the paper weights the squared
    TD error's gradient, ``w_i * delta_i``, with the error clipped to [-1, 1], which is the Huber gradient);
    the defaults are SB3's DQN defaults (Adam, ``learning_rate=1e-4``): the paper divides its step size by 4
    compared with Double DQN, so divide your DQN learning rate by 4 to follow it.
    """

    def _setup_model(self) -> None:
        if self.replay_buffer_class is None:  # a zoo YAML cannot name our class
            if isinstance(self.observation_space, spaces.Dict):
                self.replay_buffer_class = DictPrioritizedReplayBuffer
            else:
                self.replay_buffer_class = PrioritizedReplayBuffer
        super()._setup_model()
