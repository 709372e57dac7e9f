"""
Stable-Baselines3's own DQN tests, run on this package's algorithms.

Ported from SB3's ``tests/test_run.py``, ``test_predict.py``, ``test_cnn.py``, ``test_dict_env.py``,
``test_n_step_replay.py``, ``test_callbacks.py``, ``test_tensorboard.py``, ``test_vec_normalize.py`` and
``test_spaces.py`` (the DQN cases), with tiny settings. ``model_class`` and the policy arguments are
parametrized in ``conftest.py``.
"""

import os
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN, HerReplayBuffer
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    EveryNTimesteps,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv, FakeImageEnv, IdentityEnv, IdentityEnvBox, SimpleMultiObsEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecFrameStack,
    VecNormalize,
    VecTransposeImage,
    is_vecenv_wrapped,
)
from stable_baselines3.dqn.policies import QNetwork
from torch import nn

from sb3_dqn_ext import DoubleDQN, DuelingDQN
from sb3_dqn_ext.dqn import BaseDQN
from sb3_dqn_ext.policies import DuelingDQNPolicy, DuelingQNetwork

# Replay buffer settings shared by every test: small buffer, few random steps
TINY: dict[str, Any] = dict(buffer_size=500, learning_starts=50)
MLP_KWARGS: dict[str, Any] = dict(net_arch=[32])
CNN_KWARGS: dict[str, Any] = dict(net_arch=[32], features_extractor_kwargs=dict(features_dim=32))
DICT_KWARGS: dict[str, Any] = dict(net_arch=[32], features_extractor_kwargs=dict(cnn_output_dim=32))


def is_dueling(model_class: type[BaseDQN], policy_name: str) -> bool:
    return issubclass(model_class.policy_aliases[policy_name], DuelingDQNPolicy)


def assert_q_net_kind(model: BaseDQN, dueling: bool) -> None:
    """The online and the target network are dueling networks exactly when the policy is dueling."""
    for network in (model.q_net, model.q_net_target):
        assert isinstance(network, QNetwork)
        assert isinstance(network, DuelingQNetwork) is dueling


def clone_parameters(module: nn.Module) -> list[th.Tensor]:
    return [param.detach().clone() for param in module.parameters()]


def params_should_match(params: list[th.Tensor], other_params: list[th.Tensor]) -> None:
    assert len(params) == len(other_params)
    for param, other_param in zip(params, other_params, strict=True):
        assert th.equal(param, other_param)


def params_should_differ(params: list[th.Tensor], other_params: list[th.Tensor]) -> None:
    assert len(params) == len(other_params)
    for param, other_param in zip(params, other_params, strict=True):
        assert not th.allclose(param, other_param)


class MixedDictEnv(gym.Env):
    """Dict observations mixing an image, a vector and a discrete value (SB3's ``DummyDictEnv``)."""

    def __init__(self, channel_last: bool = False, vec_only: bool = False) -> None:
        super().__init__()
        self.action_space = spaces.Discrete(3)
        image_shape = (36, 36, 1) if channel_last else (1, 36, 36)
        vector_space = spaces.Box(low=-1, high=1, shape=(2,), dtype=np.float32)
        if vec_only:
            self.observation_space = spaces.Dict({"vec": vector_space})
        else:
            self.observation_space = spaces.Dict(
                {
                    "img": spaces.Box(low=0, high=255, shape=image_shape, dtype=np.uint8),
                    "vec": vector_space,
                    "discrete": spaces.Discrete(4),
                }
            )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.observation_space.seed(seed)
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self.observation_space.sample(), 0.0, False, False, {}


class RandomObservationEnv(gym.Env):
    """Random observations from ``observation_space``, four actions, zero reward (SB3's ``test_spaces.DummyEnv``)."""

    def __init__(self, observation_space: spaces.Space) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.action_space = spaces.Discrete(4)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.observation_space.seed(seed)
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self.observation_space.sample(), 0.0, False, False, {}


class BatchNormDropoutExtractor(BaseFeaturesExtractor):
    """Flatten, then batch normalization and dropout: layers whose output depends on the training mode."""

    def __init__(self, observation_space: spaces.Space) -> None:
        super().__init__(observation_space, get_flattened_obs_dim(observation_space))
        self.flatten = nn.Flatten()
        self.batch_norm = nn.BatchNorm1d(self._features_dim)
        self.dropout = nn.Dropout(0.5)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.dropout(self.batch_norm(self.flatten(observations)))


# --- test_run.py ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tau, target_update_interval",
    [(1.0, 10_000), (1.0, 20), (0.5, 1)],
    ids=["no-target-update", "hard-update", "soft-update"],
)
def test_learns_on_cartpole(model_class: type[BaseDQN], mlp_policy: str, tau: float, target_update_interval: int) -> None:
    model = model_class(
        mlp_policy,
        "CartPole-v1",
        learning_rate=3e-4,
        tau=tau,
        target_update_interval=target_update_interval,
        policy_kwargs=MLP_KWARGS,
        seed=0,
        **TINY,
    )
    assert_q_net_kind(model, is_dueling(model_class, mlp_policy))
    initial_params = clone_parameters(model.q_net)
    initial_target_params = clone_parameters(model.q_net_target)
    # The target network starts as a copy of the online network
    params_should_match(initial_params, initial_target_params)

    model.learn(total_timesteps=200)

    assert model.num_timesteps == 200
    # train_freq=4: one gradient step after each of the rollouts ending at 52, 56, ..., 200 (> learning_starts)
    assert model._n_updates == (200 - 52) // 4 + 1
    params_should_differ(initial_params, clone_parameters(model.q_net))
    if target_update_interval > model.num_timesteps:
        params_should_match(initial_target_params, clone_parameters(model.q_net_target))
    else:
        params_should_differ(initial_target_params, clone_parameters(model.q_net_target))


