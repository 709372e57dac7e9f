"""
Cost of one prioritized replay step, ``sample`` + priority update, against SB3's uniform ``ReplayBuffer.sample``.

Contenders, in the same process, timed in interleaved rounds (:func:`benchmarks.common.interleaved_rounds`):
``sb3_uniform``: ``ReplayBuffer(device="cpu").sample(batch_size)``, the reference of every ratio; ``ours``:
``PrioritizedReplayBuffer.sample(batch_size)``, then ``update_priorities(batch.indices, td_errors)`` with ``(batch_size,
1)`` float32 numpy TD errors; ``cpprb``: ``sample(batch_size, beta)``, then ``update_priorities(indexes, td_errors)``;
``tianshou``: ``sample(batch_size)``, then ``update_weight(indices, td_errors)``; ``torchrl``: ``sample(batch_size,
return_info=True)`` on a ``TensorStorage``, then ``update_priority(info["index"], td_errors)``.

CartPole-sized observations (4 float32): the same random transitions everywhere (SB3, ours, Tianshou and TorchRL share
SB3's arrays; cpprb copies them). Atari-sized (4x84x84 uint8): frames stacked by 4 as ``VecFrameStack`` does, episodes of
100-500 steps of random frames; SB3 in its own layout (56 KB per transition); ours with its frame storage
(``optimize_memory_usage=True, n_stack=4``, filled through ``add()``); cpprb with ``next_of="obs", stack_compress="obs"``
(channel-last stacks, as it requires); Tianshou with ``save_only_last_obs, ignore_obs_next, stack_num=4`` (its Atari
setting: one frame per transition; it repeats an episode's first frame where ``VecFrameStack`` pads with zeros);
TorchRL on SB3's arrays. SB3's layout is capped at ``--sb3-max-gb`` (8 GB: 1e5 transitions; 1e6 would need 56 GB):
above, ours runs alone against SB3's buffer of the largest capacity that fitted (``reference_capacity``).
Initial priorities: the same random ``|TD errors|`` through each buffer's update; alpha 0.6, beta 0.4, eps 1e-6
(Tianshou's eps is float32's epsilon, not a parameter). One numpy/torch thread.

Also timed, each in a fresh process: the first ``sample()`` with an empty numba cache (``NUMBA_CACHE_DIR`` a new folder:
the kernels are compiled) and again with the cache that run left behind (the kernels are loaded).

Usage (JSON and PNG in ``benchmarks/results/per_sampling.*``)::

    pip install -e ".[bench]"
    python benchmarks/per_sampling.py
    python benchmarks/per_sampling.py --capacities 1000 --obs cartpole --contenders ours cpprb --rounds 3  # smoke test
"""

import os

os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

from benchmarks.common import RESULTS_DIR, interleaved_rounds, package_version, run_metadata, save_figure, write_json
from sb3_dqn_ext import PrioritizedReplayBuffer

OBS_SPACES: dict[str, spaces.Box] = {
    "cartpole": spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32),
    "atari": spaces.Box(0, 255, shape=(4, 84, 84), dtype=np.uint8),
}
ACTION_SPACE = spaces.Discrete(4)
ALPHA, BETA, EPS = 0.6, 0.4, 1e-6
N_STACK, FRAME_POOL = 4, 4099  # Atari frames repeat a pool of random frames (a prime number of them)
REFERENCE = "sb3_uniform"
PEERS = ["cpprb", "tianshou", "torchrl"]
CONTENDERS = [REFERENCE, "ours", *PEERS]
GB = 1e9
OBS_BYTES = {"cartpole": 16, "atari": 4 * 84 * 84}
OURS_BYTES = {"cartpole": 80, "atari": 7460}  # per transition, tree included (frame storage for Atari)


