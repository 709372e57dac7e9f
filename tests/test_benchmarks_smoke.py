"""
Smoke test of ``benchmarks/per_sampling.py``: tiny settings in a subprocess, as a user runs it.

A peer that is not installed (extra ``bench``) is skipped by the script itself and reported as such in its JSON.
Only cpprb among the peers: setting up Tianshou's buffer compiles its numba segment tree (10-20 s on a 2-core
VM) and importing TorchRL takes seconds, which the full run pays once.
"""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "per_sampling.py"


def test_per_sampling_benchmark_runs_with_tiny_settings(tmp_path: Path) -> None:
    output, plot = tmp_path / "per_sampling.json", tmp_path / "per_sampling.png"
    command = [sys.executable, str(SCRIPT), "--capacities", "1000", "--batch-sizes", "32", "--obs", "cartpole"]
    command += ["--contenders", "sb3_uniform", "ours", "cpprb"]
    command += ["--rounds", "3", "--block-ms", "1", "--warmup-ms", "1", "--output", str(output), "--plot", str(plot)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(output.read_text())
    assert report["target"]["status"] == "not measured in this run"  # the target is at 1e6
    assert "breakdown" in report  # at the largest CartPole-sized capacity
    assert set(report["contenders"]) == {"sb3_uniform", "ours", "cpprb"}
    for name, contender in report["contenders"].items():
        if name in ("sb3_uniform", "ours"):
            assert contender["status"] == "measured"
        else:
            assert contender["status"] == "measured" or contender["status"].startswith(("not installed", "unavailable"))
    measured = {name for name, contender in report["contenders"].items() if contender["status"] == "measured"}
    results = report["results"]
    assert {result["contender"] for result in results} == measured
    assert all(result["median_us"] > 0 and result["capacity"] == 1000 and result["batch_size"] == 32 for result in results)
    uniform = next(result for result in results if result["contender"] == "sb3_uniform")
    assert uniform["ratio_to_uniform"] == 1.0