@pytest.mark.parametrize("sb3_name", ["MlpPolicy", "CnnPolicy", "MultiInputPolicy"])
def test_policy_names_resolve_to_the_documented_policies(sb3_name: str) -> None:
    dueling_name = f"Dueling{sb3_name}"
    dueling_policy = DuelingDQN.policy_aliases[dueling_name]
    assert issubclass(dueling_policy, DuelingDQNPolicy)
    # DoubleDQN: SB3's policies, and the dueling ones by name
    assert DoubleDQN.policy_aliases[sb3_name] is DQN.policy_aliases[sb3_name]
    assert DoubleDQN.policy_aliases[dueling_name] is dueling_policy
    # DuelingDQN: SB3's names mean the dueling policies
    assert DuelingDQN.policy_aliases[sb3_name] is dueling_policy
    # DQN itself is left alone
    assert dueling_name not in DQN.policy_aliases
    assert not issubclass(DQN.policy_aliases[sb3_name], DuelingDQNPolicy)


def test_sb3_policy_names_are_accepted(model_class: type[BaseDQN]) -> None:
    for sb3_name, policy_class in DQN.policy_aliases.items():
        # The same policy or a dueling version of it (same features extractor defaults)
        assert issubclass(model_class.policy_aliases[sb3_name], (policy_class, DuelingDQNPolicy))
    model = model_class("MlpPolicy", "CartPole-v1", policy_kwargs=MLP_KWARGS, **TINY)
    assert isinstance(model.policy, model_class.policy_aliases["MlpPolicy"])


# --- test_predict.py -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_predict_handles_single_and_vectorized_observations(model_class: type[BaseDQN], mlp_policy: str, device: str) -> None:
    model = model_class(mlp_policy, "CartPole-v1", device=device, policy_kwargs=MLP_KWARGS, **TINY)
    assert model.device.type == get_device(device).type
    assert model.policy.device.type == get_device(device).type
    assert model.replay_buffer is not None
    assert model.replay_buffer.device.type == get_device(device).type

    env = gym.make("CartPole-v1")
    vec_env = DummyVecEnv([lambda: gym.make("CartPole-v1"), lambda: gym.make("CartPole-v1")])

    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert isinstance(action, np.ndarray)
    assert action.shape == env.action_space.shape
    assert env.action_space.contains(action)

    vec_env.seed(1)
    vec_obs = vec_env.reset()
    assert isinstance(vec_obs, np.ndarray)
    actions, _ = model.predict(vec_obs, deterministic=True)
    assert isinstance(actions, np.ndarray)
    assert actions.shape == (vec_obs.shape[0],)
    # Deterministic actions are the greedy actions of the Q-network, observation by observation
    with th.no_grad():
        q_values = model.q_net(th.as_tensor(vec_obs, device=model.device))
    np.testing.assert_array_equal(actions, q_values.argmax(dim=1).cpu().numpy())
    np.testing.assert_array_equal(actions, [model.predict(single_obs, deterministic=True)[0] for single_obs in vec_obs])

    # Epsilon-greedy exploration
    model.exploration_rate = 1.0
    action, _ = model.predict(obs, deterministic=False)
    assert action.shape == env.action_space.shape
    assert env.action_space.contains(action)
    actions, _ = model.predict(vec_obs, deterministic=False)
    assert actions.shape == (vec_obs.shape[0],)
    assert all(env.action_space.contains(a) for a in actions)


def test_epsilon_greedy_predict_with_discrete_observation(model_class: type[BaseDQN]) -> None:
    env = IdentityEnv(2)
    model = model_class("MlpPolicy", env, policy_kwargs=MLP_KWARGS, **TINY)
    # A discrete observation is a plain int (Any: predict() is annotated for arrays only)
    obs: Any = env.reset(seed=0)[0]
    assert np.ndim(obs) == 0
    model.exploration_rate = 1.0
    # It must not be mistaken for a batch
    for _ in range(10):
        action, _ = model.predict(obs, deterministic=False)
        assert env.action_space.contains(action)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == ()
    assert env.action_space.contains(action)


