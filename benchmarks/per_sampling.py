"""
Cost of one prioritized replay step, ``sample`` + priority update, side by side with SB3's uniform
``ReplayBuffer.sample`` and, where installed (extra ``bench``), the prioritized buffers of cpprb, Tianshou and
TorchRL, all measured in the same run.

Contenders (one call = what a DQN update asks of its buffer):

- ``sb3_uniform``: ``ReplayBuffer.sample(batch_size)`` (``device="cpu"``), the reference of every ratio;
- ``ours``: ``PrioritizedReplayBuffer.sample(batch_size)``, then ``update_priorities(batch.indices, td_errors)``
  with ``td_errors`` a ``(batch_size, 1)`` float32 numpy array, as ``BaseDQN.train()`` passes them;
- ``cpprb``: ``PrioritizedReplayBuffer.sample(batch_size, beta)``, then ``update_priorities(indexes, td_errors)``;
- ``tianshou``: ``PrioritizedReplayBuffer.sample(batch_size)``, then ``update_weight(indices, td_errors)`` (its
  segment tree is compiled with numba when the buffer is created);
- ``torchrl``: ``PrioritizedReplayBuffer.sample(batch_size, return_info=True)`` on a tensor storage holding a
  dict of tensors, then ``update_priority(info["index"], td_errors)``; this was the fastest of TorchRL's documented
  paths here (a ``TensorDict`` storage cost 25% more at 1e6 / batch 32, ``TensorDictPrioritizedReplayBuffer``
  45% more).

Every buffer holds the same random transitions and the prioritized ones the same random initial priorities,
set through their own priority update from the same ``|TD errors|`` (alpha 0.6, beta 0.4, eps 1e-6 where it
is a parameter). SB3, ours, Tianshou and TorchRL share the storage arrays (views, no copy: written once, in
SB3's layout); cpprb copies them in with its batched ``add``. Observations are CartPole-sized (4 float32) or
Atari-sized (4x84x84 uint8), next observations stored separately as SB3 does; Atari-sized stops at 1e5:
at 1e6, SB3's layout alone needs 56 GB. For Atari-sized observations cpprb stores next observations with
``next_of="obs"`` (its documented memory compression), as a separate copy would not fit in the memory budget.

Timing: one thread (``OMP_NUM_THREADS=1`` set here before numpy and torch are imported, ``th.set_num_threads(1)``),
warm-up calls, then interleaved rounds: in each round every contender runs a block of calls (about
``--block-ms`` of CPU time), starting with a different contender each round, so that machine noise hits all
alike. Objects alive before the rounds are frozen out of the garbage collector (a full collection took up to a
second here) and the collector is off inside a block, as in ``timeit``. Reported per contender: the median
per-call wall time (``perf_counter_ns``) over rounds, with p10/p90, and the median over rounds of its ratio to
``sb3_uniform`` in the same round; the same median and ratio in thread CPU time (``thread_time_ns``), which
leaves out the time spent waiting for a core on a shared machine. The target, checked at CartPole-sized 1e6 /
batch 32 (wall time; CPU time alongside): ours at most 1.5x SB3's uniform sample, and less than each peer.
``--breakdown`` (on by default) also times the pieces of ours at the largest CartPole-sized capacity:
``tree.query``, ``tree.update``, ``_sample_leaves`` (query + weights), the gather (``_get_samples``) and
``update_priorities``.

Usage (5-6 minutes with the defaults on a busy 2-core VM; results and plot in ``benchmarks/results/``)::

    pip install -e ".[bench]"
    python benchmarks/per_sampling.py
    python benchmarks/per_sampling.py --capacities 1000 --rounds 3 --obs cartpole   # smoke test
"""

import os

# One thread for numpy's and torch's pools: they read these when they are imported
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import gc
import itertools
import json
import math
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

from sb3_dqn_ext import PrioritizedReplayBuffer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_OUTPUT = RESULTS_DIR / "per_sampling.json"
DEFAULT_PLOT = RESULTS_DIR / "per_sampling.png"

