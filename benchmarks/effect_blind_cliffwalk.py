"""
Prioritized replay on the Blind Cliffwalk: updates needed to learn Q* as the chain grows.

Paper: https://arxiv.org/abs/1511.05952 (Section 3.1 / Fig. 1, Appendix B.1 / Fig. 2)
``n`` states in a chain, two actions: "right" moves on (reward 1 for the last one, which ends the episode),
"wrong" ends the episode with reward 0. The replay memory holds the transitions of the exhaustive set of
``2**n`` action sequences of a uniformly random policy, each cut at its first "wrong" action, so
``(i, right)`` appears ``2**(n - i - 1)`` times, the memory holds ``2**(n + 1) - 2`` transitions, and the one
rewarding transition appears once. A tabular Q-learner (step size 1/4, ``gamma = 1 - 1/n``, Q-table drawn from
``N(0, init_std**2)``) replays one transition at a time from :class:`~sb3_dqn_ext.PrioritizedReplayBuffer` until
the mean squared error to Q* over the ``2n`` entries falls below ``threshold``. Compared, on the same memory:

- ``uniform``: the same buffer with ``alpha=0`` (every priority is ``(|delta| + eps)**0 = 1``);
- ``prioritized (alpha=...)``: proportional prioritization, priorities refreshed with ``update_priorities`` from the
  TD error of each replayed transition (computed before its update, as in Algorithm 1); new transitions enter with
  the buffer's maximum priority (1.0), so each is replayed about once before its TD error counts;
- ``oracle``: no buffer; each update applies the distinct transition that most reduces the error to Q* (Section 3.1).

No importance-sampling weights: the environment is deterministic and the learner tabular, so every sampling
distribution that visits every transition has the same fixed point Q*; the weights would only shrink the steps.
Prioritized runs sample a batch of one and refresh its priority before the next draw. Uniform runs draw batches
of ``--uniform-batch-size`` (applied one transition at a time, in random order): with ``alpha=0`` the priorities
never change, so this is the same sampling distribution (stratified over the memory) at a fraction of the cost.
A table rather than our network with one-hot input and ``net_arch=[]``: with one-hot input a linear layer is a
table, and the experiment is about which transitions are replayed, not about the network (a network would cost
~100x more per update and force n <= 8).

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

from benchmarks.effect_report import write_report
from sb3_dqn_ext import PrioritizedReplayBuffer

DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "effect_blind_cliffwalk"
WRONG, RIGHT = 0, 1


def cliffwalk_transitions(n: int) -> list[tuple[int, int, float, int, bool, int]]:
    """
    The distinct transitions of the Blind Cliffwalk and how often the exhaustive random episodes contain them.

    ``(i, right)`` and ``(i, wrong)`` each appear in the ``2**(n - i - 1)`` of the ``2**n`` action sequences that start
    with ``i`` "right" actions followed by that action.

    :param n: Number of states
    :return: ``(state, action, reward, next_state, done, multiplicity)`` for each distinct transition
    """
    transitions = []
    for state in range(n):
        multiplicity = 2 ** (n - state - 1)
        last = state == n - 1
        transitions.append((state, WRONG, 0.0, state, True, multiplicity))
        # The final "right" ends the episode: its next state is never bootstrapped from
        transitions.append((state, RIGHT, 1.0 if last else 0.0, state if last else state + 1, last, multiplicity))
    return transitions


def fill_replay_buffer(n: int, alpha: float, eps: float, rng: np.random.Generator) -> PrioritizedReplayBuffer:
    """
    Our buffer, filled with the exhaustive random episodes in random order (one slot per transition).

    The observation is the state index (the learner is a table). Episode ``k < n`` is ``k`` "right" actions then a
    "wrong" one and appears ``2**(n - k - 1)`` times; episode ``n`` (all "right") appears once.
    """
    episodes = [(k, 2 ** (n - k - 1)) for k in range(n)] + [(n, 1)]
    order = rng.permutation([k for k, multiplicity in episodes for _ in range(multiplicity)])
    buffer_size = 2 ** (n + 1) - 2
    replay_buffer = PrioritizedReplayBuffer(
        buffer_size,
        spaces.Box(0, n, shape=(1,), dtype=np.float32),
        spaces.Discrete(2),
        device="cpu",
        handle_timeout_termination=False,
        alpha=alpha,
        eps=eps,
    )
    for n_rights in order:
        for state in range(min(n_rights + 1, n)):
            action = RIGHT if state < n_rights else WRONG
            last = state == n - 1
            done = action == WRONG or last
            reward = 1.0 if (action == RIGHT and last) else 0.0
            next_state = state + 1 if not done else state
            replay_buffer.add(
                np.array([[state]], dtype=np.float32),
                np.array([[next_state]], dtype=np.float32),
                np.array([[action]]),
                np.array([reward]),
                np.array([done]),
                [{}],
            )
    assert replay_buffer.full and replay_buffer.pos == 0, "the memory must hold exactly the exhaustive episodes"
    return replay_buffer


def optimal_q_values(n: int, gamma: float) -> np.ndarray:
    """Q*: ``Q*(i, right) = gamma**(n - 1 - i)`` (reward 1 after ``n - i`` steps), ``Q*(i, wrong) = 0``; shape ``(n, 2)``."""
    q_values = np.zeros((n, 2))
    q_values[:, RIGHT] = gamma ** (n - 1 - np.arange(n))
    return q_values


def run_replay(
    n: int,
    alpha: float,
    seed: int,
    batch_size: int,
    learning_rate: float,
    threshold: float,
    init_std: float,
    eps: float,
    max_updates: int,
) -> dict[str, Any]:
    """
    Tabular Q-learning from our prioritized buffer until the MSE to Q* is below ``threshold``.

    :return: ``updates`` (``None`` if ``max_updates`` was reached first), ``memory_size``, and
        ``first_reward_replay``: the update at which the rewarding transition was first replayed
    """
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # the buffer samples with np.random
    gamma = 1.0 - 1.0 / n
    optimal = optimal_q_values(n, gamma)
    replay_buffer = fill_replay_buffer(n, alpha, eps, rng)
    q_values = rng.normal(0.0, init_std, size=(n, 2))
    sum_squared_errors = float(((q_values - optimal) ** 2).sum())
    n_entries = q_values.size
    updates, first_reward_replay = 0, None
    while sum_squared_errors / n_entries > threshold and updates < max_updates:
        replay_data = replay_buffer.sample(batch_size)
        states = replay_data.observations[:, 0].long().numpy()
        actions = replay_data.actions[:, 0].long().numpy()
        rewards = replay_data.rewards[:, 0].numpy()
        next_states = replay_data.next_observations[:, 0].long().numpy()
        dones = replay_data.dones[:, 0].numpy()
        td_errors = np.zeros(batch_size)
        for j in rng.permutation(batch_size):
            state, action = states[j], actions[j]
            # Q-learning target: r + gamma * (1 - done) * max_a' Q(s', a')
            target = rewards[j] + (1.0 - dones[j]) * gamma * q_values[next_states[j]].max()
            td_errors[j] = target - q_values[state, action]
            old_error = (q_values[state, action] - optimal[state, action]) ** 2
            q_values[state, action] += learning_rate * td_errors[j]
            sum_squared_errors += (q_values[state, action] - optimal[state, action]) ** 2 - old_error
            updates += 1
            if first_reward_replay is None and rewards[j] > 0:
                first_reward_replay = updates
            if sum_squared_errors / n_entries <= threshold:
                break
        # The TD errors from before each update refresh the priorities (Algorithm 1, line 12); the
        # importance-sampling weights in replay_data.weights are not used (see the module docstring)
        replay_buffer.update_priorities(replay_data.indices, td_errors)
    converged = sum_squared_errors / n_entries <= threshold
    return dict(
        updates=updates if converged else None,
        memory_size=replay_buffer.buffer_size,
        first_reward_replay=first_reward_replay,
    )


def run_oracle(n: int, seed: int, learning_rate: float, threshold: float, init_std: float, max_updates: int) -> dict[str, Any]:
    """
    The paper's oracle: each update applies the distinct transition that most reduces the squared error to Q*.

    Same Q-table initialisation as :func:`run_replay` for the same seed.
    """
    rng = np.random.default_rng(seed)
    gamma = 1.0 - 1.0 / n
    optimal = optimal_q_values(n, gamma)
    transitions = cliffwalk_transitions(n)
    states = np.array([t[0] for t in transitions])
    actions = np.array([t[1] for t in transitions])
    rewards = np.array([t[2] for t in transitions])
    next_states = np.array([t[3] for t in transitions])
    dones = np.array([t[4] for t in transitions], dtype=np.float64)
    q_values = rng.normal(0.0, init_std, size=(n, 2))
    updates = 0
    while ((q_values - optimal) ** 2).mean() > threshold and updates < max_updates:
        targets = rewards + (1.0 - dones) * gamma * q_values[next_states].max(axis=1)  # (2n,)
        current = q_values[states, actions]
        updated = current + learning_rate * (targets - current)
        # Change of the summed squared error if transition k were applied (each touches one entry)
        gains = (updated - optimal[states, actions]) ** 2 - (current - optimal[states, actions]) ** 2
        best = int(np.argmin(gains))
        q_values[states[best], actions[best]] = updated[best]
        updates += 1
    converged = ((q_values - optimal) ** 2).mean() <= threshold
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


def summarize(method_runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """
    Median, min and max number of updates per ``n`` (``None`` when a run hit ``max_updates``), and the median update
    at which the rewarding transition was first replayed.
    """
    summary: dict[str, Any] = {}
    for n, runs in method_runs.items():
        updates = [run["updates"] for run in runs]
        finished = [u for u in updates if u is not None]
        all_finished = len(finished) == len(updates)
        first_reward_replays = [run["first_reward_replay"] for run in runs if run["first_reward_replay"] is not None]
        summary[str(n)] = dict(
            median=float(np.median(finished)) if all_finished else None,
            min=min(finished) if finished else None,
            max=max(finished) if all_finished else None,
            n_unfinished=len(updates) - len(finished),
            median_first_reward_replay=float(np.median(first_reward_replays)) if first_reward_replays else None,
        )
    return summary


def comparison_sentence(summary: dict[str, Any], ns: list[int], prioritized_key: str) -> str:
    """One sentence comparing our numbers with the paper's claim, built from the numbers."""
    uniform = summary["uniform"]
    prioritized = summary[prioritized_key]
    n_min, n_max = ns[0], ns[-1]
    memory_size = 2 ** (n_max + 1) - 2

    def ratio(n: int) -> float | None:
        u, p = uniform[str(n)]["median"], prioritized[str(n)]["median"]
        return None if u is None or p is None else u / p

    r_min, r_max = ratio(n_min), ratio(n_max)
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


