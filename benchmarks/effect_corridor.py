"""
Policy evaluation on the dueling paper's corridor: single-stream vs dueling Q-network as no-op actions are added.

Paper: https://arxiv.org/abs/1511.06581 (Section 4.1 / Fig. 3: with 5 actions both networks learn Q^pi about as
fast; with 10 and 20 actions, the extra ones being no-ops, the dueling network's squared error is lower)
The corridor is the paper's three sections of 10-50-10 cells scaled down to ``--corridor 5 20 5``: up the left section
from the start (bottom left), right along the top, then up the right section to the goal (top right), which ends the
episode with reward 1 (0 elsewhere). Actions: up, down, left, right, then no-ops up to ``n_actions``; a move off the
corridor is a no-op. The evaluated policy ``pi``, epsilon-greedy (the paper's ``epsilon = 0.001``) with respect to Q*,
is also the behaviour policy, as in the paper: the replay memory holds ``memory_size`` transitions collected by
following ``pi`` from the start. The true ``Q^pi`` is solved exactly (a linear system).

Both networks are trained on the same minibatches with the expected-SARSA target
``r + gamma * (1 - done) * sum_a' pi(a'|s') Q_target(s', a')`` (squared loss, Adam, a target network copied every
``target_update_interval`` updates) from one-hot states, and scored by the paper's squared error
``SE = sum_{s, a} (Q(s, a) - Q^pi(s, a))**2`` over every non-terminal state and every action:

- single stream: SB3's ``QNetwork`` with ``net_arch=[50, 50, 50]`` (three hidden layers of 50);
- dueling: our ``DuelingQNetwork`` on the shared 50-unit layer (its features extractor; ``net_arch=[]``: nothing else
  shared), streams of ``stream_net_arch=[25, 25]``, ``trunk_gradient_scale=1.0`` (the paper's 1/sqrt(2) rescaling
  belongs to its Atari setup, Section 4.2).

With ``epsilon = 0.001`` the memory holds almost only the greedy action of each state, so most ``(s, a)`` pairs of
the SE are learned only through what the network shares across actions: that is the effect under test.

    python benchmarks/effect_corridor.py            # 5, 10, 20 actions, 4 seeds, about 4 CPU-minutes
    python benchmarks/effect_corridor.py --quick    # smoke test, seconds
"""

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # write files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.dqn.policies import QNetwork
from torch import nn
from torch.nn import functional as F

from benchmarks.common import RESULTS_DIR, run_metadata, save_figure, write_json
from sb3_dqn_ext.policies import DuelingQNetwork

NAME = "effect_corridor"
ARCHITECTURES = ["single", "dueling"]
MOVES = [(0, 1), (0, -1), (-1, 0), (1, 0)]  # up, down, left, right; the other actions are no-ops


