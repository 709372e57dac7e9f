"""Double DQN, Dueling DQN and prioritized experience replay for Stable-Baselines3."""

from sb3_dqn_ext.buffers import DictPrioritizedReplayBuffer, MemoryEfficientReplayBuffer, PrioritizedReplayBuffer
from sb3_dqn_ext.double_dqn import DoubleDQN
from sb3_dqn_ext.dueling_dqn import DuelingDQN
from sb3_dqn_ext.policies import DuelingCnnPolicy, DuelingDQNPolicy, DuelingMlpPolicy, DuelingMultiInputPolicy
from sb3_dqn_ext.prioritized_dqn import PrioritizedDQN
from sb3_dqn_ext.version import __version__

__all__ = [
    "DictPrioritizedReplayBuffer",
    "DoubleDQN",
    "DuelingCnnPolicy",
    "DuelingDQN",
    "DuelingDQNPolicy",
    "DuelingMlpPolicy",
    "DuelingMultiInputPolicy",
    "MemoryEfficientReplayBuffer",
    "PrioritizedDQN",
    "PrioritizedReplayBuffer",
    "__version__",
]
