"""
Memory of replay buffers holding Atari observations (84x84 frames stacked by 4, uint8, channel first), bytes per stored
transition, and the peak resident memory of a 1e6-transition buffer of ours being filled.

Every buffer gets ``--capacity`` transitions (episodes of 100-500 steps of random frames, stacked as ``VecFrameStack``
stacks them, as in ``per_sampling.py``), added as an agent adds them, and is measured two ways:

- ``allocated``: bytes of the buffer's own arrays divided by its capacity (ours: ``.nbytes``; SB3: its arrays;
  Tianshou: the arrays of its ``Batch``; not readable for cpprb, whose arrays live in its extension);
- ``resident``: growth of this process's resident set (``VmRSS``) from before the buffer is built to after it is filled,
  divided by the capacity (the sum trees and anything kept by ``add`` included).

Buffers: SB3's ``ReplayBuffer`` (``optimize_memory_usage=False``, and ``True`` with ``handle_timeout_termination=False``,
as SB3 requires); ours, ``PrioritizedReplayBuffer`` with SB3's layout and with the frame storage
(``optimize_memory_usage=True, n_stack=4``), and ``MemoryEfficientReplayBuffer(n_stack=4)``; cpprb's
``PrioritizedReplayBuffer`` with ``next_of="obs"`` (channel first), and with ``stack_compress="obs"`` too (channel last,
as it requires; one add per episode, then ``on_episode_end()``); Tianshou's ``PrioritizedReplayBuffer`` storing
``obs`` and ``obs_next``, and with ``save_only_last_obs=True, ignore_obs_next=True, stack_num=4`` (its Atari setting,
which does not store the terminal observation of an episode: its last next observation is read as its last observation).

Peak: a fresh process builds ``MemoryEfficientReplayBuffer(--peak-capacity, n_stack=4)`` and adds ``--peak-fill``
transitions; it records ``VmRSS`` as it fills, then ``VmHWM`` (peak) and ``ru_maxrss``, beside ``.nbytes``.

Usage (JSON and PNG in ``benchmarks/results/replay_memory.*``; about 5 minutes, most of it the 1e6 fill)::

    python benchmarks/replay_memory.py
    python benchmarks/replay_memory.py --capacity 1000 --peak-capacity 2000 --buffers sb3 ours_frames  # smoke test
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer

from benchmarks.common import RESULTS_DIR, package_version, run_metadata, save_figure, write_json
from benchmarks.per_sampling import ACTION_SPACE, N_STACK, OBS_SPACES, add_transitions, episodes, make_data, observations
from sb3_dqn_ext import MemoryEfficientReplayBuffer, PrioritizedReplayBuffer

SPACE = OBS_SPACES["atari"]
FRAME_BYTES = 84 * 84
BUFFERS = {
    "sb3": "SB3 ReplayBuffer",
    "sb3_optimize_memory": "SB3 ReplayBuffer(optimize_memory_usage=True, handle_timeout_termination=False)",
    "ours_prioritized": "sb3_dqn_ext PrioritizedReplayBuffer (SB3's layout)",
    "ours_prioritized_frames": "sb3_dqn_ext PrioritizedReplayBuffer(optimize_memory_usage=True, n_stack=4)",
    "ours_frames": "sb3_dqn_ext MemoryEfficientReplayBuffer(n_stack=4)",
    "cpprb_next_of": "cpprb PrioritizedReplayBuffer(next_of='obs')",
    "cpprb_stack_compress": "cpprb PrioritizedReplayBuffer(next_of='obs', stack_compress='obs')",
    "tianshou": "Tianshou PrioritizedReplayBuffer (obs and obs_next)",
    "tianshou_last_obs": "Tianshou PrioritizedReplayBuffer(save_only_last_obs, ignore_obs_next, stack_num=4)",
}


def proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), 0 where there is none."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def build_and_fill(name: str, data: dict[str, Any]) -> tuple[Any, int | None]:
    """The buffer ``name`` holding ``data``, and the bytes of its arrays (``None`` where they cannot be read)."""
    capacity = len(data["actions"])
    buffer: Any
    if name.startswith(("sb3", "ours")):
        kwargs: dict[str, Any] = dict(device="cpu", optimize_memory_usage=name.endswith(("frames", "memory")))
        if name == "sb3_optimize_memory":
            kwargs["handle_timeout_termination"] = False
        if name.endswith("frames"):
            kwargs["n_stack"] = N_STACK
        cls = ReplayBuffer if name.startswith("sb3") else PrioritizedReplayBuffer
        buffer = (MemoryEfficientReplayBuffer if name == "ours_frames" else cls)(capacity, SPACE, ACTION_SPACE, **kwargs)
        add_transitions(buffer, data, range(capacity))
        if name.startswith("ours"):
            return buffer, buffer.nbytes
        fields = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
        return buffer, sum(getattr(buffer, field).nbytes for field in fields if getattr(buffer, field, None) is not None)
    if name.startswith("cpprb"):
        import cpprb

        compress = name == "cpprb_stack_compress"
        shape = (84, 84, N_STACK) if compress else SPACE.shape  # stack_compress needs the stack axis last
        env_dict = {"obs": {"shape": shape, "dtype": np.uint8}, "act": {"dtype": np.int64}, "rew": {}, "done": {}}
        compression = dict(next_of="obs", stack_compress="obs" if compress else None)
        buffer = cpprb.PrioritizedReplayBuffer(capacity, env_dict, alpha=0.6, eps=1e-6, **compression)
        for rows in episodes(data):  # one add per episode
            obs, next_obs = (observations(data, key, rows) for key in ("obs", "next_obs"))
            obs, next_obs = (obs.transpose(0, 2, 3, 1), next_obs.transpose(0, 2, 3, 1)) if compress else (obs, next_obs)
            buffer.add(
                obs=obs, next_obs=next_obs, act=data["actions"][rows], rew=data["rewards"][rows], done=data["dones"][rows]
            )
            buffer.on_episode_end()
        return buffer, None
    import tianshou.data

    last_obs = name == "tianshou_last_obs"
    options: dict[str, Any] = dict(stack_num=N_STACK, ignore_obs_next=True, save_only_last_obs=True) if last_obs else {}
    buffer = tianshou.data.PrioritizedReplayBuffer(capacity, alpha=0.6, beta=0.4, **options)
    for start in range(0, capacity, 1024):
        rows = slice(start, start + 1024)
        obs, next_obs = observations(data, "obs", rows), observations(data, "next_obs", rows)
        for i, t in enumerate(range(start, start + len(obs))):
            done = bool(data["dones"][t])
            batch = dict(obs=obs[i], act=data["actions"][t], rew=data["rewards"][t], terminated=done, truncated=False)
            buffer.add(tianshou.data.Batch(**batch, obs_next=next_obs[i]))
    meta = buffer._meta  # its storage: one Batch of arrays
    return buffer, sum(meta[key].nbytes for key in meta.get_keys() if isinstance(meta[key], np.ndarray))


def measure_child(name: str, capacity: int, seed: int) -> None:
    """Allocated and resident bytes per transition of buffer ``name``, in this fresh process; printed as JSON."""
    rng = np.random.default_rng(seed)
    build_and_fill(name, make_data("atari", 300, rng))  # imports and compiles what the library needs first
    data = make_data("atari", capacity, rng)
    gc.collect()
    before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    buffer, allocated = build_and_fill(name, data)
    row: dict[str, Any] = {"description": BUFFERS[name], "capacity": capacity, "fill_s": round(time.perf_counter() - start, 2)}
    gc.collect()
    row["resident_bytes_per_transition"] = round((proc_status_kib("VmRSS") - before) * 1024 / capacity)
    row["allocated_bytes_per_transition"] = None if allocated is None else round(allocated / capacity, 1)
    row["frames_per_transition"] = round(row["resident_bytes_per_transition"] / FRAME_BYTES, 2)
    print(json.dumps(row))
    del buffer


def run_child(*options: str) -> dict[str, Any]:
    """Run this script with ``options`` in a fresh process and return the JSON it prints last."""
    # A fixed mmap threshold: every large array is mapped, and unmapped when freed (glibc would otherwise raise the
    # threshold after the first free and keep later temporaries in its heap, counted in the resident set)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    child = subprocess.run([sys.executable, __file__, *options], capture_output=True, text=True, env=env)
    if child.returncode != 0:
        raise RuntimeError(child.stderr)
    return json.loads(child.stdout.splitlines()[-1])


def peak_child(capacity: int, fill: int) -> None:
    """Build and fill ``MemoryEfficientReplayBuffer(capacity)`` in this fresh process; print its memory as JSON."""
    rng = np.random.default_rng(0)
    build_and_fill("ours_frames", make_data("atari", 300, rng))  # compiles or loads the kernels first
    data = make_data("atari", fill, rng)
    gc.collect()
    report: dict[str, Any] = {"capacity": capacity, "filled": fill, "rss_before_mib": proc_status_kib("VmRSS") / 1024}
    start = time.perf_counter()
    buffer = MemoryEfficientReplayBuffer(capacity, SPACE, ACTION_SPACE, device="cpu", n_stack=N_STACK)
    report["rss_growth_mib"] = []  # (transitions added, VmRSS MiB) as it fills
    for chunk_start in range(0, fill, max(fill // 20, 1)):
        add_transitions(buffer, data, range(chunk_start, min(chunk_start + max(fill // 20, 1), fill)))
        report["rss_growth_mib"].append((min(chunk_start + max(fill // 20, 1), fill), proc_status_kib("VmRSS") / 1024))
    elapsed = time.perf_counter() - start
    report.update(fill_s=round(elapsed, 1), transitions_per_s=round(fill / elapsed), nbytes=buffer.nbytes)
    # VmHWM: this process's peak resident set (ru_maxrss would report the parent's if larger: it survives exec)
    report.update(vm_rss_mib=proc_status_kib("VmRSS") / 1024, vm_hwm_mib=proc_status_kib("VmHWM") / 1024)
    report["rss_increase_bytes_per_transition"] = round((report["vm_rss_mib"] - report["rss_before_mib"]) * 2**20 / fill)
    print(json.dumps(report))


def plot(report: dict[str, Any], results_dir: Path) -> None:
    """Bar chart of the resident bytes per transition; the resident memory of the peak run as it fills."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, growth) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    names = list(report["bytes_per_transition"])
    values = [report["bytes_per_transition"][name]["resident_bytes_per_transition"] / 1e3 for name in names]
    bars.barh(names, values, color=["tab:orange" if name.startswith("ours") else "tab:blue" for name in names])
    bars.bar_label(bars.containers[0], fmt="%.1f", fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("KB per transition (resident)")
    bars.set_title(f"84x84x4 uint8, {report['settings']['capacity']} transitions", fontsize=10)
    peak = report["peak"]
    x, y = zip(*peak["rss_growth_mib"], strict=True)
    growth.plot(x, (np.array(y) - peak["rss_before_mib"]) / 1024, marker=".", label="VmRSS increase since before the buffer")
    growth.axhline(peak["nbytes"] / 2**30, color="grey", linestyle=":", label=".nbytes (allocated at construction)")
    growth.set(xlabel="transitions added", ylabel="GiB", title=f"MemoryEfficientReplayBuffer({peak['capacity']:.0e}) filling")
    growth.set_ylim(0, 1.15 * max(peak["nbytes"] / 2**30, (max(y) - peak["rss_before_mib"]) / 1024))
    growth.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, "replay_memory", results_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=lambda x: int(float(x)), default=20_000, help="transitions per buffer measured")
    parser.add_argument("--buffers", nargs="+", choices=list(BUFFERS), default=list(BUFFERS))
    parser.add_argument("--peak-capacity", type=lambda x: int(float(x)), default=1_000_000)
    parser.add_argument("--peak-fill", type=lambda x: int(float(x)), help="transitions added in the peak run (capacity)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure-child", choices=list(BUFFERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    fill = args.peak_capacity if args.peak_fill is None else min(args.peak_fill, args.peak_capacity)
    if args.peak_child or args.measure_child:
        peak_child(args.peak_capacity, fill) if args.peak_child else measure_child(
            args.measure_child, args.capacity, args.seed
        )
        return
    report: dict[str, Any] = run_metadata(packages=("cpprb", "tianshou"))
    report["settings"] = {"capacity": args.capacity, "peak_capacity": args.peak_capacity, "peak_fill": fill}
    names = [name for name in args.buffers if package_version(name.split("_")[0]) or name.startswith(("sb3", "ours"))]
    report["not_installed"] = sorted(set(args.buffers) - set(names))
    start = time.perf_counter()
    report["bytes_per_transition"] = {}
    for name in names:
        options = ("--measure-child", name, "--capacity", str(args.capacity), "--seed", str(args.seed))
        report["bytes_per_transition"][name] = run_child(*options)
        print(f"{name}: {report['bytes_per_transition'][name]}", flush=True)
    report["peak"] = run_child("--peak-child", "--peak-capacity", str(args.peak_capacity), "--peak-fill", str(fill))
    print(f"peak: { {key: value for key, value in report['peak'].items() if key != 'rss_growth_mib'} }", flush=True)
    report["runtime_s"] = round(time.perf_counter() - start, 1)
    path = write_json(report, "replay_memory", args.results_dir)
    plot(report, args.results_dir)
    print(f"wrote {path} and replay_memory.png")


if __name__ == "__main__":
    main()
