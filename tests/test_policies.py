"""The dueling network: aggregation, stream layout, gradient rescaling and policy names."""

import math
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MultiInputPolicy
from torch import nn

from sb3_dqn_ext import DoubleDQN, DuelingDQN
from sb3_dqn_ext.dqn import BaseDQN
from sb3_dqn_ext.policies import (
    DuelingCnnPolicy,
    DuelingDQNPolicy,
    DuelingHead,
    DuelingMultiInputPolicy,
    DuelingQNetwork,
    _train_modules,
)


def _hand_head() -> Any:
    """
    Linear streams on 2 features, 3 actions, set by hand:

    ``V(f) = f0 + 2 f1``; ``A(f) = (f0, 2 f0, 3 f0 + 4 f1)``, the rows of the fused stream layer (V first)
    """
    head: Any = DuelingHead(features_dim=2, action_dim=3, net_arch=[], activation_fn=nn.ReLU, trunk_gradient_scale=1.0)
    with th.no_grad():
        head.streams.weight.copy_(th.tensor([[1.0, 2.0], [1.0, 0.0], [2.0, 0.0], [3.0, 4.0]]))
        head.streams.bias.zero_()
    return head


def test_dueling_aggregation_subtracts_the_mean_advantage_of_each_state() -> None:
    head = _hand_head()
    features = th.tensor([[1.0, 0.0], [0.0, 1.0]])
    # state 1: V = 1, A = (1, 2, 3), mean 2   -> Q = 1 + A - 2   = (0, 1, 2)
    # state 2: V = 2, A = (0, 0, 4), mean 4/3 -> Q = 2 + A - 4/3 = (2/3, 2/3, 14/3)
    expected = np.array([[0.0, 1.0, 2.0], [2 / 3, 2 / 3, 14 / 3]])
    # Up to float32 rounding: the aggregation is a matrix product (1/3 is not exact)
    np.testing.assert_allclose(head(features).detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    # The batch-mean aggregation (the bug of sb3-contrib #127) would subtract mean(A over batch) = 10/6 instead
    wrong = np.array([[1.0], [2.0]]) + np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]]) - 10 / 6
    assert not np.allclose(head(features).detach().numpy(), wrong)


def test_dueling_q_values_of_a_state_do_not_depend_on_other_states_in_the_batch() -> None:
    head = DuelingHead(features_dim=4, action_dim=5, net_arch=[8], activation_fn=nn.ReLU, trunk_gradient_scale=1.0)
    features = th.randn(6, 4)
    together = head(features)
    alone = th.cat([head(features[i : i + 1]) for i in range(6)])
    th.testing.assert_close(together, alone)
    # Identifiability (Eq. 9): the mean over actions of Q is V
    values = head.value_and_advantages(head.shared_net(features))[:, :1]
    th.testing.assert_close(together.mean(dim=1, keepdim=True), values)


@pytest.mark.parametrize("stream_net_arch", [[], [3]])
def test_dueling_aggregation_matches_the_formula_with_either_stream_layout(stream_net_arch: list[int]) -> None:
    head = DuelingHead(5, 4, [6], nn.ReLU, trunk_gradient_scale=1.0, stream_net_arch=stream_net_arch)
    features = th.randn(7, 5)
    streams = head.value_and_advantages(head.shared_net(features))
    values, advantages = streams[:, :1], streams[:, 1:]
    th.testing.assert_close(head(features), values + advantages - advantages.mean(dim=1, keepdim=True))
    # The aggregation matrix is not a parameter and is not saved
    assert "aggregation" not in head.state_dict()
    assert all(parameter is not head.aggregation for parameter in head.parameters())


def _linear_shapes(stream: Any) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in stream if isinstance(layer, nn.Linear)]


@pytest.mark.parametrize(
    "net_arch, expected_shared_layers",
    [
        ([], []),
        ([32], [(4, 32)]),
        ([32, 16], [(4, 32), (32, 16)]),
        (None, [(4, 64), (64, 64)]),  # QNetwork's default net_arch
    ],
)
def test_net_arch_layers_are_shared_and_streams_are_linear_by_default(
    net_arch: list[int] | None, expected_shared_layers: list[tuple[int, int]]
) -> None:
    model = DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=net_arch))
    head: Any = model.q_net.q_net
    assert isinstance(head, DuelingHead)
    assert _linear_shapes(head.shared_net) == expected_shared_layers
    latent_dim = expected_shared_layers[-1][1] if expected_shared_layers else 4  # CartPole: 4 features
    # Each stream is one linear layer: both are the fused layer, V then the 2 advantages (CartPole: 2 actions)
    assert head.value_stream is None and head.advantage_stream is None and head.streams is not None
    assert (head.streams.in_features, head.streams.out_features) == (latent_dim, 1 + 2)
    # Same hidden layers as the single-stream network: one extra output unit (V) is all the dueling head adds
    single = DoubleDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=net_arch))
    n_dueling = sum(p.numel() for p in model.q_net.parameters())
    n_single = sum(p.numel() for p in single.q_net.parameters())
    assert n_dueling - n_single == latent_dim + 1
    # The target network has the same layout, and separate parameters
    target_head: Any = model.q_net_target.q_net
    assert _linear_shapes(target_head.shared_net) == expected_shared_layers
    assert all(a is not b for a, b in zip(model.q_net.parameters(), model.q_net_target.parameters(), strict=True))


