"""
Double DQN's value estimates vs DQN's on a task whose true values are known.

Paper: https://arxiv.org/abs/1509.06461 (Fig. 3: DQN's value estimates climb well above the true value of its
policy; Double DQN's stay much closer)
A ring of ``n_states`` one-hot states with ``n_actions`` actions that all do the same thing: move to the next state
and receive ``mean_reward[s] + noise``, with zero-mean Gaussian noise. All actions have the same true value, so
``V(s) = max_a Q(s, a)`` of every policy solves ``V = r + gamma * P V`` (computed exactly), and any spread of the
estimates across actions is estimation error, which the max in DQN's target turns into an upward bias (Section 3).
Episodes are truncated (not terminated) after ``episode_length`` steps, so the targets bootstrap through the
truncation and the task is the infinite-horizon one.

:class:`~sb3_dqn_ext.DoubleDQN` is trained twice per seed with identical settings, ``double_q=False`` (DQN's
``max_a Q_target(s', a)`` target) and ``double_q=True`` (Eq. 4). The behaviour policy is uniformly random
(``exploration_rate=1`` throughout): every action has the same value anyway, and both runs of a seed then see the
same transitions and the same minibatches, so they differ only by the target. Every ``eval_freq`` steps the
callback records the online network's ``mean_s max_a Q(s, a)`` next to the true ``mean_s V(s)``.

    python benchmarks/effect_overestimation.py            # 5 seeds, about 3-4 CPU-minutes
    python benchmarks/effect_overestimation.py --quick    # smoke test, seconds
"""

import argparse
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")  # write files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from benchmarks.common import RESULTS_DIR, run_metadata, save_figure, write_json
from sb3_dqn_ext import DoubleDQN

NAME = "effect_overestimation"
VARIANTS = {"DQN": False, "Double DQN": True}  # label -> double_q


class NoisyRingEnv(gym.Env):
    """
    A ring of one-hot states where every action moves on to the next state, with a noisy reward.

    :param n_states: Number of states
    :param n_actions: Number of (identical) actions
    :param reward_noise_std: Standard deviation of the zero-mean Gaussian noise added to every reward
    :param episode_length: Steps before the episode is truncated
    """

    def __init__(
        self, n_states: int = 6, n_actions: int = 10, reward_noise_std: float = 1.0, episode_length: int = 50
    ) -> None:
        super().__init__()
        self.n_states = n_states
        self.reward_noise_std = reward_noise_std
        self.episode_length = episode_length
        self.observation_space = spaces.Box(0.0, 1.0, shape=(n_states,), dtype=np.float32)
        self.action_space = spaces.Discrete(n_actions)
        # Known deterministic part of the reward, the same for every action
        self.mean_reward = np.linspace(0.0, 1.0, n_states)
        self.state = 0
        self.n_steps = 0

    def _observation(self) -> np.ndarray:
        observation = np.zeros(self.n_states, dtype=np.float32)
        observation[self.state] = 1.0
        return observation

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.state = int(self.np_random.integers(self.n_states))
        self.n_steps = 0
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        reward = self.mean_reward[self.state] + self.reward_noise_std * self.np_random.standard_normal()
        self.state = (self.state + 1) % self.n_states
        self.n_steps += 1
        return self._observation(), float(reward), False, self.n_steps >= self.episode_length, {}

    def true_values(self, gamma: float) -> np.ndarray:
        """Exact ``V(s)`` (of every policy): solves ``V = r + gamma * P V``, shape ``(n_states,)``."""
        transitions = np.roll(np.eye(self.n_states), 1, axis=1)  # P[s, s + 1] = 1
        return np.linalg.solve(np.eye(self.n_states) - gamma * transitions, self.mean_reward)


class ValueEstimateCallback(BaseCallback):
    """Every ``eval_freq`` steps, record ``mean_s max_a Q(s, a)`` of the online network over all states."""

    def __init__(self, observations: np.ndarray, eval_freq: int) -> None:
        super().__init__()
        self.observations = th.as_tensor(observations)
        self.eval_freq = eval_freq
        self.timesteps: list[int] = []
        self.estimates: list[float] = []

    def _on_step(self) -> bool:
        if self.num_timesteps % self.eval_freq == 0:
            with th.no_grad():
                q_values = self.model.q_net(self.observations.to(self.model.device))  # type: ignore[attr-defined]  # (n_states, n_actions)
            self.timesteps.append(self.num_timesteps)
            self.estimates.append(float(q_values.max(dim=1).values.mean()))
        return True


