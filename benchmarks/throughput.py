"""
Training throughput of DoubleDQN, DuelingDQN and PrioritizedDQN against SB3's DQN, as ratios.

Same configuration for every class (rl-zoo3's DQN settings for the environment, the dueling network only where
the class brings it), interleaved in one process: each round trains every class once for the same number of
steps, in a shuffled order, so that machine noise hits all alike. Reported: per class, the median env-steps/s
over rounds and the median over rounds of the per-round ratio to DQN.

    python benchmarks/throughput.py                          # CPU, CartPole-v1 zoo configuration
    python benchmarks/throughput.py --device cuda --env PongNoFrameskip-v4 --steps 20000   # on a GPU
"""

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import stable_baselines3 as sb3
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

import sb3_dqn_ext
from benchmarks.zoo_config import load_section, zoo_dqn_file
from sb3_dqn_ext import DoubleDQN, DuelingDQN, PrioritizedDQN

CLASSES: dict[str, type[DQN]] = {
    "DQN": DQN,
    "DoubleDQN": DoubleDQN,
    "DuelingDQN": DuelingDQN,
    "PrioritizedDQN": PrioritizedDQN,
}
RESULTS = Path(__file__).resolve().parent / "results"


def make_env(env_id: str, seed: int) -> VecEnv:
    if "NoFrameskip" in env_id:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        return VecFrameStack(make_atari_env(env_id, n_envs=1, seed=seed), n_stack=4)
    return make_vec_env(env_id, n_envs=1, seed=seed)


def steps_per_second(cls: type[DQN], env_id: str, section: str, steps: int, device: str, seed: int) -> float:
    policy, _, kwargs = load_section(zoo_dqn_file(), section)
    # Training starts after learning_starts: time only the part where gradient steps happen
    kwargs["learning_starts"] = min(kwargs.get("learning_starts", 100), steps // 10)
    model = cls(policy, make_env(env_id, seed), device=device, seed=seed, **kwargs)
    model.learn(total_timesteps=kwargs["learning_starts"])  # fill the buffer, untimed
    if device.startswith("cuda"):
        th.cuda.synchronize()
    start = time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    if device.startswith("cuda"):
        th.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=6000, help="timed environment steps per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    th.set_num_threads(args.threads)
    section = "atari" if "NoFrameskip" in args.env else args.env
    rates: dict[str, list[float]] = {name: [] for name in args.classes}
    ratios: dict[str, list[float]] = {name: [] for name in args.classes}
    load_start = os.getloadavg()
    for round_index in range(args.rounds):
        order = list(args.classes)
        random.Random(round_index).shuffle(order)
        round_rates = {
            name: steps_per_second(CLASSES[name], args.env, section, args.steps, args.device, round_index) for name in order
        }
        for name in args.classes:
            rates[name].append(round_rates[name])
            if "DQN" in round_rates:
                ratios[name].append(round_rates[name] / round_rates["DQN"])
        print(
            f"round {round_index + 1}/{args.rounds}: " + ", ".join(f"{n} {r:.0f}" for n, r in round_rates.items()) + " steps/s"
        )

    summary = {
        name: {
            "median_steps_per_s": statistics.median(rates[name]),
            "median_ratio_to_dqn": statistics.median(ratios[name]) if ratios[name] else None,
            "steps_per_s": rates[name],
            "ratios_to_dqn": ratios[name],
        }
        for name in args.classes
    }
    device_name = th.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    result: dict[str, Any] = {
        "command": "python benchmarks/throughput.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("classes", "results_dir")),
        "env": args.env,
        "zoo_section": section,
        "timed_steps_per_run": args.steps,
        "rounds": args.rounds,
        "device": args.device,
        "device_name": device_name,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_start_end": [load_start, os.getloadavg()],
        "versions": {
            "sb3_dqn_ext": sb3_dqn_ext.__version__,
            "stable_baselines3": sb3.__version__,
            "torch": th.__version__,
            "numpy": np.__version__,
        },
        "summary": summary,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    tag = args.env.split("NoFrameskip")[0].lower().replace("-v1", "") + (
        "_" + args.device.replace(":", "") if args.device != "cpu" else ""
    )
    path = args.results_dir / f"throughput_{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for name in args.classes:
        ratio = summary[name]["median_ratio_to_dqn"]
        print(f"{name:15s} {summary[name]['median_steps_per_s']:7.0f} steps/s  ratio to DQN {ratio:.3f}")
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