def test_stream_net_arch_gives_each_stream_hidden_layers_and_survives_save_load(tmp_path: str) -> None:
    # The dueling paper's corridor network: a shared 50-unit layer, then two streams of 25 units
    model = DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[50], stream_net_arch=[25]))
    head: Any = model.q_net.q_net
    assert _linear_shapes(head.shared_net) == [(4, 50)]
    assert _linear_shapes(head.value_stream) == [(50, 25), (25, 1)]
    assert _linear_shapes(head.advantage_stream) == [(50, 25), (25, 2)]
    model.save(f"{tmp_path}/model")
    loaded: Any = DuelingDQN.load(f"{tmp_path}/model").q_net.q_net
    assert _linear_shapes(loaded.value_stream) == [(50, 25), (25, 1)]


def test_dueling_cnn_streams_sit_on_nature_cnn_features() -> None:
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    model = DuelingDQN("CnnPolicy", env, buffer_size=10)
    assert isinstance(model.q_net.features_extractor, NatureCNN)
    head: Any = model.q_net.q_net
    # SB3 gives NatureCNN an empty net_arch: each stream is one linear layer on the 512 features
    assert isinstance(head.streams, nn.Linear)
    assert head.streams.in_features == 512
    assert head.streams.out_features == 1 + 6  # V and FakeImageEnv(discrete=True)'s 6 advantages


def test_trunk_gradient_is_scaled_by_one_over_sqrt_two() -> None:
    # Section 4.2 of the dueling paper: the gradient entering the shared trunk is rescaled by 1/sqrt(2);
    # the forward pass and the gradients of the streams themselves are unchanged.
    observations = th.randn(5, 3)
    results = {}
    for scale in (1.0, 1 / math.sqrt(2)):
        th.manual_seed(0)  # same weights for both scales
        trunk = nn.Linear(3, 6)
        head = DuelingHead(6, 4, [4], nn.ReLU, trunk_gradient_scale=scale)
        q_values = head(trunk(observations))
        q_values.sum().backward()
        stream: Any = head.streams
        assert trunk.weight.grad is not None
        results[scale] = (q_values.detach(), trunk.weight.grad, stream.weight.grad)
    (q_plain, trunk_plain, stream_plain), (q_scaled, trunk_scaled, stream_scaled) = results.values()
    th.testing.assert_close(q_scaled, q_plain, rtol=0, atol=0)
    th.testing.assert_close(stream_scaled, stream_plain, rtol=0, atol=0)
    th.testing.assert_close(trunk_scaled, trunk_plain / math.sqrt(2))


def test_trunk_gradient_scale_defaults_to_the_paper_and_survives_save_load(tmp_path: str) -> None:
    model = DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]))
    assert model.q_net.q_net.trunk_gradient_scale == pytest.approx(1 / math.sqrt(2))
    model = DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8], trunk_gradient_scale=1.0))
    model.save(f"{tmp_path}/model")
    loaded = DuelingDQN.load(f"{tmp_path}/model")
    assert loaded.q_net.q_net.trunk_gradient_scale == 1.0
    assert loaded.q_net_target.q_net.trunk_gradient_scale == 1.0


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_trunk_gradient_scale_is_rejected(scale: float) -> None:
    with pytest.raises(ValueError, match=f"trunk_gradient_scale .* got {scale}"):
        DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(trunk_gradient_scale=scale))


