"""
Start-up hook that registers the algorithms of ``sb3_dqn_ext`` with rl-zoo3 when rl-zoo3 is imported.

``sb3_dqn_ext_zoo.pth`` imports this module when Python starts. It must stay cheap (standard library only,
nothing imported but ``os`` and ``sys``, which are loaded already) because it runs in every interpreter of
the environment: it only puts a finder at the front of ``sys.meta_path``. When one of the modules in
``MODULES`` is imported, the finder lets the usual finders locate it, runs it unchanged, then calls
:func:`sb3_dqn_ext.zoo.register_module` on it, which adds our keys to the zoo's tables. A failure warns and
leaves the zoo as it is; ``SB3_DQN_EXT_NO_ZOO_HOOK=1`` keeps the finder from being installed at all, and
``sb3_dqn_ext.zoo.register()`` does the same work explicitly (``python -S``, ``pip install --target``, ...).
"""

import os
import sys

# typing and types are not loaded at start-up: import them for the type checker only (mypy honours any
# name TYPE_CHECKING)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

# Set to anything but "" or "0" to disable the hook
DISABLE_ENV_VAR = "SB3_DQN_EXT_NO_ZOO_HOOK"
# The zoo modules whose tables we extend; rl_zoo3.utils: ALGOS, rl_zoo3.hyperparams_opt: the Optuna samplers,
# rl_zoo3.exp_manager: the default hyperparameter file
MODULES = frozenset({"rl_zoo3.utils", "rl_zoo3.hyperparams_opt", "rl_zoo3.exp_manager"})


def _warn(message: str) -> None:
    import warnings  # only on failure: nothing but os and sys is imported at start-up

    warnings.warn(
        f"sb3_dqn_ext could not register its algorithms with rl_zoo3 ({message}); rl_zoo3 works as usual, "
        "call sb3_dqn_ext.zoo.register() before parsing the zoo's arguments to register them explicitly",
        RuntimeWarning,
        stacklevel=2,
    )


class _RegisteringLoader:
    """Run the zoo module with its own loader, then add our entries to it; expose the original loader."""

    def __init__(self, loader: "Loader") -> None:
        self.loader = loader

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        return self.loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        # Hand the module its real loader back before it runs: we only need to run after it
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        try:
            from sb3_dqn_ext.zoo import register_module

            register_module(module)
        except Exception as exc:
            _warn(f"{module.__name__}: {exc!r}")


class ZooFinder:
    """
    Meta-path finder that wraps the loader of the rl_zoo3 modules we extend, and of nothing else.

    It never finds a module itself: it asks the finders after it, so imports behave as without it.
    """

    def __init__(self) -> None:
        self._searching: set[str] = set()

    def find_spec(
        self, fullname: str, path: "Sequence[str] | None" = None, target: "ModuleType | None" = None
    ) -> "ModuleSpec | None":
        if fullname not in MODULES or fullname in self._searching:
            return None
        try:
            self._searching.add(fullname)
            try:
                spec = None
                for finder in sys.meta_path:
                    find_spec = getattr(finder, "find_spec", None)
                    if finder is self or find_spec is None:
                        continue
                    spec = find_spec(fullname, path, target)
                    if spec is not None:
                        break
            finally:
                self._searching.discard(fullname)
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return None
            spec.loader = _RegisteringLoader(spec.loader)
            return spec
        except Exception as exc:
            # Let the usual finders import the module without us
            _warn(f"{fullname}: {exc!r}")
            return None


def install() -> None:
    """Put the finder at the front of ``sys.meta_path``, once, unless the environment variable disables it."""
    if os.environ.get(DISABLE_ENV_VAR, "") not in ("", "0"):
        return
    if not any(isinstance(finder, ZooFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, ZooFinder())


install()