def test_predict_ignores_dropout_and_batch_norm_training_mode(model_class: type[BaseDQN], mlp_policy: str) -> None:
    model = model_class(
        mlp_policy,
        "CartPole-v1",
        policy_kwargs=dict(net_arch=[16], features_extractor_class=BatchNormDropoutExtractor),
        seed=1,
        buffer_size=500,
        learning_starts=0,
    )
    batch_norm = model.q_net.features_extractor.batch_norm
    target_batch_norm = model.q_net_target.features_extractor.batch_norm
    assert isinstance(batch_norm, nn.BatchNorm1d)
    assert isinstance(target_batch_norm, nn.BatchNorm1d)
    # Updated in place by training
    bias, running_mean, target_running_mean = batch_norm.bias, batch_norm.running_mean, target_batch_norm.running_mean
    assert bias is not None and running_mean is not None and target_running_mean is not None
    stats_before = [t.clone() for t in (bias, running_mean, target_running_mean)]

    env = model.get_env()
    assert env is not None
    observation = env.reset()
    assert isinstance(observation, np.ndarray)
    first_prediction, _ = model.predict(observation, deterministic=True)
    for _ in range(10):
        prediction, _ = model.predict(observation, deterministic=True)
        np.testing.assert_array_equal(first_prediction, prediction)
    # predict() runs in evaluation mode: no running statistics update
    for before, after in zip(stats_before, (bias, running_mean, target_running_mean), strict=True):
        assert th.equal(before, after)

    model.learn(100)
    # Training does update them...
    assert not th.allclose(stats_before[0], bias)
    assert not th.allclose(stats_before[1], running_mean)
    # ...and predict() is still deterministic afterwards, in evaluation mode
    first_prediction, _ = model.predict(observation, deterministic=True)
    for _ in range(10):
        prediction, _ = model.predict(observation, deterministic=True)
        np.testing.assert_array_equal(first_prediction, prediction)
    assert not model.q_net.training
    with th.no_grad():
        assert th.equal(model.q_net(th.as_tensor(observation)), model.q_net(th.as_tensor(observation)))


# --- test_cnn.py ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel_first", [False, True], ids=["channel-last", "channel-first"])
def test_cnn_policy_learns_predicts_and_reloads(
    tmp_path: Path, model_class: type[BaseDQN], cnn_policy: str, channel_first: bool
) -> None:
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True, channel_first=channel_first)
    model = model_class(cnn_policy, env, policy_kwargs=CNN_KWARGS, seed=1, **TINY).learn(100)
    assert_q_net_kind(model, is_dueling(model_class, cnn_policy))

    # Channel-last images are transposed for PyTorch, channel-first ones are used as they are
    vec_env = model.get_env()
    assert vec_env is not None
    assert is_vecenv_wrapped(vec_env, VecTransposeImage) is not channel_first
    assert model.observation_space.shape == (1, 40, 40)

    obs, _ = env.reset(seed=0)
    # Stochastic predict on the untransposed observation
    model.exploration_rate = 0.9
    for _ in range(10):
        action, _ = model.predict(obs, deterministic=False)
        assert env.action_space.contains(action)
    action, _ = model.predict(obs, deterministic=True)

    model.save(tmp_path / "cnn_model.zip")
    loaded = model_class.load(tmp_path / "cnn_model.zip")
    assert_q_net_kind(loaded, is_dueling(model_class, cnn_policy))
    np.testing.assert_array_equal(action, loaded.predict(obs, deterministic=True)[0])


def test_target_network_moves_only_on_target_updates(model_class: type[BaseDQN], cnn_policy: str) -> None:
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    model = model_class(cnn_policy, env, seed=0, policy_kwargs=CNN_KWARGS, **TINY)
    # Separate features extractors, equal weights at the start
    assert model.q_net.features_extractor is not model.q_net_target.features_extractor
    params_should_match(clone_parameters(model.q_net), clone_parameters(model.q_net_target))

    # No target update within 100 steps (target_update_interval=10000)
    model.learn(100)
    params_should_differ(clone_parameters(model.q_net), clone_parameters(model.q_net_target))

    # Collect a few random transitions without gradient step (10 < learning_starts)
    model = model_class(cnn_policy, env, seed=0, policy_kwargs=CNN_KWARGS, **TINY).learn(10)
    assert model._n_updates == 0
    original_params = clone_parameters(model.q_net)
    original_target_params = clone_parameters(model.q_net_target)

    # A gradient step moves the online network only
    model.train(gradient_steps=1, batch_size=8)
    params_should_match(original_target_params, clone_parameters(model.q_net_target))
    params_should_differ(original_params, clone_parameters(model.q_net))

    # With a zero learning rate, a soft target update moves the target network only
    original_params = clone_parameters(model.q_net)
    model.lr_schedule = lambda _: 0.0
    model.tau = 0.01
    # The target network is updated in _on_step() (called by collect_rollouts()), not in train()
    model.target_update_interval = 1
    model._on_step()
    model.train(gradient_steps=1, batch_size=8)
    params_should_differ(original_target_params, clone_parameters(model.q_net_target))
    params_should_match(original_params, clone_parameters(model.q_net))


# --- test_dict_env.py ----------------------------------------------------------------------------------------