def run(double_q: bool, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one :class:`~sb3_dqn_ext.DoubleDQN` and return its value-estimate curve."""
    env = NoisyRingEnv(args.n_states, args.n_actions, args.reward_noise_std, args.episode_length)
    model = DoubleDQN(
        "MlpPolicy",
        env,
        double_q=double_q,
        learning_rate=args.learning_rate,
        buffer_size=args.total_timesteps,
        learning_starts=args.learning_starts,
        batch_size=args.batch_size,
        gamma=args.gamma,
        train_freq=args.train_freq,
        gradient_steps=1,
        target_update_interval=args.target_update_interval,
        exploration_initial_eps=1.0,
        exploration_final_eps=1.0,
        policy_kwargs=dict(net_arch=args.net_arch),
        seed=seed,
        device="cpu",
    )
    callback = ValueEstimateCallback(np.eye(args.n_states, dtype=np.float32), args.eval_freq)
    model.learn(total_timesteps=args.total_timesteps, callback=callback)
    true_value = float(env.true_values(args.gamma).mean())
    estimates = np.array(callback.estimates)
    tail = max(1, len(estimates) // 4)
    return dict(
        seed=seed,
        double_q=double_q,
        timesteps=callback.timesteps,
        estimates=[round(float(e), 4) for e in estimates],
        true_value=true_value,
        final_estimate=float(estimates[-1]),
        final_overestimation=float(estimates[-1] - true_value),
        # Less noisy: the mean over the last quarter of the evaluations
        last_quarter_overestimation=float(estimates[-tail:].mean() - true_value),
        # How much the estimate still moved over the last quarter of training
        last_quarter_rise=float(estimates[-1] - estimates[-tail - 1]) if len(estimates) > tail else 0.0,
    )


def comparison_sentence(summary: dict[str, Any], n_seeds: int) -> str:
    """One sentence comparing the measured bias with the paper's Fig. 3, built from the numbers."""
    dqn, double = summary["DQN"], summary["Double DQN"]
    true_value = summary["true_value"]
    higher = summary["seeds_where_dqn_overestimates_more"]

    def describe(stats: dict[str, Any]) -> str:
        bias = stats["median_final_overestimation"]
        return f"{bias:+.2f} ({100 * bias / true_value:+.0f}% of the true value {true_value:.2f})"

    numbers = (
        f"median final estimate minus truth: DQN {describe(dqn)}, Double DQN {describe(double)}; DQN above Double DQN in "
        f"{higher}/{n_seeds} seeds"
    )
    d_bias, dd_bias = dqn["median_final_overestimation"], double["median_final_overestimation"]
    if d_bias > 0.05 * true_value and abs(dd_bias) < 0.5 * d_bias and higher == n_seeds:
        verdict = "Reproduces the paper's Fig. 3 qualitatively: DQN overestimates clearly and Double DQN much less"
    elif d_bias > 0 and d_bias > dd_bias and higher > n_seeds / 2:
        verdict = "In the paper's direction (DQN above Double DQN) but with a smaller or less consistent gap than Fig. 3"
    elif d_bias <= 0:
        verdict = "Does not show the paper's Fig. 3 effect: DQN's estimates end below the true value (too little training?)"
    else:
        verdict = "Does not reproduce the paper's Fig. 3 (DQN is not clearly above Double DQN)"
    rises = dqn["median_last_quarter_rise"], double["median_last_quarter_rise"]
    if max(rises) > 0.02 * true_value:
        numbers += (
            f"; the estimates still rose over the last quarter of training (median DQN {rises[0]:+.2f}, Double DQN "
            f"{rises[1]:+.2f}), so these are not converged values"
        )
    return f"{verdict} ({numbers})."


def plot(results_dir: Path, runs: dict[str, list[dict[str, Any]]], true_value: float) -> None:
    """Value estimates over training (each seed thin, the median thick) against the true value."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, color in (("DQN", "tab:red"), ("Double DQN", "tab:blue")):
        curves = np.array([run["estimates"] for run in runs[label]])
        timesteps = runs[label][0]["timesteps"]
        for curve in curves:
            ax.plot(timesteps, curve, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(timesteps, np.median(curves, axis=0), color=color, linewidth=2, label=f"{label} estimate (median)")
    ax.axhline(true_value, color="black", linestyle="--", label="true value")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(r"mean over states of $\max_a Q(s, a)$")
    ax.set_title("Noisy ring, 10 equal actions: value estimates (ours)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save_figure(fig, NAME, results_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--n-states", type=int, default=6)
    parser.add_argument("--n-actions", type=int, default=10)
    parser.add_argument("--reward-noise-std", type=float, default=1.0)
    parser.add_argument("--episode-length", type=int, default=50)
    parser.add_argument("--gamma", type=float, default=0.95)
    parser.add_argument("--total-timesteps", type=int, default=16_000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--learning-starts", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-freq", type=int, default=2, help="one gradient step every train_freq env steps")
    parser.add_argument("--target-update-interval", type=int, default=250, help="in env steps, as in SB3")
    parser.add_argument("--net-arch", nargs="+", type=int, default=[64])
    parser.add_argument("--eval-freq", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="smoke test: one seed, 1200 steps")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.total_timesteps, args.learning_starts, args.eval_freq = [0], 1200, 200, 200
    th.set_num_threads(1)

    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in VARIANTS}
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    for seed in args.seeds:
        for label, double_q in VARIANTS.items():
            record = run(double_q, seed, args)
            runs[label].append(record)
            print(
                f"{label:10s} seed={seed} final estimate={record['final_estimate']:.2f} true={record['true_value']:.2f} "
                f"overestimation={record['final_overestimation']:+.2f}",
                flush=True,
            )
    cpu_time, wall_time = time.process_time() - start_cpu, time.perf_counter() - start_wall

    true_value = runs["DQN"][0]["true_value"]
    summary: dict[str, Any] = {"true_value": true_value}
    for label in VARIANTS:
        summary[label] = dict(
            final_overestimation_per_seed=[round(run["final_overestimation"], 4) for run in runs[label]],
            median_final_overestimation=float(np.median([run["final_overestimation"] for run in runs[label]])),
            median_last_quarter_overestimation=float(np.median([run["last_quarter_overestimation"] for run in runs[label]])),
            median_last_quarter_rise=float(np.median([run["last_quarter_rise"] for run in runs[label]])),
        )
    summary["seeds_where_dqn_overestimates_more"] = sum(
        dqn["final_overestimation"] > double["final_overestimation"]
        for dqn, double in zip(runs["DQN"], runs["Double DQN"], strict=True)
    )
    report: dict[str, Any] = run_metadata(packages=("gymnasium",))
    report |= {
        "experiment": NAME,
        "paper": "van Hasselt, Guez & Silver 2016, Deep Reinforcement Learning with Double Q-learning, "
        "https://arxiv.org/abs/1509.06461, Fig. 3",
        "paper_claim": "DQN's value estimates exceed the true value of its policy, Double DQN's much less",
        "settings": {key: value for key, value in vars(args).items() if key != "results_dir"}
        | dict(
            algorithm="sb3_dqn_ext.DoubleDQN, double_q=False (DQN target) vs True (Double DQN target)",
            behaviour_policy="uniformly random (exploration_rate 1)",
            estimate="online network, mean over states of max_a Q(s, a)",
            true_value="exact, mean over states of V = (I - gamma P)^-1 r",
        ),
        "runs": runs,
        "summary": summary,
        "comparison_with_paper": comparison_sentence(summary, len(args.seeds)),
    }
    report["runtime"] = dict(cpu_s=round(cpu_time, 1), wall_s=round(wall_time, 1))
    path = write_json(report, NAME, args.results_dir)
    plot(args.results_dir, runs, true_value)
    print(f"{report['comparison_with_paper']}\nCPU {cpu_time:.0f} s, wall {wall_time:.0f} s. Wrote {path} and its .png")


if __name__ == "__main__":
    main()
