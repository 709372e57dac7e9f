"""The dueling network: aggregation (Eq. 9), layer layout, gradient rescaling, save/load, training mode, policy names."""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MultiInputPolicy, QNetwork
from torch import nn

from sb3_dqn_ext import DoubleDQN, DuelingDQN
from sb3_dqn_ext.dqn import BaseDQN
from sb3_dqn_ext.policies import (
    DuelingCnnPolicy,
    DuelingDQNPolicy,
    DuelingHead,
    DuelingMultiInputPolicy,
    DuelingQNetwork,
)


def _linear_shapes(stream: nn.Module) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in stream.modules() if isinstance(layer, nn.Linear)]


def _streams(network: DuelingQNetwork, observations: th.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The outputs of the value stream ``(batch_size, 1)`` and of the advantage stream ``(batch_size, n_actions)``."""
    head = network.q_net
    with th.no_grad():
        latent = head.shared_net(network.extract_features(observations, network.features_extractor))
        return head.value_stream(latent).numpy(), head.advantage_stream(latent).numpy()


def _dueling(network: QNetwork) -> DuelingQNetwork:
    """``network``, typed as the dueling network it is (``DuelingDQN`` declares ``QNetwork``, as ``DQN`` does)."""
    assert isinstance(network, DuelingQNetwork)
    return network


def _cartpole_q_net(**policy_kwargs: Any) -> DuelingQNetwork:
    return _dueling(DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, buffer_size=10).q_net)


def test_q_values_of_hand_set_streams_are_value_plus_advantage_minus_mean_advantage() -> None:
    # Linear streams on 2 features, 3 actions: V(f) = f0 + 2 f1, A(f) = (f0, 2 f0, 3 f0 + 4 f1)
    head = DuelingHead(features_dim=2, action_dim=3, net_arch=[], activation_fn=nn.ReLU, trunk_gradient_scale=1.0)
    value_layer, advantage_layer = head.value_stream[0], head.advantage_stream[0]
    assert isinstance(value_layer, nn.Linear) and isinstance(advantage_layer, nn.Linear)
    with th.no_grad():
        value_layer.weight.copy_(th.tensor([[1.0, 2.0]]))
        advantage_layer.weight.copy_(th.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 4.0]]))
        value_layer.bias.zero_()
        advantage_layer.bias.zero_()
        q_values = head(th.tensor([[1.0, 0.0], [0.0, 1.0]])).numpy()
    # state 1: V = 1, A = (1, 2, 3), mean 2   -> Q = 1 + A - 2   = (0, 1, 2)
    # state 2: V = 2, A = (0, 0, 4), mean 4/3 -> Q = 2 + A - 4/3 = (2/3, 2/3, 14/3)
    np.testing.assert_allclose(q_values, [[0.0, 1.0, 2.0], [2 / 3, 2 / 3, 14 / 3]], rtol=1e-6)
    # Subtracting the mean advantage over the whole batch instead (10/6; sb3-contrib #127) gives other values
    assert not np.allclose(q_values, np.array([[1.0], [2.0]]) + np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]]) - 10 / 6)


@pytest.mark.parametrize("stream_net_arch", [[], [8]])
def test_q_values_are_value_plus_advantage_minus_mean_advantage_of_each_state(stream_net_arch: list[int]) -> None:
    network = _cartpole_q_net(net_arch=[16, 16], stream_net_arch=stream_net_arch)
    observations = th.randn(7, 4)
    values, advantages = _streams(network, observations)
    expected = np.empty((7, 2), dtype=np.float32)
    for state in range(7):
        mean_advantage = sum(advantages[state]) / 2  # CartPole: 2 actions
        for action in range(2):
            expected[state, action] = values[state, 0] + advantages[state, action] - mean_advantage
    with th.no_grad():
        q_values = network(observations).numpy()
    np.testing.assert_allclose(q_values, expected, rtol=1e-6, atol=1e-6)


def test_q_values_of_a_state_do_not_depend_on_other_states_in_the_batch() -> None:
    network = _cartpole_q_net(net_arch=[16])
    observations = th.randn(6, 4)
    with th.no_grad():
        together = network(observations)
        alone = th.cat([network(observations[i : i + 1]) for i in range(6)])
    th.testing.assert_close(together, alone)
    # Identifiability (Eq. 9): the mean over the actions of Q is V
    values, _ = _streams(network, observations)
    np.testing.assert_allclose(together.mean(dim=1, keepdim=True).numpy(), values, rtol=1e-6, atol=1e-6)


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
    model = DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=net_arch), buffer_size=10)
    latent_dim = expected_shared_layers[-1][1] if expected_shared_layers else 4  # CartPole: 4 features
    for network in (_dueling(model.q_net), _dueling(model.q_net_target)):
        assert _linear_shapes(network.q_net.shared_net) == expected_shared_layers
        assert _linear_shapes(network.q_net.value_stream) == [(latent_dim, 1)]
        assert _linear_shapes(network.q_net.advantage_stream) == [(latent_dim, 2)]  # CartPole: 2 actions
    # Same hidden layers as the single-stream network: the value stream's output unit is all the dueling head adds
    single = DoubleDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=net_arch), buffer_size=10)
    n_dueling = sum(p.numel() for p in model.q_net.parameters())
    n_single = sum(p.numel() for p in single.q_net.parameters())
    assert n_dueling - n_single == latent_dim + 1
    # The target network has separate parameters
    assert all(a is not b for a, b in zip(model.q_net.parameters(), model.q_net_target.parameters(), strict=True))


def test_stream_net_arch_gives_each_stream_hidden_layers() -> None:
    # The dueling paper's corridor network: a shared 50-unit layer, then two streams of 25 units
    head = _cartpole_q_net(net_arch=[50], stream_net_arch=[25]).q_net
    assert _linear_shapes(head.shared_net) == [(4, 50)]
    assert _linear_shapes(head.value_stream) == [(50, 25), (25, 1)]
    assert _linear_shapes(head.advantage_stream) == [(50, 25), (25, 2)]


def test_dueling_cnn_streams_sit_on_nature_cnn_features() -> None:
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    model = DuelingDQN("CnnPolicy", env, buffer_size=10)
    assert isinstance(model.q_net.features_extractor, NatureCNN)
    # SB3 gives NatureCNN an empty net_arch: each stream is one linear layer on the 512 features
    head = _dueling(model.q_net).q_net
    assert _linear_shapes(head.shared_net) == []
    assert _linear_shapes(head.value_stream) == [(512, 1)]
    assert _linear_shapes(head.advantage_stream) == [(512, 6)]  # FakeImageEnv(discrete=True): 6 actions


def _model_and_observations(policy: str, trunk_gradient_scale: float) -> tuple[DuelingDQN, th.Tensor]:
    """A model with every kind of shared layer: NatureCNN for ``CnnPolicy``, two hidden layers for ``MlpPolicy``."""
    th.manual_seed(0)
    if policy == "CnnPolicy":
        env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
        model = DuelingDQN(policy, env, policy_kwargs=dict(trunk_gradient_scale=trunk_gradient_scale), buffer_size=10)
        observations = th.randint(0, 256, (5, 1, 40, 40)).float()
    else:
        policy_kwargs = dict(net_arch=[16, 16], stream_net_arch=[8], trunk_gradient_scale=trunk_gradient_scale)
        model = DuelingDQN(policy, "CartPole-v1", policy_kwargs=policy_kwargs, buffer_size=10)
        observations = th.randn(5, 4)
    return model, observations


def _shared_and_stream_parameters(network: DuelingQNetwork) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    shared = [*network.features_extractor.parameters(), *network.q_net.shared_net.parameters()]
    streams = [*network.q_net.value_stream.parameters(), *network.q_net.advantage_stream.parameters()]
    return shared, streams


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_shared_layers_get_the_gradient_scaled_by_one_over_sqrt_two(policy: str) -> None:
    # Section 4.2 of the dueling paper: the gradient entering the shared part is rescaled by 1/sqrt(2). Reference:
    # the same network (same weights) with trunk_gradient_scale=1.0, i.e. without the rescaling.
    model, observations = _model_and_observations(policy, trunk_gradient_scale=1 / math.sqrt(2))
    reference, _ = _model_and_observations(policy, trunk_gradient_scale=1.0)
    reference.q_net.load_state_dict(model.q_net.state_dict())
    network, reference_network = _dueling(model.q_net), _dueling(reference.q_net)
    weights = th.randn(5, int(network.action_space.n))  # any loss that is not symmetric in the actions
    for q_net in (network, reference_network):
        (q_net(observations) * weights).sum().backward()
    shared, streams = _shared_and_stream_parameters(network)
    reference_shared, reference_streams = _shared_and_stream_parameters(reference_network)
    assert len(shared) > 0 and len(streams) > 0
    for parameter, reference_parameter in zip(shared, reference_shared, strict=True):
        assert parameter.grad is not None and reference_parameter.grad is not None
        assert reference_parameter.grad.abs().sum() > 0
        th.testing.assert_close(parameter.grad, reference_parameter.grad / math.sqrt(2))
    # The streams' own gradients are not rescaled
    for parameter, reference_parameter in zip(streams, reference_streams, strict=True):
        th.testing.assert_close(parameter.grad, reference_parameter.grad, rtol=0, atol=0)


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_gradient_rescaling_does_not_change_q_values(policy: str) -> None:
    model, observations = _model_and_observations(policy, trunk_gradient_scale=1 / math.sqrt(2))
    reference, _ = _model_and_observations(policy, trunk_gradient_scale=1.0)
    reference.q_net.load_state_dict(model.q_net.state_dict())
    # With gradients recorded (training) and without (predict): the same values, bit for bit
    th.testing.assert_close(model.q_net(observations), reference.q_net(observations), rtol=0, atol=0)
    with th.no_grad():
        th.testing.assert_close(model.q_net(observations), reference.q_net(observations), rtol=0, atol=0)


def test_trunk_gradient_scale_defaults_to_the_paper() -> None:
    network = _cartpole_q_net(net_arch=[8])
    assert network.trunk_gradient_scale == network.q_net.trunk_gradient_scale == pytest.approx(1 / math.sqrt(2))


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_trunk_gradient_scale_is_rejected(scale: float) -> None:
    with pytest.raises(ValueError, match=f"trunk_gradient_scale .* got {scale}"):
        DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(trunk_gradient_scale=scale))


def test_save_load_keeps_the_dueling_network_and_its_predictions(tmp_path: Path) -> None:
    policy_kwargs = dict(net_arch=[16], stream_net_arch=[8], trunk_gradient_scale=0.5)
    model = DuelingDQN("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, buffer_size=10)
    observations = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    actions, _ = model.predict(observations, deterministic=True)
    with th.no_grad():
        q_values = model.q_net(th.as_tensor(observations))
    model.save(tmp_path / "model")

    loaded = DuelingDQN.load(tmp_path / "model")
    for network in (loaded.q_net, loaded.q_net_target):
        assert isinstance(network, DuelingQNetwork)
        assert network.trunk_gradient_scale == network.q_net.trunk_gradient_scale == 0.5
        assert _linear_shapes(network.q_net.value_stream) == [(16, 8), (8, 1)]
        assert _linear_shapes(network.q_net.advantage_stream) == [(16, 8), (8, 2)]
    np.testing.assert_array_equal(loaded.predict(observations, deterministic=True)[0], actions)
    with th.no_grad():
        th.testing.assert_close(loaded.q_net(th.as_tensor(observations)), q_values, rtol=0, atol=0)


def test_set_training_mode_switches_the_online_network_only() -> None:
    # As SB3's DQNPolicy: the target network stays in evaluation mode
    policy = DuelingDQN("MlpPolicy", "CartPole-v1", buffer_size=10).policy
    for mode in (False, True, False):
        policy.set_training_mode(mode)
        assert policy.training is mode
        assert all(module.training is mode for module in policy.q_net.modules())
        assert not any(module.training for module in policy.q_net_target.modules())


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
