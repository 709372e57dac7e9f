"""Proportional prioritized experience replay (Schaul et al. 2016) on SB3's replay buffers."""

import math
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples, TensorDict
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize

from sb3_dqn_ext.sum_tree import SumTree


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


class _FlatGather:
    """
    One-step gather with one index per storage array, shared by the uniform and the prioritized buffers.

    The storage arrays have shape ``(buffer_size, n_envs, ...)``: reshaped to ``(buffer_size * n_envs, ...)``
    (a view), row ``pos * n_envs + env`` is slot ``(pos, env)`` (the leaf index of the prioritized buffers), so one
    index array gathers a batch from each array, instead of the pair of index arrays SB3's buffers use. Every
    array turned into a tensor is a fresh result of fancy indexing or arithmetic, owned by nobody else: no copy is
    needed (SB3's ``to_torch`` copies by default). Observations are arrays or, in the Dict buffers, dicts of them.
    """

    # Provided by the SB3 buffer this class is mixed into (observations and their shapes: arrays or dicts)
    device: th.device
    buffer_size: int
    n_envs: int
    obs_shape: Any
    action_dim: int
    observations: Any
    next_observations: Any
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    timeouts: np.ndarray

    def _as_tensor(self, array: np.ndarray) -> th.Tensor:
        """
        ``to_torch(array, copy=False)`` for an array owned by nobody else: on the CPU, ``th.from_numpy`` (the same
        shared-memory tensor, without the dispatch cost of ``th.as_tensor(array, device=...)``); elsewhere SB3's
        ``to_torch``, which copies to the device.
        """
        if self.device.type == "cpu":
            return th.from_numpy(array)
        return self.to_torch(array, copy=False)  # type: ignore[attr-defined]

    def _gather_observations(
        self, storage: np.ndarray | dict[str, np.ndarray], slots: np.ndarray, env: VecNormalize | None
    ) -> th.Tensor | TensorDict:
        """Observations (an array, or a dict of arrays) at the given slots, normalized, as tensors."""
        n_slots = self.buffer_size * self.n_envs
        if isinstance(storage, dict):
            gathered = {key: array.reshape(n_slots, *self.obs_shape[key])[slots] for key, array in storage.items()}
            normalized = self._normalize_obs(gathered, env)  # type: ignore[attr-defined]
            return {key: self._as_tensor(obs) for key, obs in normalized.items()}
        return self._as_tensor(self._normalize_obs(storage.reshape(n_slots, *self.obs_shape)[slots], env))  # type: ignore[attr-defined]

    def _gather_one_step(
        self, slots: np.ndarray, env: VecNormalize | None, next_obs_slots: np.ndarray | None = None
    ) -> tuple[Any, th.Tensor, Any, th.Tensor, th.Tensor]:
        """
        The fields of SB3's ``ReplayBuffer._get_samples`` / ``DictReplayBuffer._get_samples`` for the given slots,
        same values.

        :param slots: Flat slot indices ``pos * n_envs + env``
        :param env: associated VecNormalize env
        :param next_obs_slots: Slots of ``observations`` holding the next observations (``optimize_memory_usage``);
            ``None``: ``next_observations`` at ``slots``
        :return: observations, actions, next observations, dones (terminations only), rewards
        """
        n_slots = self.buffer_size * self.n_envs
        if next_obs_slots is None:
            next_obs = self._gather_observations(self.next_observations, slots, env)
        else:
            next_obs = self._gather_observations(self.observations, next_obs_slots, env)
        # Only use dones that are not due to timeouts
        dones = self.dones.reshape(n_slots, 1)[slots] * (1 - self.timeouts.reshape(n_slots, 1)[slots])
        rewards = self._normalize_reward(self.rewards.reshape(n_slots, 1)[slots], env)  # type: ignore[attr-defined]
        return (
            self._gather_observations(self.observations, slots, env),
            self._as_tensor(self.actions.reshape(n_slots, self.action_dim)[slots]),
            next_obs,
            self._as_tensor(dones),
            self._as_tensor(rewards),
        )


