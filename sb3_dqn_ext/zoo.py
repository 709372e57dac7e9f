"""
rl-zoo3 integration: ``python -m rl_zoo3.train --algo double_dqn | dueling_dqn | per_dqn``.

rl-zoo3 has no plugin API, so this module extends its tables in place: ``ALGOS`` (``rl_zoo3.utils``), the
Optuna samplers and converters (``rl_zoo3.hyperparams_opt``) and the default hyperparameter file of
``ExperimentManager`` (``rl_zoo3.exp_manager``), which becomes the ``hyperparams/<key>.yml`` shipped with
this package when the zoo has no file for the key (``--conf-file`` still wins). The zoo wins every clash.

The start-up hook ``sb3_dqn_ext_zoo_hook`` (installed by ``sb3_dqn_ext_zoo.pth``) calls
:func:`register_module` right after each of these modules is imported; :func:`register` is the explicit
fallback where ``.pth`` files are not processed (``python -S``, ``pip install --target``, frozen apps).
This is the only module of the package that imports ``rl_zoo3``, and it does so lazily.
"""

import functools
import importlib
import inspect
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sb3_dqn_ext.double_dqn import DoubleDQN
from sb3_dqn_ext.dqn import BaseDQN
from sb3_dqn_ext.dueling_dqn import DuelingDQN
from sb3_dqn_ext.prioritized_dqn import PrioritizedDQN

if TYPE_CHECKING:
    import optuna

# Zoo key -> algorithm; the key is also the name of the hyperparameter file
ALGOS: dict[str, type[BaseDQN]] = {
    "double_dqn": DoubleDQN,
    "dueling_dqn": DuelingDQN,
    "per_dqn": PrioritizedDQN,
}

# Inside the wheel the files are package data (sb3_dqn_ext/hyperparams); in a checkout or an editable
# install they are at the repository root, as the zoo's own files are
if (Path(__file__).parent / "hyperparams").is_dir():
    HYPERPARAMS_DIR = Path(__file__).parent / "hyperparams"
else:
    HYPERPARAMS_DIR = Path(__file__).parent.parent / "hyperparams"

# Policies that have a dueling counterpart, "MlpPolicy" -> "DuelingMlpPolicy"
_DUELING_CHOICES = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")


def hyperparams_path(algo: str) -> Path:
    """
    The hyperparameter file shipped for a zoo key.

    :param algo: One of the keys of :data:`ALGOS`
    :return: ``<HYPERPARAMS_DIR>/<algo>.yml``
    """
    return HYPERPARAMS_DIR / f"{algo}.yml"


def _sample_dueling_policy(trial: "optuna.Trial") -> str | None:
    """
    Sample the dueling choice as a policy name: the study's policy or its dueling counterpart.

    The sampler does not see the hyperparameters, so the policy is read from the study's user attributes,
    where ``ExperimentManager.hyperparameters_optimization()`` stores every default hyperparameter.

    :param trial: Optuna trial
    :return: The sampled policy name, or ``None`` (no choice) when the policy has no dueling counterpart
    """
    study = getattr(trial, "study", None)
    policy = study.user_attrs.get("policy") if study is not None else None
    if policy not in _DUELING_CHOICES:
        return None
    return trial.suggest_categorical("policy", [policy, f"Dueling{policy}"])


