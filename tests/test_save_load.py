"""
Saving and loading: Stable-Baselines3's ``tests/test_save_load.py`` (the DQN cases) on this package's
algorithms, plus the state that this package adds (``double_q``, the dueling networks).

``model_class`` and the policy arguments are parametrized in ``conftest.py``.
"""

import warnings
from collections import OrderedDict
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, IdentityEnv
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from stable_baselines3.dqn.policies import QNetwork

from sb3_dqn_ext import DoubleDQN, DuelingDQN, PrioritizedDQN, PrioritizedReplayBuffer
from sb3_dqn_ext.dqn import BaseDQN
from sb3_dqn_ext.policies import DuelingDQNPolicy, DuelingQNetwork

TINY: dict[str, Any] = dict(buffer_size=500, learning_starts=50)
MLP_KWARGS: dict[str, Any] = dict(net_arch=[32])
# Devices to load onto: the strings SB3's test uses, "cuda" only where there is one
DEVICES = ["auto", "cpu", *(["cuda"] if th.cuda.is_available() else [])]
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def is_dueling(model_class: type[BaseDQN], policy_name: str) -> bool:
    return issubclass(model_class.policy_aliases[policy_name], DuelingDQNPolicy)


def identity_env() -> DummyVecEnv:
    return DummyVecEnv([lambda: IdentityEnv(10)])


def step_observations(env: VecEnv, n_steps: int = 10) -> np.ndarray:
    """Observations of ``n_steps`` random steps of a single-env ``VecEnv``, stacked along the batch axis."""
    env.reset()
    return np.concatenate([env.step(np.array([env.action_space.sample()]))[0] for _ in range(n_steps)], axis=0)


def fixed_cartpole_batch() -> th.Tensor:
    """A fixed batch of CartPole-shaped observations (the observation space itself is unbounded)."""
    return th.as_tensor(np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32))


def assert_state_dicts_equal(state: dict[str, th.Tensor], other_state: dict[str, th.Tensor]) -> None:
    assert state.keys() == other_state.keys()
    for key in state:
        assert th.equal(state[key].cpu(), other_state[key].cpu()), key


def assert_optimizer_states_equal(state: dict[str, Any], other_state: dict[str, Any]) -> None:
    assert state["param_groups"] == other_state["param_groups"]
    assert state["state"].keys() == other_state["state"].keys()
    for index, param_state in state["state"].items():
        assert param_state.keys() == other_state["state"][index].keys()
        for name, value in param_state.items():
            assert th.equal(value.cpu(), other_state["state"][index][name].cpu()), (index, name)


# --- test_save_load ------------------------------------------------------------------------------------------


def test_save_load_keeps_parameters_and_predictions(tmp_path: Path, model_class: type[BaseDQN], mlp_policy: str) -> None:
    env = identity_env()
    model = model_class(mlp_policy, env, policy_kwargs=dict(net_arch=[16]), **TINY)
    model.learn(total_timesteps=200)
    observations = step_observations(env)

    # Random parameters (except the optimizer's), so that the loaded values cannot be the initial ones
    th.manual_seed(0)
    # Any: SB3 annotates the parameters as dict[str, Tensor], they are a dict of state dicts
    params: Any = deepcopy(model.get_parameters())
    params["policy"] = OrderedDict((name, th.rand_like(param)) for name, param in params["policy"].items())
    model.set_parameters(params, exact_match=True)
    selected_actions, _ = model.predict(observations, deterministic=True)
    optimizer_state = deepcopy(model.policy.optimizer.state_dict())

    model.save(tmp_path / "test_save.zip")
    del model

    for device in DEVICES:
        model = model_class.load(str(tmp_path / "test_save.zip"), env=env, device=device)
        assert model.device.type == get_device(device).type
        assert model.policy.device.type == get_device(device).type
        assert type(model.policy) is model_class.policy_aliases[mlp_policy]
        assert isinstance(model.q_net, DuelingQNetwork) is is_dueling(model_class, mlp_policy)

        new_params = model.get_parameters()
        assert new_params.keys() == params.keys()
        for param in new_params["policy"].values():
            assert param.device.type == get_device(device).type
        assert_state_dicts_equal(params["policy"], new_params["policy"])
        assert_optimizer_states_equal(optimizer_state, model.policy.optimizer.state_dict())

        new_selected_actions, _ = model.predict(observations, deterministic=True)
        np.testing.assert_array_equal(selected_actions, new_selected_actions)

        # Learning still works
        model.learn(total_timesteps=100)
        assert model.num_timesteps == 100


