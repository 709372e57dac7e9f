"""
Shared test configuration: the algorithms under test and the policy names each one accepts.

``MODEL_LIST`` is the one place that lists the algorithms: a test that takes a ``model_class`` argument runs
once per class. A test that also takes one of the policy arguments below runs once per (class, policy name)
pair, where the policy names of a class are SB3's name plus, when the class accepts it and it resolves to
another policy, its ``"Dueling..."`` counterpart (``DoubleDQN`` runs with ``"MlpPolicy"`` and
``"DuelingMlpPolicy"``; ``DuelingDQN``, whose ``"MlpPolicy"`` already is the dueling policy, once):

- ``mlp_policy``: ``"MlpPolicy"`` / ``"DuelingMlpPolicy"``;
- ``cnn_policy``: ``"CnnPolicy"`` / ``"DuelingCnnPolicy"``;
- ``multi_input_policy``: ``"MultiInputPolicy"`` / ``"DuelingMultiInputPolicy"``;
- ``dueling_mlp_policy``: only the MLP policy names that resolve to a dueling policy.
"""

from collections.abc import Iterator

import pytest
import torch as th
from stable_baselines3.common.policies import BasePolicy

from sb3_dqn_ext import DoubleDQN, DuelingDQN, PrioritizedDQN
from sb3_dqn_ext.dqn import BaseDQN
from sb3_dqn_ext.policies import DuelingDQNPolicy

MODEL_LIST: list[type[BaseDQN]] = [DoubleDQN, DuelingDQN, PrioritizedDQN]

# Test argument -> SB3 policy name it stands for
_POLICY_ARGUMENTS = {
    "mlp_policy": "MlpPolicy",
    "cnn_policy": "CnnPolicy",
    "multi_input_policy": "MultiInputPolicy",
    "dueling_mlp_policy": "MlpPolicy",
}


def resolve_policy(model_class: type[BaseDQN], policy_name: str) -> type[BasePolicy]:
    """The policy class that ``model_class`` uses for ``policy_name``."""
    return model_class.policy_aliases[policy_name]


def policy_names(model_class: type[BaseDQN], base_name: str) -> list[str]:
    """SB3's policy name and, when it is accepted and means another policy, its dueling counterpart."""
    names = [base_name]
    dueling_name = f"Dueling{base_name}"
    aliases = model_class.policy_aliases
    if dueling_name in aliases and aliases[dueling_name] is not aliases[base_name]:
        names.append(dueling_name)
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_class" not in metafunc.fixturenames:
        return
    policy_arguments = [name for name in _POLICY_ARGUMENTS if name in metafunc.fixturenames]
    if len(policy_arguments) > 1:
        raise ValueError(f"{metafunc.function.__name__} takes more than one policy argument: {policy_arguments}")
    if not policy_arguments:
        metafunc.parametrize("model_class", MODEL_LIST, ids=[cls.__name__ for cls in MODEL_LIST])
        return
    argument = policy_arguments[0]
    cases = []
    for model_class in MODEL_LIST:
        for name in policy_names(model_class, _POLICY_ARGUMENTS[argument]):
            if argument == "dueling_mlp_policy" and not issubclass(resolve_policy(model_class, name), DuelingDQNPolicy):
                continue
            cases.append(pytest.param(model_class, name, id=f"{model_class.__name__}-{name}"))
    metafunc.parametrize(("model_class", argument), cases)


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run torch with one thread: the tests use tiny networks and the CI machines have few, shared cores."""
    n_threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(n_threads)
