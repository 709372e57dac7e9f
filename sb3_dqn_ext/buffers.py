"""Prioritized (Schaul et al. 2016) and memory-efficient replay on SB3's replay buffers."""

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, DictReplayBuffer, NStepReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples, TensorDict
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize

if TYPE_CHECKING:  # imported when a buffer is built: they import numba
    from sb3_dqn_ext.storage import FrameStorage
    from sb3_dqn_ext.sum_tree import SumTree

# Importance-weight normalizations (see PrioritizedReplayBuffer)
WEIGHT_NORMALIZATIONS = ("memory", "batch")
_CPU = th.device("cpu")


class PrioritizedReplayBufferSamples(NamedTuple):
    """SB3's ``ReplayBufferSamples`` fields, in SB3's order, then the importance weights and the tree indices."""

    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None
    weights: th.Tensor  # (batch_size, 1), normalised importance-sampling weights
    indices: np.ndarray  # (batch_size,), leaf indices to pass back to update_priorities()


class DictPrioritizedReplayBufferSamples(NamedTuple):
    """SB3's ``DictReplayBufferSamples`` fields, in SB3's order, then the importance weights and the tree indices."""

    observations: TensorDict
    actions: th.Tensor
    next_observations: TensorDict
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None
    weights: th.Tensor
    indices: np.ndarray


def _tensor_converter(buffer: BaseBuffer) -> Callable[[np.ndarray], th.Tensor]:
    """
    ``buffer.to_torch`` for arrays owned by nobody else (fresh results of a gather): on the CPU the tensors share their
    memory (``th.from_numpy``, 3x faster than ``th.as_tensor``), elsewhere they are copied to the device.
    """
    if buffer.device == _CPU:  # cheaper than reading device.type
        return th.from_numpy
    return partial(buffer.to_torch, copy=False)


