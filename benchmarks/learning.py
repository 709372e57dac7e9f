"""
Learning curves on CartPole-v1 with the shipped zoo hyperparameters: each class of this package and SB3's DQN.

Each (class, seed) run trains with ``hyperparams/<key>.yml`` (rl-zoo3's own ``dqn.yml`` for SB3's DQN), section
``CartPole-v1``, and evaluates the deterministic policy every ``--eval-freq`` steps over ``--eval-episodes``
episodes on a separate, separately seeded environment. Results: ``benchmarks/results/learning_cartpole.json``
(every curve, final and best scores, the ">= 475 on at least 4 of 5 seeds" check) and
``benchmarks/results/learning_cartpole.png`` (mean and min-max band per class).

    python benchmarks/learning.py                 # 5 seeds, 50k steps each, 2 processes
    python benchmarks/learning.py --seeds 0 --timesteps 5000 --workers 1    # smoke run
"""

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
ALGOS = {"dqn": "DQN", "double_dqn": "DoubleDQN", "dueling_dqn": "DuelingDQN", "per_dqn": "PrioritizedDQN"}
THRESHOLD = 475.0


def run(key: str, seed: int, timesteps: int | None, eval_freq: int, eval_episodes: int) -> dict[str, Any]:
    """One training run in its own process: returns its evaluation curve."""
    import torch as th

    th.set_num_threads(1)
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
    from stable_baselines3.common.env_util import make_vec_env

    import sb3_dqn_ext
    from benchmarks.zoo_config import load_section, zoo_dqn_file

    cls = DQN if key == "dqn" else getattr(sb3_dqn_ext, ALGOS[key])
    path = zoo_dqn_file() if key == "dqn" else ROOT / "hyperparams" / f"{key}.yml"
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


def plot(runs: list[dict[str, Any]], path: Path) -> None:
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
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--timesteps", type=int, default=None, help="default: the YAML's n_timesteps (5e4)")
    parser.add_argument("--eval-freq", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = parser.parse_args()

    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / "learning_cartpole.json"
    png_path = args.results_dir / "learning_cartpole.png"
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
            write(args, runs, json_path, start)  # after every run, so an interrupted benchmark keeps its results
    write(args, runs, json_path, start)
    plot(runs, png_path)
    for name, row in summarize(runs, args.algos).items():
        print(
            f"{name:15s} final {row['final_eval_mean']:.1f} +/- {row['final_eval_std']:.1f}; "
            f"seeds reaching 475: {row['seeds_reaching_475_within_budget']}/{row['n_seeds']}"
        )
    print(f"results written to {json_path} and {png_path}")


def summarize(runs: list[dict[str, Any]], algos: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: final scores, seeds reaching the threshold, the 4-of-5 check."""
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
            "meets_4_of_5": sum(b >= THRESHOLD for b in bests) >= 4 if len(mine) == 5 else None,
        }
    return summary


def write(args: argparse.Namespace, runs: list[dict[str, Any]], path: Path, start: float) -> None:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {
        "command": "python benchmarks/learning.py",
        "settings": settings,
        "cpu_count": os.cpu_count(),
        "wall_time_s_this_invocation": time.perf_counter() - start,
        "summary": summarize(runs, args.algos),
        "runs": runs,
    }
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
