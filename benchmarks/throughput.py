"""
Training throughput of DoubleDQN, DuelingDQN and PrioritizedDQN against SB3's DQN, as ratios.

Each class is built as ``python -m rl_zoo3.train --algo <key> --env <env>`` builds it (rl-zoo3's ``ExperimentManager``:
the key's hyperparameter file, its env wrappers and frame stack): ``hyperparams/<key>.yml`` for ours, the zoo's own
``dqn.yml`` for SB3's ``DQN``. On CartPole-v1 the files differ only by ``per_dqn``'s learning rate, which does not change
the work per step; on Atari (their ``atari`` sections) ours replay 1e6 transitions with ``optimize_memory_usage=True``,
the zoo's DQN 1e5 without. ``-params key:value ...`` (the zoo's syntax) overrides the files for every contender.

The contenders are interleaved in one process, so that machine noise (strong and slow on a shared VM: whole runs of the
same class and seed varied by 1.5x here) hits all alike: each round builds one model per contender (seed = round index),
fills its buffer untimed (``learning_starts``, at most a tenth of the timed steps), then trains all of them slice by
slice, ``--slice-steps`` environment steps per contender in a shuffled order, until each has run ``--steps`` timed
steps. Each slice is a ``learn(slice_steps, reset_num_timesteps=False)`` call, so the exploration, beta and
learning-rate schedules sit near their final values, the same for every contender. Reported: per contender, the median
env-steps/s over rounds and the median over rounds of the per-round ratio to the reference (the first contender: DQN by
default; higher is faster), in wall-clock time and in process CPU time (which leaves out the time spent waiting for a
core on a shared machine). Every class uses DQN's optimizer, as a user gets it (recorded under ``optimizers``).

``--optimize-memory-usage true false`` runs each class with both settings side by side (``auto``: the file's value).
``--profile`` adds, per contender, a ``torch.profiler`` table of one ``train()`` call of the last round's model and
the number of operations in it that make the host wait for the device (``.item()``, copies to the host, masks).
JSON and a PNG plot of the per-round ratios go to ``benchmarks/results/throughput_<env>[_<device>][_optimize_memory_usage]``.

    python benchmarks/throughput.py                               # CPU, CartPole-v1, DQN and the three classes
    python benchmarks/throughput.py --env PongNoFrameskip-v4 --classes PrioritizedDQN --optimize-memory-usage false \\
        true --steps 2048 --slice-steps 256 --rounds 3 -params buffer_size:100000    # cost of the frame storage, CPU
    python benchmarks/throughput.py --device cuda --env PongNoFrameskip-v4 --steps 20000 --profile       # on a GPU
"""

import argparse
import contextlib
import io
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch as th
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.utils import StoreDict
from stable_baselines3 import DQN
from stable_baselines3.common.type_aliases import TrainFreq

import sb3_dqn_ext.zoo
from benchmarks.common import RESULTS_DIR, cpu_model, run_metadata, save_figure, write_json

# Contender class -> zoo key (hyperparams/<key>.yml, or the zoo's dqn.yml)
CLASSES = {"DQN": "dqn", "DoubleDQN": "double_dqn", "DuelingDQN": "dueling_dqn", "PrioritizedDQN": "per_dqn"}
MEMORY_SETTINGS: dict[str, bool | None] = {"auto": None, "true": True, "false": False}
# Profiler events at which the host waits for the device: .item() (its kernel), boolean masks, explicit synchronizations
HOST_SYNCS = ("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize", "cudaDeviceSynchronize")


