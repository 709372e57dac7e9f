"""
Training throughput of DoubleDQN, DuelingDQN and PrioritizedDQN against SB3's DQN, as ratios.

Same configuration for every class (rl-zoo3's DQN settings for the environment, the dueling network only where
the class brings it), interleaved in one process: each round builds one model per class (same seed), fills its
buffer untimed (``learning_starts``), then trains all of them slice by slice, ``--slice-steps`` environment steps
per class in a shuffled order, until each has run ``--steps`` timed steps, so that machine noise (strong and slow
on a shared VM: whole runs of the same class and seed varied by 1.5x here) hits all alike. Each slice is a
``learn(slice_steps, reset_num_timesteps=False)`` call, so the exploration, beta and learning-rate schedules sit
near their final values, the same for every class. Reported: per class, the median env-steps/s over rounds and
the median over rounds of the per-round ratio to DQN (summed slice times), in wall-clock time and in process CPU time
(which leaves out the time spent waiting for a core on a shared machine), checked against the targets
(DoubleDQN >= 0.98x, DuelingDQN >= 0.95x, PrioritizedDQN >= 0.90x of DQN); JSON and a PNG plot of the per-round
ratios go to ``benchmarks/results/throughput_<env>[_<device>].{json,png}``.

Each class runs with its defaults, as a user gets them: the classes of this package use PyTorch's foreach Adam (same
updates as the per-tensor loop SB3's DQN gets on the CPU, cheaper; see ``BaseDQN``), recorded under ``optimizers``
in the JSON. ``--same-optimizer`` gives every class DQN's implementation instead, which leaves only the cost of the
algorithms (and of this package's other, implementation-only, savings) in the ratios.

    python benchmarks/throughput.py                          # CPU, CartPole-v1 zoo configuration
    python benchmarks/throughput.py --same-optimizer         # every class with DQN's optimizer implementation
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
# Issue 5's targets: steps/s of each class at least this fraction of DQN's (on CPU; on GPU at least DQN's speed)
CPU_TARGETS = {"DoubleDQN": 0.98, "DuelingDQN": 0.95, "PrioritizedDQN": 0.90}


def make_env(env_id: str, seed: int) -> VecEnv:
    if "NoFrameskip" in env_id:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        return VecFrameStack(make_atari_env(env_id, n_envs=1, seed=seed), n_stack=4)
    return make_vec_env(env_id, n_envs=1, seed=seed)


def make_model(
    cls: type[DQN], env_id: str, section: str, steps: int, device: str, seed: int, same_optimizer: bool = False
) -> DQN:
    """
    A model with the zoo settings of ``section``, its buffer filled up to ``learning_starts`` (untimed).

    ``same_optimizer``: give the classes of this package ``optimizer_kwargs=dict(foreach=None)``, PyTorch's own choice
    of implementation, which SB3's DQN uses (they default to ``foreach=True``).
    """
    policy, _, kwargs = load_section(zoo_dqn_file(), section)
    if same_optimizer and cls is not DQN:
        policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
        policy_kwargs["optimizer_kwargs"] = {**policy_kwargs.get("optimizer_kwargs", {}), "foreach": None}
        kwargs["policy_kwargs"] = policy_kwargs
    # Training starts after learning_starts: time only the part where gradient steps happen
    kwargs["learning_starts"] = min(kwargs.get("learning_starts", 100), steps // 10)
    model = cls(policy, make_env(env_id, seed), device=device, seed=seed, **kwargs)
    model.learn(total_timesteps=kwargs["learning_starts"])
    return model


def timed_slice(model: DQN, steps: int, device: str) -> tuple[float, float]:
    """Train ``model`` for ``steps`` more environment steps: (wall, CPU) seconds."""
    if device.startswith("cuda"):
        th.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    if device.startswith("cuda"):
        th.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def plot(summary: dict[str, Any], targets: dict[str, float], title: str, path: Path) -> None:
    """Per-round ratios to DQN (dots: wall clock, crosses: CPU time), medians (bars) and targets (dashes)."""
    import matplotlib

    matplotlib.use("Agg")  # write files only, no display
    import matplotlib.pyplot as plt

    names = [name for name in summary if name != "DQN" and summary[name]["ratios_to_dqn"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, name in enumerate(names):
        ax.bar(x, summary[name]["median_ratio_to_dqn"], width=0.6, color="#9ecae1", label="median (wall)" if x == 0 else None)
        ratios, cpu_ratios = summary[name]["ratios_to_dqn"], summary[name]["cpu_ratios_to_dqn"]
        ax.scatter([x - 0.1] * len(ratios), ratios, color="#08519c", s=14, label="rounds (wall)" if x == 0 else None)
        ax.scatter(
            [x + 0.1] * len(cpu_ratios),
            cpu_ratios,
            color="#d95f0e",
            marker="x",
            s=18,
            label="rounds (CPU)" if x == 0 else None,
        )
        if name in targets:
            ax.hlines(
                targets[name], x - 0.35, x + 0.35, colors="k", linestyles="--", label="target" if x == 0 else "_nolegend_"
            )
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("env steps/s relative to SB3 DQN")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=4096, help="timed environment steps per class and round")
    parser.add_argument("--slice-steps", type=int, default=512, help="environment steps per class between switches")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (fresh models, seed = round index)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    parser.add_argument(
        "--same-optimizer",
        action="store_true",
        help="every class with the optimizer implementation of SB3's DQN (PyTorch's per-tensor Adam on the CPU): "
        "isolates the cost of the algorithms; results in throughput_<env>_same_optimizer.{json,png}",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    th.set_num_threads(args.threads)
    section = "atari" if "NoFrameskip" in args.env else args.env
    rates: dict[str, list[float]] = {name: [] for name in args.classes}
    ratios: dict[str, list[float]] = {name: [] for name in args.classes}
    cpu_rates: dict[str, list[float]] = {name: [] for name in args.classes}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in args.classes}
    load_start = os.getloadavg()
    n_slices = -(-args.steps // args.slice_steps)
    timed_steps = n_slices * args.slice_steps
    optimizers: dict[str, dict[str, Any]] = {}
    for round_index in range(args.rounds):
        models = {
            name: make_model(CLASSES[name], args.env, section, timed_steps, args.device, round_index, args.same_optimizer)
            for name in args.classes
        }
        for name, model in models.items():
            group = model.policy.optimizer.param_groups[0]
            optimizers[name] = {"class": type(model.policy.optimizer).__name__, "foreach": group.get("foreach")}
        wall = dict.fromkeys(args.classes, 0.0)
        cpu = dict.fromkeys(args.classes, 0.0)
        for slice_index in range(n_slices):
            order = list(args.classes)
            random.Random(round_index * 100_003 + slice_index).shuffle(order)
            for name in order:
                slice_wall, slice_cpu = timed_slice(models[name], args.slice_steps, args.device)
                wall[name] += slice_wall
                cpu[name] += slice_cpu
        del models
        for name in args.classes:
            rates[name].append(timed_steps / wall[name])
            cpu_rates[name].append(timed_steps / cpu[name])
            if "DQN" in wall:
                ratios[name].append(wall["DQN"] / wall[name])
                cpu_ratios[name].append(cpu["DQN"] / cpu[name])
        print(
            f"round {round_index + 1}/{args.rounds}: "
            + ", ".join(f"{n} {timed_steps / wall[n]:.0f} (cpu {timed_steps / cpu[n]:.0f})" for n in args.classes)
            + " steps/s"
        )

    summary: dict[str, dict[str, Any]] = {
        name: {
            "median_steps_per_s": statistics.median(rates[name]),
            "median_ratio_to_dqn": statistics.median(ratios[name]) if ratios[name] else None,
            "steps_per_s": rates[name],
            "ratios_to_dqn": ratios[name],
            "median_cpu_steps_per_s": statistics.median(cpu_rates[name]),
            "median_cpu_ratio_to_dqn": statistics.median(cpu_ratios[name]) if cpu_ratios[name] else None,
            "cpu_steps_per_s": cpu_rates[name],
            "cpu_ratios_to_dqn": cpu_ratios[name],
        }
        for name in args.classes
    }
    # On a GPU the target is DQN's speed for every class
    targets = CPU_TARGETS if args.device == "cpu" else dict.fromkeys(CPU_TARGETS, 1.0)
    target_check = {
        name: {
            "target_ratio": target,
            "median_ratio": summary[name]["median_ratio_to_dqn"],
            "met": summary[name]["median_ratio_to_dqn"] >= target,
            "median_cpu_ratio": summary[name]["median_cpu_ratio_to_dqn"],
            "cpu_met": summary[name]["median_cpu_ratio_to_dqn"] >= target,
        }
        for name, target in targets.items()
        if name in summary and summary[name]["median_ratio_to_dqn"] is not None
    }
    device_name = th.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    result: dict[str, Any] = {
        "command": "python benchmarks/throughput.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
            for k, v in vars(args).items()
            if k not in ("classes", "results_dir") and v is not False
        ),
        "env": args.env,
        "zoo_section": section,
        "timed_steps_per_run": timed_steps,
        "slice_steps": args.slice_steps,
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
        "optimizers": optimizers,
        "summary": summary,
        "targets": target_check,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    tag = args.env.split("NoFrameskip")[0].lower().replace("-v1", "") + (
        "_" + args.device.replace(":", "") if args.device != "cpu" else ""
    )
    if args.same_optimizer:
        tag += "_same_optimizer"
    path = args.results_dir / f"throughput_{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot_path = path.with_suffix(".png")
    title = f"{args.env} (zoo '{section}' settings), {args.device}, {args.rounds} rounds of {timed_steps} steps per class"
    if args.same_optimizer:
        title += "\nevery class with DQN's optimizer implementation (per-tensor Adam)"
    plot(summary, targets, title, plot_path)
    for name in args.classes:
        ratio, cpu_ratio = summary[name]["median_ratio_to_dqn"], summary[name]["median_cpu_ratio_to_dqn"]
        steps_per_s = summary[name]["median_steps_per_s"]
        print(f"{name:15s} {steps_per_s:7.0f} steps/s  ratio to DQN {ratio:.3f} (CPU time {cpu_ratio:.3f})")
    print(f"targets: {json.dumps(target_check)}")
    print(f"results written to {path} and {plot_path}")


if __name__ == "__main__":
    main()
