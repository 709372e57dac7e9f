"""TD targets and target-network updates, checked against values worked out by hand."""

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sb3_dqn_ext import DoubleDQN
from sb3_dqn_ext.dqn import BaseDQN


class TwoFeatureEnv(gym.Env):
    """Observations in R^2, two actions: just enough to hold a hand-set linear Q-network."""

    observation_space = spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(2, dtype=np.float32), 0.0, False, False, {}


def _assert_same_parameters(model_a: DQN, model_b: DQN) -> None:
    params_a, params_b = model_a.policy.state_dict(), model_b.policy.state_dict()
    assert params_a.keys() == params_b.keys()
    for key in params_a:
        assert th.equal(params_a[key], params_b[key]), f"{key} differs"


@pytest.mark.parametrize(
    "env_id, n_steps, tau",
    [("CartPole-v1", 1, 1.0), ("CartPole-v1", 3, 1.0), ("Acrobot-v1", 1, 0.1)],
)
def test_base_dqn_with_default_seams_is_bit_identical_to_sb3_dqn(env_id: str, n_steps: int, tau: float) -> None:
    # The anchor of the package: owning train() is only safe if, with its default seams, it does exactly
    # what stable_baselines3.DQN does (same random draws, same operations, same order).
    kwargs = dict(
        learning_starts=50,
        buffer_size=500,
        batch_size=16,
        train_freq=2,
        gradient_steps=3,
        target_update_interval=40,
        tau=tau,
        n_steps=n_steps,
        policy_kwargs=dict(net_arch=[32]),
        seed=3,
    )
    reference = DQN("MlpPolicy", env_id, **kwargs).learn(400)  # type: ignore[arg-type]
    ours = BaseDQN("MlpPolicy", env_id, **kwargs).learn(400)  # type: ignore[arg-type]
    assert ours._n_updates == reference._n_updates > 100
    _assert_same_parameters(ours, reference)
    # The optimizer followed the same path too
    for state_ours, state_ref in zip(
        ours.policy.optimizer.state_dict()["state"].values(),
        reference.policy.optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert th.equal(state_ours["exp_avg_sq"], state_ref["exp_avg_sq"])


def test_base_dqn_logs_the_same_mean_loss_as_sb3_dqn() -> None:
    kwargs = dict(learning_starts=50, buffer_size=500, batch_size=16, policy_kwargs=dict(net_arch=[32]), seed=1)
    models = [cls("MlpPolicy", "CartPole-v1", **kwargs).learn(100) for cls in (DQN, BaseDQN)]  # type: ignore[arg-type]
    losses = []
    for model in models:
        model.set_logger(configure(folder=None, format_strings=[]))
        th.manual_seed(0)
        np.random.seed(0)
        model.train(gradient_steps=5, batch_size=16)
        losses.append(model.logger.name_to_value["train/loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def _linear_model(double_q: bool) -> DoubleDQN:
    """
    A DoubleDQN whose networks are linear, without bias, set by hand:

    online ``Q(s) = [[1, 0], [0, 1]] s = (s0, s1)``, target ``Q'(s) = [[2, 0], [0, 0.5]] s = (2 s0, 0.5 s1)``
    """
    model = DoubleDQN(
        "MlpPolicy",
        TwoFeatureEnv(),
        policy_kwargs=dict(net_arch=[]),
        learning_starts=0,
        double_q=double_q,
        device="cpu",
        seed=0,
    )
    model.set_logger(configure(folder=None, format_strings=[]))
    with th.no_grad():
        online: Any = model.q_net.q_net[0]
        target: Any = model.q_net_target.q_net[0]
        online.weight.copy_(th.tensor([[1.0, 0.0], [0.0, 1.0]]))
        target.weight.copy_(th.tensor([[2.0, 0.0], [0.0, 0.5]]))
        online.bias.zero_()
        target.bias.zero_()
    return model


def _targets_seen_by_train(model: DoubleDQN, batch: ReplayBufferSamples) -> th.Tensor:
    """Run one gradient step on ``batch`` and return the TD targets the loss received."""
    seen: dict[str, th.Tensor] = {}
    compute_loss = model._compute_loss

    def recording_loss(current_q_values: th.Tensor, target_q_values: th.Tensor, replay_data: Any) -> th.Tensor:
        seen["target_q_values"] = target_q_values.clone()
        return compute_loss(current_q_values, target_q_values, replay_data)

    model._compute_loss = recording_loss  # type: ignore[method-assign]
    model.replay_buffer.sample = lambda batch_size, env=None: batch  # type: ignore[method-assign,union-attr]
    model.train(gradient_steps=1, batch_size=2)
    return seen["target_q_values"]


def _hand_batch() -> ReplayBufferSamples:
    # next states s'_1 = (1, 3), s'_2 = (4, 2)
    #   online Q(s'_1) = (1, 3) -> argmax 1;  target Q'(s'_1) = (2, 1.5)   -> double: 1.5, max: 2
    #   online Q(s'_2) = (4, 2) -> argmax 0;  target Q'(s'_2) = (8, 1)     -> double: 8,   max: 8
    # rewards (1, 0.5), dones (0, 1), n-step discounts (0.81, 0.9)
    return ReplayBufferSamples(
        observations=th.tensor([[1.0, 1.0], [2.0, 0.0]]),
        actions=th.tensor([[0], [1]]),
        next_observations=th.tensor([[1.0, 3.0], [4.0, 2.0]]),
        dones=th.tensor([[0.0], [1.0]]),
        rewards=th.tensor([[1.0], [0.5]]),
        discounts=th.tensor([[0.81], [0.9]]),
    )


def test_double_dqn_target_matches_hand_computation() -> None:
    targets = _targets_seen_by_train(_linear_model(double_q=True), _hand_batch())
    # y_1 = 1 + 0.81 * (1 - 0) * Q'(s'_1, argmax Q(s'_1)) = 1 + 0.81 * 1.5 = 2.215
    # y_2 = 0.5 + 0.9 * (1 - 1) * ...                                    = 0.5
    np.testing.assert_allclose(targets.numpy(), [[2.215], [0.5]], rtol=1e-6)


def test_double_q_false_gives_dqn_max_target() -> None:
    targets = _targets_seen_by_train(_linear_model(double_q=False), _hand_batch())
    # y_1 = 1 + 0.81 * max(2, 1.5) = 2.62: the vanilla target overestimates this one
    np.testing.assert_allclose(targets.numpy(), [[2.62], [0.5]], rtol=1e-6)


def test_double_dqn_target_uses_gamma_without_n_step_discounts() -> None:
    model = _linear_model(double_q=True)
    batch = _hand_batch()._replace(discounts=None)
    targets = _targets_seen_by_train(model, batch)
    # y_1 = 1 + gamma * 1.5 with SB3's default gamma = 0.99
    np.testing.assert_allclose(targets.numpy(), [[1 + 0.99 * 1.5], [0.5]], rtol=1e-6)


def test_soft_update_moves_target_by_tau(model_class: type[BaseDQN]) -> None:
    tau = 0.3
    model = model_class("MlpPolicy", "CartPole-v1", tau=tau, target_update_interval=1, policy_kwargs=dict(net_arch=[8]))
    model.set_logger(configure(folder=None, format_strings=[]))
    with th.no_grad():
        for param in model.q_net.parameters():
            param.add_(th.randn_like(param))
    online = [p.detach().clone() for p in model.q_net.parameters()]
    old_target = [p.detach().clone() for p in model.q_net_target.parameters()]
    assert not all(th.equal(a, b) for a, b in zip(online, old_target, strict=True))

    model._on_step()

    for new_target, online_param, old in zip(model.q_net_target.parameters(), online, old_target, strict=True):
        expected = tau * online_param + (1 - tau) * old
        th.testing.assert_close(new_target, expected, rtol=1e-6, atol=1e-7)


def test_target_update_interval_counts_environment_steps(model_class: type[BaseDQN]) -> None:
    # With 2 envs, each call to _on_step() is 2 environment steps: interval 4 -> every 2nd call
    model = model_class("MlpPolicy", "CartPole-v1", tau=1.0, target_update_interval=4, policy_kwargs=dict(net_arch=[8]))
    model.n_envs = 2
    model.set_logger(configure(folder=None, format_strings=[]))

    def perturb_and_step() -> bool:
        with th.no_grad():
            for param in model.q_net.parameters():
                param.add_(1.0)
        model._on_step()
        return all(th.equal(a, b) for a, b in zip(model.q_net.parameters(), model.q_net_target.parameters(), strict=True))

    assert [perturb_and_step() for _ in range(4)] == [False, True, False, True]


def test_polyak_recipe_trains_and_keeps_target_behind(model_class: type[BaseDQN]) -> None:
    # The documented recipe for a per-step Polyak update
    model = model_class(
        "MlpPolicy",
        "CartPole-v1",
        tau=0.005,
        target_update_interval=1,
        learning_starts=50,
        buffer_size=500,
        policy_kwargs=dict(net_arch=[16]),
        seed=0,
    ).learn(300)
    online: th.Tensor = th.nn.utils.parameters_to_vector(model.q_net.parameters())
    target = th.nn.utils.parameters_to_vector(model.q_net_target.parameters())
    initial = th.nn.utils.parameters_to_vector(
        model_class("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[16]), seed=0).q_net_target.parameters()
    )
    # The target moved, but only part of the way from its start to the online network
    assert 0 < (target - initial).norm() < (online - initial).norm()


def test_optimizer_settings_are_those_of_sb3_dqn(model_class: type[BaseDQN]) -> None:
    """No optimizer implementation is forced on the user: the optimizer is built as SB3's DQN builds it."""
    policy_kwargs = dict(net_arch=[8], optimizer_kwargs=dict(eps=1e-5))
    ours = model_class("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, device="cpu")
    reference = DQN("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, device="cpu")
    group, reference_group = ours.policy.optimizer.param_groups[0], reference.policy.optimizer.param_groups[0]
    assert {key: value for key, value in group.items() if key != "params"} == {
        key: value for key, value in reference_group.items() if key != "params"
    }
    assert ours.policy_kwargs == policy_kwargs
