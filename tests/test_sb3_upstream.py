"""
Stable-Baselines3's own tests, run with this package's classes in place of SB3's ("drop-in means drop-in").

``tests/sb3/`` holds verbatim copies of SB3 test files (``sb3_test_*.py``, which pytest does not collect). Each
copy is executed here as a fresh module while SB3's names are patched to ours, so that its
``from stable_baselines3 import DQN`` (or ``... import ReplayBuffer``) and the parametrize lists built from those
names bind our classes; the patches are undone as soon as the module body has run. The tests of the copy that use
a substituted class are exposed as one test class per (file, substitution), so the ids read
``TestSB3Buffers_PrioritizedReplayBuffer::test_device_buffer[cpu-PrioritizedReplayBuffer]`` or
``TestSB3SaveLoad_DoubleDQN::test_warn_buffer[True]``.

- SB3 parametrizes algorithms as ``model_class``, which ``conftest.py`` parametrizes over ``MODEL_LIST`` itself: a
  test whose ``model_class`` list holds the substituted ``DQN`` is bound to our class (``model_class`` leaves its
  signature, the class name says which algorithm), the other cases (SAC, PPO, ...) are left out.
- A test without ``model_class`` runs when it names a substituted class, directly or through a helper of its file.
- The slowest tests are marked ``expensive`` (see ``_EXPENSIVE``); SB3's own marks are kept.

The copies come from SB3's master at the commit named in their header (2.9.0a4; the mirror has no 2.9.2 tag) and
pass unchanged with SB3's own classes and the installed stable-baselines3.
"""

import functools
import importlib.util
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, FunctionType, ModuleType
from typing import Any

import pytest
import stable_baselines3
import stable_baselines3.dqn
from stable_baselines3 import DQN
from stable_baselines3.common import buffers as sb3_buffers
from stable_baselines3.common import type_aliases as sb3_type_aliases
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples

from sb3_dqn_ext import (
    DictPrioritizedReplayBuffer,
    DoubleDQN,
    DuelingDQN,
    MemoryEfficientReplayBuffer,
    PrioritizedDQN,
    PrioritizedReplayBuffer,
)
from sb3_dqn_ext.buffers import DictPrioritizedReplayBufferSamples, PrioritizedReplayBufferSamples

SB3_TESTS_DIR = Path(__file__).parent / "sb3"

# Test class name -> the vendored module its tests come from
_LOADED: dict[str, ModuleType] = {}

# SB3 tests marked expensive here, with their time for our three models (2-core CPU, 1 torch thread). The rest
# takes about 30 s; SB3 already marks test_save_load_large_model (70-110 s per model).
_EXPENSIVE = {
    "test_multiprocessing",  # 15 s: SubprocVecEnv start-up
    "test_dict_vec_framestack",  # 10 s
}


@dataclass
class _Substitution:
    """One load of an SB3 test file: which SB3 names become which of our classes."""

    file: str
    # (module, attribute) -> our class
    patches: dict[tuple[ModuleType, str], type]
    # Our class standing in for SB3's ``DQN`` (what ``model_class`` is bound to), if any
    model_class: type | None = None


def _dqn_patches(model_class: type) -> dict[tuple[ModuleType, str], type]:
    return {(stable_baselines3, "DQN"): model_class, (stable_baselines3.dqn, "DQN"): model_class}