def test_multi_input_policy_matches_mlp_on_flattened_observations(model_class: type[BaseDQN], multi_input_policy: str) -> None:
    """A dict of one vector must give the same network, the same updates and the same actions as the vector."""
    mlp_policy = multi_input_policy.replace("MultiInputPolicy", "MlpPolicy")
    dict_env = gym.wrappers.TimeLimit(MixedDictEnv(vec_only=True), 100)
    flat_env = gym.wrappers.FlattenObservation(gym.wrappers.TimeLimit(MixedDictEnv(vec_only=True), 100))
    obs, _ = MixedDictEnv(vec_only=True).reset(seed=10)
    kwargs: dict[str, Any] = dict(
        gamma=0.5, seed=1, buffer_size=250, learning_starts=0, train_freq=8, policy_kwargs=MLP_KWARGS
    )

    # Each model is created then trained before the next one, so that both see the same global random state
    dict_model = model_class(multi_input_policy, dict_env, **kwargs)
    assert isinstance(dict_model.replay_buffer, DictReplayBuffer)
    dict_action_before_learning, _ = dict_model.predict(obs, deterministic=True)
    dict_model.learn(total_timesteps=200)

    flat_model = model_class(mlp_policy, flat_env, **kwargs)
    flat_action_before_learning, _ = flat_model.predict(obs["vec"], deterministic=True)
    flat_model.learn(total_timesteps=200)

    np.testing.assert_array_equal(dict_action_before_learning, flat_action_before_learning)

    dict_state, flat_state = dict_model.policy.state_dict(), flat_model.policy.state_dict()
    assert dict_state.keys() == flat_state.keys()
    for key in dict_state:
        assert th.equal(dict_state[key], flat_state[key]), key
    np.testing.assert_array_equal(
        dict_model.predict(obs, deterministic=True)[0], flat_model.predict(obs["vec"], deterministic=True)[0]
    )


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel-first", "channel-last"])
def test_dict_observations_with_image_vector_and_discrete(
    model_class: type[BaseDQN], multi_input_policy: str, channel_last: bool
) -> None:
    env = gym.wrappers.TimeLimit(MixedDictEnv(channel_last=channel_last), 20)
    model = model_class(
        multi_input_policy, env, gamma=0.5, seed=1, buffer_size=250, learning_starts=0, train_freq=8, policy_kwargs=DICT_KWARGS
    )
    assert_q_net_kind(model, is_dueling(model_class, multi_input_policy))
    model.learn(total_timesteps=100)

    assert isinstance(model.replay_buffer, DictReplayBuffer)
    # The image is stored channel-first whatever the env's layout
    assert isinstance(model.observation_space, spaces.Dict)
    assert model.observation_space["img"].shape == (1, 36, 36)
    assert model.replay_buffer.observations["img"].shape == (250, 1, 1, 36, 36)

    episode_rewards, episode_lengths = evaluate_policy(model, env, n_eval_episodes=2, warn=False, return_episode_rewards=True)
    assert episode_rewards == [0.0, 0.0]
    assert episode_lengths == [20, 20]


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel-first", "channel-last"])
def test_dict_observations_with_frame_stack(model_class: type[BaseDQN], multi_input_policy: str, channel_last: bool) -> None:
    # Any: SB3 annotates the values as str, None (stack along the last axis) is accepted
    channels_order: Any = {"vec": None, "img": "last" if channel_last else "first"}
    env = VecFrameStack(
        DummyVecEnv([lambda: SimpleMultiObsEnv(random_start=True, discrete_actions=True, channel_last=channel_last)]),
        n_stack=3,
        channels_order=channels_order,
    )
    model = model_class(
        multi_input_policy, env, gamma=0.5, seed=1, buffer_size=250, learning_starts=0, train_freq=8, policy_kwargs=DICT_KWARGS
    )
    model.learn(total_timesteps=100)

    assert isinstance(model.observation_space, spaces.Dict)
    assert model.observation_space["img"].shape == (3, 64, 64)
    assert model.observation_space["vec"].shape == (15,)
    episode_rewards, episode_lengths = evaluate_policy(model, env, n_eval_episodes=1, warn=False, return_episode_rewards=True)
    assert isinstance(episode_rewards, list) and isinstance(episode_lengths, list)
    assert len(episode_rewards) == len(episode_lengths) == 1


def test_dict_observations_with_vec_normalize(model_class: type[BaseDQN], multi_input_policy: str) -> None:
    env = VecNormalize(DummyVecEnv([lambda: gym.wrappers.TimeLimit(MixedDictEnv(), 20)]), norm_obs_keys=["vec"])
    model = model_class(
        multi_input_policy, env, gamma=0.5, seed=1, buffer_size=250, learning_starts=0, train_freq=8, policy_kwargs=DICT_KWARGS
    )
    model.learn(total_timesteps=100)
    assert model.get_vec_normalize_env() is env

    # Samples are normalized with the env's statistics, only for the selected keys
    assert isinstance(model.replay_buffer, DictReplayBuffer)
    batch_inds = np.arange(10)
    samples = model.replay_buffer._get_samples(batch_inds, env=env)
    raw_obs = {key: obs[batch_inds, 0] for key, obs in model.replay_buffer.observations.items()}
    expected = env.normalize_obs(raw_obs)
    assert isinstance(expected, dict)
    np.testing.assert_array_equal(samples.observations["vec"].cpu().numpy(), expected["vec"])
    assert not np.allclose(expected["vec"], raw_obs["vec"])
    np.testing.assert_array_equal(samples.observations["img"].cpu().numpy(), raw_obs["img"])
    np.testing.assert_array_equal(samples.observations["discrete"].cpu().numpy(), raw_obs["discrete"])

    episode_rewards, episode_lengths = evaluate_policy(model, env, n_eval_episodes=2, warn=False, return_episode_rewards=True)
    assert episode_rewards == [0.0, 0.0]
    assert episode_lengths == [20, 20]


def test_dict_observations_with_subproc_vec_env(model_class: type[BaseDQN], multi_input_policy: str) -> None:
    env = make_vec_env(
        lambda: gym.wrappers.TimeLimit(MixedDictEnv(), 50),
        n_envs=2,
        vec_env_cls=SubprocVecEnv,
        vec_env_kwargs=dict(start_method="fork"),
    )
    try:
        model = model_class(
            multi_input_policy,
            env,
            gamma=0.5,
            seed=1,
            buffer_size=500,
            learning_starts=50,
            train_freq=4,
            policy_kwargs=dict(net_arch=[32], features_extractor_kwargs=dict(cnn_output_dim=16)),
        )
        model.learn(total_timesteps=128)
    finally:
        env.close()
    # 16 rollouts of 4 steps in each of the 2 envs
    assert model.num_timesteps == 128
    assert model.replay_buffer is not None
    assert model.replay_buffer.pos == 64