@pytest.mark.parametrize(
    "algo_class, policy_name, expected_policy, expected_extractor",
    [
        (DoubleDQN, "MlpPolicy", DQNPolicy, FlattenExtractor),
        (DoubleDQN, "CnnPolicy", CnnPolicy, NatureCNN),
        (DoubleDQN, "MultiInputPolicy", MultiInputPolicy, CombinedExtractor),
        (DoubleDQN, "DuelingMlpPolicy", DuelingDQNPolicy, FlattenExtractor),
        (DoubleDQN, "DuelingCnnPolicy", DuelingCnnPolicy, NatureCNN),
        (DoubleDQN, "DuelingMultiInputPolicy", DuelingMultiInputPolicy, CombinedExtractor),
        (DuelingDQN, "MlpPolicy", DuelingDQNPolicy, FlattenExtractor),
        (DuelingDQN, "CnnPolicy", DuelingCnnPolicy, NatureCNN),
        (DuelingDQN, "MultiInputPolicy", DuelingMultiInputPolicy, CombinedExtractor),
        (DuelingDQN, "DuelingCnnPolicy", DuelingCnnPolicy, NatureCNN),
    ],
)
def test_policy_names_resolve(
    algo_class: type[BaseDQN], policy_name: str, expected_policy: type, expected_extractor: type
) -> None:
    env: Any
    if "Cnn" in policy_name:
        env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    elif "MultiInput" in policy_name:
        env = SimpleMultiObsEnv(random_start=False)
    else:
        env = "CartPole-v1"
    model = algo_class(policy_name, env, buffer_size=10)
    assert type(model.policy) is expected_policy
    assert isinstance(model.q_net.features_extractor, expected_extractor)
    assert isinstance(model.q_net, DuelingQNetwork) == issubclass(expected_policy, DuelingDQNPolicy)


def test_fused_head_gradients_equal_those_of_the_two_stream_formula() -> None:
    # The fused layer, the aggregation matrix and the lerp rescaling only reorganise the computation: every
    # parameter gets the gradient of the paper's formula V + A - mean(A), trunk gradient scaled by 1/sqrt(2)
    th.manual_seed(0)
    head: Any = DuelingHead(5, 3, [8, 6], nn.ReLU, trunk_gradient_scale=1 / math.sqrt(2))
    features, weights = th.randn(9, 5), th.randn(9, 3)
    (head(features) * weights).sum().backward()
    fused_grads = [parameter.grad.clone() for parameter in head.parameters()]
    head.zero_grad()
    latent = head.shared_net(features)
    latent.register_hook(lambda grad: grad / math.sqrt(2))
    values = latent @ head.streams.weight[:1].T + head.streams.bias[:1]
    advantages = latent @ head.streams.weight[1:].T + head.streams.bias[1:]
    ((values + advantages - advantages.mean(dim=1, keepdim=True)) * weights).sum().backward()
    for fused_grad, parameter in zip(fused_grads, head.parameters(), strict=True):
        th.testing.assert_close(fused_grad, parameter.grad)


class _FrozenBatchNorm(nn.BatchNorm1d):
    """A module with its own ``train``: stays in evaluation mode (a common way to freeze batch statistics)."""

    def train(self, mode: bool = True) -> "_FrozenBatchNorm":
        return super().train(False)


class _CountingSetattr(nn.Module):
    """A module with its own ``__setattr__``, which counts the writes of ``training``."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.inner = nn.Dropout(0.5)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "training" and "writes" in self.__dict__:
            self.__dict__["writes"] += 1
        super().__setattr__(name, value)


def _module_tree() -> nn.Module:
    return nn.Sequential(
        nn.Linear(3, 4),
        nn.Sequential(nn.Dropout(0.1), _FrozenBatchNorm(4), nn.ReLU()),
        _CountingSetattr(),
    )


@pytest.mark.parametrize("mode", [False, True])
def test_train_modules_sets_the_flags_nn_module_train_sets(mode: bool) -> None:
    reference, ours = _module_tree(), _module_tree()
    for tree in (reference, ours):
        tree.train(not mode)
    reference.train(mode)
    _train_modules(ours, mode)
    flags = [[module.training for module in tree.modules()] for tree in (reference, ours)]
    assert flags[0] == flags[1]
    # Every module in the given mode, except the frozen batch norm, which kept its own rule
    assert all(module.training is (mode and not isinstance(module, _FrozenBatchNorm)) for module in ours.modules())
    # The module with its own __setattr__ was switched through it, as nn.Module.train does
    assert ours[2].writes == reference[2].writes == 2  # type: ignore[index]
    with pytest.raises(ValueError, match="boolean"):
        _train_modules(ours, 1)  # type: ignore[arg-type]


def test_dueling_policy_switches_the_online_network_only() -> None:
    policy = DuelingDQN("MlpPolicy", "CartPole-v1").policy
    for mode in (True, False, True):
        policy.set_training_mode(mode)
        assert policy.training is mode
        assert all(module.training is mode for module in policy.q_net.modules())
        assert not any(module.training for module in policy.q_net_target.modules())
