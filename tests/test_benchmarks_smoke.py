"""
Smoke tests of ``benchmarks/per_sampling.py``, ``benchmarks/replay_memory.py``, ``benchmarks/sum_tree_layout.py``,
``benchmarks/throughput.py`` and ``benchmarks/learning.py``: tiny settings in a subprocess, as a user runs them,
results written to a temporary folder. Skipped where an extra they need (rl-zoo3, matplotlib, ale-py for Pong) is not
installed.

Among the peers only cpprb runs here: setting up Tianshou's buffer compiles its numba segment tree (10-20 s on a 2-core
VM), which the full run pays once. The first-sample times (fresh processes with a cold numba cache) are left to the
full run too.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "per_sampling.py"


def run_script(name: str, options: list[str], results_dir: Path) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py`` with ``options``; check its PNG and return its JSON report."""
    command = [sys.executable, str(SCRIPT.parent / f"{name}.py"), *options, "--results-dir", str(results_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (results_dir / f"{name}.png").stat().st_size > 0
    report = json.loads((results_dir / f"{name}.json").read_text())
    assert {"date", "command", "platform", "cpu_model", "versions", "torch_threads"} <= set(report)
    return report


def test_per_sampling_benchmark_runs_with_tiny_settings(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("cpprb")
    options = ["--capacities", "1000", "--batch-sizes", "32", "--obs", "cartpole", "atari", "--contenders", "ours", "cpprb"]
    options += ["--rounds", "3", "--block-ms", "1", "--warmup-ms", "1", "--first-sample-repeats", "0"]
    report = run_script("per_sampling", options, tmp_path)
    assert report["settings"]["contenders"] == ["sb3_uniform", "ours", "cpprb"] and report["first_sample"] == []
    rows = {(row["obs_kind"], row["contender"]): row for row in report["results"]}
    assert set(rows) == {(kind, name) for kind in ("cartpole", "atari") for name in ("sb3_uniform", "ours", "cpprb")}
    for (_, name), row in rows.items():
        assert row["capacity"] == row["reference_capacity"] == 1000 and row["batch_size"] == 32
        assert all(isinstance(row[key], float) and row[key] > 0 for key in ("ratio", "cpu_ratio", "median_us"))
        assert len(row["round_us"]) == 3
        if name == "sb3_uniform":
            assert row["ratio"] == row["cpu_ratio"] == 1.0


def test_replay_memory_benchmark_runs_with_tiny_settings(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    options = ["--capacity", "500", "--buffers", "sb3", "ours_frames", "--peak-capacity", "1000"]
    report = run_script("replay_memory", options, tmp_path)
    rows = report["bytes_per_transition"]
    assert set(rows) == {"sb3", "ours_frames"}
    # Allocated: SB3's 2 stacks of 4 frames, int64 action, 3 float32; ours about one frame, plus the ring's slack
    assert rows["sb3"]["allocated_bytes_per_transition"] == 2 * 4 * 84 * 84 + 8 + 3 * 4
    assert 84 * 84 < rows["ours_frames"]["allocated_bytes_per_transition"] < 1.2 * 84 * 84
    assert all(row["resident_bytes_per_transition"] > 0 for row in rows.values())
    peak = report["peak"]
    assert peak["capacity"] == peak["filled"] == 1000 and peak["vm_hwm_mib"] >= peak["vm_rss_mib"] > 0
    assert peak["transitions_per_s"] > 0 and len(peak["rss_growth_mib"]) == 20


def test_sum_tree_layout_benchmark_runs_with_tiny_settings(tmp_path: Path) -> None:
    options = ["--capacity", "1000", "--branchings", "2", "--batch-sizes", "8", "--rounds", "2"]
    command = [sys.executable, str(SCRIPT.parent / "sum_tree_layout.py"), *options, "--results-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "sum_tree_layout.json").read_text())
    rows = {row["branching"]: row for row in report["results"]}
    assert set(rows) == {2, 16} and all(row["batch_size"] == 8 for row in rows.values())  # the default runs too
    assert rows[16]["ratio"] == 1.0 and rows[2]["median_us"] > 0


def run_benchmark(name: str, options: list[str], results_dir: Path, result_name: str) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py`` with ``options``; check that it wrote ``<result_name>.png`` and return its JSON."""
    command = [sys.executable, str(SCRIPT.parent / f"{name}.py"), *options, "--results-dir", str(results_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (results_dir / f"{result_name}.png").stat().st_size > 0
    report = json.loads((results_dir / f"{result_name}.json").read_text())
    assert {"date", "command", "platform", "cpu_model", "versions", "torch_threads"} <= set(report)
    return report


def test_throughput_benchmark_runs_with_tiny_settings(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("rl_zoo3")
    options = ["--steps", "300", "--slice-steps", "150", "--rounds", "1", "--classes", "DQN", "PrioritizedDQN", "--profile"]
    options += ["-params", "gradient_steps:8"]  # fewer gradient steps per train() than the zoo's 128
    report = run_benchmark("throughput", options, tmp_path, "throughput_cartpole")
    assert report["rounds"] == 1 and report["timed_steps_per_run"] == 300 and report["slice_steps"] == 150
    assert report["device"] == "cpu" and report["reference"] == "DQN"
    # Every class uses DQN's optimizer: PyTorch's own choice of Adam implementation
    assert report["optimizers"] == {name: {"class": "Adam", "foreach": None} for name in ("DQN", "PrioritizedDQN")}
    # Each class with its zoo file (ours: hyperparams/per_dqn.yml), -params on top
    hyperparams = report["hyperparams"]
    assert hyperparams["DQN"]["learning_rate"] == 2.3e-3 and hyperparams["PrioritizedDQN"]["learning_rate"] == 5.75e-4
    assert hyperparams["DQN"]["gradient_steps"] == hyperparams["PrioritizedDQN"]["gradient_steps"] == 8
    assert hyperparams["DQN"]["learning_starts"] == 30  # at most a tenth of the timed steps
    summary = report["summary"]
    assert set(summary) == {"DQN", "PrioritizedDQN"}
    assert summary["DQN"]["ratios_to_reference"] == summary["DQN"]["cpu_ratios_to_reference"] == [1.0]
    ratio = summary["PrioritizedDQN"]["steps_per_s"][0] / summary["DQN"]["steps_per_s"][0]
    assert summary["PrioritizedDQN"]["ratios_to_reference"] == [pytest.approx(ratio, rel=1e-12)]
    for profiled in report["profile"].values():
        assert profiled["gradient_steps"] == 8 and "aten::addmm" in profiled["table"]
    # DQN reads its loss back after every gradient step (.item()); ours once per train() call
    syncs = {name: profiled["host_syncs"].get("aten::_local_scalar_dense", 0) for name, profiled in report["profile"].items()}
    assert syncs["DQN"] > syncs["PrioritizedDQN"]


def test_throughput_benchmark_compares_optimize_memory_usage_on_pong(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("rl_zoo3")
    pytest.importorskip("ale_py")
    options = ["--env", "PongNoFrameskip-v4", "--classes", "PrioritizedDQN", "--optimize-memory-usage", "false", "true"]
    options += ["--steps", "64", "--slice-steps", "32", "--rounds", "1", "-params", "buffer_size:1000"]
    report = run_benchmark("throughput", options, tmp_path, "throughput_pong_optimize_memory_usage")
    names = ["PrioritizedDQN optimize_memory_usage=false", "PrioritizedDQN optimize_memory_usage=true"]
    assert list(report["summary"]) == names and report["reference"] == names[0]
    # The atari section of hyperparams/per_dqn.yml, each setting on top of it
    for name, memory in zip(names, (False, True), strict=True):
        hyperparams = report["hyperparams"][name]
        assert hyperparams["optimize_memory_usage"] is memory and hyperparams["buffer_size"] == 1000
        assert hyperparams["policy"] == "CnnPolicy" and hyperparams["frame_stack"] == 4
    assert report["summary"][names[1]]["median_ratio_to_reference"] > 0


def test_learning_benchmark_runs_with_tiny_settings(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("rl_zoo3")  # SB3's DQN reads the zoo's dqn.yml
    options = ["--algos", "dqn", "per_dqn", "--seeds", "0", "--timesteps", "400", "--eval-freq", "200"]
    options += ["--eval-episodes", "1", "--workers", "1"]
    report = run_benchmark("learning", options, tmp_path, "learning_cartpole")
    assert set(report["summary"]) == {"DQN", "PrioritizedDQN"}
    for run in report["runs"]:
        assert run["timesteps"] == 400 and run["eval_timesteps"] == [200, 400]
    assert {run["hyperparams_file"] for run in report["runs"]} == {"rl_zoo3/hyperparams/dqn.yml", "hyperparams/per_dqn.yml"}
