"""
Memory-efficient storage (``optimize_memory_usage=True``: ``sb3_dqn_ext.storage.FrameStorage``) against SB3's own
``ReplayBuffer`` / ``NStepReplayBuffer`` fed the same transitions.

The transitions come from a real ``VecFrameStack(DummyVecEnv(...))`` over :class:`TaggedFrameEnv`, whose frames
identify (env, episode, step), and are stored as ``OffPolicyAlgorithm._store_transition`` stores them (the real
terminal observation as next observation of a finished episode, ``TimeLimit.truncated`` in the infos). Samples are
compared field by field (dtype, shape, values) at the same (position, env) slots.
"""

from pathlib import Path
from typing import Any
from unittest import mock

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.save_util import load_from_pkl, save_to_pkl
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack, VecNormalize, VecTransposeImage

from sb3_dqn_ext import DoubleDQN, MemoryEfficientReplayBuffer, PrioritizedDQN, PrioritizedReplayBuffer
from sb3_dqn_ext.dqn import BaseDQN

N_STACK = 4
POSITIONS = 60  # positions per env of the buffers under test
Layout = str  # "hwc": VecFrameStack of (H, W, 1); "transposed": VecTransposeImage on it; "chw": of (1, H, W)


class TaggedFrameEnv(gym.Env[np.ndarray, np.int64]):
    """
    Frames whose pixels identify (env, episode, step): pixel 0 is ``env + 1`` (no frame is all zeros, as
    ``VecFrameStack``'s padding), pixels 1-2 the episode, 3-4 the step, the others vary with all three. An episode
    terminates after a random number of steps in ``[min_length, max_length]``; wrap it in ``TimeLimit`` to truncate.
    """

    def __init__(self, env_index: int, min_length: int, max_length: int, size: int = 6, channel_first: bool = False) -> None:
        self.env_index, self.min_length, self.max_length, self.size = env_index, min_length, max_length, size
        self.observation_space = spaces.Box(0, 255, (1, size, size) if channel_first else (size, size, 1), np.uint8)
        self.action_space = spaces.Discrete(3)
        self.episode, self.n_steps, self.length = -1, 0, 0

    def _frame(self) -> np.ndarray:
        frame = (
            np.arange(self.size * self.size, dtype=np.int64) * 11 + self.env_index * 53 + self.episode * 29 + self.n_steps * 7
        )
        frame = frame % 255 + 1
        frame[:5] = self.env_index + 1, self.episode % 256, self.episode // 256, self.n_steps % 256, self.n_steps // 256
        return frame.astype(np.uint8).reshape(self.observation_space.shape)  # type: ignore[arg-type]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.episode, self.n_steps = self.episode + 1, 0
        self.length = int(self.np_random.integers(self.min_length, self.max_length + 1))
        return self._frame(), {}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.n_steps += 1
        reward = float(np.sin(self.n_steps + 10 * self.episode + 3 * int(action)))
        return self._frame(), reward, self.n_steps >= self.length, False, {}


def make_venv(
    n_envs: int, layout: Layout = "hwc", lengths: tuple[int, int] = (25, 45), time_limit: int = 35, size: int = 6
) -> VecEnv:
    """``VecFrameStack(DummyVecEnv)`` of :class:`TaggedFrameEnv`: about half the episodes are cut by ``TimeLimit``."""

    def make(index: int) -> gym.Env:
        env = TaggedFrameEnv(index, *lengths, size=size, channel_first=layout == "chw")
        return gym.wrappers.TimeLimit(env, max_episode_steps=time_limit)

    venv: VecEnv = VecFrameStack(DummyVecEnv([lambda i=i: make(i) for i in range(n_envs)]), N_STACK)  # type: ignore[misc]
    venv = VecTransposeImage(venv) if layout == "transposed" else venv
    venv.seed(0)
    return venv


def newest_frame(obs: np.ndarray) -> np.ndarray:
    """Newest frame of a stacked observation (flattened); the stacking axis is the smallest one."""
    return np.moveaxis(obs, int(np.argmin(obs.shape)), 0)[-1].reshape(-1)


