"""
CartPole-v1 through rl-zoo3, with the shipped hyperparameter files unchanged: the acceptance check of the zoo
integration (mean evaluation reward >= 475 for every key).

Runs, for each key and seed, exactly what a user types, in a subprocess from a temporary directory (so a
checkout does not shadow the installed package)::

    python -m rl_zoo3.train --algo <key> --env CartPole-v1 --num-threads 1 --seed <seed> \\
        --eval-freq 5000 --eval-episodes 20 -f <tmp>

The zoo's ``EvalCallback`` evaluates the deterministic policy every ``--eval-freq`` steps on
``--eval-episodes`` episodes (``evaluations.npz``); the 50k-step budget is the file's ``n_timesteps``.
Records the command, seed, final and best mean evaluation reward and wall time of each run in a JSON file,
rewritten after every run::

    python benchmarks/zoo_cartpole.py --seeds 0 1 2
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

KEYS = ["double_dqn", "dueling_dqn", "per_dqn"]
REFERENCE = "dqn"  # the zoo's own DQN with its dqn.yml, for comparison (--algos dqn)
THRESHOLD = 475.0
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "zoo_cartpole.json"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", choices=[*KEYS, REFERENCE], default=KEYS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--eval-freq", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    versions = {name: metadata.version(name) for name in ("sb3-dqn-ext", "rl_zoo3", "stable_baselines3", "torch", "gymnasium")}
    report: dict[str, Any] = {
        "description": "python -m rl_zoo3.train --algo <key> --env CartPole-v1 with the shipped hyperparams/<key>.yml "
        f"(50k steps); final/best: mean reward of the deterministic policy over {args.eval_episodes} episodes at the "
        f"last/best of the evaluations every {args.eval_freq} steps",
        "threshold": THRESHOLD,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "device": "cpu, 1 torch thread"},
        "versions": versions,
        "runs": [],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for algo in args.algos:
        for seed in args.seeds:
            record = run(algo, seed, args.eval_freq, args.eval_episodes)
            report["runs"].append(record)
            args.output.write_text(json.dumps(report, indent=2) + "\n")
            print(
                f"{algo:12s} seed={seed} final={record.get('final_mean_reward')} best={record.get('best_mean_reward')} "
                f"wall={record['wall_time_s']}s rc={record['returncode']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