def test_set_parameters_exact_and_partial(tmp_path: Path, model_class: type[BaseDQN], mlp_policy: str) -> None:
    model = model_class(mlp_policy, "CartPole-v1", policy_kwargs=MLP_KWARGS, **TINY)
    original_params: Any = deepcopy(model.get_parameters())
    assert set(original_params) == {"policy", "policy.optimizer"}

    # Unknown object name
    invalid_object_params = deepcopy(original_params)
    invalid_object_params["I_should_not_be_a_valid_object"] = "and_I_am_an_invalid_tensor"
    for exact_match in (True, False):
        with pytest.raises(ValueError, match="I_should_not_be_a_valid_object"):
            model.set_parameters(invalid_object_params, exact_match=exact_match)

    # A missing object is caught with exact_match
    with pytest.raises(ValueError, match="Names of parameters do not match"):
        model.set_parameters({"policy": original_params["policy"]}, exact_match=True)

    # A missing tensor inside a state dict is caught by PyTorch with exact_match
    missing_tensor_params = deepcopy(original_params)
    last_key = list(missing_tensor_params["policy"])[-1]
    del missing_tensor_params["policy"][last_key]
    with pytest.raises(RuntimeError, match="Missing key"):
        model.set_parameters(missing_tensor_params, exact_match=True)

    # A tensor of the wrong shape is refused, exact match or not
    first_key = next(iter(original_params["policy"]))
    bad_shape = original_params["policy"][first_key].shape
    wrong_shape_params: Any = {"policy": {first_key: th.zeros(bad_shape[0] + 1, *bad_shape[1:])}}
    for exact_match in (True, False):
        with pytest.raises(RuntimeError, match="size mismatch"):
            model.set_parameters(wrong_shape_params, exact_match=exact_match)

    # Partial update: every tensor but the last of the policy's state dict
    th.manual_seed(0)
    random_params: Any = {
        "policy": OrderedDict((name, th.rand_like(param)) for name, param in list(original_params["policy"].items())[:-1])
    }
    model.set_parameters(random_params, exact_match=False)
    new_params = model.get_parameters()
    for name, param in original_params["policy"].items():
        if name == last_key:
            assert th.equal(param, new_params["policy"][name]), (
                "Parameter changed despite not included in the loaded parameters."
            )
        else:
            assert th.equal(random_params["policy"][name], new_params["policy"][name])
            assert not th.allclose(param, new_params["policy"][name]), "Parameters did not change as expected."

    # Exact update restores everything
    model.set_parameters(original_params, exact_match=True)
    assert_state_dicts_equal(original_params["policy"], model.get_parameters()["policy"])

    # From a saved model
    model.set_parameters(random_params, exact_match=False)
    model.save(tmp_path / "model.zip")
    other = model_class(mlp_policy, "CartPole-v1", policy_kwargs=MLP_KWARGS, **TINY)
    other.set_parameters(str(tmp_path / "model.zip"), exact_match=True)
    assert_state_dicts_equal(model.policy.state_dict(), other.policy.state_dict())