class _CompiledReplayBuffer(NStepReplayBuffer):
    """
    SB3's ``NStepReplayBuffer`` (``n_steps=1``: ``ReplayBuffer``) gathering its batches with one compiled pass, and,
    with ``optimize_memory_usage=True``, storing its observations in a :class:`~sb3_dqn_ext.storage.FrameStorage`.

    Samples are SB3's, field for field (one-step samples have ``discounts=None``, as ``ReplayBuffer``'s).
    The base of :class:`MemoryEfficientReplayBuffer` (uniform sampling) and :class:`PrioritizedReplayBuffer`.
    """

    frames: "FrameStorage | None"

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        n_steps: int = 1,
        gamma: float = 0.99,
        n_stack: int = 1,
        stack_axis: int | None = None,
    ) -> None:
        if not (isinstance(n_steps, int | np.integer) and n_steps >= 1):
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        if not optimize_memory_usage:
            super().__init__(
                buffer_size,
                observation_space,
                action_space,
                device=device,
                n_envs=n_envs,
                handle_timeout_termination=handle_timeout_termination,
                n_steps=n_steps,
                gamma=gamma,
            )
            self.frames = None
            return
        from sb3_dqn_ext.storage import FrameStorage

        # ReplayBuffer.__init__ without its observation arrays (which may not even be allocatable)
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self.buffer_size = max(buffer_size // n_envs, 1)
        self.frames = FrameStorage(self.buffer_size, observation_space, n_envs, n_stack, stack_axis)
        self.optimize_memory_usage = True
        self.handle_timeout_termination = handle_timeout_termination
        self.actions = np.zeros(
            (self.buffer_size, self.n_envs, self.action_dim), dtype=self._maybe_cast_dtype(action_space.dtype)
        )
        self.rewards = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.dones = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.timeouts = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.n_steps = n_steps
        self.gamma = gamma

    @property
    def nbytes(self) -> int:
        """Bytes of the stored data (observations, actions, rewards, flags), as allocated."""
        arrays = [self.actions, self.rewards, self.dones, self.timeouts]
        if self.frames is None:
            arrays += [self.observations, self.next_observations]
        return sum(array.nbytes for array in arrays) + (0 if self.frames is None else self.frames.nbytes)

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        if self.frames is None:
            super().add(obs, next_obs, action, reward, done, infos)
            return
        # ReplayBuffer.add, the observations going to the frame storage (which checks them first)
        self.frames.add(self.pos, obs, next_obs)
        self.actions[self.pos] = np.array(action).reshape((self.n_envs, self.action_dim))
        self.rewards[self.pos] = np.array(reward)
        self.dones[self.pos] = np.array(done)
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = np.array([info.get("TimeLimit.truncated", False) for info in infos])
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def reset(self) -> None:
        super().reset()
        if self.frames is not None:
            self.frames.n_invalid[:] = 0

    def _gather(
        self, slots: np.ndarray, env: VecNormalize | None
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
        """
        SB3's sample fields for the transitions at ``slots`` (flat ``position * n_envs + env``): observations,
        actions, next observations, dones, rewards, discounts.
        """
        import sb3_dqn_ext.storage as storage  # imports numba: see TYPE_CHECKING above

        last_position = (self.pos - 1) % self.buffer_size
        transitions = (storage.as_rows(self.actions), self.rewards, self.dones, self.timeouts)
        if self.frames is None:
            obs, next_obs, actions, rewards, n_rewards, dones = storage.gather_batch(
                slots,
                self.n_steps,
                last_position,
                storage.as_rows(self.observations),
                storage.as_rows(self.next_observations),
                *transitions,
            )
            obs, next_obs = storage.from_rows(obs, self.observations), storage.from_rows(next_obs, self.observations)
        else:
            frames = self.frames
            obs, next_obs, actions, rewards, n_rewards, dones = storage.gather_frame_batch(
                slots,
                self.n_steps,
                last_position,
                frames.frame_rows(),
                frames.newest,
                frames.depth,
                frames.next_newest,
                frames.next_depth,
                frames.n_stack,
                *transitions,
            )
            obs, next_obs = frames.from_frames(obs), frames.from_frames(next_obs)
        as_tensor = _tensor_converter(self)
        rewards = self._normalize_reward(rewards, env)  # (batch_size, n_steps), 0 after the end of each sequence
        discounts = None
        if self.n_steps > 1:
            # As NStepReplayBuffer: sum of the discounted rewards, bootstrap discount gamma ** (number of rewards)
            rewards = (rewards * self.gamma ** np.arange(self.n_steps, dtype=np.float32)).sum(axis=1, keepdims=True)
            discounts = as_tensor(self.gamma ** n_rewards.astype(np.float32).reshape(-1, 1))
        return (
            as_tensor(self._normalize_obs(obs, env)),  # type: ignore[arg-type]
            as_tensor(storage.from_rows(actions, self.actions)),
            as_tensor(self._normalize_obs(next_obs, env)),  # type: ignore[arg-type]
            as_tensor(dones),
            as_tensor(rewards),
            discounts,
        )

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        # As ReplayBuffer._get_samples: the env of each sample drawn uniformly
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        return ReplayBufferSamples(*self._gather(batch_inds * self.n_envs + env_indices, env))


class MemoryEfficientReplayBuffer(_CompiledReplayBuffer):
    """
    Replay buffer storing each observation once, and each frame once for observations stacked by ``VecFrameStack``.

    What the models of this package use for ``optimize_memory_usage=True`` with uniform sampling. Unlike SB3's
    ``optimize_memory_usage``, it keeps the real next observation of every transition (terminal observations of
    terminated and truncated episodes included), so it works with ``handle_timeout_termination=True`` and
    ``n_steps > 1``: samples are field for field those of SB3's ``ReplayBuffer`` / ``NStepReplayBuffer`` fed the
    same transitions, drawn the same way (positions, then envs, uniformly).

    For 84x84 Atari frames stacked by 4, a transition costs 7.4 KB instead of 56.5 KB (28.2 KB with SB3's
    ``optimize_memory_usage``). Storage and limits: :class:`~sb3_dqn_ext.storage.FrameStorage`; transitions that
    lost a frame (episodes shorter than about 20 steps on average) are never sampled.

    :param buffer_size: Max number of element in the buffer
    :param observation_space: Observation space (not ``Dict``)
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Must be ``True`` (the models pass their own setting)
    :param handle_timeout_termination: Handle timeout termination (due to timelimit)
        separately and treat the task as infinite horizon task.
    :param n_steps: Number of steps to accumulate rewards for n-step returns (1: one-step)
    :param gamma: Discount factor for n-step returns
    :param n_stack: Frames stacked in each observation (``VecFrameStack``'s ``n_stack``; the models read it from
        their env): each frame is stored once. 1: each observation is stored once.
    :param stack_axis: Axis along which the frames are stacked (the models read it from their env); ``None``: the
        first axis of channel-first images, the last otherwise
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = True,
        handle_timeout_termination: bool = True,
        n_steps: int = 1,
        gamma: float = 0.99,
        n_stack: int = 1,
        stack_axis: int | None = None,
    ) -> None:
        if not optimize_memory_usage:
            raise ValueError("MemoryEfficientReplayBuffer needs optimize_memory_usage=True (SB3's buffers store the rest)")
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=True,
            handle_timeout_termination=handle_timeout_termination,
            n_steps=n_steps,
            gamma=gamma,
            n_stack=n_stack,
            stack_axis=stack_axis,
        )

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """
        Sample ``batch_size`` transitions uniformly, as SB3's ``ReplayBuffer.sample`` (without ``optimize_memory_usage``).

        :param batch_size: Number of element to sample
        :param env: associated VecNormalize env to normalize the observations/rewards when sampling
        """
        assert self.frames is not None
        upper_bound = self.buffer_size if self.full else self.pos
        positions = np.random.randint(0, upper_bound, size=batch_size)
        envs = np.random.randint(0, high=self.n_envs, size=batch_size)
        # Transitions that lost a frame are drawn again (the newest transition is always valid)
        invalid = ~self.frames.valid(positions, envs)
        while (n_invalid := int(invalid.sum())) > 0:
            positions[invalid] = np.random.randint(0, upper_bound, size=n_invalid)
            envs[invalid] = np.random.randint(0, high=self.n_envs, size=n_invalid)
            invalid = ~self.frames.valid(positions, envs)
        return ReplayBufferSamples(*self._gather(positions * self.n_envs + envs, env))


class _PrioritizedSampling:
    """
    Proportional prioritization shared by both prioritized buffers (Section 3.3 and Algorithm 1 of the paper).

    Each ``(pos, env)`` slot of the storage is one leaf of a sum tree, leaf index ``pos * n_envs + env``, so every
    environment is sampled. Priorities are ``p_i = (|delta_i| + eps) ** alpha``; a new transition, and a stored one
    that never got a priority (storage written directly, ``full`` set by hand), count at ``max_priority ** alpha``
    where ``max_priority`` is the largest raw ``|delta| + eps`` seen so far.
    """

    # Provided by the SB3 buffer this class is mixed into
    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    device: th.device

    tree: "SumTree"
    alpha: float
    eps: float
    max_priority: float
    normalize_weights_by: str
    beta_schedule: LinearSchedule
    progress_remaining: float
    # Number of positions whose slots got a priority when added (the others are filled in before sampling)
    _n_prioritized: int

    @staticmethod
    def _check_arguments(alpha: float, beta: float, eps: float, normalize_weights_by: str) -> None:
        """Reject bad arguments before SB3 allocates the storage."""
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        if normalize_weights_by not in WEIGHT_NORMALIZATIONS:
            raise ValueError(f"normalize_weights_by must be one of {WEIGHT_NORMALIZATIONS}, got {normalize_weights_by!r}")

    def _setup_priorities(self, alpha: float, beta: float, eps: float, normalize_weights_by: str) -> None:
        from sb3_dqn_ext.sum_tree import SumTree

        self.alpha = alpha
        self.eps = eps
        self.normalize_weights_by = normalize_weights_by
        # beta is annealed linearly from its initial value to 1 over the training run (Section 3.4);
        # the model sets ``progress_remaining`` (1 -> 0) before sampling
        self.beta_schedule = LinearSchedule(beta, 1.0, 1.0)
        self.progress_remaining = 1.0
        self.max_priority = 1.0
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self._n_prioritized = 0

    @property
    def beta(self) -> float:
        """Exponent of the importance-sampling weights at the current training progress."""
        return self.beta_schedule(self.progress_remaining)

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Store a transition as SB3's buffer does, then give it the maximum priority seen so far."""
        pos, was_full = self.pos, self.full
        super().add(*args, **kwargs)  # type: ignore[misc]  # the SB3 buffer this class is mixed into
        leaves = pos * self.n_envs + np.arange(self.n_envs)
        self.tree._update(leaves, np.full(self.n_envs, self.max_priority**self.alpha))
        self._n_prioritized = max(self._n_prioritized, self.buffer_size if self.full else self.pos)
        frames: FrameStorage | None = getattr(self, "frames", None)
        if frames is not None:
            # Transitions that lost a frame get priority 0: never sampled again
            invalid = frames.invalidated(self.pos if self.full else 0, self.buffer_size if self.full else self.pos, was_full)
            if invalid.size > 0:
                self.tree._update(invalid, np.zeros(invalid.size))

    def reset(self) -> None:
        """Forget the stored transitions, and their priorities (``max_priority`` too)."""
        super().reset()  # type: ignore[misc]  # the SB3 buffer this class is mixed into
        self.tree = type(self.tree)(self.tree.capacity)
        self.max_priority = 1.0
        self._n_prioritized = 0

    def _sample_leaves(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """
        Stratified proportional sampling and the importance-sampling weights.

        :return: leaf indices (``pos * n_envs + env``, the flat index of each slot) and the weights, float32
            of shape ``(batch_size, 1)``
        """
        n_stored = self.buffer_size if self.full else self.pos
        if n_stored > self._n_prioritized:
            # Stored without a priority (storage written directly): the maximum priority, as new transitions; those
            # given one since by update_priorities keep it
            leaves = np.arange(self._n_prioritized * self.n_envs, n_stored * self.n_envs)
            leaves = leaves[self.tree.get(leaves) == 0]
            self.tree._update(leaves, np.full(leaves.size, self.max_priority**self.alpha))
            self._n_prioritized = n_stored
        if not self.tree.total > 0:
            raise ValueError("Cannot sample from an empty prioritized replay buffer")
        # One value drawn uniformly in each of batch_size equal segments of [0, total) (Appendix B.2.1), and
        # w_i = (N * P(i)) ** -beta = (N * p_i / total) ** -beta divided by the largest weight: that of the smallest
        # priority p_min, so w_i / w_max = (p_i / p_min) ** -beta. p_min is the smallest stored priority ("memory",
        # the paper's "max_i w_i" over the replay memory) or the smallest in the batch ("batch")
        import sb3_dqn_ext.priorities as priorities  # imports numba: see TYPE_CHECKING above

        return priorities.sample(self.tree, np.random.random(batch_size), self.beta, self.normalize_weights_by == "batch")

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray | th.Tensor) -> None:
        """
        Refresh the priorities of sampled transitions (proportional variant, Section 3.3).

        :param indices: Leaf indices returned with the batch (``samples.indices``), shape ``(batch_size,)``
        :param td_errors: TD errors of the same transitions, shape ``(batch_size,)`` or ``(batch_size, 1)``,
            numpy or torch; only their absolute value is used
        """
        if isinstance(td_errors, th.Tensor):
            td_errors = td_errors.detach().cpu().numpy()
        flat_errors, leaves = np.asarray(td_errors).reshape(-1), np.asarray(indices).reshape(-1)
        if flat_errors.dtype.char not in "fd":  # the kernel is compiled for float32 and float64 TD errors
            flat_errors = flat_errors.astype(np.float64)
        if leaves.dtype.kind in "iu" and leaves.size == flat_errors.size:
            import sb3_dqn_ext.priorities as priorities

            largest = priorities.set_priorities(self.tree, leaves, flat_errors, self.eps, self.alpha)
            if largest >= 0:
                self.max_priority = max(self.max_priority, largest)
                return
        # Nothing was written: say why
        self.tree._check_indices(indices)  # IndexError naming the bad index
        if flat_errors.size != leaves.size:
            raise ValueError(
                f"td_errors (shape {np.shape(td_errors)}) must have one value per index (indices shape {np.shape(indices)})"
            )
        not_finite = ~np.isfinite(flat_errors)
        raise ValueError(f"td_errors must be finite, got {flat_errors[not_finite][:5]} (nothing written)")


class PrioritizedReplayBuffer(_PrioritizedSampling, _CompiledReplayBuffer):
    """
    Replay buffer with proportional prioritized sampling and importance-sampling weights.

    Paper: https://arxiv.org/abs/1511.05952 (proportional variant, Section 3.3; weights, Section 3.4)
    Subclass of SB3's :class:`~stable_baselines3.common.buffers.NStepReplayBuffer`: ``n_steps=1`` (default)
    gives one-step transitions, ``n_steps > 1`` the same n-step returns and discounts as ``NStepReplayBuffer``.
    Terminations, truncations (``handle_timeout_termination``), the write pointer and ``VecNormalize`` are
    handled as in SB3's buffers. ``optimize_memory_usage=True`` stores observations as
    :class:`MemoryEfficientReplayBuffer` does. ``sample()`` returns :class:`PrioritizedReplayBufferSamples`; pass its
    ``indices`` and the TD errors to :meth:`update_priorities`.

    Differs from the paper: the paper anneals beta to 1 without fixing the schedule; here it is linear
    over the model's training progress (``progress_remaining``, set by the model before each ``train()``).
    With ``normalize_weights_by="memory"`` (default) the weights are divided by the largest weight any stored
    transition can get, which one near-zero TD error makes tiny for every other sample (``train/is_weight_mean``
    fell to about 0.004 late in CartPole training); ``"batch"`` divides by the batch's largest weight, as Dopamine
    and PFRL do.

    :param buffer_size: Max number of element in the buffer
    :param observation_space: Observation space
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Store each observation (each frame, with ``n_stack``) once
    :param handle_timeout_termination: Handle timeout termination (due to timelimit)
        separately and treat the task as infinite horizon task.
    :param n_steps: Number of steps to accumulate rewards for n-step returns (1: one-step)
    :param gamma: Discount factor for n-step returns
    :param n_stack: Frames stacked in each observation, with ``optimize_memory_usage`` (see
        :class:`MemoryEfficientReplayBuffer`)
    :param stack_axis: Axis along which they are stacked (see :class:`MemoryEfficientReplayBuffer`)
    :param alpha: Prioritization exponent, 0 is uniform (paper: 0.6)
    :param beta: Initial importance-sampling exponent, annealed linearly to 1 (paper: 0.4)
    :param eps: Small constant added to ``|td_error|`` so that no transition gets zero priority (1e-6)
    :param normalize_weights_by: ``"memory"`` (the paper's reading) or ``"batch"``
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        n_steps: int = 1,
        gamma: float = 0.99,
        n_stack: int = 1,
        stack_axis: int | None = None,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
        normalize_weights_by: str = "memory",
    ) -> None:
        self._check_arguments(alpha, beta, eps, normalize_weights_by)
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
            n_steps=n_steps,
            gamma=gamma,
            n_stack=n_stack,
            stack_axis=stack_axis,
        )
        self._setup_priorities(alpha, beta, eps, normalize_weights_by)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> PrioritizedReplayBufferSamples:  # type: ignore[override]
        """
        Sample ``batch_size`` transitions with probability ``p_i / sum_k p_k`` (stratified).

        :param batch_size: Number of transitions to sample
        :param env: associated VecNormalize env to normalize the observations/rewards when sampling
        :return: The batch, with ``weights`` and ``indices``
        """
        leaves, weights = self._sample_leaves(batch_size)
        return PrioritizedReplayBufferSamples(*self._gather(leaves, env), _tensor_converter(self)(weights), leaves)


class DictPrioritizedReplayBuffer(_PrioritizedSampling, DictReplayBuffer):
    """
    Prioritized replay buffer for ``Dict`` observations (one-step, like SB3's ``DictReplayBuffer``).

    Same prioritization, weights and parameters as :class:`PrioritizedReplayBuffer`, without ``n_steps``,
    ``n_stack`` and ``optimize_memory_usage`` (which SB3's ``DictReplayBuffer`` does not support either). The batch is
    gathered with numpy, one fancy index per key and field, as SB3's ``DictReplayBuffer._get_samples``.

    :param buffer_size: Max number of element in the buffer
    :param observation_space: Observation space (``Dict``)
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Not supported (as in SB3's ``DictReplayBuffer``)
    :param handle_timeout_termination: Handle timeout termination (due to timelimit)
        separately and treat the task as infinite horizon task.
    :param alpha: Prioritization exponent, 0 is uniform (paper: 0.6)
    :param beta: Initial importance-sampling exponent, annealed linearly to 1 (paper: 0.4)
    :param eps: Small constant added to ``|td_error|`` so that no transition gets zero priority (1e-6)
    :param normalize_weights_by: ``"memory"`` (the paper's reading) or ``"batch"``
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
        normalize_weights_by: str = "memory",
    ) -> None:
        self._check_arguments(alpha, beta, eps, normalize_weights_by)
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
        )
        self._setup_priorities(alpha, beta, eps, normalize_weights_by)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> DictPrioritizedReplayBufferSamples:  # type: ignore[override]
        """As :meth:`PrioritizedReplayBuffer.sample`, for ``Dict`` observations."""
        leaves, weights = self._sample_leaves(batch_size)
        positions, envs = np.divmod(leaves, self.n_envs)
        obs, actions, next_obs, dones, rewards = self._get_samples_at(positions, envs, env)
        return DictPrioritizedReplayBufferSamples(
            obs, actions, next_obs, dones, rewards, None, _tensor_converter(self)(weights), leaves
        )

    def _get_samples_at(
        self, positions: np.ndarray, envs: np.ndarray, env: VecNormalize | None
    ) -> tuple[TensorDict, th.Tensor, TensorDict, th.Tensor, th.Tensor]:
        """The fields of SB3's ``DictReplayBuffer._get_samples`` for the transitions at ``(positions, envs)``."""
        obs = self._normalize_obs({key: array[positions, envs] for key, array in self.observations.items()}, env)
        next_obs = self._normalize_obs({key: array[positions, envs] for key, array in self.next_observations.items()}, env)
        assert isinstance(obs, dict) and isinstance(next_obs, dict)
        # Only use dones that are not due to timeouts
        dones = (self.dones[positions, envs] * (1 - self.timeouts[positions, envs])).reshape(-1, 1)
        return (
            {key: self.to_torch(value) for key, value in obs.items()},
            self.to_torch(self.actions[positions, envs]),
            {key: self.to_torch(value) for key, value in next_obs.items()},
            self.to_torch(dones),
            self.to_torch(self._normalize_reward(self.rewards[positions, envs].reshape(-1, 1), env)),
        )