def make_model(
    key: str, memory: bool | None, seed: int, timed_steps: int, args: argparse.Namespace, log_dir: str
) -> tuple[DQN, dict[str, Any]]:
    """
    The zoo's model of ``key`` for ``args.env``, its buffer filled up to ``learning_starts`` (untimed), and the
    hyperparameters the zoo read (as it saves them in ``config.yml``).
    """
    hyperparams = dict(args.hyperparams)
    if memory is not None:
        hyperparams["optimize_memory_usage"] = memory
        if memory and key == "dqn":  # SB3's buffer cannot also handle timeouts (the zoo's dqn.yml says so)
            hyperparams["replay_buffer_kwargs"] = dict(handle_timeout_termination=False)
    manager = ExperimentManager(
        argparse.Namespace(),
        key,
        args.env,
        log_dir,
        hyperparams=hyperparams,
        eval_freq=-1,
        seed=seed,
        verbose=0,
        device=args.device,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the zoo prints its settings
        result = manager.setup_experiment()
    assert result is not None  # None only when optimizing hyperparameters
    model, saved_hyperparams = result
    assert isinstance(model, DQN)
    # Training starts after learning_starts: time only the part where gradient steps happen
    model.learning_starts = min(model.learning_starts, timed_steps // 10)
    model.learn(total_timesteps=model.learning_starts)
    saved_hyperparams["learning_starts"] = model.learning_starts
    return model, {
        name: value if isinstance(value, bool | int | float | str | list) else repr(value)
        for name, value in saved_hyperparams.items()
    }


def timed_slice(model: DQN, steps: int, device: str) -> tuple[float, float]:
    """Train ``model`` for ``steps`` more environment steps: (wall, CPU) seconds."""
    if device.startswith("cuda"):
        th.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    if device.startswith("cuda"):
        th.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def profile_train(model: DQN, device: str) -> dict[str, Any]:
    """One ``train()`` call under ``torch.profiler`` (after an unprofiled one): its busiest operations and host syncs."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    assert isinstance(model.train_freq, TrainFreq)  # converted by _setup_model
    # gradient_steps=-1: as many gradient steps as environment steps in a rollout
    gradient_steps = model.gradient_steps if model.gradient_steps > 0 else model.train_freq.frequency * model.n_envs
    model.train(gradient_steps=gradient_steps, batch_size=model.batch_size)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as profiler:
        model.train(gradient_steps=gradient_steps, batch_size=model.batch_size)
        if cuda:
            th.cuda.synchronize()
    events = profiler.key_averages()
    return {
        "gradient_steps": gradient_steps,
        "host_syncs": {event.key: event.count for event in events if event.key in HOST_SYNCS},
        "table": events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=20),
    }


def plot(summary: dict[str, Any], reference: str, title: str, name: str, results_dir: Path) -> None:
    """Per-round ratios to the reference (dots: wall clock, crosses: CPU time) and their medians (bars)."""
    import matplotlib

    matplotlib.use("Agg")  # write files only, no display
    import matplotlib.pyplot as plt

    names = [contender for contender in summary if contender != reference]
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, contender in enumerate(names):
        row = summary[contender]
        ax.bar(x, row["median_ratio_to_reference"], width=0.6, color="#9ecae1", label="median (wall)" if x == 0 else None)
        ratios, cpu_ratios = row["ratios_to_reference"], row["cpu_ratios_to_reference"]
        ax.scatter([x - 0.1] * len(ratios), ratios, color="#08519c", s=14, label="rounds (wall)" if x == 0 else None)
        label = "rounds (CPU)" if x == 0 else None
        ax.scatter([x + 0.1] * len(cpu_ratios), cpu_ratios, color="#d95f0e", marker="x", s=18, label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(names)), [contender.replace(" ", "\n") for contender in names], fontsize=8)
    ax.set_xlim(-0.75, max(len(names), 2) - 0.25)
    ax.set_ylabel(f"env steps/s relative to {reference.replace(' ', chr(10))}", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, name, results_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1", help="zoo env id (Atari: PongNoFrameskip-v4)")
    parser.add_argument("--steps", type=int, default=4096, help="timed environment steps per contender and round")
    parser.add_argument("--slice-steps", type=int, default=512, help="environment steps per contender between switches")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (fresh models, seed = round index)")
    parser.add_argument("--device", default="cpu", help="PyTorch device")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    parser.add_argument(
        "--optimize-memory-usage",
        nargs="+",
        default=["auto"],
        choices=list(MEMORY_SETTINGS),
        help="one contender per class and value; auto: the file's value",
    )
    parser.add_argument("--profile", action="store_true", help="torch.profiler summary of one train() per contender")
    parser.add_argument("-params", "--hyperparams", nargs="+", action=StoreDict, default={}, help="key:value overrides")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    sb3_dqn_ext.zoo.register()  # the start-up hook does it too; explicit for python -S and the like
    th.set_num_threads(args.threads)
    report: dict[str, Any] = run_metadata(packages=("rl_zoo3", "gymnasium", "ale-py"))
    settings = args.optimize_memory_usage
    contenders = {
        (name if len(settings) == 1 else f"{name} optimize_memory_usage={setting}"): (CLASSES[name], MEMORY_SETTINGS[setting])
        for name in args.classes
        for setting in settings
    }
    reference = next(iter(contenders))
    n_slices = -(-args.steps // args.slice_steps)
    timed_steps = n_slices * args.slice_steps
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_rates: dict[str, list[float]] = {name: [] for name in contenders}
    ratios: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in contenders}
    optimizers: dict[str, dict[str, Any]] = {}
    hyperparams: dict[str, dict[str, Any]] = {}
    profiles: dict[str, dict[str, Any]] = {}
    for round_index in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="throughput_") as log_dir:  # the zoo's Monitor files and config
            models = {}
            for name, (key, memory) in contenders.items():
                models[name], hyperparams[name] = make_model(key, memory, round_index, timed_steps, args, log_dir)
            for name, model in models.items():
                group = model.policy.optimizer.param_groups[0]
                optimizers[name] = {"class": type(model.policy.optimizer).__name__, "foreach": group.get("foreach")}
            wall, cpu = dict.fromkeys(contenders, 0.0), dict.fromkeys(contenders, 0.0)
            for slice_index in range(n_slices):
                order = list(contenders)
                random.Random(round_index * 100_003 + slice_index).shuffle(order)
                for name in order:
                    slice_wall, slice_cpu = timed_slice(models[name], args.slice_steps, args.device)
                    wall[name] += slice_wall
                    cpu[name] += slice_cpu
            if args.profile and round_index == args.rounds - 1:
                profiles = {name: profile_train(model, args.device) for name, model in models.items()}
            for model in models.values():
                if model.env is not None:
                    model.env.close()
            del models
        for name in contenders:
            rates[name].append(timed_steps / wall[name])
            cpu_rates[name].append(timed_steps / cpu[name])
            ratios[name].append(wall[reference] / wall[name])
            cpu_ratios[name].append(cpu[reference] / cpu[name])
        summary_line = ", ".join(f"{n} {timed_steps / wall[n]:.0f} (cpu {timed_steps / cpu[n]:.0f})" for n in contenders)
        print(f"round {round_index + 1}/{args.rounds}: {summary_line} steps/s", flush=True)

    summary: dict[str, dict[str, Any]] = {
        name: {
            "median_steps_per_s": statistics.median(rates[name]),
            "median_ratio_to_reference": statistics.median(ratios[name]),
            "steps_per_s": rates[name],
            "ratios_to_reference": ratios[name],
            "median_cpu_steps_per_s": statistics.median(cpu_rates[name]),
            "median_cpu_ratio_to_reference": statistics.median(cpu_ratios[name]),
            "cpu_steps_per_s": cpu_rates[name],
            "cpu_ratios_to_reference": cpu_ratios[name],
        }
        for name in contenders
    }
    device_name = th.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model()
    report.update(env=args.env, timed_steps_per_run=timed_steps, slice_steps=args.slice_steps, rounds=args.rounds)
    report.update(device=args.device, device_name=device_name, load_average_end=[round(x, 2) for x in os.getloadavg()])
    report.update(hyperparams=hyperparams)
    report.update(reference=reference, optimizers=optimizers, summary=summary)
    if args.profile:
        report["profile"] = profiles
    name = "throughput_" + args.env.split("NoFrameskip")[0].lower().replace("-v1", "")
    name += ("_" + args.device.replace(":", "")) * (args.device != "cpu") + "_optimize_memory_usage" * (settings != ["auto"])
    path = write_json(report, name, args.results_dir)
    title = f"{args.env} (zoo settings), {args.device}, {args.rounds} rounds of {timed_steps} steps per contender"
    plot(summary, reference, title, name, args.results_dir)
    for contender, row in summary.items():
        print(
            f"{contender:45s} {row['median_steps_per_s']:7.0f} steps/s  ratio to {reference} "
            f"{row['median_ratio_to_reference']:.3f} (CPU time {row['median_cpu_ratio_to_reference']:.3f})"
        )
    for contender, profiled in profiles.items():
        print(f"{contender}: one train() call of {profiled['gradient_steps']} gradient steps\n{profiled['table']}")
        print(f"{contender}: host syncs {profiled['host_syncs']}")
    print(f"results written to {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