def test_save_load_without_env(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    model = model_class("MlpPolicy", "CartPole-v1", policy_kwargs=MLP_KWARGS, **TINY).learn(100)
    model.save(tmp_path / "model.zip")

    loaded = model_class.load(tmp_path / "model.zip", env=None)
    assert loaded.get_env() is None
    observations = fixed_cartpole_batch().numpy()
    np.testing.assert_array_equal(
        model.predict(observations, deterministic=True)[0], loaded.predict(observations, deterministic=True)[0]
    )
    assert_state_dicts_equal(model.policy.state_dict(), loaded.policy.state_dict())

    # Learning needs an env
    with pytest.raises(AssertionError, match="You must set the environment"):
        loaded.learn(10)
    loaded.set_env(make_vec_env("CartPole-v1"))
    loaded.learn(100)
    assert loaded.num_timesteps == 100


def test_set_env(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    env = identity_env()
    env2 = identity_env()
    env3 = IdentityEnv(10)
    env4 = DummyVecEnv([lambda: IdentityEnv(10) for _ in range(2)])
    kwargs: dict[str, Any] = dict(policy_kwargs=dict(net_arch=[16]), learning_starts=50, train_freq=4)

    model = model_class("MlpPolicy", env, **kwargs)
    model.learn(total_timesteps=64)

    # Change the env: the last observation is discarded
    model.set_env(env2, force_reset=True)
    assert model._last_obs is None
    model.learn(total_timesteps=64, reset_num_timesteps=True)
    assert model.num_timesteps == 64

    # A gym.Env is wrapped
    model.set_env(env3)
    model.learn(total_timesteps=64)

    # The number of envs must not change
    with pytest.raises(AssertionError):
        model.set_env(env4)

    # Same env, no reset
    model.set_env(model.get_env(), force_reset=False)  # type: ignore[arg-type]
    assert model._last_obs is not None
    model.learn(total_timesteps=64, reset_num_timesteps=False)
    assert model.num_timesteps == 2 * 64

    current_env = model.get_env()
    model.save(tmp_path / "test_save.zip")
    del model
    # Keep the number of timesteps after loading; the env kept its state, no reset needed
    model = model_class.load(tmp_path / "test_save.zip", env=current_env, force_reset=False)
    assert model._last_obs is not None
    model.learn(total_timesteps=64, reset_num_timesteps=False)
    assert model.num_timesteps == 3 * 64

    del model
    # Another env: it must be reset, the number of timesteps is kept
    model = model_class.load(tmp_path / "test_save.zip", env=env3, force_reset=True)
    assert model._last_obs is None
    model.learn(total_timesteps=64, reset_num_timesteps=False)
    assert model.num_timesteps == 3 * 64

    del model
    # Another number of envs
    model = model_class.load(tmp_path / "test_save.zip", env=env4)
    assert model.n_envs == 2
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64


def test_exclude_include_saved_params(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    # verbose=2 is not the default
    model = model_class("MlpPolicy", identity_env(), policy_kwargs=dict(net_arch=[16]), verbose=2)

    model.save(tmp_path / "test_save", exclude=["verbose"])
    del model
    model = model_class.load(str(tmp_path / "test_save.zip"))
    assert model.verbose != 2

    model.verbose = 2
    # include wins over exclude
    model.save(tmp_path / "test_save", exclude=["verbose"], include=["verbose"])
    del model
    custom_objects = dict(learning_rate=2e-5, dummy=1.0)
    model = model_class.load(str(tmp_path / "test_save.zip"), custom_objects=custom_objects, print_system_info=True)
    assert model.verbose == 2
    # The custom object replaces the saved value...
    assert model.learning_rate == custom_objects["learning_rate"]
    # ...but only for attributes that were saved
    assert not hasattr(model, "dummy")


@pytest.mark.parametrize("n_envs, n_steps", [(1, 1), (2, 1), (1, 3), (2, 3)])
def test_replay_buffer_round_trip(tmp_path: Path, model_class: type[BaseDQN], n_envs: int, n_steps: int) -> None:
    path = tmp_path / "logs" / "replay_buffer.pkl"
    path.parent.mkdir(parents=True)
    env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=0)
    model = model_class(
        "MlpPolicy", env, n_steps=n_steps, buffer_size=200, learning_starts=100, policy_kwargs=MLP_KWARGS, seed=0
    )
    # More transitions than the buffer holds: it wraps around
    model.learn(300)
    old_buffer = model.replay_buffer
    assert old_buffer is not None
    assert old_buffer.full
    assert isinstance(old_buffer, ReplayBuffer if n_steps == 1 else NStepReplayBuffer)
    assert getattr(old_buffer, "n_steps", 1) == n_steps

    model.save_replay_buffer(path)
    model.replay_buffer = None
    for device in ["cpu", *(["cuda"] if th.cuda.is_available() else [])]:
        # The loaded buffer follows the model's device
        model.device = th.device(device)
        model.load_replay_buffer(path)
        assert model.replay_buffer is not None
        assert model.replay_buffer.device.type == device
    model.device = th.device("cpu")
    model.load_replay_buffer(path)
    buffer = model.replay_buffer
    assert buffer is not None and buffer is not old_buffer

    assert type(buffer) is type(old_buffer)
    assert (buffer.buffer_size, buffer.n_envs, buffer.pos, buffer.full) == (
        old_buffer.buffer_size,
        old_buffer.n_envs,
        old_buffer.pos,
        old_buffer.full,
    )
    for name in BUFFER_ARRAYS:
        np.testing.assert_array_equal(getattr(buffer, name), getattr(old_buffer, name), err_msg=name)
    if isinstance(old_buffer, NStepReplayBuffer):
        assert isinstance(buffer, NStepReplayBuffer)
        assert (buffer.n_steps, buffer.gamma) == (old_buffer.n_steps, old_buffer.gamma) == (n_steps, model.gamma)

    # Same samples (n-step returns and discounts included)
    batch_inds = np.arange(buffer.buffer_size)
    np.random.seed(0)
    samples = old_buffer._get_samples(batch_inds)
    np.random.seed(0)
    new_samples = buffer._get_samples(batch_inds)
    for sample, new_sample in zip(samples, new_samples, strict=True):
        if sample is None:
            assert new_sample is None
        elif isinstance(sample, np.ndarray):  # the leaf indices of prioritized samples
            np.testing.assert_array_equal(sample, new_sample)
        else:
            assert th.equal(sample, new_sample)

    # Extending the loaded buffer with a whole buffer's worth of transitions rotates them in at ``pos``
    infos = [[{"TimeLimit.truncated": bool(truncated)} for truncated in row] for row in old_buffer.timeouts]
    buffer.extend(
        old_buffer.observations,
        old_buffer.next_observations,
        old_buffer.actions,
        old_buffer.rewards,
        old_buffer.dones,
        infos,
    )
    assert buffer.pos == old_buffer.pos
    for name in BUFFER_ARRAYS:
        np.testing.assert_array_equal(getattr(buffer, name), np.roll(getattr(old_buffer, name), old_buffer.pos, axis=0))

    # Training goes on with the loaded buffer
    model.learn(40, reset_num_timesteps=False)
    assert model.replay_buffer is buffer


@pytest.mark.parametrize("optimize_memory_usage", [False, True])
def test_warns_when_memory_efficient_buffer_restarts(model_class: type[BaseDQN], optimize_memory_usage: bool) -> None:
    """With ``optimize_memory_usage``, a new ``learn()`` truncates the last trajectory of the buffer, with a warning."""
    model = model_class(
        "MlpPolicy",
        IdentityEnv(10),
        buffer_size=100,
        optimize_memory_usage=optimize_memory_usage,
        # SB3's buffer, the one that implements optimize_memory_usage (a class may default to another one)
        replay_buffer_class=ReplayBuffer,
        # optimize_memory_usage and handle_timeout_termination cannot be used together
        replay_buffer_kwargs={"handle_timeout_termination": not optimize_memory_usage},
        policy_kwargs=MLP_KWARGS,
        learning_starts=10,
    )

    def truncation_warnings(records: list[warnings.WarningMessage]) -> list[str]:
        return [
            str(record.message)
            for record in records
            if "The last trajectory in the replay buffer will be truncated" in str(record.message)
        ]

    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        model.learn(150)
        model.learn(150, reset_num_timesteps=False)
    assert truncation_warnings(records) == []

    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        model.learn(150)
    assert len(truncation_warnings(records)) == (1 if optimize_memory_usage else 0)


# --- test_save_load_policy, test_save_load_q_net -------------------------------------------------------------


TRUNK_GRADIENT_SCALE = 0.5


def policy_kwargs_for(model_class: type[BaseDQN], policy_name: str, **policy_kwargs: Any) -> dict[str, Any]:
    """``policy_kwargs``, plus a non-default ``trunk_gradient_scale`` for the dueling policies."""
    if is_dueling(model_class, policy_name):
        policy_kwargs["trunk_gradient_scale"] = TRUNK_GRADIENT_SCALE
    return policy_kwargs


def check_policy_and_q_net_round_trip(tmp_path: Path, policy: BasePolicy, observations: np.ndarray) -> None:
    """Randomize the policy, then save and load the policy and its Q-network alone."""
    params = deepcopy(policy.state_dict())
    th.manual_seed(0)
    policy.load_state_dict({name: th.rand_like(param) for name, param in params.items()})
    new_params = policy.state_dict()
    for name in params:
        assert not th.allclose(params[name], new_params[name]), "Parameters did not change as expected."
    params = deepcopy(new_params)
    selected_actions, _ = policy.predict(observations, deterministic=True)

    policy.save(str(tmp_path / "policy.pkl"))
    loaded_policy = type(policy).load(str(tmp_path / "policy.pkl"))
    assert type(loaded_policy) is type(policy)
    assert_state_dicts_equal(params, loaded_policy.state_dict())
    np.testing.assert_array_equal(selected_actions, loaded_policy.predict(observations, deterministic=True)[0])

    q_net = policy.q_net
    assert isinstance(q_net, QNetwork)
    q_net.save(str(tmp_path / "q_net.pkl"))
    loaded_q_net = type(q_net).load(str(tmp_path / "q_net.pkl"))
    assert type(loaded_q_net) is type(q_net)
    assert_state_dicts_equal(q_net.state_dict(), loaded_q_net.state_dict())
    np.testing.assert_array_equal(selected_actions, loaded_q_net.predict(observations, deterministic=True)[0])
    if isinstance(policy, DuelingDQNPolicy):
        assert isinstance(loaded_policy, DuelingDQNPolicy)
        assert isinstance(q_net, DuelingQNetwork) and isinstance(loaded_q_net, DuelingQNetwork)
        # Not the default
        assert q_net.trunk_gradient_scale == TRUNK_GRADIENT_SCALE
        for network in (loaded_policy.q_net, loaded_policy.q_net_target, loaded_q_net):
            assert network.trunk_gradient_scale == TRUNK_GRADIENT_SCALE
            assert network.q_net.trunk_gradient_scale == TRUNK_GRADIENT_SCALE
    else:
        assert not isinstance(loaded_q_net, DuelingQNetwork)


def test_policy_and_q_net_save_load_alone(tmp_path: Path, model_class: type[BaseDQN], mlp_policy: str) -> None:
    env = identity_env()
    policy_kwargs = policy_kwargs_for(model_class, mlp_policy, net_arch=[16])
    model = model_class(mlp_policy, env, policy_kwargs=policy_kwargs, **TINY).learn(100)
    assert isinstance(model.policy, DuelingDQNPolicy) is is_dueling(model_class, mlp_policy)
    check_policy_and_q_net_round_trip(tmp_path, model.policy, step_observations(env))


def test_cnn_policy_and_q_net_save_load_alone(tmp_path: Path, model_class: type[BaseDQN], cnn_policy: str) -> None:
    env = DummyVecEnv([lambda: FakeImageEnv(screen_height=40, screen_width=40, n_channels=2, discrete=True)])
    model = model_class(
        cnn_policy,
        env,
        buffer_size=250,
        learning_starts=50,
        policy_kwargs=policy_kwargs_for(model_class, cnn_policy, features_extractor_kwargs=dict(features_dim=32)),
    ).learn(100)
    assert isinstance(model.policy, DuelingDQNPolicy) is is_dueling(model_class, cnn_policy)
    check_policy_and_q_net_round_trip(tmp_path, model.policy, step_observations(env))


# --- other DQN save/load tests -------------------------------------------------------------------------------


def test_target_update_interval_survives_save_load(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    # GH issue #1373: the interval must not be divided by the number of envs at each load
    model = model_class("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), target_update_interval=100, **TINY)
    model.save(tmp_path / "model")
    model = model_class.load(tmp_path / "model")
    assert model.target_update_interval == 100
    model = model_class.load(tmp_path / "model", env=make_vec_env("CartPole-v1", n_envs=2))
    assert model.target_update_interval == 100


def test_loads_models_whose_optimizer_holds_target_params(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    # SB3 < 2.4.0 optimized the target network's parameters too
    model = model_class("MlpPolicy", "CartPole-v1", policy_kwargs=MLP_KWARGS, buffer_size=500, learning_starts=4)
    env = model.get_env()
    model.policy.optimizer = th.optim.Adam(model.policy.parameters(), lr=0.001)
    model.save(tmp_path / "test_save")
    with pytest.warns(UserWarning, match="SB3 < 2.4.0"):
        loaded = model_class.load(str(tmp_path / "test_save.zip"), env=env)
    assert len(loaded.policy.optimizer.param_groups[0]["params"]) == len(list(loaded.q_net.parameters()))
    loaded.learn(20)


def test_training_continues_after_load(tmp_path: Path, model_class: type[BaseDQN], mlp_policy: str) -> None:
    model = model_class(mlp_policy, "CartPole-v1", policy_kwargs=MLP_KWARGS, seed=0, **TINY).learn(200)
    n_updates = model._n_updates
    assert n_updates > 0
    model.save(tmp_path / "model.zip")

    loaded = model_class.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded.num_timesteps == 200
    assert loaded._n_updates == n_updates
    assert loaded.exploration_rate == model.exploration_rate
    params = [param.detach().clone() for param in loaded.q_net.parameters()]

    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps == 300
    # train_freq=4: one gradient step per rollout of 4 steps
    assert loaded._n_updates == n_updates + 100 // 4
    for param, new_param in zip(params, loaded.q_net.parameters(), strict=True):
        assert not th.allclose(param, new_param)


# --- the state this package adds -----------------------------------------------------------------------------


@pytest.mark.parametrize("double_q", [False, True])
def test_double_q_survives_save_load(tmp_path: Path, model_class: type[DoubleDQN], double_q: bool) -> None:
    # Acrobot: three actions, bounded observations to sample from
    model = model_class("MlpPolicy", "Acrobot-v1", double_q=double_q, policy_kwargs=MLP_KWARGS, **TINY)
    # Online and target networks far apart, so that the two targets differ
    th.manual_seed(0)
    model.q_net.load_state_dict({name: th.randn_like(param) for name, param in model.q_net.state_dict().items()})
    model.save(tmp_path / "model.zip")

    loaded = model_class.load(tmp_path / "model.zip")
    assert loaded.double_q is double_q

    # The loaded model computes the target it was saved with
    model.observation_space.seed(0)
    next_observations = th.as_tensor(np.array([model.observation_space.sample() for _ in range(64)]))
    with th.no_grad():
        next_q_values = loaded._next_q_values(next_observations)
        target_q_values = loaded.q_net_target(next_observations)
        double_q_values = th.gather(target_q_values, dim=1, index=loaded.q_net(next_observations).argmax(dim=1, keepdim=True))
        max_q_values = target_q_values.max(dim=1).values.reshape(-1, 1)
    assert not th.equal(double_q_values, max_q_values)
    assert th.equal(next_q_values, double_q_values if double_q else max_q_values)


def test_dueling_model_loads_back_as_dueling(tmp_path: Path, model_class: type[BaseDQN], dueling_mlp_policy: str) -> None:
    model = model_class(
        dueling_mlp_policy,
        "CartPole-v1",
        policy_kwargs=dict(net_arch=[32], trunk_gradient_scale=0.5),
        seed=0,
        **TINY,
    ).learn(100)
    assert isinstance(model.q_net, DuelingQNetwork)
    model.save(tmp_path / "model.zip")

    loaded = model_class.load(tmp_path / "model.zip")
    assert type(loaded.policy) is type(model.policy)
    assert isinstance(loaded.policy, DuelingDQNPolicy)
    for network in (loaded.q_net, loaded.q_net_target):
        assert isinstance(network, DuelingQNetwork)
        assert network.trunk_gradient_scale == 0.5
        assert network.q_net.trunk_gradient_scale == 0.5
    # The model's aliases point to the loaded policy's networks
    assert loaded.q_net is loaded.policy.q_net
    assert loaded.q_net_target is loaded.policy.q_net_target
    assert_state_dicts_equal(model.policy.state_dict(), loaded.policy.state_dict())

    observations = fixed_cartpole_batch()
    with th.no_grad():
        assert th.equal(model.q_net(observations), loaded.q_net(observations))
        assert th.equal(model.q_net_target(observations), loaded.q_net_target(observations))
    np.testing.assert_array_equal(
        model.predict(observations.numpy(), deterministic=True)[0], loaded.predict(observations.numpy(), deterministic=True)[0]
    )


def test_loading_with_a_class_that_contradicts_the_saved_model_warns(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = dict(policy_kwargs=MLP_KWARGS, **TINY)
    DuelingDQN("MlpPolicy", "CartPole-v1", **kwargs).save(tmp_path / "dueling.zip")
    PrioritizedDQN("MlpPolicy", "CartPole-v1", **kwargs).save(tmp_path / "prioritized.zip")
    DoubleDQN("DuelingMlpPolicy", "CartPole-v1", **kwargs).save(tmp_path / "double_with_dueling_policy.zip")

    # A uniform buffer was saved: the prioritized class says so, naming both
    with pytest.warns(UserWarning, match=r"PrioritizedDQN\.load\(\).*replay_buffer_class=ReplayBuffer.*prioritized"):
        prioritized = PrioritizedDQN.load(tmp_path / "dueling.zip")
    assert type(prioritized.replay_buffer) is ReplayBuffer  # SB3's format and rules: the saved settings win
    # A single-stream network was saved: the dueling class says so
    with pytest.warns(UserWarning, match=r"DuelingDQN\.load\(\).*DQNPolicy.*single-stream.*dueling"):
        dueling = DuelingDQN.load(tmp_path / "prioritized.zip")
    assert not isinstance(dueling.policy, DuelingDQNPolicy)

    # No contradiction, no warning: same class, a dueling policy saved by another class, an explicit buffer class
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(DuelingDQN.load(tmp_path / "dueling.zip").policy, DuelingDQNPolicy)
        DuelingDQN.load(tmp_path / "double_with_dueling_policy.zip")
        PrioritizedDQN.load(tmp_path / "prioritized.zip")
        prioritized = PrioritizedDQN.load(tmp_path / "dueling.zip", replay_buffer_class=PrioritizedReplayBuffer)
    assert type(prioritized.replay_buffer) is PrioritizedReplayBuffer
