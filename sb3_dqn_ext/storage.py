"""
Replay storage: the compiled gather of a batch, and the memory-efficient frame storage.

Imported by the buffers when they are built (it imports numba, which ``import sb3_dqn_ext`` does not). The kernels
are compiled on their first call and cached on disk (``cache=True``: next to this file, or in the user's cache
directory when this one is read-only, or in ``NUMBA_CACHE_DIR``). The gather of SB3's layout works on each array's own
dtype (a compiled version per dtype, viewed as bytes where numba has none); the frame storage on bytes (``uint8``),
one compiled version for every observation dtype.
"""

import numba
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

# The dtypes the gather kernels are compiled for; arrays of other dtypes (float16, ...) are gathered as bytes
_INTEGERS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
COMPILED_DTYPES = frozenset(map(np.dtype, (np.bool_, *_INTEGERS, np.float32, np.float64)))


def as_rows(array: np.ndarray) -> np.ndarray:
    """
    View a contiguous ``(buffer_size, n_envs, ...)`` array as ``(buffer_size, n_envs, row)``, in its dtype if
    it is one of ``COMPILED_DTYPES``, as bytes otherwise.
    """
    rows = array if array.ndim == 3 else array.reshape(*array.shape[:2], -1)
    return rows if rows.dtype in COMPILED_DTYPES else rows.view(np.uint8)


def from_rows(rows: np.ndarray, like: np.ndarray) -> np.ndarray:
    """
    The inverse of :func:`as_rows` for gathered rows: ``(batch_size, row)`` -> ``(batch_size, *like.shape[2:])`` in
    ``like``'s dtype (a view).
    """
    if rows.dtype != like.dtype:
        rows = rows.view(like.dtype)
    return rows if like.ndim == 3 else rows.reshape(-1, *like.shape[2:])


@numba.njit(cache=True)
def _copy(source: np.ndarray, destination: np.ndarray) -> None:
    """``destination[:] = source`` for 1-D arrays, as a plain loop: numba compiles it to a vectorized copy, where its
    slice assignment of ``uint8`` arrays copied about 9x slower here."""
    for k in range(source.shape[0]):
        destination[k] = source[k]


@numba.njit(cache=True)
def _equal(first: np.ndarray, second: np.ndarray) -> bool:
    """``np.array_equal`` for 1-D byte arrays of the same size, as a plain loop (see :func:`_copy`)."""
    for k in range(first.shape[0]):
        if first[k] != second[k]:
            return False
    return True


@numba.njit(cache=True)
def _n_step_end(position: int, env: int, n_steps: int, last_position: int, dones: np.ndarray, timeouts: np.ndarray) -> int:
    """
    Number of rewards of the n-step transition starting at ``(position, env)``, as SB3's ``NStepReplayBuffer``.

    The sequence stops at its first termination or truncation (inclusive), and at the slot before the write pointer
    (``last_position``), which SB3 marks truncated during sampling so that no sequence runs into the slot written next.
    """
    buffer_size = dones.shape[0]
    for step in range(n_steps):
        index = (position + step) % buffer_size
        if dones[index, env] != 0 or timeouts[index, env] != 0 or index == last_position:
            return step + 1
    return n_steps