class UniformReplayBuffer(_FlatGather, ReplayBuffer):
    """
    SB3's :class:`~stable_baselines3.common.buffers.ReplayBuffer`, gathering its samples faster.

    Sampling is SB3's (the same random draws: positions, then env indices), and so are the samples: same values,
    dtypes and shapes, for the same random state (tested field by field, ``optimize_memory_usage`` and
    ``VecNormalize`` included). Only the gather differs: one flat index per storage array instead of a pair of
    index arrays, and no second copy when the tensors stay on the CPU. The models of this package use it where
    SB3 would use ``ReplayBuffer`` (no ``replay_buffer_class``, ``n_steps=1``, observations that are not a ``Dict``).
    """

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        # Sample randomly the env idx, as ReplayBuffer._get_samples
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        next_obs_slots = None
        if self.optimize_memory_usage:
            next_obs_slots = ((batch_inds + 1) % self.buffer_size) * self.n_envs + env_indices
        return ReplayBufferSamples(*self._gather_one_step(batch_inds * self.n_envs + env_indices, env, next_obs_slots))


class _PrioritizedSampling:
    """
    Proportional prioritization shared by both buffers (Section 3.3 and Algorithm 1 of the paper).

    Each ``(pos, env)`` slot of the storage arrays is one leaf of a sum tree, leaf index ``pos * n_envs + env``,
    so every environment is sampled. Priorities are ``p_i = (|delta_i| + eps) ** alpha``; a new transition
    gets ``max_priority ** alpha`` where ``max_priority`` is the largest raw ``|delta| + eps`` seen so far.
    """

    # Provided by the SB3 buffer this class is mixed into
    buffer_size: int
    n_envs: int
    pos: int

    tree: SumTree
    alpha: float
    eps: float
    max_priority: float
    beta_schedule: LinearSchedule
    progress_remaining: float

    @classmethod
    def _check_arguments(cls, alpha: float, beta: float, eps: float, optimize_memory_usage: bool) -> None:
        """Reject bad arguments before SB3 allocates the storage."""
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        if optimize_memory_usage:
            raise ValueError(
                f"{cls.__name__} does not support optimize_memory_usage=True: it stores next observations separately "
                "so that any slot can be sampled"
            )

    def _setup_priorities(self, alpha: float, beta: float, eps: float) -> None:
        self.alpha = alpha
        self.eps = eps
        # beta is annealed linearly from its initial value to 1 over the training run (Section 3.4);
        # the model sets ``progress_remaining`` (1 -> 0) before sampling
        self.beta_schedule = LinearSchedule(beta, 1.0, 1.0)
        self.progress_remaining = 1.0
        self.max_priority = 1.0
        self.tree = SumTree(self.buffer_size * self.n_envs)
        self._strata_cache = np.arange(0, dtype=np.float64)

    @property
    def beta(self) -> float:
        """Exponent of the importance-sampling weights at the current training progress."""
        return self.beta_schedule(self.progress_remaining)

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Store a transition as SB3's buffer does, then give it the maximum priority seen so far."""
        pos = self.pos
        super().add(*args, **kwargs)  # type: ignore[misc]  # the SB3 buffer this class is mixed into
        self._set_new_priorities(pos)

    def _set_new_priorities(self, pos: int) -> None:
        """
        Give the ``n_envs`` transitions just written at ``pos`` the maximum priority seen so far.

        The tree update is deferred: the ancestors of the new leaves are recomputed with the next priority
        update or sample, in one batch for all the environment steps since the last one.
        """
        leaves = pos * self.n_envs + np.arange(self.n_envs)
        self.tree._update(leaves, np.full(self.n_envs, self.max_priority**self.alpha), defer=True)

    def _strata(self, batch_size: int) -> np.ndarray:
        """``np.arange(batch_size)`` as float64, cached: the index of each of the ``batch_size`` segments."""
        strata = self._strata_cache
        if strata.shape[0] != batch_size:
            strata = self._strata_cache = np.arange(batch_size, dtype=np.float64)
        return strata

    def _sample_leaves(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """
        Stratified proportional sampling and the importance-sampling weights.

        :return: leaf indices (``pos * n_envs + env``, the flat index of each slot) and the weights, float32
            of shape ``(batch_size, 1)``
        """
        total = self.tree.total
        if not total > 0:
            raise ValueError("Cannot sample from an empty prioritized replay buffer")
        # Draw one value uniformly in each of batch_size equal segments of [0, total) (Appendix B.2.1);
        # np.random.random(n) draws the same numbers as np.random.uniform(size=n), and they come out sorted
        prefix_sums = (self._strata(batch_size) + np.random.random(batch_size)) * (total / batch_size)
        leaves, priorities = self.tree._query(prefix_sums)
        # w_i = (N * P(i)) ** -beta, divided by the largest weight any stored transition can get,
        # that of the smallest priority p_min:  w_i / w_max = (P(i) / P_min) ** -beta = (p_i / p_min) ** -beta
        weights = (priorities / self.tree.min) ** -self.beta
        return leaves, weights.astype(np.float32).reshape(-1, 1)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray | th.Tensor) -> None:
        """
        Refresh the priorities of sampled transitions (proportional variant, Section 3.3).

        :param indices: Leaf indices returned with the batch (``samples.indices``), shape ``(batch_size,)``
        :param td_errors: TD errors of the same transitions, shape ``(batch_size,)`` or ``(batch_size, 1)``,
            numpy or torch; only their absolute value is used
        """
        if isinstance(td_errors, th.Tensor):
            td_errors = td_errors.detach().cpu().numpy()
        indices = np.asarray(indices)
        td_errors = np.asarray(td_errors)
        if td_errors.size != indices.size:
            raise ValueError(
                f"td_errors (shape {td_errors.shape}) must have one value per index (indices shape {indices.shape})"
            )
        leaves = self.tree._check_indices(indices)
        if leaves.size == 0:
            return
        # Raw priorities |delta| + eps (float64), before alpha
        priorities = np.abs(td_errors.reshape(-1), dtype=np.float64)
        priorities += self.eps
        # NaN propagates through max, and an infinite TD error gives an infinite maximum
        max_priority = float(priorities.max())
        if not max_priority < math.inf:
            flat_errors = td_errors.reshape(-1)
            bad = flat_errors[~np.isfinite(flat_errors)]
            raise ValueError(f"td_errors must be finite, got {bad[:5]} (priorities left unchanged)")
        # Checked: finite, > 0, one per valid leaf index
        self.tree._update(leaves, np.power(priorities, self.alpha, out=priorities))
        self.max_priority = max(self.max_priority, max_priority)