OBS_SPACES: dict[str, spaces.Box] = {
    "cartpole": spaces.Box(low=-np.inf, high=np.inf, shape=(4,), dtype=np.float32),
    "atari": spaces.Box(low=0, high=255, shape=(4, 84, 84), dtype=np.uint8),
}
OBS_LABELS = {"cartpole": "CartPole-sized (4 float32)", "atari": "Atari-sized (4x84x84 uint8)"}
# SB3's layout stores observations and next observations: 2 * 28224 bytes per transition, 56 GB at 1e6
ATARI_MAX_CAPACITY = 100_000
N_ACTIONS = 2
ALPHA, BETA, EPS = 0.6, 0.4, 1e-6
# Different TD errors are cycled through, the same for every contender
TD_POOL_SIZE = 64
# Target at TARGET_SETTING: ours <= TARGET_RATIO x SB3's uniform sample, and < each peer
TARGET_SETTING = ("cartpole", 1_000_000, 32)
TARGET_RATIO = 1.5
REFERENCE = "sb3_uniform"
PEERS = ["cpprb", "tianshou", "torchrl"]
CONTENDERS = [REFERENCE, "ours", *PEERS]
LABELS = {
    "sb3_uniform": "SB3 ReplayBuffer.sample (uniform)",
    "ours": "sb3_dqn_ext PrioritizedReplayBuffer",
    "cpprb": "cpprb PrioritizedReplayBuffer",
    "tianshou": "Tianshou PrioritizedReplayBuffer",
    "torchrl": "TorchRL PrioritizedReplayBuffer",
}
VERSIONED_PACKAGES = ["numpy", "torch", "stable_baselines3", "sb3-dqn-ext", "gymnasium", *PEERS, "tensordict"]
GIB = 2**30


@dataclass
class Transitions:
    """The random transitions every buffer holds, in SB3's layout (``n_envs=1``)."""

    observations: np.ndarray  # (capacity, 1, *obs_shape)
    next_observations: np.ndarray  # (capacity, 1, *obs_shape)
    actions: np.ndarray  # (capacity, 1, 1) int64
    rewards: np.ndarray  # (capacity, 1) float32
    dones: np.ndarray  # (capacity, 1) float32
    timeouts: np.ndarray  # (capacity, 1) float32
    td_errors: np.ndarray  # (capacity,) initial |TD errors|, turned into priorities by each buffer

    @property
    def capacity(self) -> int:
        return len(self.observations)


def make_transitions(obs_kind: str, capacity: int, rng: np.random.Generator) -> Transitions:
    """Random transitions; large uint8 observations repeat a pool of random frames (drawing them all is slow)."""
    obs_space = OBS_SPACES[obs_kind]
    observations = np.empty((capacity, 1, *obs_space.shape), dtype=obs_space.dtype)
    next_observations = np.empty_like(observations)
    if obs_space.dtype == np.uint8:
        pool = rng.integers(0, 256, size=(min(capacity, 1024), 1, *obs_space.shape), dtype=np.uint8)
        for start in range(0, capacity, len(pool)):
            stop = min(start + len(pool), capacity)
            observations[start:stop] = pool[: stop - start]
        # As in a trajectory: the next observation is the following one
        next_observations[:-1] = observations[1:]
        next_observations[-1] = pool[-1]
    else:
        observations[:] = rng.standard_normal(observations.shape, dtype=np.float32)
        next_observations[:] = rng.standard_normal(observations.shape, dtype=np.float32)
    return Transitions(
        observations=observations,
        next_observations=next_observations,
        actions=rng.integers(0, N_ACTIONS, size=(capacity, 1, 1)),
        rewards=rng.standard_normal((capacity, 1), dtype=np.float32),
        dones=(rng.random((capacity, 1)) < 0.01).astype(np.float32),
        timeouts=(rng.random((capacity, 1)) < 0.001).astype(np.float32),
        td_errors=np.abs(rng.standard_normal(capacity)),
    )


def share_storage(buffer: ReplayBuffer, data: Transitions) -> None:
    """Make an SB3 buffer hold ``data`` (its arrays, not copies) and mark it full."""
    buffer.observations = data.observations
    buffer.next_observations = data.next_observations
    buffer.actions = data.actions
    buffer.rewards = data.rewards
    buffer.dones = data.dones
    buffer.timeouts = data.timeouts
    buffer.pos, buffer.full = 0, True


class Contender:
    """One buffer under test; ``step()`` is one timed call (a sample, plus the priority update if prioritized)."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, data: Transitions, td_pools: dict[int, list[np.ndarray]], obs_space: spaces.Box) -> None:
        self.td_pools = td_pools
        self.batch_size = 0
        self._td_pool: list[Any] = []
        self._call = 0

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._td_pool = [self.convert_td_errors(td_errors) for td_errors in self.td_pools[batch_size]]

    def convert_td_errors(self, td_errors: np.ndarray) -> Any:
        """The TD errors of one batch, as this library's priority update takes them."""
        return td_errors

    def next_td_errors(self) -> Any:
        self._call += 1
        return self._td_pool[self._call % len(self._td_pool)]

    def step(self) -> None:
        raise NotImplementedError


class SB3Uniform(Contender):
    name = "sb3_uniform"
    description = "stable_baselines3 ReplayBuffer(device='cpu').sample(batch_size)"

    def __init__(self, data: Transitions, td_pools: dict[int, list[np.ndarray]], obs_space: spaces.Box) -> None:
        super().__init__(data, td_pools, obs_space)
        self.buffer = ReplayBuffer(data.capacity, obs_space, spaces.Discrete(N_ACTIONS), device="cpu")
        share_storage(self.buffer, data)

    def step(self) -> None:
        self.buffer.sample(self.batch_size)


