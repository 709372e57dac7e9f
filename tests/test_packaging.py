"""The package as a user installs it: its import side effects, version and CI command."""

import re
import subprocess
import sys
from pathlib import Path

import sb3_dqn_ext

ROOT = Path(__file__).resolve().parent.parent


def test_import_pulls_in_neither_rl_zoo3_nor_ale_py() -> None:
    code = "import sys, sb3_dqn_ext; print(sorted(m for m in ('rl_zoo3', 'ale_py') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert result.stdout.strip() == "[]"


def test_version_is_exposed_and_typed_marker_ships() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", sb3_dqn_ext.__version__)
    assert (Path(sb3_dqn_ext.__file__).parent / "py.typed").is_file()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_commands = [command for command in commands if "pytest" in command and "venv" in command]
    assert len(test_commands) == 1, test_commands
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0] in ci_lines
