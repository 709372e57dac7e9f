"""The package as a user installs it: its import side effects, version and CI command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import sb3_dqn_ext

ROOT = Path(__file__).resolve().parent.parent


def test_import_pulls_in_neither_rl_zoo3_nor_ale_py_nor_numba() -> None:
    code = "import sys, sb3_dqn_ext; print(sorted(m for m in ('rl_zoo3', 'ale_py', 'numba') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert result.stdout.strip() == "[]"


# Fills a prioritized buffer, samples and updates priorities, then prints where numba cached the gather kernel and
# how many versions this process loaded from the cache and compiled. With "read-only", the package directory
# behaves as a read-only one does for numba: its in-tree cache locator cannot create its cache directory. (A real
# read-only directory cannot be made here: the tests run as root, who may write anywhere.)
_CACHE_PROBE = """
import sys
import numba.core.caching
import numpy as np
from gymnasium import spaces

if sys.argv[1] == "read-only":
    def unwritable(self):
        raise PermissionError("read-only package directory")
    numba.core.caching.InTreeCacheLocator.ensure_cache_path = unwritable

from sb3_dqn_ext import PrioritizedReplayBuffer
from sb3_dqn_ext.storage import gather_batch

buffer = PrioritizedReplayBuffer(64, spaces.Box(-1, 1, (3,)), spaces.Discrete(2), device="cpu")
for step in range(10):
    obs = np.full((1, 3), step / 10, np.float32)
    buffer.add(obs, obs, np.array([0]), np.array([1.0]), np.array([False]), [{}])
batch = buffer.sample(4)
buffer.update_priorities(batch.indices, np.ones(4))
stats = gather_batch.stats
print(gather_batch._cache._cache_path, sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def test_compiled_kernels_are_cached_in_the_user_cache_when_the_package_directory_is_read_only(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)
    outputs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", _CACHE_PROBE, "read-only"], capture_output=True, text=True, check=True, env=env
        )
        outputs.append(result.stdout.split())
    # Both processes use the user-wide cache under XDG_CACHE_HOME; the first compiles, the second loads
    assert all(Path(output[0]).is_relative_to(tmp_path) for output in outputs)
    assert outputs[0][1:] == ["0", "1"] and outputs[1][1:] == ["1", "0"]


def test_version_is_exposed_and_typed_marker_ships() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", sb3_dqn_ext.__version__)
    assert (Path(sb3_dqn_ext.__file__).parent / "py.typed").is_file()