# --- test_n_step_replay.py -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_steps", [1, 3])
def test_n_step_returns_use_n_step_replay_buffer(model_class: type[BaseDQN], mlp_policy: str, n_steps: int) -> None:
    gamma = 0.989
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = model_class(mlp_policy, env, train_freq=4, n_steps=n_steps, gamma=gamma, policy_kwargs=MLP_KWARGS, **TINY)
    buffer = model.replay_buffer
    assert buffer is not None
    if n_steps == 1:
        # SB3's ReplayBuffer, or a subclass doing one-step returns
        assert isinstance(buffer, ReplayBuffer)
        assert getattr(buffer, "n_steps", 1) == 1
    else:
        assert isinstance(buffer, NStepReplayBuffer)
        assert buffer.n_steps == n_steps
        assert buffer.gamma == gamma

    # 20 rollouts of 4 steps in each of the 2 envs
    model.learn(total_timesteps=160)
    assert model.num_timesteps == 160
    assert model._n_updates > 0

    samples = buffer.sample(64)
    if n_steps == 1:
        # No discounts means gamma
        assert samples.discounts is None or np.allclose(samples.discounts.cpu().numpy(), gamma)
    else:
        # Discount of the bootstrap: gamma ** k, k <= n_steps the number of steps before the episode ended
        assert samples.discounts is not None
        discounts = samples.discounts.cpu().numpy().ravel()
        possible = np.array([gamma**k for k in range(1, n_steps + 1)], dtype=np.float32)
        assert np.isclose(discounts[:, None], possible[None, :]).any(axis=1).all()
        assert np.isclose(discounts, gamma**n_steps).any()


# --- test_run.py: several environments -----------------------------------------------------------------------


@pytest.mark.parametrize("n_envs", [1, 4])
def test_learns_with_several_envs(model_class: type[BaseDQN], n_envs: int) -> None:
    def make_env() -> gym.Env:
        # A short time limit checks that the timeout handling code runs
        return gym.wrappers.TimeLimit(gym.make("CartPole-v1"), 50)

    env = make_vec_env(make_env, n_envs=n_envs)
    model = model_class(
        "MlpPolicy",
        env,
        policy_kwargs=MLP_KWARGS,
        buffer_size=500,
        learning_starts=50,
        train_freq=5,
        target_update_interval=100,
    )
    model.learn(total_timesteps=150)
    assert model.num_timesteps >= 150
    assert model.num_timesteps % (5 * n_envs) == 0

    # gradient_steps=-1: as many gradient steps as transitions collected
    train_freq = 3
    model = model_class(
        "MlpPolicy",
        env,
        policy_kwargs=MLP_KWARGS,
        buffer_size=500,
        learning_starts=0,
        train_freq=train_freq,
        gradient_steps=-1,
        target_update_interval=100,
    )
    model.learn(total_timesteps=train_freq)
    assert model.logger.name_to_value["train/n_updates"] == train_freq * n_envs
    assert model._n_updates == train_freq * n_envs


