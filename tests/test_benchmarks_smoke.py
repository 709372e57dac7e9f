"""
Smoke tests of ``benchmarks/per_sampling.py`` and ``benchmarks/throughput.py``: tiny settings in a subprocess,
as a user runs them.

A peer that is not installed (extra ``bench``) is skipped by the script itself and reported as such in its JSON.
Only cpprb among the peers: setting up Tianshou's buffer compiles its numba segment tree (10-20 s on a 2-core
VM) and importing TorchRL takes seconds, which the full run pays once.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("same_optimizer", [False, True])
def test_throughput_benchmark_runs_with_tiny_settings(tmp_path: Path, same_optimizer: bool) -> None:
    script = SCRIPT.parent / "throughput.py"
    command = [
        sys.executable,
        str(script),
        "--steps",
        "300",
        "--slice-steps",
        "150",
        "--rounds",
        "1",
        "--classes",
        "DQN",
        "PrioritizedDQN",
    ]
    if same_optimizer:
        command.append("--same-optimizer")
    result = subprocess.run([*command, "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    name = "throughput_cartpole_same_optimizer" if same_optimizer else "throughput_cartpole"
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert ("--same-optimizer" in report["command"]) == same_optimizer
    # Every class keeps PyTorch's choice (per-tensor on the CPU), as SB3's DQN does
    assert report["optimizers"] == {
        "DQN": {"class": "Adam", "foreach": None},
        "PrioritizedDQN": {"class": "Adam", "foreach": None},
    }
    assert report["rounds"] == 1 and report["timed_steps_per_run"] == 300 and report["slice_steps"] == 150
    summary = report["summary"]
    assert set(summary) == {"DQN", "PrioritizedDQN"}
    assert summary["DQN"]["ratios_to_dqn"] == summary["DQN"]["cpu_ratios_to_dqn"] == [1.0]
    ratio = summary["PrioritizedDQN"]["steps_per_s"][0] / summary["DQN"]["steps_per_s"][0]
    assert summary["PrioritizedDQN"]["ratios_to_dqn"] == [pytest.approx(ratio, rel=1e-12)]
    # Only the classes that ran are checked against their targets
    assert set(report["targets"]) == {"PrioritizedDQN"}
    assert report["targets"]["PrioritizedDQN"]["target_ratio"] == 0.9
    assert report["targets"]["PrioritizedDQN"]["met"] == (ratio >= 0.9)
