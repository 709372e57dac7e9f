"""
Learning curves on CartPole-v1 with the shipped zoo hyperparameters: each class of this package and SB3's DQN.

Each (class, seed) run trains with ``hyperparams/<key>.yml`` (rl-zoo3's own ``dqn.yml`` for SB3's DQN), section
``CartPole-v1``, and evaluates the deterministic policy every ``--eval-freq`` steps over ``--eval-episodes``
episodes on a separate, separately seeded environment. Results: ``benchmarks/results/learning_cartpole.json``
(every curve, final and best scores, the seeds reaching CartPole-v1's reward threshold, 475) and
``benchmarks/results/learning_cartpole.png`` (mean and min-max band per class).

    python benchmarks/learning.py                 # 5 seeds, 50k steps each, 2 processes
    python benchmarks/learning.py --seeds 0 --timesteps 5000 --workers 1    # smoke run
"""

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import RESULTS_DIR, run_metadata, save_figure, write_json

ROOT = Path(__file__).resolve().parent.parent
ALGOS = {"dqn": "DQN", "double_dqn": "DoubleDQN", "dueling_dqn": "DuelingDQN", "per_dqn": "PrioritizedDQN"}
THRESHOLD = 475.0  # CartPole-v1's reward_threshold in Gymnasium
# Keys the zoo consumes itself rather than passing to the algorithm
ZOO_ONLY_KEYS = {"n_timesteps", "policy", "n_envs", "env_wrapper", "frame_stack", "normalize", "callback", "vec_env_wrapper"}


def load_section(path: Path, section: str) -> tuple[str, int, dict[str, Any]]:
    """
    ``(policy, n_timesteps, kwargs)`` of one section of a zoo hyperparameter file; the strings the zoo evaluates
    (``policy_kwargs``, ``replay_buffer_kwargs``) are evaluated the same way.
    """
    from torch import nn

    hyperparams = dict(yaml.safe_load(path.read_text())[section])
    policy, n_timesteps = hyperparams.pop("policy", "MlpPolicy"), int(hyperparams.pop("n_timesteps"))
    kwargs = {key: value for key, value in hyperparams.items() if key not in ZOO_ONLY_KEYS}
    for key, value in kwargs.items():
        if key.endswith("_kwargs") and isinstance(value, str):
            kwargs[key] = eval(value, {"dict": dict, "nn": nn})
    return policy, n_timesteps, kwargs


def run(key: str, seed: int, timesteps: int | None, eval_freq: int, eval_episodes: int) -> dict[str, Any]:
    """One training run in its own process: returns its evaluation curve."""
    import rl_zoo3
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
    from stable_baselines3.common.env_util import make_vec_env

    import sb3_dqn_ext

    cls = DQN if key == "dqn" else getattr(sb3_dqn_ext, ALGOS[key])
    zoo_file = Path(rl_zoo3.__file__).parent / "hyperparams" / "dqn.yml"
    path = zoo_file if key == "dqn" else ROOT / "hyperparams" / f"{key}.yml"
    policy, n_timesteps, kwargs = load_section(path, "CartPole-v1")
    timesteps = timesteps or n_timesteps
    model = cls(policy, make_vec_env("CartPole-v1", n_envs=1, seed=seed), seed=seed, **kwargs)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 10_000)
    steps: list[int] = []
    means: list[float] = []

    class Record(BaseCallback):
        """Called by EvalCallback after each evaluation (its history is only kept with a log_path)."""

        def _on_step(self) -> bool:
            assert isinstance(self.parent, EvalCallback)
            steps.append(int(self.num_timesteps))
            means.append(float(self.parent.last_mean_reward))
            return True

    callback = EvalCallback(
        eval_env,
        n_eval_episodes=eval_episodes,
        eval_freq=eval_freq,
        deterministic=True,
        callback_after_eval=Record(),
        verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps, callback=callback)
    wall = time.perf_counter() - start
    return {
        "algo": key,
        "class": ALGOS[key],
        "seed": seed,
        "hyperparams_file": str(path.relative_to(ROOT)) if key != "dqn" else "rl_zoo3/hyperparams/dqn.yml",
        "timesteps": timesteps,
        "eval_timesteps": steps,
        "eval_mean_rewards": means,
        "final_eval": means[-1] if means else None,
        "best_eval": max(means) if means else None,
        "wall_time_s": wall,
    }