def _load(substitution: _Substitution, tag: str) -> ModuleType:
    """Execute the vendored file as a new module while the patches are in place (not put in ``sys.modules``)."""
    path = SB3_TESTS_DIR / substitution.file
    spec = importlib.util.spec_from_file_location(f"sb3_upstream_{path.stem}_{tag}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for (owner, name), value in substitution.patches.items():
            monkeypatch.setattr(owner, name, value)
        spec.loader.exec_module(module)
    return module


def _global_names(code: CodeType) -> Iterator[str]:
    """Names a code object (nested functions and lambdas included) may read from its globals."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _global_names(const)


def _uses_any(test: FunctionType, names: set[str]) -> bool:
    """Whether ``test``, or a function of its module that it calls, reads one of ``names`` from the module."""
    module_globals = test.__globals__
    seen: set[str] = set()
    to_visit = [test]
    while to_visit:
        function = to_visit.pop()
        for name in _global_names(function.__code__):
            if name in names:
                return True
            value = module_globals.get(name)
            if name not in seen and isinstance(value, FunctionType) and value.__globals__ is module_globals:
                seen.add(name)
                to_visit.append(value)
    return False


def _parametrize_argnames(mark: pytest.Mark) -> list[str]:
    argnames = mark.args[0] if mark.args else mark.kwargs["argnames"]
    if isinstance(argnames, str):
        return [name.strip() for name in argnames.split(",") if name.strip()]
    return list(argnames)


def _adapt(test: FunctionType, substitution: _Substitution) -> Callable[..., Any] | None:
    """
    The test as it runs here, or ``None`` when it does not concern the substituted classes.

    A copy of the test with ``model_class`` bound to our class (when SB3 parametrizes it) and ``expensive`` marks.
    """
    marks: list[pytest.Mark] = list(getattr(test, "pytestmark", []))
    model_class_marks = [mark for mark in marks if mark.name == "parametrize" and "model_class" in _parametrize_argnames(mark)]
    bound: dict[str, Any] = {}
    if model_class_marks:
        (mark,) = model_class_marks
        assert _parametrize_argnames(mark) == ["model_class"], f"{test.__name__}: model_class parametrized with others"
        if substitution.model_class is None or substitution.model_class not in mark.args[1]:
            return None
        bound["model_class"] = substitution.model_class
        marks.remove(mark)
    elif not _uses_any(test, {name for _, name in substitution.patches}):
        return None

    if test.__name__ in _EXPENSIVE:
        marks.append(pytest.mark.expensive.mark)

    signature = inspect.signature(test)

    @functools.wraps(test)
    def adapted(**kwargs: Any) -> Any:
        return test(**kwargs, **bound)

    adapted.__signature__ = signature.replace(  # type: ignore[attr-defined]  # what pytest reads the arguments from
        parameters=[parameter for name, parameter in signature.parameters.items() if name not in bound]
    )
    adapted.pytestmark = marks  # type: ignore[attr-defined]  # functools.wraps shared the original's list
    return adapted


def _expose(substitution: _Substitution, class_name: str) -> None:
    """Collect the tests of one load as ``class_name`` in this module."""
    module = _load(substitution, class_name)
    tests = {}
    for name, test in vars(module).items():
        if name.startswith("test") and isinstance(test, FunctionType):
            adapted = _adapt(test, substitution)
            if adapted is not None:
                tests[name] = staticmethod(adapted)
    assert tests, f"no test of {substitution.file} uses {class_name}'s substitutes"
    globals()[class_name] = type(class_name, (), {"__doc__": f"SB3's {substitution.file} on our classes", **tests})
    _LOADED[class_name] = module


MODEL_LIST = [DoubleDQN, DuelingDQN, PrioritizedDQN]

_BUFFER_SUBSTITUTIONS = {
    # SB3's replay buffer tests, ReplayBuffer -> PrioritizedReplayBuffer, DictReplayBuffer -> its Dict counterpart,
    # and their samples: test_replay_buffer_normalization checks the observations inside
    # `isinstance(sample, (Dict)ReplayBufferSamples)`, which our samples (not subclasses) would silently skip
    "TestSB3Buffers_PrioritizedReplayBuffer": _Substitution(
        "sb3_test_buffers.py",
        {
            (sb3_buffers, "ReplayBuffer"): PrioritizedReplayBuffer,
            (sb3_buffers, "DictReplayBuffer"): DictPrioritizedReplayBuffer,
            (sb3_type_aliases, "ReplayBufferSamples"): PrioritizedReplayBufferSamples,
            (sb3_type_aliases, "DictReplayBufferSamples"): DictPrioritizedReplayBufferSamples,
        },
    ),
    # SB3's n-step return tests (subclasses of NStepReplayBuffer), against SB3's ReplayBuffer as reference
    "TestSB3NStepReplay_PrioritizedReplayBuffer": _Substitution(
        "sb3_test_n_step_replay.py", {(sb3_buffers, "NStepReplayBuffer"): PrioritizedReplayBuffer}
    ),
    "TestSB3NStepReplay_MemoryEfficientReplayBuffer": _Substitution(
        "sb3_test_n_step_replay.py", {(sb3_buffers, "NStepReplayBuffer"): MemoryEfficientReplayBuffer}
    ),
}

# SB3's tests of DQN, DQN -> each of our models
_DQN_FILES = {
    "SaveLoad": "sb3_test_save_load.py",
    "NStepReplay": "sb3_test_n_step_replay.py",
    "TrainEvalMode": "sb3_test_train_eval_mode.py",
    "Run": "sb3_test_run.py",
    "CNN": "sb3_test_cnn.py",
    "DictEnv": "sb3_test_dict_env.py",
}

for _class_name, _substitution in _BUFFER_SUBSTITUTIONS.items():
    _expose(_substitution, _class_name)
for _topic, _file in _DQN_FILES.items():
    for _model_class in MODEL_LIST:
        _expose(_Substitution(_file, _dqn_patches(_model_class), _model_class), f"TestSB3{_topic}_{_model_class.__name__}")


def test_sb3_names_are_restored() -> None:
    """The patches lasted only while the vendored modules ran."""
    assert sb3_buffers.ReplayBuffer is ReplayBuffer
    assert sb3_buffers.DictReplayBuffer is DictReplayBuffer
    assert sb3_buffers.NStepReplayBuffer is NStepReplayBuffer
    assert sb3_type_aliases.ReplayBufferSamples is ReplayBufferSamples
    assert sb3_type_aliases.DictReplayBufferSamples is DictReplayBufferSamples
    assert stable_baselines3.DQN is DQN
    assert stable_baselines3.dqn.DQN is DQN


def test_vendored_modules_bind_our_classes() -> None:
    """Each vendored module ran with our classes in place of SB3's."""
    buffers_module = _LOADED["TestSB3Buffers_PrioritizedReplayBuffer"]
    assert buffers_module.ReplayBuffer is PrioritizedReplayBuffer
    assert buffers_module.DictReplayBuffer is DictPrioritizedReplayBuffer
    assert buffers_module.ReplayBufferSamples is PrioritizedReplayBufferSamples
    assert buffers_module.DictReplayBufferSamples is DictPrioritizedReplayBufferSamples
    assert _LOADED["TestSB3NStepReplay_PrioritizedReplayBuffer"].NStepReplayBuffer is PrioritizedReplayBuffer
    assert _LOADED["TestSB3NStepReplay_MemoryEfficientReplayBuffer"].NStepReplayBuffer is MemoryEfficientReplayBuffer
    assert _LOADED["TestSB3NStepReplay_PrioritizedReplayBuffer"].ReplayBuffer is ReplayBuffer  # SB3's, the reference
    for model_class in MODEL_LIST:
        for topic in _DQN_FILES:
            assert _LOADED[f"TestSB3{topic}_{model_class.__name__}"].DQN is model_class
    save_load = _LOADED["TestSB3SaveLoad_DoubleDQN"]
    assert DoubleDQN in save_load.MODEL_LIST and DQN not in save_load.MODEL_LIST
