"""
Smoke tests of the paper-effect experiments in ``benchmarks/effect_*.py``: each runs with ``--quick`` into a
temporary directory and must write its JSON report (with the expected keys) and its plot.

The scripts run in this process (``runpy``), as ``python benchmarks/<script> --quick --results-dir <tmp>`` would,
so that torch, SB3 and matplotlib are imported once for the three of them. Skipped without matplotlib.
"""

import json
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
# Keys every report has
REPORT_KEYS = {"experiment", "paper", "paper_claim", "settings", "runs", "summary", "comparison_with_paper", "runtime"}
# The run's metadata (benchmarks/common.py)
REPORT_KEYS |= {"date", "command", "platform", "cpu_model", "versions", "torch_threads"}


def run_quick(name: str, results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py --quick --results-dir results_dir`` and return its JSON report."""
    script = BENCHMARKS_DIR / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--results-dir", str(results_dir)])
    runpy.run_path(str(script), run_name="__main__")
    json_path = results_dir / f"{name}.json"
    assert json_path.is_file(), f"{name} did not write {json_path}"
    assert (results_dir / f"{name}.png").stat().st_size > 0
    report: dict[str, Any] = json.loads(json_path.read_text())
    assert REPORT_KEYS <= set(report), f"missing keys: {REPORT_KEYS - set(report)}"
    assert report["experiment"] == name
    assert report["settings"]["quick"] is True
    assert isinstance(report["comparison_with_paper"], str) and report["comparison_with_paper"]
    return report


def test_effect_overestimation_quick_writes_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_quick("effect_overestimation", tmp_path, monkeypatch)
    summary = report["summary"]
    assert {"true_value", "DQN", "Double DQN", "seeds_where_dqn_overestimates_more"} <= set(summary)
    for label in ("DQN", "Double DQN"):
        assert len(summary[label]["final_overestimation_per_seed"]) == len(report["settings"]["seeds"])
        (run,) = report["runs"][label]
        assert len(run["timesteps"]) == len(run["estimates"]) > 0


def test_effect_blind_cliffwalk_quick_writes_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_quick("effect_blind_cliffwalk", tmp_path, monkeypatch)
    summary = report["summary"]
    ns = report["settings"]["ns"]
    for method in ("uniform", "prioritized (alpha=1)", "oracle"):
        assert set(summary[method]) == {str(n) for n in ns}
        # The quick chains are short: every run reaches the threshold
        assert all(summary[method][str(n)]["n_unfinished"] == 0 for n in ns)
    assert {"growth_per_added_state", "uniform_over_prioritized_median_ratio"} <= set(summary)
    memory_sizes = {run["memory_size"] for run in report["runs"]["uniform"][str(ns[-1])]}
    assert memory_sizes == {2 ** (ns[-1] + 1) - 2}


def test_effect_corridor_quick_writes_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_quick("effect_corridor", tmp_path, monkeypatch)
    for n_actions in report["settings"]["action_counts"]:
        entry = report["summary"][str(n_actions)]
        assert {"single", "dueling", "single_over_dueling_final_se", "seeds_where_dueling_is_lower"} <= set(entry)
        for architecture in ("single", "dueling"):
            (run,) = report["runs"][str(n_actions)][architecture]
            assert len(run["updates"]) == len(run["squared_errors"]) > 0