def sample_double_dqn_params(trial: "optuna.Trial", n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for DoubleDQN hyperparams: the zoo's DQN search space and the dueling network.

    :param trial: Optuna trial
    :param n_actions: Passed on to the zoo's DQN sampler
    :param n_envs: Passed on to the zoo's DQN sampler
    :param additional_args: Passed on to the zoo's DQN sampler
    :return: The sampled hyperparameters, converted for the algorithm
    """
    from rl_zoo3.hyperparams_opt import sample_dqn_params

    hyperparams = sample_dqn_params(trial, n_actions, n_envs, additional_args)
    policy = _sample_dueling_policy(trial)
    if policy is not None:
        hyperparams["policy"] = policy
    return hyperparams


def sample_dueling_dqn_params(trial: "optuna.Trial", n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for DuelingDQN hyperparams: the zoo's DQN search space (every policy is dueling already).

    :param trial: Optuna trial
    :param n_actions: Passed on to the zoo's DQN sampler
    :param n_envs: Passed on to the zoo's DQN sampler
    :param additional_args: Passed on to the zoo's DQN sampler
    :return: The sampled hyperparameters, converted for the algorithm
    """
    from rl_zoo3.hyperparams_opt import sample_dqn_params

    return sample_dqn_params(trial, n_actions, n_envs, additional_args)


def sample_per_dqn_params(trial: "optuna.Trial", n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Sampler for PrioritizedDQN hyperparams: those of :func:`sample_double_dqn_params`, plus the
    prioritization exponent ``alpha`` and the initial importance-sampling exponent ``beta``
    (paper, proportional variant: 0.6 and 0.4, https://arxiv.org/abs/1511.05952, Section 4).

    :param trial: Optuna trial
    :param n_actions: Passed on to the zoo's DQN sampler
    :param n_envs: Passed on to the zoo's DQN sampler
    :param additional_args: Passed on to the zoo's DQN sampler; its ``"her_kwargs"`` entry holds the
        ``replay_buffer_kwargs`` of the hyperparameter file, which the sampled values update
    :return: The sampled hyperparameters, converted for the algorithm
    """
    hyperparams = sample_double_dqn_params(trial, n_actions, n_envs, additional_args)
    alpha = trial.suggest_float("alpha", 0.2, 1.0)
    beta = trial.suggest_float("beta", 0.2, 1.0)
    replay_buffer_kwargs = dict(additional_args.get("her_kwargs") or {})
    hyperparams["replay_buffer_kwargs"] = {**replay_buffer_kwargs, "alpha": alpha, "beta": beta}
    return hyperparams


def convert_per_dqn_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Turn the raw parameters of a PrioritizedDQN trial into hyperparameters (``--trial-id``):
    the zoo's DQN conversion, with ``alpha`` and ``beta`` moved into ``replay_buffer_kwargs``.

    :param sampled_params: ``trial.params`` of a trial sampled by :func:`sample_per_dqn_params`
    :return: The hyperparameters
    """
    from rl_zoo3.hyperparams_opt import convert_offpolicy_params

    params = dict(sampled_params)
    replay_buffer_kwargs = {key: params.pop(key) for key in ("alpha", "beta") if key in params}
    hyperparams = convert_offpolicy_params(params)
    if replay_buffer_kwargs:
        hyperparams["replay_buffer_kwargs"] = replay_buffer_kwargs
    return hyperparams


def _register_algos(utils: ModuleType) -> None:
    for key, algo in ALGOS.items():
        utils.ALGOS.setdefault(key, algo)


def _register_samplers(hyperparams_opt: ModuleType) -> None:
    samplers = {
        "double_dqn": sample_double_dqn_params,
        "dueling_dqn": sample_dueling_dqn_params,
        "per_dqn": sample_per_dqn_params,
    }
    # The zoo's converter passes the sampled "policy" through unchanged
    converters = {
        "double_dqn": hyperparams_opt.convert_offpolicy_params,
        "dueling_dqn": hyperparams_opt.convert_offpolicy_params,
        "per_dqn": convert_per_dqn_params,
    }
    for key in ALGOS:
        hyperparams_opt.HYPERPARAMS_SAMPLER.setdefault(key, samplers[key])
        hyperparams_opt.HYPERPARAMS_CONVERTER.setdefault(key, converters[key])


def _register_hyperparams(exp_manager: ModuleType) -> None:
    """Make ``ExperimentManager`` default to our hyperparameter file when the zoo has none for the key."""
    manager_class = exp_manager.ExperimentManager
    if getattr(manager_class, "_sb3_dqn_ext_registered", False):
        return
    original_init = manager_class.__init__
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        config = signature.bind(self, *args, **kwargs).arguments.get("config")
        # The zoo's own default is rl_zoo3/hyperparams/<algo>.yml: it wins when it exists
        if not config and self.algo in ALGOS and not os.path.isfile(self.config):
            self.config = str(hyperparams_path(self.algo))

    manager_class.__init__ = __init__
    manager_class._sb3_dqn_ext_registered = True


_REGISTRATIONS = {
    "rl_zoo3.utils": _register_algos,
    "rl_zoo3.hyperparams_opt": _register_samplers,
    "rl_zoo3.exp_manager": _register_hyperparams,
}


def register_module(module: ModuleType) -> None:
    """
    Add our entries to one rl_zoo3 module; other modules are left alone. Safe to call more than once.

    :param module: ``rl_zoo3.utils``, ``rl_zoo3.hyperparams_opt`` or ``rl_zoo3.exp_manager``
    """
    registration = _REGISTRATIONS.get(module.__name__)
    if registration is not None:
        registration(module)


def register() -> None:
    """
    Register ``double_dqn``, ``dueling_dqn`` and ``per_dqn`` with rl-zoo3 explicitly.

    The start-up hook does this by itself; call this where it does not run (``python -S``,
    ``pip install --target``, a frozen app, ``SB3_DQN_EXT_NO_ZOO_HOOK=1``), before the zoo parses its
    arguments::

        import sb3_dqn_ext.zoo
        from rl_zoo3.train import train

        sb3_dqn_ext.zoo.register()
        train()

    Imports rl_zoo3 (and with it Optuna); safe to call more than once.
    """
    for name in _REGISTRATIONS:
        register_module(importlib.import_module(name))
