"""
CartPole-v1 through rl-zoo3, with the shipped hyperparameter files unchanged: the acceptance check of the zoo
integration (mean evaluation reward >= 475 for every key).

Runs, for each key and seed, exactly what a user types, in a subprocess from a temporary directory (so a
checkout does not shadow the installed package)::

    python -m rl_zoo3.train --algo <key> --env CartPole-v1 --num-threads 1 --seed <seed> \\
        --eval-freq 5000 --eval-episodes 20 -f <tmp>

The zoo's ``EvalCallback`` evaluates the deterministic policy every ``--eval-freq`` steps on
``--eval-episodes`` episodes (``evaluations.npz``); the 50k-step budget is the file's ``n_timesteps``.
Records the command, seed, final and best mean evaluation reward and wall time of each run, and a summary per
key, in ``benchmarks/results/zoo_cartpole.json``, rewritten after every run::

    python benchmarks/zoo_cartpole.py --seeds 0 1 2
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import RESULTS_DIR, run_metadata, write_json

KEYS = ["double_dqn", "dueling_dqn", "per_dqn"]
REFERENCE = "dqn"  # the zoo's own DQN with its dqn.yml, for comparison (--algos dqn)
THRESHOLD = 475.0  # CartPole-v1's reward_threshold in Gymnasium


def train_command(algo: str, seed: int, log_folder: str, eval_freq: int, eval_episodes: int) -> list[str]:
    """The zoo command of one run; the hyperparameters come from the shipped file, nothing is overridden."""
    return [
        sys.executable,
        "-m",
        "rl_zoo3.train",
        "--algo",
        algo,
        "--env",
        "CartPole-v1",
        "--num-threads",
        "1",
        "--seed",
        str(seed),
        "--eval-freq",
        str(eval_freq),
        "--eval-episodes",
        str(eval_episodes),
        "-f",
        log_folder,
    ]


def run(algo: str, seed: int, eval_freq: int, eval_episodes: int) -> dict[str, Any]:
    """Train one key with one seed and read its evaluations back."""
    with tempfile.TemporaryDirectory(prefix=f"zoo_cartpole_{algo}_") as tmp:
        command = train_command(algo, seed, "logs", eval_freq, eval_episodes)
        start = time.perf_counter()
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        wall_time = time.perf_counter() - start
        record: dict[str, Any] = {
            "algo": algo,
            "seed": seed,
            "command": " ".join(["python", *command[1:-1], "<tmp>/logs"]),
            "returncode": result.returncode,
            "wall_time_s": round(wall_time, 1),
        }
        if result.returncode != 0:
            record["stderr_tail"] = result.stderr[-2000:]
            return record
        (run_path,) = Path(tmp, "logs", algo).glob("CartPole-v1_*")
        config_line = next(line for line in result.stdout.splitlines() if line.startswith("Loading hyperparameters from:"))
        # The hyperparameters the zoo used, as it saved them (an OrderedDict, hence the unsafe loader, as in the zoo)
        with open(run_path / "CartPole-v1" / "config.yml") as file:
            hyperparams = dict(yaml.load(file, Loader=yaml.UnsafeLoader))
        evaluations = np.load(run_path / "evaluations.npz")
        mean_rewards = evaluations["results"].mean(axis=1)
        record.update(
            hyperparams_file=config_line.split(":", 1)[1].strip(),
            hyperparams=hyperparams,
            eval_timesteps=evaluations["timesteps"].tolist(),
            eval_mean_rewards=[round(float(reward), 1) for reward in mean_rewards],
            final_mean_reward=round(float(mean_rewards[-1]), 1),
            final_std_reward=round(float(evaluations["results"][-1].std()), 1),
            best_mean_reward=round(float(mean_rewards.max()), 1),
        )
        record["reached_threshold"] = record["final_mean_reward"] >= THRESHOLD
        return record


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per key: the final and best mean evaluation rewards of its seeds, and how many reach the threshold."""
    summary: dict[str, dict[str, Any]] = {}
    for algo in dict.fromkeys(run["algo"] for run in runs if run["returncode"] == 0):
        mine = [run for run in runs if run["algo"] == algo and run["returncode"] == 0]
        finals, bests = [run["final_mean_reward"] for run in mine], [run["best_mean_reward"] for run in mine]
        summary[algo] = {
            "seeds": [run["seed"] for run in mine],
            "final_mean_rewards": finals,
            "best_mean_rewards": bests,
            "mean_final_over_seeds": round(statistics.mean(finals), 1),
            "seeds_reaching_475": sum(best >= THRESHOLD for best in bests),
            "seeds_ending_at_or_above_475": sum(final >= THRESHOLD for final in finals),
            "wall_time_s": [run["wall_time_s"] for run in mine],
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", choices=[*KEYS, REFERENCE], default=KEYS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--eval-freq", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    report: dict[str, Any] = run_metadata(packages=("rl_zoo3", "gymnasium"))
    report["torch_threads"] = 1  # --num-threads 1 in every zoo run
    report["description"] = (
        "python -m rl_zoo3.train --algo <key> --env CartPole-v1 with the shipped hyperparams/<key>.yml "
        f"(50k steps); final/best: mean reward of the deterministic policy over {args.eval_episodes} episodes at the "
        f"last/best of the evaluations every {args.eval_freq} steps"
    )
    report.update(threshold=THRESHOLD, summary={}, runs=[])
    for algo in args.algos:
        for seed in args.seeds:
            record = run(algo, seed, args.eval_freq, args.eval_episodes)
            report["runs"].append(record)
            report["summary"] = summarize(report["runs"])
            write_json(report, "zoo_cartpole", args.results_dir)
            print(
                f"{algo:12s} seed={seed} final={record.get('final_mean_reward')} best={record.get('best_mean_reward')} "
                f"wall={record['wall_time_s']}s rc={record['returncode']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
