"""
What the benchmark scripts share: run metadata, where results go, and the interleaved-rounds timer (on a shared, noisy
machine each contender runs a block of calls per round, each round starting with another contender, and is reported as
the median over rounds of its ratio to the reference; garbage collection is off in the blocks, as in ``timeit``).
"""

import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("numpy", "torch", "numba", "stable_baselines3", "sb3-dqn-ext")


def package_version(name: str) -> str | None:
    """Installed version of a distribution, ``None`` when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``)."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())


def git_state() -> dict[str, Any] | None:
    """The checkout's commit and the paths changed in its work tree (what is measured is the work tree)."""
    git = ["git", "-C", str(RESULTS_DIR.parent)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    return {"commit": commit.stdout.strip(), "changed": status.stdout.splitlines()} if commit.returncode == 0 else None


def run_metadata(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Date, machine, versions (``PACKAGES`` and ``packages``), torch threads and the command line of this run."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "command": " ".join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in (*PACKAGES, *packages)},
        "torch_threads": th.get_num_threads(),
    }


def write_json(report: dict[str, Any], name: str, results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``report`` to ``<results_dir>/<name>.json`` and return the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def save_figure(fig: Any, name: str, results_dir: Path = RESULTS_DIR) -> Path:
    """Save a matplotlib figure to ``<results_dir>/<name>.png``, close it and return the path."""
    import matplotlib.pyplot as plt

    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def time_block(step: Callable[[], object], n_calls: int) -> tuple[float, float]:
    """Per-call wall time and thread CPU time (ns) of ``n_calls`` consecutive calls, garbage collector off."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    wall_start, cpu_start = time.perf_counter_ns(), time.thread_time_ns()
    try:
        for _ in range(n_calls):
            step()
    finally:
        cpu_end, wall_end = time.thread_time_ns(), time.perf_counter_ns()
        if gc_was_enabled:
            gc.enable()
    return (wall_end - wall_start) / n_calls, (cpu_end - cpu_start) / n_calls


def calibrate(step: Callable[[], object], warmup_s: float, block_s: float) -> int:
    """Warm ``step`` up for about ``warmup_s`` (at least 4 calls); return the number of calls of a ``block_s`` block."""
    durations: list[int] = []
    start = time.perf_counter()
    while len(durations) < 4 or time.perf_counter() - start < warmup_s:
        cpu_start = time.thread_time_ns()
        step()
        durations.append(time.thread_time_ns() - cpu_start)
    # The first calls pay one-off costs; CPU time leaves out waiting for a core
    per_call_ns = max(float(np.median(durations[len(durations) // 2 :])), 1.0)
    return max(1, round(block_s * 1e9 / per_call_ns))


def interleaved_rounds(
    steps: Mapping[str, Callable[[], object]], rounds: int, reference: str, block_s: float = 0.02, warmup_s: float = 0.2
) -> dict[str, dict[str, Any]]:
    """
    Time each step in ``rounds`` rounds of one block of calls (about ``block_s`` each), round ``r`` starting with step
    ``r % len(steps)``. For each step: the medians over rounds of its per-call wall and thread CPU time divided by the
    reference's in the round (``ratio`` with p10/p90, ``cpu_ratio``), per-call times in us, calls per block.
    """
    names = list(steps)
    calls = {name: calibrate(steps[name], warmup_s, block_s) for name in names}
    wall, cpu = np.empty((len(names), rounds)), np.empty((len(names), rounds))
    gc.collect()
    gc.freeze()  # objects alive now are never scanned during the rounds
    try:
        for round_index in range(rounds):
            shift = round_index % len(names)
            for i in [*range(shift, len(names)), *range(shift)]:
                wall[i, round_index], cpu[i, round_index] = time_block(steps[names[i]], calls[names[i]])
    finally:
        gc.unfreeze()
    ratios, cpu_ratios = wall / wall[names.index(reference)], cpu / cpu[names.index(reference)]
    results: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        ratio_p10, ratio, ratio_p90 = (round(float(value), 3) for value in np.percentile(ratios[i], [10, 50, 90]))
        p10, median, p90 = (round(float(value), 2) for value in np.percentile(wall[i] / 1e3, [10, 50, 90]))
        cpu_ratio, cpu_median = round(float(np.median(cpu_ratios[i])), 3), round(float(np.median(cpu[i])) / 1e3, 2)
        results[name] = {"ratio": ratio, "ratio_p10": ratio_p10, "ratio_p90": ratio_p90, "cpu_ratio": cpu_ratio}
        results[name]["median_us"] = median
        results[name].update(p10_us=p10, p90_us=p90, cpu_median_us=cpu_median, calls_per_block=calls[name])
        results[name]["round_us"] = [round(float(value) / 1e3, 2) for value in wall[i]]
    return results