def plot(path: Path, ns: list[int], methods: list[str], summary: dict[str, Any], runs: dict[str, Any]) -> None:
    """Updates to reach the threshold vs n (log y): median per method, each seed as a faint dot."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = dict(uniform="black", oracle="tab:cyan")
    for i, method in enumerate(methods):
        color = colors.get(method, ["tab:red", "tab:blue", "tab:green"][i % 3])
        medians = [summary[method][str(n)]["median"] for n in ns]
        ax.plot(
            [n for n, m in zip(ns, medians, strict=True) if m is not None],
            [m for m in medians if m is not None],
            "o-",
            color=color,
            label=method,
        )
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
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
        max_updates = args.max_updates_factor * (2 ** (n + 1) - 2)
        for seed in args.seeds:
            settings = dict(learning_rate=args.learning_rate, threshold=args.threshold, init_std=args.init_std)
            records = {
                "uniform": run_replay(n, 0.0, seed, args.uniform_batch_size, eps=args.eps, max_updates=max_updates, **settings)
            }
            for alpha in args.alphas:
                records[f"prioritized (alpha={alpha:g})"] = run_replay(
                    n, alpha, seed, 1, eps=args.eps, max_updates=max_updates, **settings
                )
            if not args.no_oracle:
                records["oracle"] = run_oracle(n, seed, max_updates=max_updates, **settings)
            for method, record in records.items():
                runs[method].setdefault(str(n), []).append(dict(seed=seed, **record))
        medians = {m: summarize({n: runs[m][str(n)]})[str(n)]["median"] for m in methods}
        print(
            f"n={n:2d} memory={2 ** (n + 1) - 2:6d} median updates: " + ", ".join(f"{m}={v}" for m, v in medians.items()),
            flush=True,
        )
    cpu_time, wall_time = time.process_time() - start_cpu, time.perf_counter() - start_wall

    summary: dict[str, Any] = {method: summarize({n: runs[method][str(n)] for n in args.ns}) for method in methods}
    summary["growth_per_added_state"] = {
        method: growth_per_state(args.ns, [summary[method][str(n)]["median"] for n in args.ns]) for method in methods
    }
    summary["uniform_over_prioritized_median_ratio"] = {
        method: {
            str(n): (
                summary["uniform"][str(n)]["median"] / summary[method][str(n)]["median"]
                if summary["uniform"][str(n)]["median"] and summary[method][str(n)]["median"]
                else None
            )
            for n in args.ns
        }
        for method in methods[1:]
    }
    prioritized_key = methods[1] if len(methods) > 1 and methods[1] != "oracle" else "oracle"
    report: dict[str, Any] = {
        "experiment": NAME,
        "paper": "Schaul et al. 2016, Prioritized Experience Replay, https://arxiv.org/abs/1511.05952, Sec. 3.1 / Fig. 1, "
        "App. B.1 / Fig. 2",
        "paper_claim": "On the Blind Cliffwalk the number of updates uniform replay needs to learn the true values grows "
        "exponentially with n; choosing transitions well (oracle, TD-error prioritization) needs far fewer, with an "
        "exponential gap for the oracle",
        "settings": dict(
            ns=args.ns,
            seeds=args.seeds,
            alphas=args.alphas,
            learning_rate=args.learning_rate,
            gamma="1 - 1/n",
            threshold=args.threshold,
            init_std=args.init_std,
            eps=args.eps,
            initial_priority="buffer max priority (1.0) for every stored transition",
            importance_sampling_weights=False,
            prioritized_batch_size=1,
            uniform_batch_size=args.uniform_batch_size,
            max_updates_factor=args.max_updates_factor,
            quick=args.quick,
            learner="Q-table (tabular Q-learning), transitions replayed from sb3_dqn_ext.PrioritizedReplayBuffer",
        ),
        "runs": runs,
        "summary": summary,
        "comparison_with_paper": comparison_sentence(summary, args.ns, prioritized_key),
    }
    write_report(
        report,
        args.results_dir,
        NAME,
        lambda path: plot(path, args.ns, methods, summary, runs),
        cpu_time,
        wall_time,
        ("sb3-dqn-ext", "stable_baselines3", "torch", "numpy"),
    )


if __name__ == "__main__":
    main()