class Ours(Contender):
    name = "ours"
    description = (
        "sb3_dqn_ext PrioritizedReplayBuffer(device='cpu').sample(batch_size), then "
        "update_priorities(batch.indices, td_errors) with (batch_size, 1) float32 numpy TD errors (as BaseDQN.train)"
    )

    def __init__(self, data: Transitions, td_pools: dict[int, list[np.ndarray]], obs_space: spaces.Box) -> None:
        super().__init__(data, td_pools, obs_space)
        self.buffer = PrioritizedReplayBuffer(
            data.capacity, obs_space, spaces.Discrete(N_ACTIONS), device="cpu", alpha=ALPHA, beta=BETA, eps=EPS
        )
        share_storage(self.buffer, data)
        # One tree.update of all leaves
        self.buffer.update_priorities(np.arange(data.capacity), data.td_errors)

    def convert_td_errors(self, td_errors: np.ndarray) -> np.ndarray:
        return td_errors.reshape(-1, 1)  # (batch_size, 1), as (target_q_values - current_q_values).numpy()

    def step(self) -> None:
        replay_data = self.buffer.sample(self.batch_size)
        self.buffer.update_priorities(replay_data.indices, self.next_td_errors())


class Cpprb(Contender):
    name = "cpprb"
    description = (
        "cpprb PrioritizedReplayBuffer(size, env_dict, alpha, eps).sample(batch_size, beta), then "
        "update_priorities(batch['indexes'], td_errors); filled with add() in large chunks, then one update_priorities"
    )

    def __init__(self, data: Transitions, td_pools: dict[int, list[np.ndarray]], obs_space: spaces.Box) -> None:
        super().__init__(data, td_pools, obs_space)
        import cpprb

        obs_spec = {"shape": obs_space.shape, "dtype": obs_space.dtype}
        env_dict = {"obs": obs_spec, "act": {"dtype": np.int64}, "rew": {}, "done": {}}
        # Image observations: next_of="obs" (one copy of the frames); otherwise next_obs is stored like SB3
        next_of = "obs" if obs_space.dtype == np.uint8 else None
        if next_of is None:
            env_dict["next_obs"] = obs_spec
        self.buffer = cpprb.PrioritizedReplayBuffer(data.capacity, env_dict, alpha=ALPHA, eps=EPS, next_of=next_of)
        chunk = max(1, (256 * 2**20) // data.observations[0].nbytes)
        for start in range(0, data.capacity, chunk):
            rows = slice(start, start + chunk)
            self.buffer.add(
                obs=data.observations[rows, 0],
                next_obs=data.next_observations[rows, 0],
                act=data.actions[rows, 0],
                rew=data.rewards[rows],
                done=data.dones[rows],
            )
        assert self.buffer.get_stored_size() == data.capacity
        self.buffer.update_priorities(np.arange(data.capacity), data.td_errors)

    def step(self) -> None:
        batch = self.buffer.sample(self.batch_size, beta=BETA)
        self.buffer.update_priorities(batch["indexes"], self.next_td_errors())


class Tianshou(Contender):
    name = "tianshou"
    description = (
        "tianshou.data.PrioritizedReplayBuffer(size, alpha, beta).sample(batch_size), then "
        "update_weight(indices, td_errors); storage set with set_batch() as ReplayBuffer.from_data does"
    )

    def __init__(self, data: Transitions, td_pools: dict[int, list[np.ndarray]], obs_space: spaces.Box) -> None:
        super().__init__(data, td_pools, obs_space)
        import tianshou.data

        self.buffer = tianshou.data.PrioritizedReplayBuffer(data.capacity, alpha=ALPHA, beta=BETA)
        terminated = data.dones[:, 0].astype(bool)
        truncated = data.timeouts[:, 0].astype(bool)
        batch = tianshou.data.Batch(
            obs=data.observations[:, 0],
            act=data.actions[:, 0, 0],
            rew=data.rewards[:, 0],
            terminated=terminated,
            truncated=truncated,
            done=terminated | truncated,
            obs_next=data.next_observations[:, 0],
        )
        self.buffer.set_batch(batch)
        self.buffer._size = data.capacity  # as ReplayBuffer.from_data()
        assert np.shares_memory(self.buffer.obs, data.observations), "Tianshou copied the observations"
        self.buffer.update_weight(np.arange(data.capacity), data.td_errors)

    def step(self) -> None:
        _, indices = self.buffer.sample(self.batch_size)
        self.buffer.update_weight(indices, self.next_td_errors())


class TorchRL(Contender):
    name = "torchrl"
    description = (
        "torchrl.data.PrioritizedReplayBuffer(alpha, beta, eps, storage=TensorStorage(dict of tensors))"
        ".sample(batch_size, return_info=True), then update_priority(info['index'], td_errors) with float32 tensors"
    )

    def __init__(self, data: Transitions, td_pools: dict[int, list[np.ndarray]], obs_space: spaces.Box) -> None:
        super().__init__(data, td_pools, obs_space)
        import torchrl.data

        # TensorStorage is what LazyTensorStorage becomes at its first write; given the tensors, it is full
        storage = torchrl.data.TensorStorage(
            {
                "observation": th.from_numpy(data.observations[:, 0]),
                "action": th.from_numpy(data.actions[:, 0, 0]),
                "reward": th.from_numpy(data.rewards[:, 0]),
                "next_observation": th.from_numpy(data.next_observations[:, 0]),
                "done": th.from_numpy(data.dones[:, 0]),
            }
        )
        self.buffer = torchrl.data.PrioritizedReplayBuffer(alpha=ALPHA, beta=BETA, eps=EPS, storage=storage)
        self.buffer.update_priority(th.arange(data.capacity), th.from_numpy(data.td_errors.astype(np.float32)))

    def convert_td_errors(self, td_errors: np.ndarray) -> th.Tensor:
        return th.from_numpy(td_errors)

    def step(self) -> None:
        _, info = self.buffer.sample(self.batch_size, return_info=True)
        self.buffer.update_priority(info["index"], self.next_td_errors())


CONTENDER_CLASSES: dict[str, type[Contender]] = {cls.name: cls for cls in (SB3Uniform, Ours, Cpprb, Tianshou, TorchRL)}


# ---------------------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timings:
    """Per-call times (ns) of one step in each round: wall clock (the measure) and the thread's CPU time."""

    wall: np.ndarray  # (n_rounds,)
    cpu: np.ndarray  # (n_rounds,), excludes the time the thread waited for a core (noise on a shared machine)
    calls_per_block: int


def time_block(step: Callable[[], object], n_calls: int) -> tuple[float, float]:
    """Per-call wall and CPU time (ns) of ``n_calls`` consecutive calls, garbage collector off (as ``timeit``)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        wall_start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(n_calls):
            step()
        cpu_end, wall_end = time.thread_time_ns(), time.perf_counter_ns()
        return (wall_end - wall_start) / n_calls, (cpu_end - cpu_start) / n_calls
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(step: Callable[[], object], warmup_ns: float, block_ns: float) -> int:
    """Warm up for about ``warmup_ns`` (at least 4 calls) and return the calls per block of about ``block_ns``."""
    durations: list[int] = []
    start = time.perf_counter_ns()
    while len(durations) < 4 or time.perf_counter_ns() - start < warmup_ns:
        cpu_start = time.thread_time_ns()
        step()
        durations.append(time.thread_time_ns() - cpu_start)
    # The first calls pay one-off costs; the CPU time of the later ones ignores waits for a core
    per_call = max(float(np.median(durations[len(durations) // 2 :])), 1.0)
    return max(1, round(block_ns / per_call))


def interleaved_rounds(
    steps: dict[str, Callable[[], object]], n_rounds: int, warmup_ns: float, block_ns: float
) -> dict[str, Timings]:
    """Time every step in ``n_rounds`` rounds; each round runs one block of each, starting with a different one."""
    names = list(steps)
    timings = {
        name: Timings(np.empty(n_rounds), np.empty(n_rounds), calibrate(steps[name], warmup_ns, block_ns)) for name in names
    }
    # Objects alive now are never collected during the rounds: a full collection costs up to a second here
    gc.collect()
    gc.freeze()
    try:
        for round_index in range(n_rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                timing = timings[name]
                timing.wall[round_index], timing.cpu[round_index] = time_block(steps[name], timing.calls_per_block)
    finally:
        gc.unfreeze()
    return timings


def summarize(timing: Timings, reference: Timings | None) -> dict[str, Any]:
    """
    Median and p10/p90 per-call wall time (us) over rounds and the median per-round ratio to the reference;
    the same median and ratio in CPU time.
    """
    p10, median, p90 = (round(float(value), 2) for value in np.percentile(timing.wall / 1e3, [10, 50, 90]))
    summary: dict[str, Any] = {"median_us": median, "p10_us": p10, "p90_us": p90}
    if reference is not None:
        ratio_p10, ratio, ratio_p90 = np.percentile(timing.wall / reference.wall, [10, 50, 90])
        summary.update(ratio_to_uniform=round(float(ratio), 3), ratio_p10=round(float(ratio_p10), 3))
        summary["ratio_p90"] = round(float(ratio_p90), 3)
    summary["cpu_median_us"] = round(float(np.median(timing.cpu)) / 1e3, 2)
    if reference is not None:
        summary["cpu_ratio_to_uniform"] = round(float(np.median(timing.cpu / reference.cpu)), 3)
    summary["calls_per_block"] = timing.calls_per_block
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Breakdown of our cost


def breakdown_steps(
    buffer: PrioritizedReplayBuffer, batch_size: int, rng: np.random.Generator
) -> dict[str, Callable[[], object]]:
    """
    Pieces of ``sample`` + ``update_priorities``, each on precomputed inputs of the shape it sees in a call.

    The inputs of successive calls are different batches that cover every leaf about once per cycle, so that the
    pieces miss the caches as a fresh sample does (a few batches cycled through would stay in cache).
    """
    tree = buffer.tree
    n_batches = max(TD_POOL_SIZE, tree.capacity // batch_size)
    # Stratified positions in [0, 1), as _sample_leaves draws them; scaled by the total of the moment at each call
    # (prefix sums computed once would overflow the total as it drifts, and take the slow clamped descent)
    fractions = (np.arange(batch_size) + rng.random((n_batches, batch_size))) / batch_size
    leaves = tree.query(fractions * tree.total)  # (n_batches, batch_size)
    td_errors = np.abs(rng.standard_normal((n_batches, batch_size, 1))).astype(np.float32)
    priorities = (td_errors[:, :, 0].astype(np.float64) + buffer.eps) ** buffer.alpha
    env_indices = np.zeros(batch_size, dtype=np.int64)
    counter = itertools.count()

    def sample_and_update() -> None:
        replay_data = buffer.sample(batch_size)
        buffer.update_priorities(replay_data.indices, td_errors[next(counter) % n_batches])

    def query() -> None:
        tree.query(fractions[next(counter) % n_batches] * tree.total)

    def get_samples() -> None:
        buffer._get_samples(leaves[next(counter) % n_batches], env_indices=env_indices)

    def update_priorities() -> None:
        index = next(counter) % n_batches
        buffer.update_priorities(leaves[index], td_errors[index])

    def tree_update() -> None:
        index = next(counter) % n_batches
        tree.update(leaves[index], priorities[index])

    return {
        "sample + update_priorities": sample_and_update,
        "sample": lambda: buffer.sample(batch_size),
        "_sample_leaves (query + weights)": lambda: buffer._sample_leaves(batch_size),
        "tree.query": query,
        "_get_samples (gather + to_torch)": get_samples,
        "update_priorities": update_priorities,
        "tree.update": tree_update,
    }


# ---------------------------------------------------------------------------------------------------------------
# Machine, memory, versions


def meminfo_gib() -> dict[str, float]:
    """MemTotal and MemAvailable (GiB) from /proc/meminfo (the numbers ``free -g`` shows)."""
    values: dict[str, float] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                values[key] = round(int(value.split()[0]) / 2**20, 2)
    except OSError:
        pass
    return values


def rss_gib() -> float:
    """Current resident set size (GiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return math.nan


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def estimated_bytes(obs_kind: str, capacity: int, contenders: list[str]) -> int:
    """Memory for one (observation kind, capacity): the shared storage, cpprb's copy and the trees (rough)."""
    obs_space = OBS_SPACES[obs_kind]
    obs_bytes = int(np.prod(obs_space.shape)) * obs_space.dtype.itemsize
    shared = capacity * (2 * obs_bytes + 8 + 3 * 4 + 8)
    cpprb_copy = capacity * ((1 if obs_space.dtype == np.uint8 else 2) * obs_bytes + 8 + 2 * 4) if "cpprb" in contenders else 0
    trees = capacity * 80  # segment trees sized to the next power of two, ours, Tianshou's flags
    return shared + cpprb_copy + trees


# ---------------------------------------------------------------------------------------------------------------
# Plot


def plot(report: dict[str, Any], path: Path) -> bool:
    """Time per call against capacity, one panel per (observation kind, batch size); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    settings = report["settings"]
    obs_kinds = [kind for kind in ("cartpole", "atari") if kind in settings["obs_kinds"]]
    batch_sizes = settings["batch_sizes"]
    fig, axes = plt.subplots(
        len(obs_kinds), len(batch_sizes), figsize=(5.5 * len(batch_sizes), 4.2 * len(obs_kinds)), squeeze=False
    )
    markers = {"sb3_uniform": "s", "ours": "o", "cpprb": "^", "tianshou": "v", "torchrl": "D"}
    colors = {
        "sb3_uniform": "tab:blue",
        "ours": "tab:orange",
        "cpprb": "tab:green",
        "tianshou": "tab:red",
        "torchrl": "tab:purple",
    }
    legend: dict[str, Any] = {}
    for row, obs_kind in enumerate(obs_kinds):
        for col, batch_size in enumerate(batch_sizes):
            ax = axes[row][col]
            for name in CONTENDERS:
                points = sorted(
                    (result["capacity"], result["median_us"], result["p10_us"], result["p90_us"])
                    for result in report["results"]
                    if result["obs_kind"] == obs_kind and result["batch_size"] == batch_size and result["contender"] == name
                )
                if not points:
                    continue
                capacity, median, p10, p90 = (np.array(column) for column in zip(*points, strict=True))
                label = LABELS[name] + ("" if name in (REFERENCE, "ours") else f" {report['versions'].get(name)}")
                (line,) = ax.plot(
                    capacity, median, marker=markers[name], color=colors[name], linewidth=2.5 if name == "ours" else 1.5
                )
                legend.setdefault(label, line)
                ax.fill_between(capacity, p10, p90, color=colors[name], alpha=0.12, linewidth=0)
                if name == REFERENCE:
                    (line,) = ax.plot(capacity, TARGET_RATIO * median, color="grey", linestyle=":")
                    legend.setdefault(f"{TARGET_RATIO} x SB3 uniform (target for ours at 1e6, batch 32)", line)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("capacity (transitions)")
            ax.set_ylabel("time per call (us)")
            title = f"{OBS_LABELS[obs_kind]}, batch {batch_size}"
            if obs_kind == "atari":
                title += "\n(1e6 not measured: SB3's layout would need ~56 GB)"
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=3, fontsize=8, frameon=False)
    machine = report["machine"]
    fig.suptitle(
        "sample + priority update per call (SB3 uniform: sample only); median over interleaved rounds, p10-p90 band\n"
        f"1 thread, {machine['cpu_model']}, {machine['cpu_count']} vCPUs shared, load average "
        f"{machine['load_average_start'][0]:.2f} -> {machine['load_average_end'][0]:.2f}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------------------
# Main


def target_check(report: dict[str, Any]) -> dict[str, Any]:
    """Ours <= 1.5x SB3's uniform sample and < each peer, at CartPole-sized 1e6 / batch 32."""
    obs_kind, capacity, batch_size = TARGET_SETTING
    at_target = {
        result["contender"]: result
        for result in report["results"]
        if (result["obs_kind"], result["capacity"], result["batch_size"]) == TARGET_SETTING
    }
    check: dict[str, Any] = {"setting": {"obs_kind": obs_kind, "capacity": capacity, "batch_size": batch_size}}
    if "ours" not in at_target or REFERENCE not in at_target:
        check["status"] = "not measured in this run"
        return check
    ours = at_target["ours"]
    check["measure"] = "wall clock (perf_counter_ns); cpu_* : the same in thread CPU time, for reference"
    check["ours_vs_uniform"] = {
        "ours_median_us": ours["median_us"],
        "uniform_median_us": at_target[REFERENCE]["median_us"],
        "ratio": ours["ratio_to_uniform"],
        "limit": TARGET_RATIO,
        "met": bool(ours["ratio_to_uniform"] <= TARGET_RATIO),
        "cpu_ratio": ours["cpu_ratio_to_uniform"],
        "cpu_met": bool(ours["cpu_ratio_to_uniform"] <= TARGET_RATIO),
    }
    for peer in PEERS:
        if peer not in at_target:
            status = report["contenders"].get(peer, {}).get("status", "not run (--contenders)")
            check[f"ours_vs_{peer}"] = {"met": None, "status": status}
            continue
        check[f"ours_vs_{peer}"] = {
            "ours_median_us": ours["median_us"],
            "peer_median_us": at_target[peer]["median_us"],
            "ours_over_peer_per_round_median": ours["ratio_to"][peer],
            "met": bool(ours["median_us"] < at_target[peer]["median_us"]),
            "cpu_ours_over_peer_per_round_median": ours["cpu_ratio_to"][peer],
            "cpu_ours_median_us": ours["cpu_median_us"],
            "cpu_peer_median_us": at_target[peer]["cpu_median_us"],
            "cpu_met": bool(ours["cpu_median_us"] < at_target[peer]["cpu_median_us"]),
        }
    # A peer that was not measured counts as not met
    check["all_met"] = all(value["met"] is True for key, value in check.items() if key.startswith("ours_vs_"))
    return check


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacities", nargs="+", type=lambda x: int(float(x)), default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--obs", nargs="+", choices=list(OBS_SPACES), default=list(OBS_SPACES), dest="obs_kinds")
    parser.add_argument(
        "--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS, help="sb3_uniform is always run (the reference)"
    )
    parser.add_argument("--rounds", "--repeats", type=int, default=60, help="interleaved rounds per setting")
    parser.add_argument("--block-ms", type=float, default=25.0, help="CPU time of one block of calls, per contender")
    parser.add_argument("--warmup-ms", type=float, default=200.0, help="warm-up per contender and setting")
    parser.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-memory-gib", type=float, default=10.0, help="skip settings estimated above this")
    parser.add_argument("--note", action="append", default=[], help="free text recorded in the JSON (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replot", type=Path, help="only draw --plot from this results JSON, measure nothing")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args()
    if REFERENCE not in args.contenders:
        args.contenders = [REFERENCE, *args.contenders]
    args.contenders = [name for name in CONTENDERS if name in args.contenders]
    return args


def main() -> None:  # noqa: C901
    args = parse_args()
    if args.replot is not None:
        if plot(json.loads(args.replot.read_text()), args.plot):
            print(f"plot written to {args.plot}")
        return
    th.set_num_threads(1)
    np.random.seed(args.seed)  # SB3, ours, Tianshou and TorchRL draw from numpy's global generator
    th.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start_time = time.perf_counter()
    versions: dict[str, str | None] = {"python": platform.python_version()}
    versions |= {name: package_version(name) for name in VERSIONED_PACKAGES}
    report: dict[str, Any] = {
        "description": "Per-call time of sample + priority update (SB3 uniform: sample only), see the module docstring",
        "command": " ".join(["python", "benchmarks/per_sampling.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "load_average_start": [round(load, 2) for load in os.getloadavg()],
            "memory_gib_start": meminfo_gib(),
            "torch_threads": th.get_num_threads(),
            "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
        },
        "versions": versions,
        "notes": args.note,
        "settings": {
            "capacities": args.capacities,
            "batch_sizes": args.batch_sizes,
            "obs_kinds": args.obs_kinds,
            "rounds": args.rounds,
            "block_ms": args.block_ms,
            "warmup_ms": args.warmup_ms,
            "alpha": ALPHA,
            "beta": BETA,
            "eps": EPS,
            "atari_max_capacity": ATARI_MAX_CAPACITY,
            "atari_note": "Atari-sized observations at capacities <= 1e5 only: at 1e6, SB3's layout (observations and next "
            "observations, 4x84x84 uint8) needs ~56 GB, more than this 24 GiB machine; 1e6 is measured CartPole-sized",
            "storage_note": "SB3, ours, Tianshou and TorchRL share the same arrays (views); cpprb holds a copy, with "
            "next_of='obs' for Atari-sized observations (one copy of the frames) so that it fits in memory",
            "td_errors": "the same pool of random |TD errors| for all prioritized buffers; each applies its own "
            "(|delta| + eps) ** alpha (Tianshou's eps is float32 epsilon, not a parameter)",
            "gc": "garbage collector disabled inside each block of calls (as timeit)",
        },
        "contenders": {name: {"description": CONTENDER_CLASSES[name].description} for name in args.contenders},
        "skipped": [],
        "setups": [],
        "results": [],
    }
    print(f"load average {os.getloadavg()}, memory {meminfo_gib()}", flush=True)

    unavailable: dict[str, str] = {}
    for name in args.contenders:
        if name in PEERS and package_version(name) is None:
            unavailable[name] = f"not installed: no distribution '{name}' (pip install sb3-dqn-ext[bench])"
    budget_bytes = args.max_memory_gib * GIB
    largest_cartpole = max((c for c in args.capacities if "cartpole" in args.obs_kinds), default=None)

    for obs_kind in args.obs_kinds:
        obs_space = OBS_SPACES[obs_kind]
        for capacity in sorted(args.capacities):
            if obs_kind == "atari" and capacity > ATARI_MAX_CAPACITY:
                reason = f"Atari-sized at {capacity:.0e} needs ~{capacity * 2 * 28224 / 1e9:.0f} GB in SB3's layout"
                report["skipped"].append({"obs_kind": obs_kind, "capacity": capacity, "reason": reason})
                print(f"skip {obs_kind} {capacity:.0e}: {reason}", flush=True)
                continue
            needed = estimated_bytes(obs_kind, capacity, [c for c in args.contenders if c not in unavailable])
            available = meminfo_gib().get("MemAvailable", math.inf) * GIB
            if needed + rss_gib() * GIB > budget_bytes or needed > available - 2 * GIB:
                reason = (
                    f"needs ~{needed / GIB:.1f} GiB (+{rss_gib():.1f} GiB in use), budget {args.max_memory_gib} GiB, "
                    f"{available / GIB:.1f} GiB available"
                )
                report["skipped"].append({"obs_kind": obs_kind, "capacity": capacity, "reason": reason})
                print(f"skip {obs_kind} {capacity:.0e}: {reason}", flush=True)
                continue

            setup_start = time.perf_counter()
            data = make_transitions(obs_kind, capacity, rng)
            td_pools = {
                batch_size: [np.abs(rng.standard_normal(batch_size)).astype(np.float32) for _ in range(TD_POOL_SIZE)]
                for batch_size in args.batch_sizes
            }
            contenders: dict[str, Contender] = {}
            for name in args.contenders:
                if name in unavailable:
                    continue
                try:
                    contenders[name] = CONTENDER_CLASSES[name](data, td_pools, obs_space)
                except Exception as error:  # a peer that is installed but does not work here
                    if name in (REFERENCE, "ours"):
                        raise
                    unavailable[name] = f"unavailable: {type(error).__name__}: {error}"
                    print(f"{name}: {unavailable[name]}", flush=True)
            setup = {"obs_kind": obs_kind, "capacity": capacity, "fill_s": round(time.perf_counter() - setup_start, 1)}
            setup["rss_gib"] = round(rss_gib(), 2)
            report["setups"].append(setup)
            print(
                f"{obs_kind} capacity {capacity:.0e}: {len(contenders)} buffers filled in {setup['fill_s']} s, "
                f"RSS {setup['rss_gib']} GiB (peer imports included)",
                flush=True,
            )

            for batch_size in args.batch_sizes:
                for contender in contenders.values():
                    contender.set_batch_size(batch_size)
                timings = interleaved_rounds(
                    {name: contender.step for name, contender in contenders.items()},
                    args.rounds,
                    args.warmup_ms * 1e6,
                    args.block_ms * 1e6,
                )
                line = []
                for name in contenders:
                    result = {"obs_kind": obs_kind, "capacity": capacity, "batch_size": batch_size, "contender": name}
                    result.update(summarize(timings[name], timings[REFERENCE]))
                    if name == "ours":
                        # Median over rounds of ours / peer within the round, wall and CPU time
                        result["ratio_to"] = {
                            peer: round(float(np.median(timings["ours"].wall / timings[peer].wall)), 3)
                            for peer in PEERS
                            if peer in timings
                        }
                        result["cpu_ratio_to"] = {
                            peer: round(float(np.median(timings["ours"].cpu / timings[peer].cpu)), 3)
                            for peer in PEERS
                            if peer in timings
                        }
                    report["results"].append(result)
                    line.append(
                        f"{name} {result['median_us']:.1f} us ({result['ratio_to_uniform']:.2f}x; "
                        f"cpu {result['cpu_median_us']:.1f} us, {result['cpu_ratio_to_uniform']:.2f}x)"
                    )
                print(f"  {obs_kind} {capacity:.0e} batch {batch_size:3d}: " + ", ".join(line), flush=True)

            if args.breakdown and obs_kind == "cartpole" and capacity == largest_cartpole and "ours" in contenders:
                ours = contenders["ours"]
                assert isinstance(ours, Ours)
                report["breakdown"] = {"obs_kind": obs_kind, "capacity": capacity, "batch_sizes": {}}
                for batch_size in args.batch_sizes:
                    steps = breakdown_steps(ours.buffer, batch_size, rng)
                    timings = interleaved_rounds(steps, args.rounds, args.warmup_ms * 1e6, args.block_ms * 1e6)
                    total = timings["sample + update_priorities"]
                    pieces = {}
                    for piece, timing in timings.items():
                        pieces[piece] = summarize(timing, None)
                        # Median over rounds of the piece's share of the whole, within the round
                        pieces[piece]["share_of_sample_and_update"] = round(float(np.median(timing.wall / total.wall)), 3)
                    report["breakdown"]["batch_sizes"][str(batch_size)] = pieces
                    print(
                        f"  breakdown {capacity:.0e} batch {batch_size}: "
                        + ", ".join(f"{piece} {value['median_us']:.1f}" for piece, value in pieces.items()),
                        flush=True,
                    )
            del contenders, data, td_pools
            gc.collect()

    for name in args.contenders:
        measured = any(result["contender"] == name for result in report["results"])
        report["contenders"][name]["status"] = "measured" if measured else unavailable.get(name, "not measured")
    report["target"] = target_check(report)
    report["machine"]["load_average_end"] = [round(load, 2) for load in os.getloadavg()]
    report["machine"]["peak_rss_gib"] = round(peak_rss_gib(), 2)
    report["runtime_s"] = round(time.perf_counter() - start_time, 1)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plotted = plot(report, args.plot)
    print(f"target: {json.dumps(report['target'])}")
    print(
        f"done in {report['runtime_s']} s, load average {report['machine']['load_average_start']} -> "
        f"{report['machine']['load_average_end']}, peak RSS {report['machine']['peak_rss_gib']} GiB"
    )
    print(f"results written to {args.output}" + (f" and {args.plot}" if plotted else ""))


if __name__ == "__main__":
    main()
