"""
Train one of our algorithms on CartPole-v1 with rl-zoo3's tuned DQN settings and print its evaluation score.

    python examples/train_cartpole.py --algo double_dqn
"""

import argparse
import time

import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_dqn_ext import DoubleDQN, DuelingDQN, PrioritizedDQN

ALGOS = {"double_dqn": DoubleDQN, "dueling_dqn": DuelingDQN, "per_dqn": PrioritizedDQN}

# rl-zoo3's CartPole-v1 entry of dqn.yml ("Almost Tuned")
CARTPOLE_HYPERPARAMS = dict(
    learning_rate=2.3e-3,
    batch_size=64,
    buffer_size=100_000,
    learning_starts=1000,
    gamma=0.99,
    target_update_interval=10,
    train_freq=256,
    gradient_steps=128,
    exploration_fraction=0.16,
    exploration_final_eps=0.04,
    policy_kwargs=dict(net_arch=[256, 256]),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(ALGOS), default="double_dqn")
    parser.add_argument("--timesteps", type=int, default=50_000, help="the zoo's budget for CartPole-v1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=20)
    args = parser.parse_args()

    th.set_num_threads(1)  # small networks: one thread is fastest on a few shared cores
    model = ALGOS[args.algo]("MlpPolicy", "CartPole-v1", seed=args.seed, verbose=0, **CARTPOLE_HYPERPARAMS)  # type: ignore[arg-type]
    start = time.perf_counter()
    model.learn(total_timesteps=args.timesteps, progress_bar=False)
    elapsed = time.perf_counter() - start

    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=args.seed + 1000)
    mean_reward, std_reward = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    print(
        f"{type(model).__name__} on CartPole-v1: {args.timesteps} steps in {elapsed:.0f} s "
        f"({args.timesteps / elapsed:.0f} steps/s), evaluation over {args.eval_episodes} episodes: "
        f"{mean_reward:.1f} +/- {std_reward:.1f}"
    )


if __name__ == "__main__":
    main()