class PrioritizedReplayBuffer(_PrioritizedSampling, _FlatGather, NStepReplayBuffer):
    """
    Replay buffer with proportional prioritized sampling and importance-sampling weights.

    Paper: https://arxiv.org/abs/1511.05952 (proportional variant, Section 3.3; weights, Section 3.4)
    Subclass of SB3's :class:`~stable_baselines3.common.buffers.NStepReplayBuffer`: ``n_steps=1`` (default)
    gives one-step transitions, ``n_steps > 1`` the same n-step returns and discounts as ``NStepReplayBuffer``.
    Terminations, truncations (``handle_timeout_termination``), the write pointer and ``VecNormalize`` are
    handled as in SB3's buffers. ``sample()`` returns :class:`PrioritizedReplayBufferSamples`; pass its
    ``indices`` and the TD errors to :meth:`update_priorities`.

    Differs from the paper: the paper also anneals beta to 1 but does not fix the schedule; here it is linear
    over the model's training progress (``progress_remaining``, set by the model before each ``train()``).

    :param buffer_size: Max number of element in the buffer
    :param observation_space: Observation space
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Not supported (``ValueError``)
    :param handle_timeout_termination: Handle timeout termination (due to timelimit)
        separately and treat the task as infinite horizon task.
    :param n_steps: Number of steps to accumulate rewards for n-step returns (1: one-step)
    :param gamma: Discount factor for n-step returns
    :param alpha: Prioritization exponent, 0 is uniform (paper: 0.6)
    :param beta: Initial importance-sampling exponent, annealed linearly to 1 (paper: 0.4)
    :param eps: Small constant added to ``|td_error|`` so that no transition gets zero priority (1e-6)
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
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-6,
    ) -> None:
        if not (isinstance(n_steps, int | np.integer) and n_steps >= 1):
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        self._check_arguments(alpha, beta, eps, optimize_memory_usage)
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
        )
        self._setup_priorities(alpha, beta, eps)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> PrioritizedReplayBufferSamples:  # type: ignore[override]
        """
        Sample ``batch_size`` transitions with probability ``p_i / sum_k p_k`` (stratified).

        :param batch_size: Number of transitions to sample
        :param env: associated VecNormalize env to normalize the observations/rewards when sampling
        :return: The batch, with ``weights`` and ``indices``
        """
        leaves, weights = self._sample_leaves(batch_size)
        if self.n_steps == 1:
            return self._get_one_step_samples(leaves, env, self._as_tensor(weights))
        batch_inds, env_indices = np.divmod(leaves, self.n_envs)
        return self._get_n_step_samples(batch_inds, env_indices, env, self._as_tensor(weights))

    def _get_samples(  # type: ignore[override]
        self,
        batch_inds: np.ndarray,
        env: VecNormalize | None = None,
        env_indices: np.ndarray | None = None,
    ) -> PrioritizedReplayBufferSamples:
        """
        Gather the transitions at ``(batch_inds, env_indices)``.

        Same computation as SB3's ``ReplayBuffer._get_samples`` (one step) and
        ``NStepReplayBuffer._get_samples`` (n steps), but for given env indices instead of random ones.
        ``weights`` of the result is ``None``; ``indices`` are the leaf indices of the transitions.

        :param batch_inds: Positions in the buffer
        :param env: associated VecNormalize env
        :param env_indices: Env index of each sample; drawn uniformly (as SB3 does) when ``None``
        """
        if env_indices is None:
            env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        if self.n_steps == 1:
            return self._get_one_step_samples(batch_inds * self.n_envs + env_indices, env, None)
        return self._get_n_step_samples(batch_inds, env_indices, env, None)

    # One step: the flat gather of _FlatGather, the leaf index being the slot index. n steps: SB3's computation.
    # Every array turned into a tensor is a fresh result of fancy indexing or arithmetic: no copy is needed.

    def _get_one_step_samples(
        self, leaves: np.ndarray, env: VecNormalize | None, weights: th.Tensor | None
    ) -> PrioritizedReplayBufferSamples:
        # As ReplayBuffer._get_samples: discounts are None, the model uses gamma. weights: None from _get_samples()
        return PrioritizedReplayBufferSamples(*self._gather_one_step(leaves, env), None, weights, leaves)  # type: ignore[arg-type]

    def _get_n_step_samples(
        self, batch_inds: np.ndarray, env_indices: np.ndarray, env: VecNormalize | None, weights: th.Tensor | None
    ) -> PrioritizedReplayBufferSamples:
        # The computation of NStepReplayBuffer._get_samples (SB3 2.9), for given env indices.
        # The slot before the write pointer is marked truncated for the duration of the call, so that no
        # n-step sequence runs into the slot that will be overwritten next (another episode, or stale data).
        last_valid_index = self.pos - 1
        original_timeout_values = self.timeouts[last_valid_index].copy()
        self.timeouts[last_valid_index] = np.logical_or(original_timeout_values, np.logical_not(self.dones[last_valid_index]))
        try:
            steps = np.arange(self.n_steps).reshape(1, -1)  # (1, n_steps)
            indices = (batch_inds[:, None] + steps) % self.buffer_size  # (batch_size, n_steps)
            rewards_seq = self._normalize_reward(self.rewards[indices, env_indices[:, None]], env)
            dones_seq = self.dones[indices, env_indices[:, None]]
            truncated_seq = self.timeouts[indices, env_indices[:, None]]

            # The sequence stops at its first termination or truncation (inclusive)
            done_or_truncated = np.logical_or(dones_seq, truncated_seq)
            done_idx = np.where(done_or_truncated.any(axis=1), done_or_truncated.argmax(axis=1), self.n_steps - 1)
            mask = steps <= done_idx[:, None]  # (batch_size, n_steps)
            # Bootstrap discount gamma ** (number of rewards summed)
            target_q_discounts = self.gamma ** mask.sum(axis=1, keepdims=True).astype(np.float32)  # (batch_size, 1)
            discounts = self.gamma ** np.arange(self.n_steps, dtype=np.float32).reshape(1, -1)
            n_step_returns = (rewards_seq * discounts * mask).sum(axis=1, keepdims=True)  # (batch_size, 1)

            last_indices = (batch_inds + done_idx) % self.buffer_size
            next_obs = self._normalize_obs(self.next_observations[last_indices, env_indices], env)
            next_dones = self.dones[last_indices, env_indices][:, None].astype(np.float32)
            next_timeouts = self.timeouts[last_indices, env_indices][:, None].astype(np.float32)
            final_dones = next_dones * (1.0 - next_timeouts)
        finally:
            self.timeouts[last_valid_index] = original_timeout_values

        obs = self._normalize_obs(self.observations[batch_inds, env_indices], env)
        return PrioritizedReplayBufferSamples(
            observations=self._as_tensor(obs),  # type: ignore[arg-type]
            actions=self._as_tensor(self.actions[batch_inds, env_indices]),
            next_observations=self._as_tensor(next_obs),  # type: ignore[arg-type]
            dones=self._as_tensor(final_dones),
            rewards=self._as_tensor(n_step_returns),
            discounts=self._as_tensor(target_q_discounts),
            weights=weights,  # type: ignore[arg-type]  # None from _get_samples()
            indices=batch_inds * self.n_envs + env_indices,
        )


class DictPrioritizedReplayBuffer(_PrioritizedSampling, _FlatGather, DictReplayBuffer):
    """
    Prioritized replay buffer for ``Dict`` observations (one-step, like SB3's ``DictReplayBuffer``).

    Same prioritization, weights and parameters as :class:`PrioritizedReplayBuffer`, without ``n_steps``.
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
    ) -> None:
        self._check_arguments(alpha, beta, eps, optimize_memory_usage)
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
        )
        self._setup_priorities(alpha, beta, eps)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> DictPrioritizedReplayBufferSamples:  # type: ignore[override]
        """As :meth:`PrioritizedReplayBuffer.sample`, for ``Dict`` observations."""
        leaves, weights = self._sample_leaves(batch_size)
        return self._get_flat_samples(leaves, env, self._as_tensor(weights))

    def _get_samples(  # type: ignore[override]
        self,
        batch_inds: np.ndarray,
        env: VecNormalize | None = None,
        env_indices: np.ndarray | None = None,
    ) -> DictPrioritizedReplayBufferSamples:
        """
        Gather the transitions at ``(batch_inds, env_indices)``, as SB3's ``DictReplayBuffer._get_samples``.

        ``weights`` of the result is ``None``; ``indices`` are the leaf indices of the transitions.

        :param batch_inds: Positions in the buffer
        :param env: associated VecNormalize env
        :param env_indices: Env index of each sample; drawn uniformly (as SB3 does) when ``None``
        """
        if env_indices is None:
            env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        return self._get_flat_samples(batch_inds * self.n_envs + env_indices, env, None)

    def _get_flat_samples(
        self, leaves: np.ndarray, env: VecNormalize | None, weights: th.Tensor | None
    ) -> DictPrioritizedReplayBufferSamples:
        # As DictReplayBuffer._get_samples (discounts are None). weights: None from _get_samples()
        return DictPrioritizedReplayBufferSamples(*self._gather_one_step(leaves, env), None, weights, leaves)  # type: ignore[arg-type]
