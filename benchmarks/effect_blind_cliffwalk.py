"""
Prioritized replay on the Blind Cliffwalk: updates needed to learn Q* as the chain grows.

Paper: https://arxiv.org/abs/1511.05952 (Section 3.1 / Fig. 1, Appendix B.1 / Fig. 2)
``n`` states in a chain, two actions: "right" moves on (reward 1 for the last one, which ends the episode), "wrong"
ends the episode with reward 0. The replay memory holds the exhaustive ``2**n`` action sequences of a uniformly random
policy, each cut at its first "wrong" action: ``(i, right)`` appears ``2**(n - i - 1)`` times, the one rewarding
transition once, ``2**(n + 1) - 2`` transitions in all. A tabular Q-learner (step size 1/4, ``gamma = 1 - 1/n``,
Q-table drawn from ``N(0, init_std**2)``) replays one transition at a time from
:class:`~sb3_dqn_ext.PrioritizedReplayBuffer` until the mean squared error to Q* over the ``2n`` entries falls below
``threshold``. Compared, on the same memory:

- ``uniform``: the same buffer with ``alpha=0`` (every priority is ``(|delta| + eps)**0 = 1``), drawing batches of
  ``--uniform-batch-size`` applied one transition at a time in random order: the priorities never change, so this is
  the same sampling distribution (stratified over the memory) as single draws, at a fraction of the cost;
- ``prioritized (alpha=...)``: proportional prioritization, batches of one, each priority refreshed with
  ``update_priorities`` from the TD error of the transition (computed before its update, as in Algorithm 1) before the
  next draw; new transitions enter with the buffer's maximum priority (1.0), so each is replayed about once first;
- ``oracle``: no buffer; each update applies the distinct transition that most reduces the error to Q* (Section 3.1).

No importance-sampling weights: the environment is deterministic and the learner tabular, so every sampling
distribution that visits every transition has the same fixed point Q*; the weights would only shrink the steps. A
table rather than our network with one-hot input and ``net_arch=[]`` (the same function): the experiment is about
which transitions are replayed, and a network would cost ~100x more per update and force n <= 8.

    python benchmarks/effect_blind_cliffwalk.py            # n = 2..12, 5 seeds, about 2-3 CPU-minutes
    python benchmarks/effect_blind_cliffwalk.py --quick    # smoke test, seconds
"""

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # write files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch as th
from gymnasium import spaces

from benchmarks.common import RESULTS_DIR, run_metadata, save_figure, write_json
from sb3_dqn_ext import PrioritizedReplayBuffer

NAME = "effect_blind_cliffwalk"
WRONG, RIGHT = 0, 1


def fill_replay_buffer(n: int, alpha: float, eps: float, rng: np.random.Generator) -> PrioritizedReplayBuffer:
    """
    Our buffer, filled with the exhaustive random episodes in random order (one slot per transition; the observation
    is the state index). Episode ``k < n`` is ``k`` "right" actions then a "wrong" one and appears ``2**(n - k - 1)``
    times; episode ``n`` (all "right") appears once.
    """
    episodes = [(k, 2 ** (n - k - 1)) for k in range(n)] + [(n, 1)]
    order = rng.permutation([k for k, multiplicity in episodes for _ in range(multiplicity)])
    observation_space, action_space = spaces.Box(0, n, shape=(1,), dtype=np.float32), spaces.Discrete(2)
    replay_buffer = PrioritizedReplayBuffer(
        2 ** (n + 1) - 2, observation_space, action_space, device="cpu", handle_timeout_termination=False, alpha=alpha, eps=eps
    )
    for n_rights in order:
        for state in range(min(n_rights + 1, n)):
            action = RIGHT if state < n_rights else WRONG
            last = state == n - 1
            done = action == WRONG or last
            reward = 1.0 if (action == RIGHT and last) else 0.0
            next_state = state + 1 if not done else state
            observation, next_observation = np.array([[state]], dtype=np.float32), np.array([[next_state]], dtype=np.float32)
            replay_buffer.add(observation, next_observation, np.array([[action]]), np.array([reward]), np.array([done]), [{}])
    assert replay_buffer.full and replay_buffer.pos == 0, "the memory must hold exactly the exhaustive episodes"
    return replay_buffer


def optimal_q_values(n: int, gamma: float) -> np.ndarray:
    """Q*: ``Q*(i, right) = gamma**(n - 1 - i)`` (reward 1 after ``n - i`` steps), ``Q*(i, wrong) = 0``; shape ``(n, 2)``."""
    q_values = np.zeros((n, 2))
    q_values[:, RIGHT] = gamma ** (n - 1 - np.arange(n))
    return q_values


