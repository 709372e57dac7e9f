"""
Pong through rl-zoo3, in wall-clock-limited pieces that continue one another exactly where the last one stopped.

A GPU job is often cut into commands of a few minutes. rl-zoo3's own continuation (``-i model.zip``) restarts the
schedules: it calls ``model.learn(n_timesteps)`` with SB3's default ``reset_num_timesteps=True``, so exploration,
learning rate and PER's beta start again from their initial values at every continuation. This driver builds the
model exactly as ``python -m rl_zoo3.train --algo <algo> --env PongNoFrameskip-v4`` does (rl-zoo3's
``ExperimentManager``: the shipped ``hyperparams/<algo>.yml``, the zoo's Atari wrappers, frame stack and env
creation; loading a checkpoint and its ``replay_buffer.pkl`` through the zoo's own ``-i`` code path), but trains
with ``learn(total_steps - num_timesteps, reset_num_timesteps=False)``: every piece runs on the same schedules,
towards the same ``--total-steps``. Each invocation trains until ``--budget-min`` minutes (minus ``--save-margin-s``)
or ``--max-steps`` agent steps have passed, then saves the model, the replay buffer and the run's record into
``<run-dir>/checkpoint`` (written beside it, then swapped in, so an interrupted save never destroys the last one).
Run the same command again to continue; once ``--total-steps`` are reached it only rewrites the results.

Continuing starts new episodes (the environments are reset), so the last transition stored before each save is
marked truncated (``timeouts``) as SB3's buffers mark a time limit: an n-step return then stops there instead of
running into the next piece's first episode; one-step targets do not change (they bootstrap from the stored next
observation either way). Each piece uses seed ``--seed + piece index``. A piece stops from a callback, and SB3
does not store the transition of the step whose callback stops training: that one agent step per piece is
counted in ``num_timesteps`` (and in the schedules) but not stored or learnt from.

Evaluation: every ``--eval-freq`` agent steps (absolute, across pieces) and at the end, ``--eval-episodes`` full
games on the zoo's evaluation env (not deterministic on Atari, as the zoo's ``EvalCallback``: DQN then acts
epsilon-greedily with its final exploration rate). Scores are the games' own (Monitor), before reward clipping.

The default ``-params`` (``PRESET``) give the strongest configuration this package has (dueling + double + PER +
3-step returns), with Rainbow's values where it has them (Hessel et al. 2018, https://arxiv.org/abs/1710.02298,
Table 1: Adam 6.25e-5 and eps 1.5e-4, 3-step returns, target period 32k frames = 8k agent steps, replay starts
at 80k frames = 20k agent steps, PER alpha 0.5 and beta 0.4). Not Rainbow's: epsilon-greedy exploration (0.01
after 25% of the steps) instead of noisy nets, no distributional head, and a replay memory of 1e5 transitions
instead of 1e6 (SB3's layout stores observations and next observations: 5.6 GB at 1e5, and a checkpoint saves it).
``-params key:value ...`` overrides them (the zoo's syntax). These values have not been measured on Pong here.
With one env, the Atari emulator and the gradient steps take turns; ``--vec-env subproc -params n_envs:8
train_freq:1 gradient_steps:2`` steps 8 emulators in parallel and keeps one gradient step per 4 transitions (SB3
divides ``target_update_interval`` by ``n_envs`` itself). Checked on the CPU with 2 envs and a few hundred steps.

Results: ``<results-dir>/pong.json`` (the configuration, every piece: agent steps, wall time, steps/s, device;
every evaluation) and ``<results-dir>/pong.png`` (evaluation score against agent steps), rewritten after each piece.

    python benchmarks/pong.py --device cuda --budget-min 9            # repeat until it prints "done"
    python benchmarks/pong.py --run-dir /tmp/pong --total-steps 600 --max-steps 300 --eval-freq 300 \\
        --eval-episodes 1 --device cpu -params learning_starts:250 buffer_size:1000    # smoke run (CPU)
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ALGOS = ("double_dqn", "dueling_dqn", "per_dqn")
GOAL_SCORE = 20.0
GOAL_STEPS = 1_000_000
# Values for -params (the zoo evaluates string values such as "dict(...)" itself)
PRESET: dict[str, Any] = {
    "policy": "DuelingCnnPolicy",
    "n_steps": 3,
    "learning_rate": 6.25e-5,
    "policy_kwargs": "dict(optimizer_kwargs=dict(eps=1.5e-4))",
    "buffer_size": 100_000,
    "learning_starts": 20_000,
    "target_update_interval": 8_000,
    "exploration_fraction": 0.25,
    "exploration_final_eps": 0.01,
    "replay_buffer_kwargs": "dict(alpha=0.5, beta=0.4)",
}
# Settings a continuation must share with the run it continues
RUN_KEYS = ("algo", "env", "total_steps", "params", "eval_freq", "eval_episodes", "n_eval_envs")
STATE_FILE = "state.json"
PACKAGES = ("sb3-dqn-ext", "stable_baselines3", "rl_zoo3", "torch", "gymnasium", "ale-py", "numpy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from rl_zoo3.utils import StoreDict

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algo", default="per_dqn", choices=ALGOS, help="zoo key (hyperparams/<algo>.yml)")
    parser.add_argument("--env", default="PongNoFrameskip-v4", help="Atari env id")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "pong", help="checkpoint and zoo logs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where pong.json and pong.png go")
    parser.add_argument("--total-steps", type=int, default=GOAL_STEPS, help="agent steps of the whole run")
    parser.add_argument("--budget-min", type=float, default=9.0, help="wall-clock minutes of this invocation")
    parser.add_argument("--save-margin-s", type=float, default=60.0, help="seconds kept for the save")
    parser.add_argument("--max-steps", type=int, default=0, help="at most this many agent steps now (0: no limit)")
    parser.add_argument("--eval-freq", type=int, default=50_000, help="agent steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=5, help="games per evaluation")
    parser.add_argument("--n-eval-envs", type=int, default=1, help="evaluation envs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first piece (piece i uses seed + i)")
    parser.add_argument("--device", default="auto", help="PyTorch device")
    parser.add_argument("--vec-env", default="dummy", choices=["dummy", "subproc"], help="zoo --vec-env")
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads (the zoo's --num-threads)")
    parser.add_argument("--verbose", type=int, default=0, help="SB3 verbosity")
    parser.add_argument("-params", "--hyperparams", nargs="+", action=StoreDict, default={}, help="key:value overrides")
    args = parser.parse_args(argv)
    for name in ("total_steps", "eval_freq", "eval_episodes", "n_eval_envs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_steps < 0 or not args.budget_min > 0 or args.save_margin_s < 0:
        parser.error(
            f"need --max-steps >= 0, --budget-min > 0, --save-margin-s >= 0; got {args.max_steps}, "
            f"{args.budget_min}, {args.save_margin_s}"
        )
    args.params = {**PRESET, **args.hyperparams}
    return args


def mark_seam(replay_buffer: Any) -> int | None:
    """
    Mark the last transition written in each env as truncated (``timeouts``), as SB3's buffers mark a time limit,
    unless it ended its episode; the next piece starts new episodes after it.

    :return: The buffer position marked, ``None`` for an empty buffer
    """
    if replay_buffer.pos == 0 and not replay_buffer.full:
        return None
    last = (replay_buffer.pos - 1) % replay_buffer.buffer_size
    ended = replay_buffer.dones[last].astype(bool)
    replay_buffer.timeouts[last] = np.logical_or(replay_buffer.timeouts[last], ~ended)
    return last


def new_state(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "algo": args.algo,
        "env": args.env,
        "total_steps": args.total_steps,
        "params": {
            key: value if isinstance(value, bool | int | float | str) else repr(value) for key, value in args.params.items()
        },
        "eval_freq": args.eval_freq,
        "eval_episodes": args.eval_episodes,
        "n_eval_envs": args.n_eval_envs,
        "num_timesteps": 0,
        "pieces": [],
        "evaluations": [],
    }


def load_state(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The record of the run in ``run_dir``, or a new one; a continuation with other settings is refused."""
    final, old = run_dir / "checkpoint", run_dir / "checkpoint.old"
    if not final.exists() and old.exists():
        old.rename(final)  # a save stopped between the two renames of save_checkpoint: the previous checkpoint
    path = final / STATE_FILE
    fresh = new_state(args)
    if not path.is_file():
        return fresh
    state = json.loads(path.read_text())
    for key in RUN_KEYS:
        if state[key] != fresh[key]:
            raise ValueError(
                f"{run_dir} holds a run with {key}={state[key]!r}, not {fresh[key]!r}: continue it with the same "
                "settings, or pass another --run-dir"
            )
    return state