def plot(runs: list[dict[str, Any]], results_dir: Path) -> None:
    """Evaluation return against steps: mean and min-max band over seeds, per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ALGOS:
        curves = [r for r in runs if r["algo"] == key]
        if not curves:
            continue
        steps = curves[0]["eval_timesteps"]
        rewards = np.array([c["eval_mean_rewards"] for c in curves])
        ax.plot(steps, rewards.mean(axis=0), label=f"{ALGOS[key]} ({len(curves)} seeds)")
        ax.fill_between(steps, rewards.min(axis=0), rewards.max(axis=0), alpha=0.15)
    ax.axhline(THRESHOLD, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (deterministic)")
    ax.set_title("CartPole-v1, rl-zoo3 DQN hyperparameters: mean and min-max over seeds")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, "learning_cartpole", results_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--timesteps", type=int, default=None, help="default: the YAML's n_timesteps (5e4)")
    parser.add_argument("--eval-freq", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = parser.parse_args()

    json_path = args.results_dir / "learning_cartpole.json"
    # Resume: keep the runs already recorded with the same settings, run the others
    runs: list[dict[str, Any]] = []
    if args.resume and json_path.exists():
        previous = json.loads(json_path.read_text())
        runs = [r for r in previous["runs"] if r["algo"] in args.algos and r["seed"] in args.seeds]
    done = {(r["algo"], r["seed"]) for r in runs}
    jobs = [(key, seed) for seed in args.seeds for key in args.algos if (key, seed) not in done]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {
            pool.submit(run, key, seed, args.timesteps, args.eval_freq, args.eval_episodes): (key, seed) for key, seed in jobs
        }
        for future in as_completed(futures):
            result = future.result()
            runs.append(result)
            print(
                f"{result['class']:15s} seed {result['seed']}: final {result['final_eval']:.1f}, "
                f"best {result['best_eval']:.1f}, {result['wall_time_s']:.0f} s",
                flush=True,
            )
            write(args, runs, start)  # after every run, so an interrupted benchmark keeps its results
    write(args, runs, start)
    plot(runs, args.results_dir)
    for name, row in summarize(runs, args.algos).items():
        print(
            f"{name:15s} final {row['final_eval_mean']:.1f} +/- {row['final_eval_std']:.1f}; "
            f"seeds reaching 475: {row['seeds_reaching_475_within_budget']}/{row['n_seeds']}"
        )
    print(f"results written to {json_path} and {json_path.with_suffix('.png')}")


def summarize(runs: list[dict[str, Any]], algos: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: final and best scores, seeds reaching the threshold."""
    summary = {}
    for key in algos:
        mine = sorted((r for r in runs if r["algo"] == key), key=lambda r: r["seed"])
        if not mine:
            continue
        finals = [r["final_eval"] for r in mine]
        bests = [r["best_eval"] for r in mine]
        summary[ALGOS[key]] = {
            "n_seeds": len(mine),
            "seeds": [r["seed"] for r in mine],
            "final_eval_mean": statistics.mean(finals),
            "final_eval_std": statistics.pstdev(finals),
            "final_eval_per_seed": finals,
            "best_eval_per_seed": bests,
            "seeds_reaching_475_within_budget": sum(b >= THRESHOLD for b in bests),
            "seeds_at_475_at_the_end": sum(f >= THRESHOLD for f in finals),
        }
    return summary


def write(args: argparse.Namespace, runs: list[dict[str, Any]], start: float) -> None:
    """Write ``learning_cartpole.json``: the run's metadata, settings, summary and every run."""
    report = run_metadata(packages=("rl_zoo3", "gymnasium"))
    report["torch_threads"] = 1  # each run sets it in its own process
    report["settings"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    report["wall_time_s_this_invocation"] = time.perf_counter() - start
    report.update(summary=summarize(runs, args.algos), runs=runs)
    write_json(report, "learning_cartpole", args.results_dir)


if __name__ == "__main__":
    main()