def run_replay(n: int, alpha: float, seed: int, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """
    Tabular Q-learning from our prioritized buffer until the MSE to Q* is below ``args.threshold``.

    :return: ``updates`` (``None`` if the update budget ran out first), ``memory_size``, and
        ``first_reward_replay``: the update at which the rewarding transition was first replayed
    """
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # the buffer samples with np.random
    gamma = 1.0 - 1.0 / n
    optimal = optimal_q_values(n, gamma)
    replay_buffer = fill_replay_buffer(n, alpha, args.eps, rng)
    max_updates = args.max_updates_factor * replay_buffer.buffer_size
    q_values = rng.normal(0.0, args.init_std, size=(n, 2))
    sum_squared_errors = float(((q_values - optimal) ** 2).sum())
    updates, first_reward_replay = 0, None
    while sum_squared_errors / q_values.size > args.threshold and updates < max_updates:
        replay_data = replay_buffer.sample(batch_size)
        states, actions, next_states = (
            x[:, 0].long().numpy() for x in (replay_data.observations, replay_data.actions, replay_data.next_observations)
        )
        rewards, dones = replay_data.rewards[:, 0].numpy(), replay_data.dones[:, 0].numpy()
        td_errors = np.zeros(batch_size)
        for j in rng.permutation(batch_size):
            state, action = states[j], actions[j]
            # Q-learning target: r + gamma * (1 - done) * max_a' Q(s', a')
            target = rewards[j] + (1.0 - dones[j]) * gamma * q_values[next_states[j]].max()
            td_errors[j] = target - q_values[state, action]
            old_error = (q_values[state, action] - optimal[state, action]) ** 2
            q_values[state, action] += args.learning_rate * td_errors[j]
            sum_squared_errors += (q_values[state, action] - optimal[state, action]) ** 2 - old_error
            updates += 1
            if first_reward_replay is None and rewards[j] > 0:
                first_reward_replay = updates
            if sum_squared_errors / q_values.size <= args.threshold:
                break
        # The TD errors from before each update refresh the priorities (Algorithm 1, line 12); the
        # importance-sampling weights in replay_data.weights are not used (see the module docstring)
        replay_buffer.update_priorities(replay_data.indices, td_errors)
    converged = sum_squared_errors / q_values.size <= args.threshold
    return dict(
        updates=updates if converged else None, memory_size=replay_buffer.buffer_size, first_reward_replay=first_reward_replay
    )


def run_oracle(n: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The paper's oracle: each update applies the distinct transition that most reduces the squared error to Q*."""
    rng = np.random.default_rng(seed)
    gamma = 1.0 - 1.0 / n
    optimal = optimal_q_values(n, gamma)
    # The 2n distinct transitions: (i, wrong) ends the episode with 0; (i, right) moves on, the last one ends it with 1
    states, actions = np.repeat(np.arange(n), 2), np.tile([WRONG, RIGHT], n)
    last, right = states == n - 1, actions == RIGHT
    rewards = (right & last).astype(np.float64)
    next_states = np.where(right & ~last, states + 1, states)
    dones = (~right | last).astype(np.float64)
    q_values = rng.normal(0.0, args.init_std, size=(n, 2))
    updates, max_updates = 0, args.max_updates_factor * (2 ** (n + 1) - 2)
    while ((q_values - optimal) ** 2).mean() > args.threshold and updates < max_updates:
        targets = rewards + (1.0 - dones) * gamma * q_values[next_states].max(axis=1)  # (2n,)
        current = q_values[states, actions]
        updated = current + args.learning_rate * (targets - current)
        # Change of the summed squared error if transition k were applied (each touches one entry)
        gains = (updated - optimal[states, actions]) ** 2 - (current - optimal[states, actions]) ** 2
        best = int(np.argmin(gains))
        q_values[states[best], actions[best]] = updated[best]
        updates += 1
    converged = ((q_values - optimal) ** 2).mean() <= args.threshold
    return dict(updates=updates if converged else None, memory_size=2 ** (n + 1) - 2, first_reward_replay=None)


def growth_per_state(ns: list[int], medians: list[float | None]) -> float | None:
    """
    Factor by which the median number of updates grows per added state, over the largest chains.

    ``2**slope`` of a line fitted to ``log2(median updates)`` vs ``n`` over the (up to) five largest ``n >= 4``: the
    asymptotic rate, not that of the smallest chains where the constant costs dominate.
    """
    points = [(n, m) for n, m in zip(ns, medians, strict=True) if m is not None and n >= 4][-5:]
    if len(points) < 2:
        return None
    slope = np.polyfit([n for n, _ in points], np.log2([m for _, m in points]), 1)[0]
    return float(2.0**slope)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Median, min and max number of updates of the seeds of one method and ``n`` (``None`` when a run hit the update
    budget), and the median update at which the rewarding transition was first replayed.
    """
    updates = [run["updates"] for run in runs]
    finished = [u for u in updates if u is not None]
    all_finished = len(finished) == len(updates)
    first_reward_replays = [run["first_reward_replay"] for run in runs if run["first_reward_replay"] is not None]
    return dict(
        median=float(np.median(finished)) if all_finished else None,
        min=min(finished) if finished else None,
        max=max(finished) if all_finished else None,
        n_unfinished=len(updates) - len(finished),
        median_first_reward_replay=float(np.median(first_reward_replays)) if first_reward_replays else None,
    )


def ratio(uniform: float | None, other: float | None) -> float | None:
    """``uniform / other``, ``None`` where either median is missing (a run hit the update budget)."""
    return None if not uniform or not other else uniform / other


def comparison_sentence(summary: dict[str, Any], ns: list[int], prioritized_key: str) -> str:
    """One sentence comparing our numbers with the paper's claim, built from the numbers."""
    uniform, prioritized = summary["uniform"], summary[prioritized_key]
    n_min, n_max = ns[0], ns[-1]
    memory_size = 2 ** (n_max + 1) - 2
    r_min, r_max = (ratio(uniform[str(n)]["median"], prioritized[str(n)]["median"]) for n in (n_min, n_max))
    growth = summary["growth_per_added_state"]
    g_u, g_p, g_o = growth["uniform"], growth[prioritized_key], growth.get("oracle")
    if r_min is None or r_max is None or g_u is None or g_p is None:
        return (
            "Inconclusive: some runs hit max_updates, so the medians needed to compare with the paper's exponential "
            "gap between uniform and prioritized replay are missing."
        )
    direction = "widens" if r_max > 1.2 * r_min else "does not widen"
    faster = "fewer" if r_max > 1 else "more"
    sentence = (
        f"{prioritized_key.capitalize()} needed {max(r_max, 1 / r_max):.1f}x {faster} updates than uniform replay at "
        f"n={n_max} (medians: {prioritized[str(n_max)]['median'] / memory_size:.1f} vs "
        f"{uniform[str(n_max)]['median'] / memory_size:.1f} updates per stored transition; {r_min:.1f}x at n={n_min}), "
        f"so the gap {direction} with n, "
    )
    if g_p > 0.8 * g_u:
        sentence += (
            f"but both costs grow about exponentially (x{g_u:.2f} uniform vs x{g_p:.2f} prioritized per added state, "
            "prioritized replay first replaying about every stored transition once because new transitions enter at "
            "max priority), so the gap is a factor growing slowly with n, not the paper's exponential speed-up"
        )
    else:
        sentence += (
            f"and prioritized replay's cost grows much more slowly (x{g_p:.2f} vs x{g_u:.2f} per added state), as in the paper"
        )
    if g_o is not None:
        if g_o < 0.8 * g_u:
            sentence += f"; the oracle's cost grows only x{g_o:.2f} per added state, the paper's exponential speed-up"
        else:
            sentence += f"; even the oracle's cost grows x{g_o:.2f} per added state, unlike the paper"
    return sentence + "."


def plot(results_dir: Path, ns: list[int], methods: list[str], summary: dict[str, Any], runs: dict[str, Any]) -> None:
    """Updates to reach the threshold vs n (log y): median per method, each seed as a faint dot."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = dict(uniform="black", oracle="tab:cyan")
    for i, method in enumerate(methods):
        color = colors.get(method, ["tab:red", "tab:blue", "tab:green"][i % 3])
        finished = [n for n in ns if summary[method][str(n)]["median"] is not None]
        ax.plot(finished, [summary[method][str(n)]["median"] for n in finished], "o-", color=color, label=method)
        for n in ns:
            seeds_updates = [run["updates"] for run in runs[method][str(n)] if run["updates"] is not None]
            ax.scatter([n] * len(seeds_updates), seeds_updates, color=color, alpha=0.25, s=12)
    memory_sizes = [2 ** (n + 1) - 2 for n in ns]
    ax.plot(ns, memory_sizes, ":", color="gray", label="memory size $2^{n+1}-2$")
    ax.set_yscale("log")
    ax.set_xlabel("number of states n")
    ax.set_ylabel("updates until MSE(Q, Q*) < threshold")
    ax.set_title("Blind Cliffwalk: uniform vs prioritized replay (ours)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, NAME, results_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ns", nargs="+", type=int, default=list(range(2, 13)), help="chain lengths n")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--alphas", nargs="+", type=float, default=[1.0, 0.6], help="prioritized variants (0 is uniform)")
    parser.add_argument("--learning-rate", type=float, default=0.25)
    parser.add_argument("--threshold", type=float, default=1e-3, help="MSE to Q* that counts as learned")
    parser.add_argument("--init-std", type=float, default=0.1, help="std of the random initial Q-table")
    parser.add_argument("--eps", type=float, default=1e-6, help="priority eps of the buffer")
    parser.add_argument("--uniform-batch-size", type=int, default=64)
    parser.add_argument("--max-updates-factor", type=int, default=200, help="stop after this many updates per transition")
    parser.add_argument("--no-oracle", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke test: n = 2, 4, 6 and two seeds")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.ns, args.seeds = [2, 4, 6], [0, 1]
    th.set_num_threads(1)

    methods = (
        ["uniform"] + [f"prioritized (alpha={alpha:g})" for alpha in args.alphas] + ([] if args.no_oracle else ["oracle"])
    )
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {method: {} for method in methods}
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    for n in args.ns:
        for seed in args.seeds:
            records = {"uniform": run_replay(n, 0.0, seed, args.uniform_batch_size, args)}
            for alpha in args.alphas:
                records[f"prioritized (alpha={alpha:g})"] = run_replay(n, alpha, seed, 1, args)
            if not args.no_oracle:
                records["oracle"] = run_oracle(n, seed, args)
            for method, record in records.items():
                runs[method].setdefault(str(n), []).append(dict(seed=seed, **record))
        medians = ", ".join(f"{method}={summarize(runs[method][str(n)])['median']}" for method in methods)
        print(f"n={n:2d} memory={2 ** (n + 1) - 2:6d} median updates: {medians}", flush=True)
    cpu_time, wall_time = time.process_time() - start_cpu, time.perf_counter() - start_wall

    summary: dict[str, Any] = {method: {str(n): summarize(runs[method][str(n)]) for n in args.ns} for method in methods}
    summary["growth_per_added_state"] = {
        method: growth_per_state(args.ns, [summary[method][str(n)]["median"] for n in args.ns]) for method in methods
    }
    uniform = summary["uniform"]
    summary["uniform_over_prioritized_median_ratio"] = {
        method: {str(n): ratio(uniform[str(n)]["median"], summary[method][str(n)]["median"]) for n in args.ns}
        for method in methods[1:]
    }
    prioritized_key = methods[1] if len(methods) > 1 and methods[1] != "oracle" else "oracle"
    report: dict[str, Any] = run_metadata()
    report |= {
        "experiment": NAME,
        "paper": "Schaul et al. 2016, Prioritized Experience Replay, https://arxiv.org/abs/1511.05952, Sec. 3.1 / Fig. 1, "
        "App. B.1 / Fig. 2",
        "paper_claim": "On the Blind Cliffwalk the number of updates uniform replay needs to learn the true values grows "
        "exponentially with n; choosing transitions well (oracle, TD-error prioritization) needs far fewer, with an "
        "exponential gap for the oracle",
        "settings": {key: value for key, value in vars(args).items() if key not in ("no_oracle", "results_dir")}
        | dict(
            gamma="1 - 1/n",
            initial_priority="buffer max priority (1.0) for every stored transition",
            importance_sampling_weights=False,
            prioritized_batch_size=1,
            learner="Q-table (tabular Q-learning), transitions replayed from sb3_dqn_ext.PrioritizedReplayBuffer",
        ),
        "runs": runs,
        "summary": summary,
        "comparison_with_paper": comparison_sentence(summary, args.ns, prioritized_key),
    }
    report["runtime"] = dict(cpu_s=round(cpu_time, 1), wall_s=round(wall_time, 1))
    path = write_json(report, NAME, args.results_dir)
    plot(args.results_dir, args.ns, methods, summary, runs)
    print(f"{report['comparison_with_paper']}\nCPU {cpu_time:.0f} s, wall {wall_time:.0f} s. Wrote {path} and its .png")


if __name__ == "__main__":
    main()
