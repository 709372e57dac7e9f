"""Read a section of a zoo hyperparameter file into constructor keyword arguments (no rl_zoo3 needed)."""

from pathlib import Path
from typing import Any

import yaml
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
# Keys the zoo consumes itself rather than passing to the algorithm
ZOO_ONLY_KEYS = {"n_timesteps", "policy", "n_envs", "env_wrapper", "frame_stack", "normalize", "callback", "vec_env_wrapper"}


def zoo_dqn_file() -> Path:
    """rl-zoo3's own dqn.yml when rl_zoo3 is installed (for SB3's DQN), else None."""
    import importlib.util

    spec = importlib.util.find_spec("rl_zoo3")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("rl_zoo3 is needed for SB3 DQN's zoo configuration: pip install 'sb3-dqn-ext[zoo]'")
    return Path(spec.origin).parent / "hyperparams" / "dqn.yml"


def load_section(path: Path, section: str) -> tuple[str, int, dict[str, Any]]:
    """
    Return ``(policy, n_timesteps, kwargs)`` of one section of a zoo YAML file.

    String values that the zoo evaluates (``policy_kwargs``, ``replay_buffer_kwargs``) are evaluated the same way.
    """
    hyperparams = dict(yaml.safe_load(path.read_text())[section])
    policy = hyperparams.pop("policy", "MlpPolicy")
    n_timesteps = int(hyperparams.pop("n_timesteps"))
    for key in list(hyperparams):
        if key in ZOO_ONLY_KEYS:
            del hyperparams[key]
        elif key.endswith("_kwargs") and isinstance(hyperparams[key], str):
            hyperparams[key] = eval(hyperparams[key], {"dict": dict, "nn": nn})
    return policy, n_timesteps, hyperparams