def make_data(kind: str, capacity: int, rng: np.random.Generator) -> dict[str, Any]:
    """Random transitions: arrays of observations (CartPole-sized) or frame ids of each stack (-1: a zero frame)."""
    data = {"actions": rng.integers(0, 4, capacity), "rewards": rng.standard_normal(capacity, dtype=np.float32)}
    data["td_errors"] = np.abs(rng.standard_normal(capacity))
    if kind == "cartpole":
        data["obs"], data["next_obs"] = rng.standard_normal((2, capacity, 4), dtype=np.float32)
        data["dones"] = (rng.random(capacity) < 0.01).astype(np.float32)
        return data
    lengths = rng.integers(100, 500, size=capacity // 100 + 1)
    ends = np.cumsum(lengths)
    episode = np.searchsorted(ends, np.arange(capacity), side="right")
    start = ends[episode] - lengths[episode]
    k = (np.arange(capacity) - start)[:, None]  # step within the episode, which stores length + 1 frames
    offsets = np.arange(N_STACK) - (N_STACK - 1)  # oldest frame first, as VecFrameStack
    first_frame = (start + episode)[:, None]
    data["obs_ids"] = np.where(k + offsets >= 0, first_frame + k + offsets, -1)
    data["next_obs_ids"] = np.where(k + 1 + offsets >= 0, first_frame + k + 1 + offsets, -1)
    data["dones"] = (k[:, 0] == lengths[episode] - 1).astype(np.float32)
    data["pool"] = rng.integers(1, 256, size=(FRAME_POOL, 84, 84), dtype=np.uint8)
    return data


def observations(data: dict[str, Any], key: str, rows: slice) -> np.ndarray:
    """The observations (``key="obs"``) or next observations (``"next_obs"``) of the transitions ``rows``."""
    if "pool" not in data:
        return data[key][rows]
    ids = data[f"{key}_ids"][rows]
    frames = data["pool"][ids % FRAME_POOL]  # (n, 4, 84, 84)
    frames[ids < 0] = 0
    return frames


def add_transitions(buffer: Any, data: dict[str, Any], steps: range) -> None:
    """Add the transitions ``steps`` of ``data``, one ``add(obs, next_obs, action, reward, done, infos)`` each, as DQN."""
    for start in range(steps.start, steps.stop, 1024):
        rows = slice(start, min(start + 1024, steps.stop))
        obs, next_obs = observations(data, "obs", rows), observations(data, "next_obs", rows)
        for i, t in enumerate(range(rows.start, rows.stop)):
            buffer.add(obs[i : i + 1], next_obs[i : i + 1], data["actions"][t], data["rewards"][t], data["dones"][t], [{}])


def episodes(data: dict[str, Any]) -> list[slice]:
    """The rows of each episode (the last one may be unfinished)."""
    starts = [0, *(np.flatnonzero(data["dones"]) + 1)]
    return [slice(start, end) for start, end in zip(starts, [*starts[1:], len(data["dones"])], strict=True) if start < end]


def fill_sb3(buffer: ReplayBuffer, data: dict[str, Any]) -> ReplayBuffer:
    """Make an SB3 buffer (or ours, with SB3's layout) hold ``data``, full; CartPole-sized arrays are shared."""
    capacity = len(data["actions"])
    for start in range(0, capacity, 1024) if "pool" in data else []:
        rows = slice(start, start + 1024)
        buffer.observations[rows, 0], buffer.next_observations[rows, 0] = (
            observations(data, key, rows) for key in ("obs", "next_obs")
        )
    if "pool" not in data:
        buffer.observations, buffer.next_observations = data["obs"][:, None], data["next_obs"][:, None]
    buffer.actions, buffer.rewards = data["actions"].reshape(-1, 1, 1), data["rewards"][:, None]
    buffer.dones, buffer.timeouts = data["dones"][:, None], np.zeros((capacity, 1), dtype=np.float32)
    buffer.pos, buffer.full = 0, True
    return buffer


def build(name: str, kind: str, data: dict[str, Any], sb3: ReplayBuffer) -> Any:
    """The buffer of contender ``name`` holding ``data`` (``sb3``: SB3's buffer, holding it already)."""
    capacity, space, atari = len(data["actions"]), OBS_SPACES[kind], kind == "atari"
    buffer: Any
    if name == "ours":
        frame_storage: dict[str, Any] = dict(optimize_memory_usage=True, n_stack=N_STACK) if atari else {}
        buffer = PrioritizedReplayBuffer(
            capacity, space, ACTION_SPACE, "cpu", alpha=ALPHA, beta=BETA, eps=EPS, **frame_storage
        )
        add_transitions(buffer, data, range(capacity)) if atari else fill_sb3(buffer, data)  # frames: through add()
        buffer.update_priorities(np.arange(capacity), data["td_errors"])
    elif name == "cpprb":
        import cpprb

        obs_shape = (84, 84, N_STACK) if atari else space.shape  # stack_compress needs the stack axis last
        env_dict = {"obs": {"shape": obs_shape, "dtype": space.dtype}, "act": {"dtype": np.int64}, "rew": {}, "done": {}}
        compression = dict(next_of="obs", stack_compress="obs") if atari else dict(next_of=None, stack_compress=None)
        if not atari:
            env_dict["next_obs"] = env_dict["obs"]
        buffer = cpprb.PrioritizedReplayBuffer(capacity, env_dict, alpha=ALPHA, eps=EPS, **compression)
        for rows in episodes(data):  # one add per episode
            obs, next_obs = (observations(data, key, rows) for key in ("obs", "next_obs"))
            obs, next_obs = (obs.transpose(0, 2, 3, 1), next_obs.transpose(0, 2, 3, 1)) if atari else (obs, next_obs)
            buffer.add(
                obs=obs, next_obs=next_obs, act=data["actions"][rows], rew=data["rewards"][rows], done=data["dones"][rows]
            )
            buffer.on_episode_end()
        assert buffer.get_stored_size() == capacity
        buffer.update_priorities(np.arange(capacity), data["td_errors"])
    elif name == "tianshou":
        import tianshou.data

        options: dict[str, Any] = dict(stack_num=N_STACK, ignore_obs_next=True, save_only_last_obs=True) if atari else {}
        buffer = tianshou.data.PrioritizedReplayBuffer(capacity, alpha=ALPHA, beta=BETA, **options)
        dones = data["dones"].astype(bool)
        batch = dict(act=data["actions"], rew=data["rewards"], terminated=dones, truncated=np.zeros_like(dones), done=dones)
        if atari:  # the newest frame of each observation
            buffer.set_batch(tianshou.data.Batch(obs=data["pool"][data["obs_ids"][:, -1] % FRAME_POOL], **batch))
        else:
            buffer.set_batch(tianshou.data.Batch(obs=data["obs"], obs_next=data["next_obs"], **batch))
        buffer._size, buffer.last_index = capacity, np.array([capacity - 1])  # as ReplayBuffer.from_data()
        buffer.update_weight(np.arange(capacity), data["td_errors"])
    elif name == "torchrl":
        import torchrl.data

        tensors = {key: th.from_numpy(getattr(sb3, key)[:, 0]) for key in ("observations", "next_observations", "actions")}
        storage = torchrl.data.TensorStorage({**tensors, "reward": th.from_numpy(data["rewards"])})
        buffer = torchrl.data.PrioritizedReplayBuffer(alpha=ALPHA, beta=BETA, eps=EPS, storage=storage)
        buffer.update_priority(th.arange(capacity), th.from_numpy(data["td_errors"].astype(np.float32)))
    return buffer


def make_step(name: str, buffer: Any, batch_size: int, td_pool: list[np.ndarray]) -> Callable[[], None]:
    """One timed call of contender ``name``: a sample, then the priority update with the next TD errors of the pool."""
    if name == REFERENCE:
        return lambda: buffer.sample(batch_size)
    convert = {"ours": lambda td: td.reshape(-1, 1), "torchrl": th.from_numpy}.get(name, lambda td: td)
    td_errors = itertools.cycle([convert(td) for td in td_pool])
    if name == "ours":
        return lambda: buffer.update_priorities(buffer.sample(batch_size).indices, next(td_errors))
    if name == "cpprb":
        return lambda: buffer.update_priorities(buffer.sample(batch_size, beta=BETA)["indexes"], next(td_errors))
    if name == "tianshou":
        return lambda: buffer.update_weight(buffer.sample(batch_size)[1], next(td_errors))
    return lambda: buffer.update_priority(buffer.sample(batch_size, return_info=True)[1]["index"], next(td_errors))


def mem_available() -> float:
    """Bytes of memory available (``/proc/meminfo``), infinite where unknown."""
    meminfo = Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").exists() else []
    return next((int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")), float("inf"))


def first_sample_child(kind: str) -> None:
    """Build, fill and sample ours in this fresh process; print the times of the first calls as JSON."""
    rng, atari = np.random.default_rng(0), kind == "atari"
    start = time.perf_counter()
    frame_storage: dict[str, Any] = dict(optimize_memory_usage=True, n_stack=N_STACK) if atari else {}
    buffer = PrioritizedReplayBuffer(1000, OBS_SPACES[kind], ACTION_SPACE, "cpu", **frame_storage)
    data = make_data(kind, 1000, rng)
    built = time.perf_counter()
    add_transitions(buffer, data, range(1))
    times = {"construct_s": built - start, "first_add_s": time.perf_counter() - built}
    add_transitions(buffer, data, range(1, 1000))
    for call in ("first", "second"):
        sample_start = time.perf_counter()
        indices = buffer.sample(32).indices
        update_start = time.perf_counter()
        buffer.update_priorities(indices, np.ones((32, 1), dtype=np.float32))
        times[f"{call}_sample_s"], times[f"{call}_update_s"] = update_start - sample_start, time.perf_counter() - update_start
    print(json.dumps({key: round(value, 6) for key, value in times.items()}))


def time_first_sample(kinds: list[str], repeats: int) -> list[dict[str, Any]]:
    """Run :func:`first_sample_child` with an empty numba cache, then again with the cache it left, ``repeats`` times."""
    rows = []
    for kind, repeat in itertools.product(kinds, range(repeats)):
        with tempfile.TemporaryDirectory() as cache_dir:
            for cache in ("cold", "warm"):
                command = [sys.executable, __file__, "--first-sample-child", kind]
                child = subprocess.run(
                    command, env={**os.environ, "NUMBA_CACHE_DIR": cache_dir}, capture_output=True, text=True
                )
                if child.returncode != 0:
                    raise RuntimeError(child.stderr)
                rows.append({"obs_kind": kind, "cache": cache, "repeat": repeat, **json.loads(child.stdout.splitlines()[-1])})
                print(f"first sample {kind} {cache}: {rows[-1]}", flush=True)
    return rows


def plot(report: dict[str, Any], results_dir: Path) -> None:
    """Ratio to SB3's uniform sample against capacity, one panel per (observation kind, batch size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds, batch_sizes = report["settings"]["obs_kinds"], report["settings"]["batch_sizes"]
    fig, axes = plt.subplots(len(kinds), len(batch_sizes), figsize=(5 * len(batch_sizes), 3.8 * len(kinds)), squeeze=False)
    colors = {"ours": "tab:orange", "cpprb": "tab:green", "tianshou": "tab:red", "torchrl": "tab:purple"}
    for (row, kind), (col, batch_size) in itertools.product(enumerate(kinds), enumerate(batch_sizes)):
        ax = axes[row][col]
        for name, color in colors.items():
            points = [
                r for r in report["results"] if (r["obs_kind"], r["batch_size"], r["contender"]) == (kind, batch_size, name)
            ]
            if points:
                x, label = [r["capacity"] for r in points], f"{name} {report['versions'].get(name) or ''}"
                ax.plot(x, [r["ratio"] for r in points], marker="o", color=color, label=label)
                ax.fill_between(x, [r["ratio_p10"] for r in points], [r["ratio_p90"] for r in points], color=color, alpha=0.15)
                for r in points:
                    if r["reference_capacity"] != r["capacity"]:
                        ax.annotate(f"vs SB3 at {r['reference_capacity']:.0e}", (r["capacity"], r["ratio"]), fontsize=7)
        ax.axhline(1.0, color="grey", linestyle=":", label="SB3 uniform sample (reference)")
        ax.set(xscale="log", yscale="log", xlabel="capacity (transitions)", ylabel="time / SB3 uniform sample")
        ax.set_title(f"{kind}-sized observations, batch {batch_size}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("sample + priority update per call, relative to SB3's uniform sample\n(median of per-round ratios, p10-p90)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, "per_sampling", results_dir)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacities", nargs="+", type=lambda x: int(float(x)), default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--obs", nargs="+", choices=list(OBS_SPACES), default=list(OBS_SPACES), dest="obs_kinds")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS, help="sb3_uniform always runs")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds per setting")
    parser.add_argument("--block-ms", type=float, default=20.0, help="CPU time of one block of calls")
    parser.add_argument("--warmup-ms", type=float, default=200.0, help="warm-up per contender and setting")
    parser.add_argument("--sb3-max-gb", type=float, default=8.0, help="largest SB3 buffer (56 KB per Atari transition)")
    parser.add_argument("--first-sample-repeats", type=int, default=2, help="cold/warm runs per obs kind (0: none)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-sample-child", choices=list(OBS_SPACES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.contenders = [name for name in CONTENDERS if name in args.contenders or name == REFERENCE]
    return args


def main() -> None:
    args = parse_args()
    th.set_num_threads(1)
    if args.first_sample_child:
        first_sample_child(args.first_sample_child)
        return
    np.random.seed(args.seed)  # SB3, ours and Tianshou sample with numpy's global generator
    rng = np.random.default_rng(args.seed)
    start_time = time.perf_counter()
    report: dict[str, Any] = run_metadata(packages=(*PEERS, "tensordict"))
    report["settings"] = {key: value for key, value in vars(args).items() if key not in ("results_dir", "first_sample_child")}
    report["settings"].update(alpha=ALPHA, beta=BETA, eps=EPS, n_stack=N_STACK)
    unavailable = {name: "not installed (pip install -e '.[bench]')" for name in PEERS if package_version(name) is None}
    report.update(description="sample + priority update per call (sb3_uniform: sample only)", unavailable=unavailable)
    report.update(skipped=[], setups=[], results=[])
    for kind in args.obs_kinds:
        reference: tuple[int, ReplayBuffer] | None = None  # SB3's largest buffer so far, kept as the reference above the cap
        for capacity in sorted(args.capacities):
            setup_start = time.perf_counter()
            data = make_data(kind, capacity, rng)
            names = [name for name in args.contenders if name not in unavailable]
            if capacity * (2 * OBS_BYTES[kind] + 20) <= args.sb3_max_gb * GB:  # SB3's: + int64 action, 3 float32
                reference = None  # freed before the next one is filled
                reference = (capacity, fill_sb3(ReplayBuffer(capacity, OBS_SPACES[kind], ACTION_SPACE, "cpu"), data))
            else:  # ours alone, against SB3 at the largest capacity it had, if ours fits beside it
                names, ours_gb, available_gb = ["ours"], capacity * OURS_BYTES[kind] / GB, mem_available() / GB
                if reference is None or ours_gb > available_gb - 2:
                    reason = f"SB3 buffer: {reference is not None}, ours ~{ours_gb:.1f} GB, {available_gb:.1f} GB available"
                    report["skipped"].append({"obs_kind": kind, "capacity": capacity, "reason": reason})
                    continue
            buffers = {REFERENCE: reference[1]}
            for name in names[1:] if names[0] == REFERENCE else names:
                try:
                    buffers[name] = build(name, kind, data, reference[1])
                except Exception as error:  # a peer that is installed but does not run here
                    if name == "ours":
                        raise
                    unavailable[name] = f"unavailable: {type(error).__name__}: {str(error)[:300]}"
                    print(f"{name}: {unavailable[name]}", flush=True)
            seconds = round(time.perf_counter() - setup_start, 1)
            report["setups"].append({"obs_kind": kind, "capacity": capacity, "seconds": seconds})
            print(f"{kind} {capacity:.0e}: {list(buffers)} filled in {seconds} s", flush=True)
            for batch_size in args.batch_sizes:
                td_pool = [np.abs(rng.standard_normal(batch_size)).astype(np.float32) for _ in range(64)]
                steps = {name: make_step(name, buffer, batch_size, td_pool) for name, buffer in buffers.items()}
                timings = interleaved_rounds(steps, args.rounds, REFERENCE, args.block_ms / 1e3, args.warmup_ms / 1e3)
                for name, timing in timings.items():
                    row = {"obs_kind": kind, "capacity": capacity, "batch_size": batch_size, "contender": name}
                    report["results"].append({**row, "reference_capacity": reference[0], **timing})
                summary = ", ".join(f"{name} {t['median_us']:.0f} us {t['ratio']:.2f}x" for name, t in timings.items())
                print(f"  batch {batch_size}: {summary}", flush=True)
            del buffers, steps, data
    report["first_sample"] = time_first_sample(args.obs_kinds, args.first_sample_repeats)
    report["runtime_s"] = round(time.perf_counter() - start_time, 1)
    path = write_json(report, "per_sampling", args.results_dir)
    plot(report, args.results_dir)
    print(f"done in {report['runtime_s']} s: {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