def decode(obs: np.ndarray) -> tuple[int, int, int]:
    """(env, episode, step) of the newest frame of a stacked observation of :class:`TaggedFrameEnv`."""
    pixels = newest_frame(obs).astype(np.int64)
    return int(pixels[0]) - 1, int(pixels[1] + 256 * pixels[2]), int(pixels[3] + 256 * pixels[4])


class Feeder:
    """
    Steps a vec env with random actions and stores each transition in buffers as ``_store_transition`` does.

    ``lengths[env]``: lengths of the finished episodes of each env, in order; ``terminal[(env, episode)]``: their
    terminal observations (from the infos); ``ends``: numbers of terminated and truncated episodes.
    """

    def __init__(self, venv: VecEnv, seed: int = 0) -> None:
        self.venv, self.rng = venv, np.random.default_rng(seed)
        self.obs = venv.reset()
        self.lengths: list[list[int]] = [[] for _ in range(venv.num_envs)]
        self.terminal: dict[tuple[int, int], np.ndarray] = {}
        self.ends = [0, 0]

    def feed(self, buffers: list[Any], n_transitions: int) -> "Feeder":
        for _ in range(n_transitions):
            actions = self.rng.integers(0, 3, size=self.venv.num_envs)
            new_obs, rewards, dones, infos = self.venv.step(actions)
            next_obs = np.array(new_obs)
            for i in np.flatnonzero(dones):
                next_obs[i] = infos[i]["terminal_observation"]
                self.lengths[i].append(decode(next_obs[i])[2])
                self.terminal[decode(next_obs[i])[:2]] = next_obs[i]
                self.ends[int(infos[i]["TimeLimit.truncated"])] += 1
            for buffer in buffers:
                buffer.add(self.obs, next_obs, actions, rewards, dones, infos)
            self.obs = new_obs
        return self


def sb3_buffer(n_envs: int, n_steps: int, venv: VecEnv, handle_timeout_termination: bool = True) -> ReplayBuffer:
    kwargs: dict[str, Any] = dict(device="cpu", n_envs=n_envs, handle_timeout_termination=handle_timeout_termination)
    if n_steps > 1:
        return NStepReplayBuffer(POSITIONS * n_envs, venv.observation_space, venv.action_space, n_steps=n_steps, **kwargs)
    return ReplayBuffer(POSITIONS * n_envs, venv.observation_space, venv.action_space, **kwargs)


def our_buffers(
    n_envs: int, n_steps: int, venv: VecEnv, handle_timeout_termination: bool = True, stack_axis: int | None = None
) -> tuple[MemoryEfficientReplayBuffer, PrioritizedReplayBuffer]:
    args = (POSITIONS * n_envs, venv.observation_space, venv.action_space)
    kwargs: dict[str, Any] = dict(
        device="cpu",
        n_envs=n_envs,
        handle_timeout_termination=handle_timeout_termination,
        n_steps=n_steps,
        n_stack=N_STACK,
        stack_axis=stack_axis,
    )
    return MemoryEfficientReplayBuffer(*args, **kwargs), PrioritizedReplayBuffer(*args, optimize_memory_usage=True, **kwargs)


