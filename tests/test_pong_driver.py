"""
``benchmarks/pong.py``: a Pong run through the zoo in pieces that continue one another (tiny settings, CPU).

The driver runs in subprocesses from a temporary directory, as the zoo tests do. Hand-worked values: with
``exploration_fraction=1`` the exploration rate after ``t`` of ``T`` steps is ``1 - 0.99 * t / T`` (final 0.01),
and an n-step return is ``sum_k gamma**k r_k`` up to the first termination or truncation.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from benchmarks.pong import load_state, mark_seam, parse_args
from sb3_dqn_ext import PrioritizedReplayBuffer

pytest.importorskip("rl_zoo3")
pytest.importorskip("ale_py")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pong.py"
TOTAL, PIECE = 400, 200
ARGS = ["--total-steps", str(TOTAL), "--max-steps", str(PIECE), "--eval-freq", str(PIECE), "--eval-episodes", "1"]
ARGS += ["--device", "cpu", "-params", "learning_starts:150", "buffer_size:1000", "exploration_fraction:1.0"]


def buffer_with(rewards: list[float], dones: list[bool], n_steps: int = 3, gamma: float = 0.5) -> PrioritizedReplayBuffer:
    buffer = PrioritizedReplayBuffer(
        8, spaces.Box(-1, 1, (1,)), spaces.Discrete(2), device="cpu", n_steps=n_steps, gamma=gamma
    )
    for step, (reward, done) in enumerate(zip(rewards, dones, strict=True)):
        obs = np.array([[step]], dtype=np.float32)
        buffer.add(obs, obs + 1, np.array([[0]]), np.array([reward]), np.array([done]), [{}])
    return buffer


def n_step_return(buffer: PrioritizedReplayBuffer, index: int) -> tuple[float, float]:
    samples = ReplayBufferSamples(*buffer._gather(np.array([index]), np.array([0]), None))
    assert samples.discounts is not None
    return float(samples.rewards[0, 0]), float(samples.discounts[0, 0])


def test_mark_seam_stops_n_step_returns_at_the_last_stored_transition() -> None:
    buffer = buffer_with([1.0, 2.0, 4.0], [False] * 3)
    assert mark_seam(buffer) == 2
    assert buffer.timeouts[:3, 0].tolist() == [0.0, 0.0, 1.0]
    # The next piece's first episode: without the mark, index 1 would sum 2 + 0.5 * 4 + 0.25 * 8
    for step, reward in enumerate([8.0, 16.0], start=3):
        obs = np.array([[step]], dtype=np.float32)
        buffer.add(obs, obs + 1, np.array([[0]]), np.array([reward]), np.array([False]), [{}])
    assert n_step_return(buffer, 1) == (2.0 + 0.5 * 4.0, 0.5**2)
    assert n_step_return(buffer, 0) == (1.0 + 0.5 * 2.0 + 0.25 * 4.0, 0.5**3)
    # One-step targets are unchanged: the seam's next observation is the stored one, not a termination
    one_step = buffer_with([1.0, 2.0], [False, False], n_steps=1)
    mark_seam(one_step)
    samples = ReplayBufferSamples(*one_step._gather(np.array([1]), np.array([0]), None))
    assert float(samples.dones[0, 0]) == 0.0 and float(samples.next_observations[0, 0]) == 2.0


def test_mark_seam_leaves_terminations_empty_buffers_and_wraps() -> None:
    ended = buffer_with([1.0, 2.0], [False, True])
    assert mark_seam(ended) == 1 and ended.timeouts[1, 0] == 0.0  # a termination stays a termination
    assert mark_seam(buffer_with([], [])) is None
    full = buffer_with([1.0] * 8, [False] * 8)
    assert full.pos == 0 and full.full
    assert mark_seam(full) == 7 and full.timeouts[7, 0] == 1.0


def test_a_continuation_with_other_settings_is_refused(tmp_path: Path) -> None:
    args = parse_args(["--run-dir", str(tmp_path), *ARGS])
    state = load_state(tmp_path, args)
    assert state["num_timesteps"] == 0 and state["params"]["n_steps"] == 3  # the preset, with the overrides
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps(state))
    assert load_state(tmp_path, args) == state
    other = parse_args(["--run-dir", str(tmp_path), *ARGS, "--total-steps", "500"])
    with pytest.raises(ValueError, match="total_steps=400, not 500"):
        load_state(tmp_path, other)
    # A save interrupted between its two renames left only the previous checkpoint, as checkpoint.old
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    assert load_state(tmp_path, args) == state and (tmp_path / "checkpoint" / "state.json").is_file()


def run_driver(run_dir: Path, cwd: Path) -> dict:
    command = [sys.executable, str(SCRIPT), "--run-dir", str(run_dir), "--results-dir", str(run_dir / "results"), *ARGS]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads((run_dir / "results" / "pong.json").read_text())


def test_pieces_continue_the_same_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run_driver(run_dir, tmp_path)
    assert first["summary"]["status"].startswith("running") and first["num_timesteps"] == PIECE
    second = run_driver(run_dir, tmp_path)
    assert second["summary"]["status"] == "done" and second["num_timesteps"] == TOTAL
    pieces = second["pieces"]
    assert [(p["start_timesteps"], p["end_timesteps"], p["seed"]) for p in pieces] == [(0, PIECE, 0), (PIECE, TOTAL, 1)]
    # The schedules run over the whole run: a piece stopped by the callback last updated them at step 199 of 400;
    # the second ends on the run's final step (a restarted schedule would be back at 1 - 0.99 * 199 / 400)
    assert pieces[0]["progress_remaining"] == pytest.approx(1 - 199 / TOTAL)
    assert pieces[0]["exploration_rate"] == pytest.approx(1 - 0.99 * 199 / TOTAL)
    assert pieces[1]["progress_remaining"] == pytest.approx(0.0) and pieces[1]["exploration_rate"] == pytest.approx(0.01)
    # Training starts at step 150, one gradient step every 4: 12 in the first piece, 62 in all
    assert (pieces[0]["n_updates"], pieces[1]["n_updates"]) == (12, 62)
    assert [e["timesteps"] for e in second["evaluations"]] == [PIECE, TOTAL]
    assert all(-21 <= e["mean_reward"] <= 21 and len(e["episode_rewards"]) == 1 for e in second["evaluations"])
    assert (run_dir / "results" / "pong.png").stat().st_size > 0
    # The checkpoint: the model at the run's end, its buffer with every stored step, the seam marked
    from sb3_dqn_ext import PrioritizedDQN

    model = PrioritizedDQN.load(run_dir / "checkpoint" / "model.zip", device="cpu")
    model.load_replay_buffer(run_dir / "checkpoint" / "replay_buffer.pkl")
    buffer = model.replay_buffer
    assert isinstance(buffer, PrioritizedReplayBuffer) and buffer.n_steps == 3
    assert model.num_timesteps == TOTAL and buffer.pos == TOTAL - 1  # the step that stopped piece 0 is not stored
    assert buffer.timeouts[PIECE - 2, 0] == 1.0 or buffer.dones[PIECE - 2, 0] == 1.0
    assert buffer.tree.total > 0 and buffer.beta == pytest.approx(1.0)
    # Run again: nothing left to train, the results are rewritten
    third = run_driver(run_dir, tmp_path)
    assert len(third["pieces"]) == 2 and third["evaluations"] == second["evaluations"]