class Corridor:
    """
    The three-section corridor as a tabular MDP, with ``Q*``, the epsilon-greedy ``pi`` and its exact ``Q^pi``.

    :param sections: Cells of the left, top and right sections (the corner cells are shared)
    :param n_actions: Number of actions, at least 5 (four moves and at least one no-op)
    :param gamma: Discount factor
    :param epsilon: Probability that ``pi`` picks a uniformly random action instead of the greedy one
    """

    def __init__(self, sections: tuple[int, int, int], n_actions: int, gamma: float, epsilon: float) -> None:
        if n_actions < 5:
            raise ValueError(f"n_actions must be >= 5 (four moves and a no-op), got {n_actions}")
        left, top, right = sections
        cells = [(0, y) for y in range(left)]
        cells += [(x, left - 1) for x in range(1, top)]
        cells += [(top - 1, left - 1 + y) for y in range(1, right)]
        index = {cell: i for i, cell in enumerate(cells)}
        self.n_states = len(cells) - 1  # the goal (last cell) is terminal and not a state of the SE
        self.n_actions, self.gamma = n_actions, gamma
        moves = MOVES + [(0, 0)] * (n_actions - len(MOVES))
        self.next_states = np.zeros((self.n_states, n_actions), dtype=np.int64)  # the goal's index is n_states
        self.rewards, self.dones = np.zeros((self.n_states, n_actions)), np.zeros((self.n_states, n_actions))
        for state, (x, y) in enumerate(cells[:-1]):
            for action, (dx, dy) in enumerate(moves):
                next_state = index.get((x + dx, y + dy), state)  # off the corridor: stay
                self.next_states[state, action] = next_state
                if next_state == self.n_states:
                    self.rewards[state, action], self.dones[state, action] = 1.0, 1.0
        self.optimal_q_values = self._optimal_q_values()
        greedy = self.optimal_q_values.argmax(axis=1)
        self.policy = np.full((self.n_states, n_actions), epsilon / n_actions)  # pi(a|s)
        self.policy[np.arange(self.n_states), greedy] += 1.0 - epsilon
        self.q_values = self._policy_q_values()

    def _bootstrap(self, values: np.ndarray) -> np.ndarray:
        """``r + gamma * (1 - done) * V(s')`` for every ``(s, a)``, given ``V`` of the non-terminal states."""
        next_values = np.append(values, 0.0)[self.next_states]  # the goal is worth 0
        return self.rewards + self.gamma * (1.0 - self.dones) * next_values

    def _optimal_q_values(self) -> np.ndarray:
        """Q* by value iteration (exact here after ``n_states`` sweeps; run to convergence)."""
        q_values = np.zeros((self.n_states, self.n_actions))
        for _ in range(100 * self.n_states):
            new_q_values = self._bootstrap(q_values.max(axis=1))
            if np.abs(new_q_values - q_values).max() < 1e-12:
                break
            q_values = new_q_values
        return new_q_values

    def _policy_q_values(self) -> np.ndarray:
        """``Q^pi`` exactly: ``V^pi = (I - gamma P^pi)^-1 r^pi``, then one bootstrap."""
        transition_matrix = np.zeros((self.n_states, self.n_states + 1))
        for state in range(self.n_states):
            np.add.at(transition_matrix[state], self.next_states[state], self.policy[state] * (1.0 - self.dones[state]))
        expected_rewards = (self.policy * self.rewards).sum(axis=1)
        values = np.linalg.solve(np.eye(self.n_states) - self.gamma * transition_matrix[:, :-1], expected_rewards)
        return self._bootstrap(values)

    def collect(self, n_transitions: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """States and actions of ``n_transitions`` steps following ``pi`` from the start, restarting at the goal."""
        states, actions = np.zeros(n_transitions, dtype=np.int64), np.zeros(n_transitions, dtype=np.int64)
        state = 0
        for t in range(n_transitions):
            action = rng.choice(self.n_actions, p=self.policy[state])
            states[t], actions[t] = state, action
            state = 0 if self.dones[state, action] else int(self.next_states[state, action])
        return states, actions


class SharedLayerExtractor(BaseFeaturesExtractor):
    """The dueling network's shared first layer (50 units in the paper) as an SB3 features extractor."""

    def __init__(self, observation_space: spaces.Box, features_dim: int = 50) -> None:
        super().__init__(observation_space, features_dim)
        self.linear = nn.Sequential(nn.Flatten(), nn.Linear(get_flattened_obs_dim(observation_space), features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(observations)


def make_q_net(architecture: str, observation_space: spaces.Box, action_space: spaces.Discrete) -> QNetwork:
    """The paper's single-stream MLP (SB3's ``QNetwork``) or its dueling MLP (our ``DuelingQNetwork``)."""
    if architecture == "single":
        flatten = FlattenExtractor(observation_space)
        return QNetwork(observation_space, action_space, flatten, flatten.features_dim, net_arch=[50, 50, 50])
    shared = SharedLayerExtractor(observation_space, features_dim=50)
    # net_arch=[]: nothing shared beyond the extractor's 50-unit layer
    return DuelingQNetwork(
        observation_space, action_space, shared, 50, net_arch=[], stream_net_arch=[25, 25], trunk_gradient_scale=1.0
    )


def run(architecture: str, n_actions: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``pi`` with one network; the memory and the minibatches depend on the seed only."""
    corridor = Corridor(tuple(args.corridor), n_actions, args.gamma, args.epsilon)
    memory_states, memory_actions = corridor.collect(args.memory_size, np.random.default_rng(seed))
    observation_space = spaces.Box(0.0, 1.0, shape=(corridor.n_states,), dtype=np.float32)
    th.manual_seed(seed)
    q_net = make_q_net(architecture, observation_space, spaces.Discrete(n_actions))
    q_net_target = copy.deepcopy(q_net)
    optimizer = th.optim.Adam(q_net.parameters(), lr=args.learning_rate)

    # One-hot observations, plus an all-zero row for the goal (its value is masked by done and by pi = 0)
    observations = th.eye(corridor.n_states + 1, corridor.n_states)
    policy = th.as_tensor(np.vstack([corridor.policy, np.zeros((1, n_actions))]), dtype=th.float32)
    true_q_values = th.as_tensor(corridor.q_values, dtype=th.float32)
    next_states = th.as_tensor(corridor.next_states)
    rewards = th.as_tensor(corridor.rewards, dtype=th.float32)
    dones = th.as_tensor(corridor.dones, dtype=th.float32)
    memory_states_t, memory_actions_t = th.as_tensor(memory_states), th.as_tensor(memory_actions)
    batch_rng = np.random.default_rng(seed + 10_000)

    updates, squared_errors = [], []
    for update in range(args.n_updates + 1):
        if update % args.eval_freq == 0:
            with th.no_grad():
                # SE = sum over states and actions of (Q(s, a) - Q^pi(s, a))^2
                squared_errors.append(float(((q_net(observations[:-1]) - true_q_values) ** 2).sum()))
            updates.append(update)
        if update == args.n_updates:
            break
        batch = th.as_tensor(batch_rng.integers(args.memory_size, size=args.batch_size))
        states, actions = memory_states_t[batch], memory_actions_t[batch]
        batch_next_states = next_states[states, actions]
        with th.no_grad():
            # Expected-SARSA target: r + gamma * (1 - done) * sum_a' pi(a'|s') Q_target(s', a')
            next_q_values = (q_net_target(observations[batch_next_states]) * policy[batch_next_states]).sum(dim=1)
            target_q_values = rewards[states, actions] + args.gamma * (1.0 - dones[states, actions]) * next_q_values
        current_q_values = q_net(observations[states]).gather(1, actions.reshape(-1, 1)).reshape(-1)  # (batch_size,)
        loss = F.mse_loss(current_q_values, target_q_values)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (update + 1) % args.target_update_interval == 0:
            q_net_target.load_state_dict(q_net.state_dict())

    tail = max(1, len(squared_errors) // 10)
    return dict(
        seed=seed,
        updates=updates,
        squared_errors=[round(se, 6) for se in squared_errors],
        # Less noisy than the last point: the mean over the last tenth of the evaluations
        final_se=float(np.mean(squared_errors[-tail:])),
        distinct_state_actions_in_memory=len(set(zip(memory_states.tolist(), memory_actions.tolist(), strict=True))),
    )


def comparison_sentence(summary: dict[str, Any], action_counts: list[int]) -> str:
    """One sentence comparing the measured errors with the paper's Fig. 3, built from the numbers."""
    ratios = {n: summary[str(n)]["single_over_dueling_final_se"] for n in action_counts}
    few, many = action_counts[0], action_counts[-1]
    median_final_ses = {arch: [summary[str(n)][arch]["median_final_se"] for n in (few, many)] for arch in ARCHITECTURES}
    growth = {arch: many_se / few_se for arch, (few_se, many_se) in median_final_ses.items()}
    numbers = (
        "single-stream / dueling final SE (median): "
        + ", ".join(f"{ratios[n]:.2f}x with {n} actions" for n in action_counts)
        + f"; from {few} to {many} actions the SE grows {growth['single']:.1f}x (single) vs {growth['dueling']:.1f}x (dueling)"
    )
    if ratios[many] > 1.5 and ratios[many] > 1.5 * ratios[few] and growth["dueling"] < growth["single"]:
        verdict = "Reproduces the paper's Fig. 3 qualitatively: the dueling network's error degrades less as no-ops are added"
    elif ratios[many] > ratios[few] and growth["dueling"] < growth["single"]:
        verdict = "In the paper's direction (the dueling error degrades less with more actions) but with a small gap"
    else:
        verdict = "Does not reproduce the paper's Fig. 3: the dueling network does not degrade less as actions are added"
    if ratios[few] < 0.8:
        numbers += f"; with {few} actions the single-stream network ends lower, where the paper has the two about equal"
    return f"{verdict} ({numbers})."


def plot(results_dir: Path, action_counts: list[int], runs: dict[str, Any]) -> None:
    """SE vs updates (log y), one panel per action count; each seed thin, the median thick."""
    fig, axes = plt.subplots(1, len(action_counts), figsize=(4.2 * len(action_counts), 4), sharey=True, squeeze=False)
    for ax, n_actions in zip(axes[0], action_counts, strict=True):
        for architecture, color in (("single", "tab:red"), ("dueling", "tab:blue")):
            records = runs[str(n_actions)][architecture]
            curves = np.array([record["squared_errors"] for record in records])
            updates = records[0]["updates"]
            for curve in curves:
                ax.plot(updates, curve, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(updates, np.median(curves, axis=0), color=color, linewidth=2, label=architecture)
        ax.set_yscale("log")
        ax.set_title(f"{n_actions} actions")
        ax.set_xlabel("updates")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(r"SE $= \sum_{s,a} (Q(s,a) - Q^\pi(s,a))^2$")
    axes[0][0].legend()
    fig.suptitle("Corridor policy evaluation: single-stream vs dueling (ours)")
    fig.tight_layout()
    save_figure(fig, NAME, results_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--action-counts", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--corridor", nargs=3, type=int, default=[5, 20, 5], help="cells of the left, top, right sections")
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--epsilon", type=float, default=0.001, help="epsilon of the evaluated (and behaviour) policy")
    parser.add_argument("--memory-size", type=int, default=20_000, help="transitions collected by following pi")
    parser.add_argument("--n-updates", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--target-update-interval", type=int, default=100)
    parser.add_argument("--eval-freq", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="smoke test: one seed, 200 updates")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.n_updates, args.eval_freq, args.memory_size = [0], 200, 50, 2000
    th.set_num_threads(1)

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    for n_actions in args.action_counts:
        runs[str(n_actions)] = {architecture: [] for architecture in ARCHITECTURES}
        for seed in args.seeds:
            for architecture in ARCHITECTURES:
                record = run(architecture, n_actions, seed, args)
                runs[str(n_actions)][architecture].append(record)
                print(f"{n_actions:2d} actions {architecture:7s} seed={seed} final SE={record['final_se']:.4g}", flush=True)
    cpu_time, wall_time = time.process_time() - start_cpu, time.perf_counter() - start_wall

    summary: dict[str, Any] = {}
    for n_actions in args.action_counts:
        single, dueling = (runs[str(n_actions)][architecture] for architecture in ARCHITECTURES)
        entry: dict[str, Any] = {}
        for architecture, records in zip(ARCHITECTURES, (single, dueling), strict=True):
            final_ses = [record["final_se"] for record in records]
            entry[architecture] = dict(final_se_per_seed=[round(se, 5) for se in final_ses])
            entry[architecture]["median_final_se"] = float(np.median(final_ses))
        entry["single_over_dueling_final_se"] = entry["single"]["median_final_se"] / entry["dueling"]["median_final_se"]
        entry["seeds_where_dueling_is_lower"] = sum(
            d["final_se"] < s["final_se"] for s, d in zip(single, dueling, strict=True)
        )
        # Share of the (s, a) pairs of the SE that the memory contains at least once (the rest are learned only
        # through what the network shares across actions)
        n_pairs = Corridor(tuple(args.corridor), n_actions, args.gamma, args.epsilon).q_values.size
        coverage = np.median([record["distinct_state_actions_in_memory"] for record in single]) / n_pairs
        entry["memory_coverage_of_state_actions"] = float(coverage)
        summary[str(n_actions)] = entry
    report: dict[str, Any] = run_metadata()
    report |= {
        "experiment": NAME,
        "paper": "Wang et al. 2016, Dueling Network Architectures for Deep Reinforcement Learning, "
        "https://arxiv.org/abs/1511.06581, Sec. 4.1 / Fig. 3",
        "paper_claim": "With 5 actions both architectures converge at about the same speed; as no-op actions are added "
        "(10, 20), the dueling network's policy-evaluation error is lower than the single-stream network's",
        "settings": {key: value for key, value in vars(args).items() if key != "results_dir"}
        | dict(
            single_stream="stable_baselines3 QNetwork, FlattenExtractor, net_arch=[50, 50, 50]",
            dueling="sb3_dqn_ext.policies.DuelingQNetwork, shared Linear(n_states, 50)+ReLU extractor, streams "
            "stream_net_arch=[25, 25], net_arch=[], trunk_gradient_scale=1.0",
            observations="one-hot states",
            target="expected SARSA with a target network, squared loss, Adam",
            final_se="mean SE over the last tenth of the evaluations",
        ),
        "runs": runs,
        "summary": summary,
        "comparison_with_paper": comparison_sentence(summary, args.action_counts),
    }
    report["runtime"] = dict(cpu_s=round(cpu_time, 1), wall_s=round(wall_time, 1))
    path = write_json(report, NAME, args.results_dir)
    plot(args.results_dir, args.action_counts, runs)
    print(f"{report['comparison_with_paper']}\nCPU {cpu_time:.0f} s, wall {wall_time:.0f} s. Wrote {path} and its .png")


if __name__ == "__main__":
    main()