def save_checkpoint(run_dir: Path, model: Any, state: dict[str, Any]) -> None:
    """Write model, replay buffer and record into ``checkpoint.new``, then swap it in for ``checkpoint``."""
    final, new, old = run_dir / "checkpoint", run_dir / "checkpoint.new", run_dir / "checkpoint.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    model.save(new / "model.zip")
    model.save_replay_buffer(new / "replay_buffer.pkl")
    (new / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def train_piece(args: argparse.Namespace, state: dict[str, Any], started: float) -> None:
    """Build (or load) the model through the zoo, train it until the budget is spent, save it, update ``state``."""
    import torch as th
    from rl_zoo3.exp_manager import ExperimentManager
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    import sb3_dqn_ext.zoo

    sb3_dqn_ext.zoo.register()  # the start-up hook does it too; explicit for python -S and the like
    if args.num_threads > 0:
        th.set_num_threads(args.num_threads)
    piece = len(state["pieces"])
    checkpoint = args.run_dir / "checkpoint" / "model.zip"
    seed = args.seed + piece
    # What the zoo saves as args.yml: plain values
    zoo_args = argparse.Namespace(
        **{key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    )
    manager = ExperimentManager(
        zoo_args,
        args.algo,
        args.env,
        str(args.run_dir / "zoo"),
        n_timesteps=args.total_steps,
        eval_freq=-1,  # evaluated here, at absolute step counts
        hyperparams=dict(args.params),
        trained_agent=str(checkpoint) if checkpoint.is_file() else "",
        seed=seed,
        log_interval=-1,
        verbose=args.verbose,
        vec_env_type=args.vec_env,
        device=args.device,
    )
    result = manager.setup_experiment()
    assert result is not None
    model: Any = result[0]  # one of this package's DQN classes
    if model.num_timesteps != state["num_timesteps"]:
        raise ValueError(f"{checkpoint} is at {model.num_timesteps} agent steps, its record at {state['num_timesteps']}")
    eval_env = manager.create_envs(args.n_eval_envs, eval_env=True)
    eval_env.seed(10_000 + seed)
    stop_at = started + 60 * args.budget_min - args.save_margin_s
    step_limit = args.total_steps if args.max_steps == 0 else min(args.total_steps, model.num_timesteps + args.max_steps)
    train_wall = sum(p["train_wall_s"] for p in state["pieces"])

    class Piece(BaseCallback):
        """Stops at the budget or the step limit; evaluates at absolute multiples of eval_freq and at the end."""

        def __init__(self) -> None:
            super().__init__()
            self.eval_time = 0.0
            self.last_eval_s = 0.0
            self.last_eval_at = state["evaluations"][-1]["timesteps"] if state["evaluations"] else 0

        def evaluate(self) -> None:
            begin = time.perf_counter()
            trained_s = train_wall + (begin - begun) - self.eval_time  # training time of the run so far
            rewards, lengths = evaluate_policy(
                self.model,
                eval_env,
                n_eval_episodes=args.eval_episodes,
                deterministic=manager.deterministic_eval,
                return_episode_rewards=True,
            )
            assert isinstance(rewards, list) and isinstance(lengths, list)  # with return_episode_rewards
            self.last_eval_s = time.perf_counter() - begin
            self.eval_time += self.last_eval_s
            self.last_eval_at = self.num_timesteps
            state["evaluations"].append(
                {
                    "timesteps": int(self.num_timesteps),
                    "mean_reward": float(np.mean(rewards)),
                    "std_reward": float(np.std(rewards)),
                    "episode_rewards": [float(r) for r in rewards],
                    "episode_lengths": [int(n) for n in lengths],
                    "train_wall_s": round(trained_s, 1),
                    "eval_wall_s": round(self.last_eval_s, 1),
                }
            )
            print(f"eval at {self.num_timesteps} agent steps: {np.mean(rewards):+.2f} +- {np.std(rewards):.2f}", flush=True)

        def _on_step(self) -> bool:
            if self.num_timesteps >= args.total_steps:
                if self.num_timesteps > self.last_eval_at:
                    self.evaluate()
                return True  # learn() ends by itself, after storing this step
            if self.num_timesteps // args.eval_freq > self.last_eval_at // args.eval_freq:
                self.evaluate()
            # Stop before the budget runs out, keeping room for an evaluation as long as the last one
            return self.num_timesteps < step_limit and time.perf_counter() + self.last_eval_s < stop_at

    callback = Piece()
    begun = time.perf_counter()
    start_steps = model.num_timesteps
    model.learn(args.total_steps - model.num_timesteps, callback=[*manager.callbacks, callback], reset_num_timesteps=False)
    wall = time.perf_counter() - begun
    model.env.close()
    eval_env.close()
    mark_seam(model.replay_buffer)
    steps = model.num_timesteps - start_steps
    device = model.device
    state["num_timesteps"] = int(model.num_timesteps)
    state["pieces"].append(
        {
            "piece": piece,
            "seed": seed,
            "start_timesteps": int(start_steps),
            "end_timesteps": int(model.num_timesteps),
            "train_wall_s": round(wall - callback.eval_time, 1),
            "eval_wall_s": round(callback.eval_time, 1),
            "steps_per_s": round(steps / max(wall - callback.eval_time, 1e-9), 1),
            "n_updates": int(model._n_updates),
            "exploration_rate": float(model.exploration_rate),
            "progress_remaining": float(model._current_progress_remaining),
            "device": str(device),
            "gpu": th.cuda.get_device_name(device) if device.type == "cuda" else None,
            "zoo_log_dir": str(Path(manager.save_path).relative_to(args.run_dir)),
        }
    )
    save_checkpoint(args.run_dir, model, state)


def write_results(args: argparse.Namespace, state: dict[str, Any]) -> None:
    """``pong.json`` (the record, with a summary) and ``pong.png`` (evaluation curve) in ``--results-dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluations = state["evaluations"]
    reached = [e["timesteps"] for e in evaluations if e["mean_reward"] >= GOAL_SCORE]
    pieces = state["pieces"]
    summary = {
        "status": "done" if state["num_timesteps"] >= state["total_steps"] else "running: run the same command again",
        "agent_steps": state["num_timesteps"],
        "frames": 4 * state["num_timesteps"],  # the zoo's AtariWrapper repeats each action 4 frames
        "last_eval_mean": evaluations[-1]["mean_reward"] if evaluations else None,
        "best_eval_mean": max(e["mean_reward"] for e in evaluations) if evaluations else None,
        "first_steps_at_goal": reached[0] if reached else None,
        "goal": f"mean evaluation score >= {GOAL_SCORE:+.0f} within {GOAL_STEPS} agent steps",
        "goal_met": bool(reached and reached[0] <= GOAL_STEPS),
        "train_wall_s": round(sum(p["train_wall_s"] for p in pieces), 1),
        "eval_wall_s": round(sum(p["eval_wall_s"] for p in pieces), 1),
        "steps_per_s_by_piece": [p["steps_per_s"] for p in pieces],
    }
    report = {
        "description": "PongNoFrameskip-v4 through rl-zoo3's ExperimentManager, continued across pieces (benchmarks/pong.py)",
        "command": "python benchmarks/pong.py " + " ".join(sys.argv[1:]),
        "summary": summary,
        **state,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": {package: metadata.version(package) for package in PACKAGES},
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.results_dir / "pong.json", args.results_dir / "pong.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    if evaluations:
        steps = np.array([e["timesteps"] for e in evaluations])
        mean = np.array([e["mean_reward"] for e in evaluations])
        std = np.array([e["std_reward"] for e in evaluations])
        ax.plot(steps, mean, marker="o", label=f"{state['algo']} ({state['params'].get('policy', 'zoo policy')})")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.axhline(GOAL_SCORE, color="grey", linestyle="--", label=f"goal {GOAL_SCORE:+.0f}")
    ax.axvline(GOAL_STEPS, color="grey", linestyle=":")
    ax.set(xlabel="agent steps", ylabel=f"mean score over {state['eval_episodes']} games", ylim=(-21.5, 21.5))
    ax.set_title(f"{state['env']}: {summary['agent_steps']} agent steps, {summary['train_wall_s'] / 60:.0f} min training")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    print(
        f"{summary['status']}: {summary['agent_steps']} / {state['total_steps']} agent steps, last evaluation "
        f"{summary['last_eval_mean']}. Wrote {json_path} and {png_path}"
    )


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    state = load_state(args.run_dir, args)
    if state["num_timesteps"] < args.total_steps:
        train_piece(args, state, started)
    write_results(args, state)


if __name__ == "__main__":
    main()