def test_warns_when_n_envs_exceeds_target_update_interval(model_class: type[BaseDQN]) -> None:
    with pytest.warns(UserWarning, match="The number of environments used is greater"):
        model_class("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), buffer_size=100, target_update_interval=1)


# --- test_vec_normalize.py -----------------------------------------------------------------------------------


def test_vec_normalize_obs_and_reward(model_class: type[BaseDQN]) -> None:
    env = VecNormalize(
        DummyVecEnv([lambda: gym.make("CartPole-v1")]), norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0
    )
    eval_env = VecNormalize(
        DummyVecEnv([lambda: gym.make("CartPole-v1")]),
        training=False,
        norm_obs=True,
        norm_reward=False,
        clip_obs=10.0,
        clip_reward=10.0,
    )
    model = model_class("MlpPolicy", env, policy_kwargs=MLP_KWARGS, seed=0, **TINY)

    # The model follows the VecNormalize wrapper of its current env
    assert model.get_vec_normalize_env() is env
    model.set_env(eval_env)
    assert model.get_vec_normalize_env() is eval_env
    model.learn(total_timesteps=10)
    model.set_env(env)
    model.learn(total_timesteps=150)
    assert model.get_vec_normalize_env() is env

    # The buffer stores raw transitions, samples are normalized with the env's current statistics
    buffer = model.replay_buffer
    assert buffer is not None
    batch_inds = np.arange(20)
    samples = buffer._get_samples(batch_inds, env=env)
    raw_obs = buffer.observations[batch_inds, 0]
    raw_next_obs = buffer.next_observations[batch_inds, 0]
    raw_rewards = buffer.rewards[batch_inds, 0].reshape(-1, 1)
    np.testing.assert_array_equal(samples.observations.cpu().numpy(), env.normalize_obs(raw_obs))
    np.testing.assert_array_equal(samples.next_observations.cpu().numpy(), env.normalize_obs(raw_next_obs))
    np.testing.assert_array_equal(samples.rewards.cpu().numpy(), env.normalize_reward(raw_rewards).astype(np.float32))
    assert not np.allclose(samples.observations.cpu().numpy(), raw_obs)
    assert not np.allclose(samples.rewards.cpu().numpy(), raw_rewards)
    # Without the env, the raw values come back
    raw_samples = buffer._get_samples(batch_inds)
    np.testing.assert_array_equal(raw_samples.observations.cpu().numpy(), raw_obs)
    np.testing.assert_array_equal(raw_samples.rewards.cpu().numpy(), raw_rewards)
    # Sampling with the env, as train() does, gives normalized observations within the clipping range
    random_samples = buffer.sample(64, env=env)
    assert random_samples.observations.abs().max() <= env.clip_obs


def test_vec_normalize_stats_round_trip_with_model(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    env = VecNormalize(DummyVecEnv([lambda: gym.make("CartPole-v1")]), norm_obs=True, norm_reward=True)
    model = model_class("MlpPolicy", env, policy_kwargs=MLP_KWARGS, seed=0, **TINY).learn(160)
    model.save(tmp_path / "model.zip")
    env.save(str(tmp_path / "vec_normalize.pkl"))

    loaded_env = VecNormalize.load(str(tmp_path / "vec_normalize.pkl"), DummyVecEnv([lambda: gym.make("CartPole-v1")]))
    for rms, loaded_rms in ((env.obs_rms, loaded_env.obs_rms), (env.ret_rms, loaded_env.ret_rms)):
        assert isinstance(rms, RunningMeanStd) and isinstance(loaded_rms, RunningMeanStd)
        np.testing.assert_array_equal(rms.mean, loaded_rms.mean)
        np.testing.assert_array_equal(rms.var, loaded_rms.var)
        assert rms.count == loaded_rms.count
    assert (loaded_env.clip_obs, loaded_env.clip_reward, loaded_env.gamma) == (env.clip_obs, env.clip_reward, env.gamma)

    # Same normalization, same actions with the reloaded model
    loaded_env.training = False
    loaded_model = model_class.load(tmp_path / "model.zip", env=loaded_env)
    assert loaded_model.get_vec_normalize_env() is loaded_env
    raw_obs = np.array([env.observation_space.sample() for _ in range(16)])
    np.testing.assert_array_equal(env.normalize_obs(raw_obs), loaded_env.normalize_obs(raw_obs))
    actions, _ = model.predict(env.normalize_obs(raw_obs), deterministic=True)
    loaded_actions, _ = loaded_model.predict(loaded_env.normalize_obs(raw_obs), deterministic=True)
    np.testing.assert_array_equal(actions, loaded_actions)
    loaded_model.learn(60, reset_num_timesteps=False)
    assert loaded_model.num_timesteps == 160 + 60


# --- test_callbacks.py ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:rich is experimental")
def test_callbacks_are_called_during_learning(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    log_folder = tmp_path / "logs" / "callbacks"
    model = model_class("MlpPolicy", "CartPole-v1", policy_kwargs=MLP_KWARGS, **TINY)

    checkpoint_callback = CheckpointCallback(save_freq=100, save_path=str(log_folder))
    # Never reached (CartPole rewards are positive): training is not stopped early
    callback_on_best = StopTrainingOnRewardThreshold(reward_threshold=1e6, verbose=1)
    callback_no_model_improvement = StopTrainingOnNoModelImprovement(max_no_improvement_evals=2, min_evals=1, verbose=1)
    eval_callback = EvalCallback(
        gym.make("CartPole-v1"),
        callback_on_new_best=callback_on_best,
        callback_after_eval=callback_no_model_improvement,
        best_model_save_path=str(log_folder),
        log_path=str(log_folder),
        eval_freq=100,
        n_eval_episodes=2,
        warn=False,
    )
    # Same as checkpoint_callback, event-driven
    checkpoint_on_event = CheckpointCallback(save_freq=1, save_path=str(log_folder), name_prefix="event")
    event_callback = EveryNTimesteps(n_steps=150, callback=checkpoint_on_event)
    callback_max_episodes = StopTrainingOnMaxEpisodes(max_episodes=100, verbose=1)
    callback = CallbackList([checkpoint_callback, eval_callback, event_callback, callback_max_episodes])
    model.learn(300, callback=callback)

    # Access to the local variables of collect_rollouts()
    assert model.env is not None
    assert model.env.observation_space.contains(callback.locals["new_obs"][0])
    assert checkpoint_callback.locals["new_obs"] is callback.locals["new_obs"]
    assert event_callback.locals["new_obs"] is callback.locals["new_obs"]
    assert checkpoint_on_event.locals["new_obs"] is callback.locals["new_obs"]
    # Internal counters match the model's
    assert event_callback.num_timesteps == model.num_timesteps == 300
    assert event_callback.n_calls == model.num_timesteps
    assert eval_callback.n_calls == 300
    # What the callbacks wrote
    for step in (100, 200, 300):
        assert (log_folder / f"rl_model_{step}_steps.zip").is_file()
    for step in (150, 300):
        assert (log_folder / f"event_{step}_steps.zip").is_file()
    assert (log_folder / "best_model.zip").is_file()
    evaluations = np.load(log_folder / "evaluations.npz")
    np.testing.assert_array_equal(evaluations["timesteps"], [100, 200, 300])
    assert model_class.load(log_folder / "best_model.zip").policy_class is model.policy_class

    model.learn(100, callback=None)
    # A list is turned into a CallbackList; with a progress bar
    model.learn(100, callback=[checkpoint_callback, eval_callback], progress_bar=True)
    assert model.num_timesteps == 100
    # Old-style callback: a function
    model.learn(100, callback=lambda _locals, _globals: True)
    assert model.num_timesteps == 100


def test_stop_training_on_reward_threshold(model_class: type[BaseDQN]) -> None:
    model = model_class("MlpPolicy", "CartPole-v1", policy_kwargs=MLP_KWARGS, **TINY)
    # Any CartPole episode scores more than 0: the first evaluation stops training
    stop_callback = StopTrainingOnRewardThreshold(reward_threshold=0.0, verbose=1)
    eval_callback = EvalCallback(
        gym.make("CartPole-v1"), callback_on_new_best=stop_callback, eval_freq=50, n_eval_episodes=2, warn=False
    )
    model.learn(1000, callback=eval_callback)
    assert model.num_timesteps == 50
    assert eval_callback.best_mean_reward > 0.0
    assert stop_callback.n_calls == 1


class AlwaysFailCallback(BaseCallback):
    def _on_step(self) -> bool:
        return False


def test_callback_returning_false_cancels_learning(model_class: type[BaseDQN]) -> None:
    model = model_class("MlpPolicy", "CartPole-v1", policy_kwargs=MLP_KWARGS, **TINY)
    callback = AlwaysFailCallback()
    model.learn(100, callback=callback)
    assert callback.n_calls == 1
    assert model.num_timesteps == 1


def test_checkpoint_saves_replay_buffer_and_vec_normalize(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    dummy_vec_env = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    env = VecNormalize(dummy_vec_env)
    checkpoint_dir = tmp_path / "checkpoints"
    checkpoint_callback = CheckpointCallback(
        save_freq=100, save_path=str(checkpoint_dir), save_replay_buffer=True, save_vecnormalize=True, verbose=2
    )
    model = model_class("MlpPolicy", env, policy_kwargs=MLP_KWARGS, seed=0, **TINY)
    model.learn(100, callback=checkpoint_callback)

    assert (checkpoint_dir / "rl_model_100_steps.zip").is_file()
    assert (checkpoint_dir / "rl_model_replay_buffer_100_steps.pkl").is_file()
    assert (checkpoint_dir / "rl_model_vecnormalize_100_steps.pkl").is_file()

    # The checkpoints load back. The callback runs after the 100th env step but before its transition is
    # stored: the saved buffer holds the first 99 transitions of the final one
    loaded = model_class.load(checkpoint_dir / "rl_model_100_steps.zip")
    loaded.load_replay_buffer(checkpoint_dir / "rl_model_replay_buffer_100_steps.pkl")
    assert loaded.replay_buffer is not None and model.replay_buffer is not None
    assert model.replay_buffer.pos == 100
    assert loaded.replay_buffer.pos == 99
    for name in ("observations", "next_observations", "actions", "rewards", "dones"):
        np.testing.assert_array_equal(getattr(loaded.replay_buffer, name)[:99], getattr(model.replay_buffer, name)[:99])
    loaded_env = VecNormalize.load(str(checkpoint_dir / "rl_model_vecnormalize_100_steps.pkl"), dummy_vec_env)
    assert isinstance(loaded_env.obs_rms, RunningMeanStd) and isinstance(env.obs_rms, RunningMeanStd)
    np.testing.assert_array_equal(loaded_env.obs_rms.mean, env.obs_rms.mean)
    np.testing.assert_array_equal(loaded_env.obs_rms.var, env.obs_rms.var)


def test_eval_callback_records_her_success_flags(tmp_path: Path, model_class: type[BaseDQN], multi_input_policy: str) -> None:
    n_bits = 2
    eval_env = DummyVecEnv([lambda: BitFlippingEnv(n_bits=n_bits)] * 2)
    eval_callback = EvalCallback(eval_env, eval_freq=250, log_path=str(tmp_path), warn=False)
    model = model_class(
        multi_input_policy,
        BitFlippingEnv(n_bits=n_bits),
        replay_buffer_class=HerReplayBuffer,
        buffer_size=1000,
        learning_starts=100,
        policy_kwargs=MLP_KWARGS,
        seed=0,
    )
    assert isinstance(model.replay_buffer, HerReplayBuffer)
    model.learn(500, callback=eval_callback)
    # One success flag per evaluation episode, also written next to the evaluations
    assert len(eval_callback._is_success_buffer) == eval_callback.n_eval_episodes == 5
    evaluations = np.load(tmp_path / "evaluations.npz")
    np.testing.assert_array_equal(evaluations["timesteps"], [250, 500])
    assert evaluations["successes"].shape == (2, 5)
    np.testing.assert_array_equal(evaluations["successes"][-1], eval_callback._is_success_buffer)


# --- progress bar, TensorBoard -------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:rich is experimental")
def test_learn_with_progress_bar(model_class: type[BaseDQN]) -> None:
    model = model_class("MlpPolicy", "CartPole-v1", policy_kwargs=MLP_KWARGS, **TINY)
    model.learn(100, progress_bar=True)
    assert model.num_timesteps == 100


class HParamCallback(BaseCallback):
    """Logs the hyperparameters at the start of training (SB3's ``test_tensorboard.HParamCallback``)."""

    def _on_training_start(self) -> None:
        assert isinstance(self.model, BaseDQN)
        hparam_dict: dict[str, str | float] = {"algorithm": type(self.model).__name__, "gamma": self.model.gamma}
        self.logger.record(
            "hparams", HParam(hparam_dict, {"rollout/ep_len_mean": 0}), exclude=("stdout", "log", "json", "csv")
        )

    def _on_step(self) -> bool:
        return True


def test_tensorboard_run_is_named_after_the_class(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    pytest.importorskip("tensorboard")
    model = model_class("MlpPolicy", "CartPole-v1", tensorboard_log=str(tmp_path), verbose=1, policy_kwargs=MLP_KWARGS, **TINY)
    model.learn(100, callback=HParamCallback())
    model.learn(100, reset_num_timesteps=False)

    log_name = model_class.__name__
    assert (tmp_path / f"{log_name}_1").is_dir()
    # Continuing the same run does not create a new one
    assert not (tmp_path / f"{log_name}_2").exists()
    # Not SB3's DQN name
    assert not (tmp_path / "DQN_1").exists()

    # An explicit name still wins, and runs are numbered
    model.learn(100, tb_log_name="tb_multiple_runs")
    model.learn(100, tb_log_name="tb_multiple_runs")
    assert (tmp_path / "tb_multiple_runs_1").is_dir()
    assert (tmp_path / "tb_multiple_runs_2").is_dir()
    assert sorted(os.listdir(tmp_path)) == [f"{log_name}_1", "tb_multiple_runs_1", "tb_multiple_runs_2"]


def test_eval_logs_are_written_at_eval_timesteps(tmp_path: Path, model_class: type[BaseDQN]) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = model_class(
        "MlpPolicy", "CartPole-v1", policy_kwargs=MLP_KWARGS, tensorboard_log=str(tmp_path), verbose=1, seed=1, **TINY
    )
    eval_freq = 101
    eval_callback = EvalCallback(gym.make("CartPole-v1"), eval_freq=eval_freq, n_eval_episodes=2, warn=False)
    model.learn(303, callback=eval_callback)

    accumulator = EventAccumulator(str(tmp_path / f"{model_class.__name__}_1"))
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("eval/mean_reward")]
    assert steps == [101, 202, 303]


# --- bad input -----------------------------------------------------------------------------------------------


def test_box_action_space_is_rejected(model_class: type[BaseDQN]) -> None:
    env = IdentityEnvBox(-1.0, 1.0)
    with pytest.raises(AssertionError, match=re.escape(str(env.action_space))):
        model_class("MlpPolicy", env, **TINY)
    with pytest.raises(AssertionError, match=r"Box\("):
        model_class("MlpPolicy", "Pendulum-v1", **TINY)


def test_unknown_policy_name_is_rejected(model_class: type[BaseDQN]) -> None:
    with pytest.raises(ValueError, match="NoSuchPolicy"):
        model_class("NoSuchPolicy", "CartPole-v1", **TINY)


def assert_message_names(error: BaseException, value: str) -> None:
    """The error message shows ``value`` as a token of its own (not as part of the ``(0, 1]`` interval)."""
    message = str(error).replace("(0, 1]", "")
    assert re.search(rf"(?<![\w.-]){re.escape(value)}(?![\w.])", message), message


@pytest.mark.parametrize("tau", [0, 1e-3, 0.5, 1])
def test_every_tau_that_dqn_accepts_is_accepted(model_class: type[BaseDQN], tau: float) -> None:
    # tau=0 never moves the target network: SB3's own test_dqn_train_with_batch_norm uses it
    model = model_class("MlpPolicy", "CartPole-v1", tau=tau, target_update_interval=1, **TINY)
    target = [param.clone() for param in model.q_net_target.parameters()]
    model.learn(120)
    moved = any(not th.equal(before, after) for before, after in zip(target, model.q_net_target.parameters(), strict=True))
    assert moved == (tau > 0)


@pytest.mark.parametrize("double_q", ["yes", 1, None])
def test_non_bool_double_q_is_rejected(model_class: type[DoubleDQN], double_q: Any) -> None:
    with pytest.raises(TypeError) as excinfo:
        model_class("MlpPolicy", "CartPole-v1", double_q=double_q, **TINY)
    assert_message_names(excinfo.value, repr(double_q))


# --- test_spaces.py ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "observation_space",
    [spaces.MultiDiscrete([4, 3]), spaces.MultiBinary(8), spaces.MultiBinary((3, 2))],
    ids=["multi-discrete", "multi-binary", "multi-binary-2d"],
)
def test_multi_discrete_and_multi_binary_observations(model_class: type[BaseDQN], observation_space: spaces.Space) -> None:
    env = gym.wrappers.TimeLimit(RandomObservationEnv(observation_space), max_episode_steps=50)
    model = model_class("MlpPolicy", env, gamma=0.5, seed=1, policy_kwargs=MLP_KWARGS, **TINY)
    model.learn(total_timesteps=200)
    # One-hot (MultiDiscrete) or flattened (MultiBinary) input
    assert model.q_net.features_dim == get_flattened_obs_dim(observation_space)
    episode_rewards, episode_lengths = evaluate_policy(model, env, n_eval_episodes=2, warn=False, return_episode_rewards=True)
    assert episode_rewards == [0.0, 0.0]
    assert episode_lengths == [50, 50]


def test_discrete_observation_space(model_class: type[BaseDQN]) -> None:
    env: VecEnv = make_vec_env("Taxi-v4", n_envs=2, seed=0)
    model = model_class("MlpPolicy", env, policy_kwargs=MLP_KWARGS, buffer_size=1000, learning_starts=100)
    model.learn(256)
    assert model.num_timesteps == 256
    # The observation is one-hot encoded
    assert model.q_net.features_dim == 500