def all_slots(buffer: ReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    """(positions, envs) of every stored transition."""
    n_positions = buffer.buffer_size if buffer.full else buffer.pos
    return np.repeat(np.arange(n_positions), buffer.n_envs), np.tile(np.arange(buffer.n_envs), n_positions)


def sb3_samples_at(
    buffer: ReplayBuffer, positions: np.ndarray, envs: np.ndarray, env: VecNormalize | None = None
) -> ReplayBufferSamples:
    """SB3's ``_get_samples`` at the given slots (it draws the env indices with ``np.random.randint``)."""
    with mock.patch.object(np.random, "randint", return_value=envs):
        return buffer._get_samples(positions, env)


def ours_at(
    buffer: MemoryEfficientReplayBuffer | PrioritizedReplayBuffer,
    positions: np.ndarray,
    envs: np.ndarray,
    env: VecNormalize | None = None,
) -> ReplayBufferSamples:
    return ReplayBufferSamples(*buffer._gather(positions * buffer.n_envs + envs, env))


def assert_same_samples(ours: tuple, expected: ReplayBufferSamples) -> None:
    """Field by field: same dtype, shape and values (``discounts`` is ``None`` in both for one-step samples)."""
    for name in ReplayBufferSamples._fields:
        got, want = getattr(ours, name), getattr(expected, name)
        if want is None:
            assert got is None, name
            continue
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        assert th.equal(got, want), f"{name} differs at rows {th.nonzero((got != want).reshape(len(got), -1).any(1))}"


def assert_identical_batches(got: tuple, want: tuple) -> None:
    """Every field of two batches of the same class (tensors, ``None`` or numpy arrays) is identical."""
    assert type(got) is type(want)
    for name, a, b in zip(want._fields, got, want, strict=True):  # type: ignore[attr-defined]
        same = a is None if b is None else np.array_equal(a, b) if isinstance(b, np.ndarray) else th.equal(a, b)
        assert same, name


def assert_match_sb3(
    expected: ReplayBuffer, buffers: list[Any], env: VecNormalize | None = None, batch_size: int = 256
) -> None:
    """Every slot, then uniform draws (same seed) and prioritized draws (at their indices), equal SB3's."""
    positions, envs = all_slots(expected)
    for buffer in buffers:
        assert buffer.frames.valid(positions, envs).all()  # else the uniform draws differ
        assert_same_samples(ours_at(buffer, positions, envs, env), sb3_samples_at(expected, positions, envs, env))
        np.random.seed(1)
        samples = buffer.sample(batch_size, env)
        if isinstance(buffer, PrioritizedReplayBuffer):
            positions_, envs_ = np.divmod(samples.indices, expected.n_envs)
            assert_same_samples(samples, sb3_samples_at(expected, positions_, envs_, env))
        else:
            np.random.seed(1)
            assert_same_samples(samples, expected.sample(batch_size, env))


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("n_steps", [1, 3])
@pytest.mark.parametrize("handle_timeout_termination", [True, False])
def test_samples_equal_sb3_buffers_field_by_field(n_envs: int, n_steps: int, handle_timeout_termination: bool) -> None:
    venv = make_venv(n_envs)
    expected = sb3_buffer(n_envs, n_steps, venv, handle_timeout_termination)
    buffers = our_buffers(n_envs, n_steps, venv, handle_timeout_termination)
    feeder = Feeder(venv).feed([expected, *buffers], POSITIONS // 2)
    assert_match_sb3(expected, list(buffers))  # not full yet
    feeder.feed([expected, *buffers], 3 * POSITIONS)  # the ring wraps around 3 times
    assert feeder.ends[0] > 0 and feeder.ends[1] > 0  # terminated and truncated episodes
    assert_match_sb3(expected, list(buffers))


@pytest.mark.parametrize("layout", ["hwc", "transposed", "chw"])
def test_samples_equal_sb3_buffers_for_each_stacking_layout(layout: Layout) -> None:
    venv = make_venv(2, layout)
    assert venv.observation_space.shape == ((6, 6, N_STACK) if layout == "hwc" else (N_STACK, 6, 6))
    expected, buffers = sb3_buffer(2, 3, venv), our_buffers(2, 3, venv)
    Feeder(venv).feed([expected, *buffers], 2 * POSITIONS + 5)
    assert buffers[0].frames is not None and buffers[0].frames.stack_axis == (2 if layout == "hwc" else 0)
    assert_match_sb3(expected, list(buffers))


def test_first_and_terminal_observations_are_the_real_ones() -> None:
    """Zero frames before an episode's first frame; the real terminal stack of terminated and truncated episodes."""
    venv = make_venv(2)
    buffer, _ = our_buffers(2, 1, venv)
    feeder = Feeder(venv).feed([buffer], 2 * POSITIONS)
    samples = ours_at(buffer, *all_slots(buffer))
    obs, next_obs = samples.observations.numpy(), samples.next_observations.numpy()
    n_first = n_last = 0
    for i in range(len(obs)):
        env, episode, step = decode(obs[i])
        frames = [decode(obs[i][..., j : j + 1]) if obs[i][..., j].any() else None for j in range(N_STACK)]
        # Oldest first: zeros for the frames before the episode's first one, then this episode's frames in order
        assert frames == [None] * (N_STACK - 1 - min(step, N_STACK - 1)) + [
            (env, episode, s) for s in range(max(step - N_STACK + 1, 0), step + 1)
        ]
        assert next_obs[i][..., :-1].tobytes() == obs[i][..., 1:].tobytes()
        assert decode(next_obs[i]) == (env, episode, step + 1)  # the terminal observation, not the next episode's
        n_first += step == 0
        if (env, episode) in feeder.terminal and feeder.lengths[env][episode] == step + 1:
            n_last += 1
            np.testing.assert_array_equal(next_obs[i], feeder.terminal[env, episode])
    assert n_first > 0 and n_last > 0


def test_samples_equal_sb3_with_vec_normalize() -> None:
    venv = make_venv(2)
    normalizer = VecNormalize(make_venv(2), norm_obs=True, norm_reward=True, training=False)
    rng = np.random.default_rng(0)
    assert isinstance(normalizer.obs_rms, RunningMeanStd)
    normalizer.obs_rms.mean = rng.uniform(0, 255, venv.observation_space.shape)
    normalizer.obs_rms.var = rng.uniform(1, 5000, venv.observation_space.shape)
    normalizer.ret_rms.var = np.array(3.7)
    expected, buffers = sb3_buffer(2, 3, venv), our_buffers(2, 3, venv)
    Feeder(venv).feed([expected, *buffers], POSITIONS + 9)
    assert_match_sb3(expected, list(buffers), env=normalizer)
    assert ours_at(buffers[0], *all_slots(expected), env=normalizer).observations.dtype == th.float32


def test_pickled_buffers_sample_and_store_as_before(tmp_path: Path) -> None:
    venv = make_venv(3)
    expected, buffers = sb3_buffer(3, 3, venv), our_buffers(3, 3, venv)
    feeder = Feeder(venv).feed([expected, *buffers], POSITIONS + 21)
    loaded = []
    for i, buffer in enumerate(buffers):
        save_to_pkl(tmp_path / f"buffer{i}.pkl", buffer)
        loaded.append(load_from_pkl(tmp_path / f"buffer{i}.pkl"))
        np.random.seed(2)
        samples = buffer.sample(64)
        np.random.seed(2)
        assert_identical_batches(loaded[-1].sample(64), samples)  # weights and indices too
    # The loaded storage goes on from where it was (the frame chains of the running episodes included)
    feeder.feed([expected, *loaded], POSITIONS + 13)
    assert_match_sb3(expected, loaded)


def test_memory_per_transition_for_atari_frames(capsys: pytest.CaptureFixture[str]) -> None:
    """84x84 frames stacked by 4 (channel first): at most 7.5 KB per transition, where SB3's buffer takes 56.5 KB."""
    obs_space, action_space = spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(6)
    ours = MemoryEfficientReplayBuffer(10_000, obs_space, action_space, device="cpu", n_stack=4)
    sb3 = ReplayBuffer(10_000, obs_space, action_space, device="cpu")
    sb3_bytes = sum(array.nbytes for array in (sb3.observations, sb3.next_observations, sb3.actions, sb3.rewards))
    sb3_bytes += sb3.dones.nbytes + sb3.timeouts.nbytes
    with capsys.disabled():
        print(f"\nbytes per transition: ours {ours.nbytes / 10_000}, SB3 {sb3_bytes / 10_000}")
    assert ours.nbytes / 10_000 <= 7500
    assert sb3_bytes / 10_000 == pytest.approx(56_500, rel=0.01)


def hand_valid(expected: ReplayBuffer, lengths: list[list[int]], ring_size: int) -> np.ndarray:
    """
    Whether every frame of each slot is among the last ``ring_size`` frames its env produced (one per episode start,
    one per step), computed from the (episode, step) of SB3's stored observations and the episodes' lengths.
    """

    def first_frame(env: int, episode: int, step: int) -> int:  # index of the frame among those of its env
        return sum(length + 1 for length in lengths[env][:episode]) + step

    positions, envs = all_slots(expected)
    last = (expected.pos - 1) % expected.buffer_size
    n_written = [first_frame(*decode(expected.next_observations[last, env])) + 1 for env in range(expected.n_envs)]
    valid = []
    for position, env in zip(positions, envs, strict=True):
        _, episode, step = decode(expected.observations[position, env])
        valid.append(first_frame(env, episode, max(step - N_STACK + 1, 0)) >= n_written[env] - ring_size)
    return np.array(valid)


def test_transitions_that_lost_a_frame_are_never_sampled() -> None:
    """Episodes of 1-2 steps need more frames than the rings hold: the oldest transitions become invalid."""
    venv = make_venv(2, lengths=(1, 3), time_limit=2)
    expected, buffers = sb3_buffer(2, 3, venv), our_buffers(2, 3, venv)
    lengths = Feeder(venv).feed([expected, *buffers], 3 * POSITIONS + 7).lengths
    ring_size = POSITIONS + POSITIONS // 20 + N_STACK + 1  # FrameStorage's docstring
    valid = hand_valid(expected, lengths, ring_size)
    assert 0 < valid.sum() < len(valid)
    slots = all_slots(expected)
    for buffer in buffers:
        assert buffer.frames is not None and buffer.frames.ring_size == ring_size
        np.testing.assert_array_equal(buffer.frames.valid(*slots), valid)
    # Uniform draws: only valid transitions, each exactly SB3's at its slot (found from its observation)
    slot_of = {expected.observations[p, e].tobytes(): (p, e) for p, e in zip(*slots, strict=True)}
    samples = buffers[0].sample(1000)
    positions, envs = np.array([slot_of[obs.numpy().tobytes()] for obs in samples.observations]).T
    assert valid[positions * 2 + envs].all()
    assert_same_samples(samples, sb3_samples_at(expected, positions, envs))
    # Prioritized: invalid transitions have priority 0 and are never drawn; the valid ones are SB3's
    leaves = slots[0] * 2 + slots[1]
    priorities = buffers[1].tree.get(leaves)
    assert (priorities[~valid] == 0).all() and (priorities[valid] > 0).all()
    assert valid[buffers[1].sample(1000).indices].all()
    assert_same_samples(
        ours_at(buffers[1], *np.divmod(leaves[valid], 2)), sb3_samples_at(expected, *np.divmod(leaves[valid], 2))
    )


def storage_state(buffer: MemoryEfficientReplayBuffer) -> list[Any]:
    assert buffer.frames is not None
    frames = buffer.frames
    arrays = [buffer.actions, buffer.rewards, buffer.dones, buffer.timeouts, frames.frames, frames.written]
    arrays += [frames.newest, frames.depth, frames.next_newest, frames.next_depth, frames.last_next_obs, frames.last_next]
    return [buffer.pos, buffer.full, *(array.copy() for array in arrays)]


def test_next_observation_not_shifted_by_one_frame_is_stored_whole() -> None:
    venv = make_venv(2)
    buffer, _ = our_buffers(2, 1, venv)
    Feeder(venv).feed([buffer], 10)
    assert buffer.frames is not None
    written = buffer.frames.written.copy()
    rng = np.random.default_rng(0)
    obs = rng.integers(1, 256, size=(2, 6, 6, N_STACK)).astype(np.uint8)  # random stacks: a new chain each
    next_obs = rng.integers(1, 256, size=obs.shape).astype(np.uint8)
    next_obs[0, ..., :-1] = obs[0, ..., 1:]  # env 0 is shifted by one frame, env 1 is not
    position = buffer.pos
    buffer.add(obs, next_obs, np.zeros(2), np.zeros(2), np.zeros(2), [{}, {}])
    # env 0: 4 frames of the observation, 1 of the next; env 1: 4 and 4
    assert list(buffer.frames.written - written) == [N_STACK + 1, 2 * N_STACK]
    batch = ReplayBufferSamples(*buffer._gather(np.array([position * 2, position * 2 + 1]), None))
    assert np.array_equal(batch.observations.numpy(), obs) and np.array_equal(batch.next_observations.numpy(), next_obs)


@pytest.mark.parametrize("n_stack", [0, 3, 2.0])
def test_n_stack_not_dividing_the_stacking_axis_raises(n_stack: Any) -> None:
    obs_space = spaces.Box(0, 255, (6, 6, 4), np.uint8)
    with pytest.raises(ValueError, match="n_stack"):
        MemoryEfficientReplayBuffer(100, obs_space, spaces.Discrete(2), device="cpu", n_stack=n_stack)


def test_small_square_frames_stacked_channel_last() -> None:
    """
    (4, 4, 1) frames stacked by 4 give (4, 4, 4), which SB3 reads as a channel-first image: the models pass
    VecFrameStack's axis (the last) to the storage.
    """
    venv = make_venv(2, size=4)
    model = DoubleDQN("MlpPolicy", venv, optimize_memory_usage=True, buffer_size=2 * POSITIONS, device="cpu")
    assert model.replay_buffer_kwargs["stack_axis"] == -1
    expected, buffers = sb3_buffer(2, 1, venv), our_buffers(2, 1, venv, stack_axis=-1)
    Feeder(venv).feed([expected, *buffers], POSITIONS + 3)
    assert_match_sb3(expected, list(buffers))


def test_models_learn_with_vec_normalize_normalizing_stacked_observations() -> None:
    """
    ``_store_transition`` stores ``unnormalize_obs(normalize_obs(terminal_observation))``: some values differ from the
    observation's frames by one float32 ulp, so that terminal observation is stored whole.
    """
    venv = VecNormalize(VecFrameStack(make_vec_env("CartPole-v1", n_envs=2, seed=0), N_STACK), clip_obs=1e9)
    model = DoubleDQN("MlpPolicy", venv, optimize_memory_usage=True, buffer_size=400, learning_starts=500, device="cpu")
    model.learn(200)
    assert model.replay_buffer is not None and model.replay_buffer.dones.any()


def test_models_store_frames_once_and_reload_their_buffer(model_class: type[BaseDQN], tmp_path: Path) -> None:
    def make_model() -> BaseDQN:
        venv = make_venv(2, size=36)
        kwargs: dict[str, Any] = dict(buffer_size=400, learning_starts=50, n_steps=3, seed=0, device="cpu")
        return model_class("CnnPolicy", venv, optimize_memory_usage=True, policy_kwargs=dict(net_arch=[32]), **kwargs)

    model = make_model().learn(300)
    buffer = model.replay_buffer
    buffer_class = PrioritizedReplayBuffer if issubclass(model_class, PrioritizedDQN) else MemoryEfficientReplayBuffer
    assert type(buffer) is buffer_class and buffer.frames is not None  # type: ignore[union-attr]
    assert buffer.frames.n_stack == N_STACK and buffer.n_steps == 3  # type: ignore[union-attr]
    # Each frame once: one per transition, plus the first frame of each episode
    n_episodes = sum(episode + 1 for episode in model.get_env().get_attr("episode"))  # type: ignore[union-attr]
    assert model.num_timesteps + n_episodes - 2 <= buffer.frames.written.sum() <= model.num_timesteps + n_episodes  # type: ignore[union-attr]
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    other = make_model()
    other.load_replay_buffer(tmp_path / "buffer.pkl")
    assert other.replay_buffer is not None
    np.random.seed(3)
    samples = buffer.sample(32)  # type: ignore[union-attr]
    np.random.seed(3)
    assert_identical_batches(other.replay_buffer.sample(32), samples)
    other.learn(60, reset_num_timesteps=False)  # and goes on storing