@numba.njit(cache=True)
def _gather_fields(
    positions: np.ndarray,
    envs: np.ndarray,
    n_steps: int,
    last_position: int,
    actions: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    timeouts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    Everything of a batch but the observations: the fields of SB3's ``NStepReplayBuffer._get_samples``
    (``ReplayBuffer._get_samples`` for ``n_steps=1``) before normalization and discounting.

    :return: actions, rewards of each step ``(batch_size, n_steps)`` (0 after the end of the sequence),
        number of rewards of each sample, position of the last step of each sample, and the dones of the last
        step, ``dones * (1 - timeouts)``, ``(batch_size, 1)`` float32
    """
    batch_size = positions.shape[0]
    buffer_size = dones.shape[0]
    out_actions = np.empty((batch_size, actions.shape[2]), dtype=actions.dtype)
    out_rewards = np.zeros((batch_size, n_steps), dtype=np.float32)
    out_n_rewards = np.empty(batch_size, dtype=np.int64)
    out_last = np.empty(batch_size, dtype=np.int64)
    out_dones = np.empty((batch_size, 1), dtype=np.float32)
    for i in range(batch_size):
        position, env = positions[i], envs[i]
        _copy(actions[position, env], out_actions[i])
        n_rewards = _n_step_end(position, env, n_steps, last_position, dones, timeouts)
        for step in range(n_rewards):
            out_rewards[i, step] = rewards[(position + step) % buffer_size, env]
        last = (position + n_rewards - 1) % buffer_size
        out_n_rewards[i] = n_rewards
        out_last[i] = last
        out_dones[i, 0] = dones[last, env] * (np.float32(1.0) - timeouts[last, env])
    return out_actions, out_rewards, out_n_rewards, out_last, out_dones


@numba.njit(cache=True)
def _gather_rows(source: np.ndarray, positions: np.ndarray, envs: np.ndarray) -> np.ndarray:
    """Rows ``source[position, env]`` of a ``(buffer_size, n_envs, row)`` array."""
    out = np.empty((positions.shape[0], source.shape[2]), dtype=source.dtype)
    for i in range(positions.shape[0]):
        _copy(source[positions[i], envs[i]], out[i])
    return out


@numba.njit(cache=True)
def gather_batch(
    slots: np.ndarray,
    n_steps: int,
    last_position: int,
    observations: np.ndarray,
    next_observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    timeouts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    A batch from SB3's layout, one pass.

    :param slots: Flat slots ``position * n_envs + env`` of the batch, ``(batch_size,)``
    :param n_steps: Number of steps of the returns
    :param last_position: Position before the write pointer, ``(pos - 1) % buffer_size``
    :param observations: ``(buffer_size, n_envs, obs_size)`` (see :func:`as_rows`); ``next_observations`` likewise
    :param actions: ``(buffer_size, n_envs, action_size)``
    :param rewards: ``(buffer_size, n_envs)`` float32; ``dones``, ``timeouts`` likewise
    :return: observations, next observations (``(batch_size, obs_size)``), then the fields of :func:`_gather_fields`
        but the last positions
    """
    positions, envs = np.divmod(slots, actions.shape[1])
    actions_, rewards_, n_rewards, last, dones_ = _gather_fields(
        positions, envs, n_steps, last_position, actions, rewards, dones, timeouts
    )
    obs = _gather_rows(observations, positions, envs)
    next_obs = _gather_rows(next_observations, last, envs)
    return obs, next_obs, actions_, rewards_, n_rewards, dones_


@numba.njit(cache=True)
def _gather_stacks(
    frames: np.ndarray, newest: np.ndarray, depth: np.ndarray, positions: np.ndarray, envs: np.ndarray, n_stack: int
) -> np.ndarray:
    """
    Rebuild the frame stacks stored at ``(positions, envs)`` from the frame rings.

    :param frames: Frame rings as bytes, ``(n_envs, ring_size, frame_bytes)``: frame ``f`` of env ``e`` (counted
        from the first frame that env stored) is ``frames[e, f % ring_size]``
    :param newest: ``(buffer_size, n_envs)`` index of the newest frame of each stored stack
    :param depth: ``(buffer_size, n_envs)`` number of its real frames; the older ones are zeros, as
        ``VecFrameStack`` pads an episode's first observations
    :return: The stacks, ``(batch_size, n_stack, frame_bytes)``, oldest frame first
    """
    ring_size = frames.shape[1]
    out = np.empty((positions.shape[0], n_stack, frames.shape[2]), dtype=np.uint8)
    for i in range(positions.shape[0]):
        position, env = positions[i], envs[i]
        last, n_zeros = newest[position, env], n_stack - int(depth[position, env])
        out[i, :n_zeros] = 0
        for j in range(n_zeros, n_stack):
            _copy(frames[env, (last - (n_stack - 1 - j)) % ring_size], out[i, j])
    return out


@numba.njit(cache=True)
def gather_frame_batch(
    slots: np.ndarray,
    n_steps: int,
    last_position: int,
    frames: np.ndarray,
    newest: np.ndarray,
    depth: np.ndarray,
    next_newest: np.ndarray,
    next_depth: np.ndarray,
    n_stack: int,
    actions: np.ndarray,
    rewards: np.ndarray,
    dones: np.ndarray,
    timeouts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    A batch from the frame storage (:class:`FrameStorage`), one pass: as :func:`gather_batch` (same arguments), the
    observations and next observations being rebuilt from the frame rings (``newest``/``depth`` and
    ``next_newest``/``next_depth`` locate them, see :func:`_gather_stacks`).
    """
    positions, envs = np.divmod(slots, actions.shape[1])
    actions_, rewards_, n_rewards, last, dones_ = _gather_fields(
        positions, envs, n_steps, last_position, actions, rewards, dones, timeouts
    )
    obs = _gather_stacks(frames, newest, depth, positions, envs, n_stack)
    next_obs = _gather_stacks(frames, next_newest, next_depth, last, envs, n_stack)
    return obs, next_obs, actions_, rewards_, n_rewards, dones_


@numba.njit(cache=True)
def _write_stack(frames: np.ndarray, written: np.ndarray, env: int, stack: np.ndarray) -> int:
    """
    Start a chain of frames with a whole stack: write its frames but the leading all-zero ones (``VecFrameStack``'s
    padding, rebuilt as zeros).

    :return: The number of frames written (the stack's depth)
    """
    n_stack = stack.shape[0]
    first_real = 0
    while first_real < n_stack and not stack[first_real].any():
        first_real += 1
    for j in range(first_real, n_stack):
        _copy(stack[j], frames[env, written[env] % frames.shape[1]])
        written[env] += 1
    return n_stack - first_real


@numba.njit(cache=True)
def add_frames(
    position: int,
    obs: np.ndarray,
    next_obs: np.ndarray,
    frames: np.ndarray,
    written: np.ndarray,
    newest: np.ndarray,
    depth: np.ndarray,
    next_newest: np.ndarray,
    next_depth: np.ndarray,
    last_next_obs: np.ndarray,
    last_next: np.ndarray,
) -> None:
    """
    Store the observations of the ``n_envs`` transitions written at ``position``, one frame each where possible.

    An observation equal (byte for byte) to the previous next observation of its env continues that env's chain of
    frames: its frames are stored already. Otherwise (first transition, new episode, any discontinuity) it starts a
    new chain (:func:`_write_stack`). A next observation that is the observation shifted by one frame costs its newest
    frame; any other (say, a terminal observation that ``VecNormalize`` unnormalized with rounding) starts a new chain.

    :param obs: Observations as frames of bytes, ``(n_envs, n_stack, frame_bytes)``
    :param next_obs: Next observations, same layout
    :param frames: Frame rings, ``(n_envs, ring_size, frame_bytes)``
    :param written: Number of frames each env has written so far (updated)
    :param newest: ``(buffer_size, n_envs)`` index of the newest frame of each observation (row ``position`` set);
        ``depth``: its number of real frames; ``next_newest`` and ``next_depth``: the same for the next observations
    :param last_next_obs: Previous next observation of each env (updated)
    :param last_next: Its newest frame and depth, ``(n_envs, 2)`` (updated)
    """
    n_envs, n_stack = obs.shape[0], obs.shape[1]
    for env in range(n_envs):
        same = written[env] > 0
        for j in range(n_stack):
            same = same and _equal(obs[env, j], last_next_obs[env, j])
        if same:
            newest[position, env], depth[position, env] = last_next[env, 0], last_next[env, 1]
        else:
            depth[position, env] = _write_stack(frames, written, env, obs[env])
            newest[position, env] = written[env] - 1
        shifted = True
        for j in range(n_stack - 1):
            shifted = shifted and _equal(next_obs[env, j], obs[env, j + 1])
        if shifted:
            _copy(next_obs[env, n_stack - 1], frames[env, written[env] % frames.shape[1]])
            written[env] += 1
            next_depth[position, env] = min(depth[position, env] + 1, n_stack)
        else:
            next_depth[position, env] = _write_stack(frames, written, env, next_obs[env])
        next_newest[position, env] = written[env] - 1
        for j in range(n_stack):
            _copy(next_obs[env, j], last_next_obs[env, j])
        last_next[env, 0], last_next[env, 1] = next_newest[position, env], next_depth[position, env]


class FrameStorage:
    """
    Observations of a replay buffer stored once each, and for frame-stacked observations each frame once.

    Each env has a ring of ``ring_size`` frames, written in the order the env produced them: an episode's first
    observation (its frames but ``VecFrameStack``'s zero padding), then one frame per step, the last one being the
    real terminal observation of a terminated or truncated episode. Transition ``(position, env)`` keeps the index of
    the newest frame and the number of real frames of its observation and of its next observation, from which both
    are rebuilt: field for field what SB3's ``ReplayBuffer`` stores (see :func:`add_frames`). With ``n_stack=1`` the
    "frames" are the observations. Observations that are not stacks shifted by one frame per step are stored whole
    (a documented fallback: correct, at the cost of ``n_stack`` frames each).

    An episode stores one frame more than it has transitions, so each ring holds ``buffer_size * 21 / 20`` frames
    (plus one stack): about 5% of its frames are room for episode starts. When the episodes in the buffer are
    shorter than about 20 steps on average, the oldest transitions lose frames before they are overwritten: they
    are then invalid (:meth:`valid`), and the buffers never sample them.

    :param buffer_size: Transitions per env
    :param observation_space: Observation space (a ``Box`` or ``Discrete``, not a ``Dict``)
    :param n_envs: Number of parallel environments
    :param n_stack: Frames per observation (``VecFrameStack``'s ``n_stack``)
    :param stack_axis: Axis of the observation along which the frames are stacked; ``None``: the first axis of
        channel-first images, the last otherwise (what ``VecFrameStack``, then SB3's ``VecTransposeImage``, give)
    """

    def __init__(
        self, buffer_size: int, observation_space: spaces.Space, n_envs: int, n_stack: int, stack_axis: int | None = None
    ) -> None:
        if isinstance(observation_space, spaces.Dict):
            raise ValueError(f"Frame storage needs array observations, got {observation_space}")
        obs_shape = (1,) if isinstance(observation_space, spaces.Discrete) else observation_space.shape
        assert obs_shape is not None
        if stack_axis is None:
            channels_first = is_image_space(observation_space, check_channels=False) and is_image_space_channels_first(
                observation_space  # type: ignore[arg-type]
            )
            stack_axis = 0 if channels_first else len(obs_shape) - 1
        if not -len(obs_shape) <= stack_axis < len(obs_shape):
            raise ValueError(f"stack_axis={stack_axis} is not an axis of the observation shape {obs_shape}")
        self.stack_axis = stack_axis % len(obs_shape)
        if not (isinstance(n_stack, int | np.integer) and n_stack >= 1) or obs_shape[self.stack_axis] % n_stack != 0:
            raise ValueError(
                f"n_stack={n_stack!r} must be an integer >= 1 dividing the stacking axis {self.stack_axis} of the "
                f"observation shape {obs_shape}"
            )
        self.n_stack = int(n_stack)
        self.obs_shape = tuple(obs_shape)
        self.dtype = np.dtype(observation_space.dtype)
        # One frame: the observation with the stacking axis divided by n_stack
        frame_shape = list(obs_shape)
        frame_shape[self.stack_axis] //= self.n_stack
        self.frame_shape = tuple(frame_shape)
        self.ring_size = buffer_size + buffer_size // 20 + self.n_stack + 1
        self.frames = np.zeros((n_envs, self.ring_size, *self.frame_shape), dtype=self.dtype)
        self.written = np.zeros(n_envs, dtype=np.int64)
        self.newest = np.zeros((buffer_size, n_envs), dtype=np.int64)
        self.depth = np.zeros((buffer_size, n_envs), dtype=np.uint8)
        self.next_newest = np.zeros((buffer_size, n_envs), dtype=np.int64)
        self.next_depth = np.zeros((buffer_size, n_envs), dtype=np.uint8)
        frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.last_next_obs = np.zeros((n_envs, self.n_stack, frame_bytes), dtype=np.uint8)
        self.last_next = np.zeros((n_envs, 2), dtype=np.int64)
        # Number of invalid transitions at the oldest positions of each env (see ``invalidated``)
        self.n_invalid = np.zeros(n_envs, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of every array of the storage."""
        return sum(value.nbytes for value in vars(self).values() if isinstance(value, np.ndarray))

    def frame_rows(self) -> np.ndarray:
        """The frame rings as bytes, ``(n_envs, ring_size, frame_bytes)`` (a view)."""
        return self.frames.reshape(*self.frames.shape[:2], -1).view(np.uint8)

    def _to_frames(self, obs: np.ndarray) -> np.ndarray:
        """``(n, *obs_shape)`` observations -> ``(n, n_stack, frame_bytes)`` contiguous bytes, oldest frame first."""
        n, axis = obs.shape[0], self.stack_axis + 1
        shape = (n, *self.obs_shape[: axis - 1], self.n_stack, self.frame_shape[axis - 1], *self.obs_shape[axis:])
        frames = np.moveaxis(np.asarray(obs, dtype=self.dtype).reshape(shape), axis, 1)
        return np.ascontiguousarray(frames).reshape(n, self.n_stack, -1).view(np.uint8)

    def from_frames(self, stacks: np.ndarray) -> np.ndarray:
        """``(n, n_stack, frame_bytes)`` stacks of bytes -> ``(n, *obs_shape)`` observations (a view on axis 0)."""
        n = stacks.shape[0]
        frames = stacks.view(self.dtype).reshape(n, self.n_stack, *self.frame_shape)
        return np.moveaxis(frames, 1, self.stack_axis + 1).reshape(n, *self.obs_shape)

    def add(self, position: int, obs: np.ndarray, next_obs: np.ndarray) -> None:
        """
        Store the observations of the transitions written at ``position`` (one per env).

        :param position: Buffer position of the transitions
        :param obs: Observations, ``(n_envs, *obs_shape)``
        :param next_obs: Next observations (the real terminal observation at an episode's end), same shape
        """
        n_envs = self.written.shape[0]
        obs_frames = self._to_frames(np.reshape(obs, (n_envs, *self.obs_shape)))
        next_frames = self._to_frames(np.reshape(next_obs, (n_envs, *self.obs_shape)))
        add_frames(
            position,
            obs_frames,
            next_frames,
            self.frame_rows(),
            self.written,
            self.newest,
            self.depth,
            self.next_newest,
            self.next_depth,
            self.last_next_obs,
            self.last_next,
        )

    def valid(self, positions: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """Whether every frame of the transitions at ``(positions, envs)`` is still in the rings (bool array)."""
        first_frame = np.minimum(
            self.newest[positions, envs] + 1 - self.depth[positions, envs],
            self.next_newest[positions, envs] + 1 - self.next_depth[positions, envs],
        )
        return first_frame >= self.written[envs] - self.ring_size

    def invalidated(self, oldest: int, size: int, overwrote_oldest: bool) -> np.ndarray:
        """
        Transitions that lost a frame since the last call: the invalid ones are the oldest of each env.

        :param oldest: Position of the oldest stored transition (``pos`` when the buffer is full, else 0)
        :param size: Number of stored positions
        :param overwrote_oldest: Whether the last ``add`` overwrote the oldest position (the buffer was full)
        :return: Flat slots ``position * n_envs + env``
        """
        n_envs = self.written.shape[0]
        buffer_size = self.newest.shape[0]
        if overwrote_oldest:
            # The first position of each run of invalid transitions now holds the newest, valid, transition
            np.maximum(self.n_invalid - 1, 0, out=self.n_invalid)
        envs = np.arange(n_envs)
        slots: list[int] = []
        while True:
            positions = (oldest + self.n_invalid) % buffer_size
            newly_invalid = (self.n_invalid < size) & ~self.valid(positions, envs)
            if not newly_invalid.any():
                return np.array(slots, dtype=np.intp)
            slots.extend(positions[newly_invalid] * n_envs + envs[newly_invalid])
            self.n_invalid += newly_invalid
