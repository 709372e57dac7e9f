"""
rl-zoo3 integration: ``--algo double_dqn | dueling_dqn | per_dqn`` with the zoo unchanged.

The zoo runs in subprocesses, from a temporary directory so that a checkout on ``sys.path`` cannot shadow the
installed package (and its start-up hook), with ``--num-threads 1``. The samplers, converters, the default
hyperparameter file and the shipped files are tested in-process. Skipped when rl_zoo3 is not installed.
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rl_zoo3")

import optuna
import rl_zoo3
import yaml

import sb3_dqn_ext_zoo_hook
from sb3_dqn_ext import DoubleDQN, DuelingDQN, PrioritizedDQN, PrioritizedReplayBuffer
from sb3_dqn_ext.policies import DuelingDQNPolicy
from sb3_dqn_ext.zoo import (
    ALGOS,
    convert_per_dqn_params,
    hyperparams_path,
    register,
    sample_double_dqn_params,
    sample_per_dqn_params,
)

KEYS = list(ALGOS)
ROOT = Path(__file__).resolve().parent.parent
ZOO_HYPERPARAMS = Path(rl_zoo3.__file__).parent / "hyperparams"
SECTIONS = ["default", "atari", "CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3"]
# Tiny settings for the smoke runs: training starts within the run, buffers stay small
COMMON_ARGS = ["--num-threads", "1", "--seed", "0", "-f", "logs"]
CARTPOLE_ARGS = ["--env", "CartPole-v1", "-n", "300", *COMMON_ARGS]
CARTPOLE_PARAMS = ["-params", "learning_starts:100", "buffer_size:1000"]
PONG_ARGS = ["--env", "PongNoFrameskip-v4", "-n", "200", "--eval-freq", "-1", *COMMON_ARGS]
PONG_PARAMS = ["-params", "learning_starts:100", "buffer_size:1000"]


def zoo_env(**variables: str) -> dict[str, str]:
    """The environment of a zoo subprocess: ours, with the hook enabled unless ``variables`` say otherwise."""
    env = {key: value for key, value in os.environ.items() if key != sb3_dqn_ext_zoo_hook.DISABLE_ENV_VAR}
    env.update(variables)
    return env


def run_python(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python <args>`` in ``cwd``; does not check the return code."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env or zoo_env(), capture_output=True, text=True, timeout=600)


def run_zoo(script: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``python -m rl_zoo3.<script> <args>`` in ``cwd``, check it succeeds and return its stdout."""
    result = run_python(["-m", f"rl_zoo3.{script}", *args], cwd, env)
    assert result.returncode == 0, f"rl_zoo3.{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def check_python(code: str, cwd: Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a fresh interpreter and return what it printed last, as JSON."""
    result = run_python([*args, "-c", code], cwd, env)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def hyperparams_file_used(stdout: str) -> str:
    """The hyperparameter file the zoo says it loaded."""
    match = re.search(r"^Loading hyperparameters from: (.+)$", stdout, flags=re.MULTILINE)
    assert match is not None, stdout[-3000:]
    return match.group(1)


# --- The start-up hook ---------------------------------------------------------------------------------------


def test_hook_imports_nothing_at_startup(tmp_path: Path) -> None:
    result = run_python(["-X", "importtime", "-c", "pass"], tmp_path)
    # "import time: self [us] | cumulative | <indent>module"; a module imported by another comes just before it,
    # indented deeper
    lines = [line.split("|") for line in result.stderr.splitlines() if line.startswith("import time:") and "[us]" not in line]
    names = [(len(name) - len(name.lstrip()), name.strip()) for *_, name in lines]
    hook_position = next(i for i, (_, name) in enumerate(names) if name == "sb3_dqn_ext_zoo_hook")
    hook_indent = names[hook_position][0]
    nested = []
    for indent, name in reversed(names[:hook_position]):
        if indent <= hook_indent:
            break
        nested.append(name)
    assert nested == []
    loaded = check_python("import sys, json; print(json.dumps(sorted(sys.modules)))", tmp_path)
    assert "sb3_dqn_ext_zoo_hook" in loaded
    for module in ("typing", "warnings", "importlib.util", "torch", "stable_baselines3", "rl_zoo3", "sb3_dqn_ext"):
        assert module not in loaded


def test_env_var_disables_the_hook(tmp_path: Path) -> None:
    code = "import json, sys, sb3_dqn_ext_zoo_hook as hook; print(json.dumps([type(f).__name__ for f in sys.meta_path]))"
    assert "ZooFinder" in check_python(code, tmp_path)
    env = zoo_env(**{sb3_dqn_ext_zoo_hook.DISABLE_ENV_VAR: "1"})
    assert "ZooFinder" not in check_python(code, tmp_path, env=env)


def test_register_without_the_hook(tmp_path: Path) -> None:
    # python -S: no site-packages, hence no .pth; the paths of a normal start are given by PYTHONPATH instead
    paths = check_python("import sys, json; print(json.dumps(sys.path[1:]))", tmp_path)
    env = zoo_env(PYTHONPATH=os.pathsep.join(paths))
    code = """
import json, sys
import rl_zoo3.utils
before = sorted(set(rl_zoo3.utils.ALGOS) & {"double_dqn", "dueling_dqn", "per_dqn"})
import sb3_dqn_ext.zoo
sb3_dqn_ext.zoo.register()
sb3_dqn_ext.zoo.register()  # twice is harmless
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
manager = ExperimentManager(None, "per_dqn", "CartPole-v1", "logs")
print(json.dumps({
    "hook": "sb3_dqn_ext_zoo_hook" in sys.modules,
    "before": before,
    "algos": {key: rl_zoo3.utils.ALGOS[key].__name__ for key in sb3_dqn_ext.zoo.ALGOS},
    "samplers": {key: HYPERPARAMS_SAMPLER[key].__name__ for key in sb3_dqn_ext.zoo.ALGOS},
    "converters": {key: HYPERPARAMS_CONVERTER[key].__name__ for key in sb3_dqn_ext.zoo.ALGOS},
    "config": manager.config,
}))
"""
    report = check_python(code, tmp_path, args=("-S",), env=env)
    assert report["hook"] is False
    assert report["before"] == []
    assert report["algos"] == {"double_dqn": "DoubleDQN", "dueling_dqn": "DuelingDQN", "per_dqn": "PrioritizedDQN"}
    assert report["samplers"] == {
        "double_dqn": "sample_double_dqn_params",
        "dueling_dqn": "sample_dueling_dqn_params",
        "per_dqn": "sample_per_dqn_params",
    }
    assert report["converters"]["per_dqn"] == "convert_per_dqn_params"
    assert report["config"] == str(hyperparams_path("per_dqn"))


def test_hook_failure_warns_and_leaves_the_zoo_intact(tmp_path: Path) -> None:
    code = """
import json, warnings
import sb3_dqn_ext.zoo
import sb3_dqn_ext_zoo_hook

def fail(*args, **kwargs):
    raise RuntimeError("simulated failure")

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    sb3_dqn_ext.zoo.register_module = fail  # fails after rl_zoo3.utils has run
    import rl_zoo3.utils
    sb3_dqn_ext_zoo_hook._RegisteringLoader = fail  # fails inside find_spec
    import rl_zoo3.hyperparams_opt
from rl_zoo3.utils import ALGOS
from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER
print(json.dumps({
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught if "sb3_dqn_ext" in str(w.message)],
    "dqn": ALGOS["dqn"].__name__,
    "ours": sorted(set(ALGOS) & set(sb3_dqn_ext.zoo.ALGOS)),
    "samplers": sorted(set(HYPERPARAMS_SAMPLER) & set(sb3_dqn_ext.zoo.ALGOS)),
    "dqn_sampler": HYPERPARAMS_SAMPLER["dqn"].__name__,
}))
"""
    report = check_python(code, tmp_path)
    assert len(report["warnings"]) == 2, report["warnings"]
    assert report["warnings"][0].startswith("RuntimeWarning: sb3_dqn_ext could not register its algorithms")
    assert "rl_zoo3.utils: RuntimeError('simulated failure')" in report["warnings"][0]
    assert "rl_zoo3.hyperparams_opt: RuntimeError('simulated failure')" in report["warnings"][1]
    assert report["dqn"] == "DQN" and report["dqn_sampler"] == "sample_dqn_params"
    assert report["ours"] == [] and report["samplers"] == []


# --- Training, enjoying, optimizing with the zoo -------------------------------------------------------------


@pytest.mark.parametrize("algo", KEYS)
def test_train_then_enjoy_cartpole(tmp_path: Path, algo: str) -> None:
    stdout = run_zoo("train", ["--algo", algo, *CARTPOLE_ARGS, *CARTPOLE_PARAMS], tmp_path)
    assert hyperparams_file_used(stdout) == str(hyperparams_path(algo))
    model = ALGOS[algo].load(tmp_path / "logs" / algo / "CartPole-v1_1" / "CartPole-v1.zip")
    assert type(model) is ALGOS[algo]
    # train_freq=256: the zoo's -n 300 runs to the end of the second rollout, 512 steps
    assert model.num_timesteps >= 300 and model._n_updates > 0
    assert isinstance(model.policy, DuelingDQNPolicy) == (algo == "dueling_dqn")
    assert (model.replay_buffer_class is PrioritizedReplayBuffer) == (algo == "per_dqn")
    stdout = run_zoo(
        "enjoy",
        ["--algo", algo, "--env", "CartPole-v1", "-f", "logs", "--no-render", "-n", "50", "--num-threads", "1"],
        tmp_path,
    )
    assert f"logs/{algo}/CartPole-v1_1/CartPole-v1.zip" in stdout


@pytest.mark.parametrize(
    "algo", [pytest.param(algo, marks=[] if algo == "per_dqn" else pytest.mark.expensive) for algo in KEYS]
)
def test_optimize_uses_our_samplers(tmp_path: Path, algo: str) -> None:
    args = ["--algo", algo, *CARTPOLE_ARGS, *CARTPOLE_PARAMS, "-optimize", "--n-trials", "2", "--n-jobs", "1"]
    args += ["--sampler", "random", "--pruner", "none", "--n-evaluations", "1", "--eval-episodes", "2", "--no-optim-plots"]
    run_zoo("train", args, tmp_path)
    (report,) = (tmp_path / "logs" / algo).glob("report_CartPole-v1_2-trials-300-random-none_*.csv")
    with report.open() as file:
        trials = list(csv.DictReader(file))
    assert [trial["state"] for trial in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        assert trial["params_learning_rate"]  # the zoo's DQN search space
        if algo == "dueling_dqn":
            assert "params_policy" not in trial  # every policy of DuelingDQN is dueling
        else:
            assert trial["params_policy"] in ("MlpPolicy", "DuelingMlpPolicy")
        if algo == "per_dqn":
            assert 0.2 <= float(trial["params_alpha"]) <= 1.0 and 0.2 <= float(trial["params_beta"]) <= 1.0


def train_pong(tmp_path: Path, algo: str) -> None:
    """A tiny PongNoFrameskip-v4 run: the atari section of the file, end to end."""
    pytest.importorskip("ale_py")
    stdout = run_zoo("train", ["--algo", algo, *PONG_ARGS, *PONG_PARAMS], tmp_path)
    assert hyperparams_file_used(stdout) == str(hyperparams_path(algo))
    model = ALGOS[algo].load(tmp_path / "logs" / algo / "PongNoFrameskip-v4_1" / "PongNoFrameskip-v4.zip")
    # AtariWrapper (84x84 grey frames) and a frame stack of 4, channel first for the CNN
    assert model.observation_space.shape == (4, 84, 84)
    assert model._n_updates > 0
    assert isinstance(model.policy, DuelingDQNPolicy) == (algo == "dueling_dqn")


@pytest.mark.parametrize(
    "algo", [pytest.param(algo, marks=[] if algo == "per_dqn" else pytest.mark.expensive) for algo in KEYS]
)
def test_train_pong(tmp_path: Path, algo: str) -> None:
    train_pong(tmp_path, algo)


@pytest.mark.expensive
@pytest.mark.parametrize("algo", KEYS)
def test_train_then_enjoy_pong(tmp_path: Path, algo: str) -> None:
    train_pong(tmp_path, algo)
    args = ["--algo", algo, "--env", "PongNoFrameskip-v4", "-f", "logs", "--no-render", "-n", "50", "--num-threads", "1"]
    run_zoo("enjoy", args, tmp_path)


@pytest.mark.expensive
@pytest.mark.parametrize("algo", KEYS)
def test_continue_training_with_the_saved_replay_buffer(tmp_path: Path, algo: str) -> None:
    args = ["--algo", algo, *CARTPOLE_ARGS, "-params", "learning_starts:100", "buffer_size:2000", "--save-replay-buffer"]
    run_zoo("train", args, tmp_path)
    saved = tmp_path / "logs" / algo / "CartPole-v1_1"
    assert (saved / "replay_buffer.pkl").is_file()
    stdout = run_zoo("train", [*args, "-i", str(saved / "CartPole-v1.zip")], tmp_path)
    assert "Loading pretrained agent" in stdout and "Loading replay buffer" in stdout
    continued = tmp_path / "logs" / algo / "CartPole-v1_2"
    model = ALGOS[algo].load(continued / "CartPole-v1.zip")
    assert type(model) is ALGOS[algo]
    model.load_replay_buffer(continued / "replay_buffer.pkl")
    # Each run collects two rollouts of train_freq=256 steps: the second run added its 512 transitions to the first's
    assert model.replay_buffer is not None and model.replay_buffer.size() == 1024
    assert isinstance(model.replay_buffer, PrioritizedReplayBuffer) == (algo == "per_dqn")


@pytest.mark.expensive
@pytest.mark.parametrize("algo", KEYS)
def test_record_video(tmp_path: Path, algo: str) -> None:
    pytest.importorskip("moviepy")
    pytest.importorskip("pygame")
    run_zoo("train", ["--algo", algo, *CARTPOLE_ARGS, *CARTPOLE_PARAMS], tmp_path)
    args = ["--algo", algo, "--env", "CartPole-v1", "-f", "logs", "-n", "50", "-o", "videos"]
    run_zoo("record_video", args, tmp_path, zoo_env(SDL_VIDEODRIVER="dummy", OMP_NUM_THREADS="1"))
    assert list((tmp_path / "videos").glob("*.mp4"))


@pytest.mark.expensive
def test_console_script_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("seaborn")
    script = Path(sys.executable).parent / "rl_zoo3"
    if not script.is_file():
        pytest.skip("the rl_zoo3 console script is not next to this interpreter")
    args = [str(script), "train", "--algo", "double_dqn", *CARTPOLE_ARGS, *CARTPOLE_PARAMS, "--eval-freq", "100"]
    result = subprocess.run(
        [*args, "--eval-episodes", "2"], cwd=tmp_path, env=zoo_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-5000:]
    plot_env = zoo_env(MPLBACKEND="Agg")
    args = ["-m", "rl_zoo3.plots.plot_train", "-a", "double_dqn", "-e", "CartPole-v1", "-f", "logs/", "-w", "5"]
    result = run_python(args, tmp_path, plot_env)
    assert result.returncode == 0, result.stderr[-5000:]
    args = ["-m", "rl_zoo3.plots.all_plots", "-a", "double_dqn", "-e", "CartPole-v1", "-f", "logs/", "--no-display"]
    result = run_python([*args, "-o", "results"], tmp_path, plot_env)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "results.pkl").is_file()


# --- In-process: samplers, converters, hyperparameter files --------------------------------------------------


def test_unknown_key_gives_the_zoo_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    register()  # what the hook did at start-up, unless it is disabled in this process
    from rl_zoo3.train import train

    monkeypatch.setattr(sys, "argv", ["train", "--algo", "no_such_algo", "--env", "CartPole-v1"])
    with pytest.raises(SystemExit) as exit_info:
        train()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "argument --algo: invalid choice: 'no_such_algo'" in stderr
    # The choices listed are the zoo's and ours
    assert "'dqn'" in stderr and "'double_dqn'" in stderr and "'dueling_dqn'" in stderr and "'per_dqn'" in stderr


def make_trial(policy: Any) -> optuna.Trial:
    """A trial of a study set up as the zoo's ``hyperparameters_optimization()`` sets it up."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    study.set_user_attr("policy", str(policy))
    return study.ask()


def test_per_dqn_sampler_and_converter_agree() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = make_trial("MlpPolicy")
    additional_args = {"using_her_replay_buffer": False, "her_kwargs": {"eps": 1e-5, "alpha": 0.6}}
    sampled = sample_per_dqn_params(trial, 0, 1, additional_args)
    alpha, beta = trial.params["alpha"], trial.params["beta"]
    # The file's replay_buffer_kwargs are updated, not replaced
    assert sampled["replay_buffer_kwargs"] == {"eps": 1e-5, "alpha": alpha, "beta": beta}
    assert sampled["policy"] == trial.params["policy"] in ("MlpPolicy", "DuelingMlpPolicy")
    assert {"learning_rate", "batch_size", "gamma", "gradient_steps", "policy_kwargs"} <= set(sampled)
    # --trial-id / best trial: the raw parameters convert to the same hyperparameters (except the file's eps)
    converted = convert_per_dqn_params(trial.params)
    assert converted == {**sampled, "replay_buffer_kwargs": {"alpha": alpha, "beta": beta}}
    # Every sampled value is a valid constructor argument
    PrioritizedDQN(env="CartPole-v1", **{**converted, "buffer_size": 1000})


@pytest.mark.parametrize(
    ("policy", "choices"),
    [("MlpPolicy", ("MlpPolicy", "DuelingMlpPolicy")), ("CnnPolicy", ("CnnPolicy", "DuelingCnnPolicy")), (DoubleDQN, None)],
)
def test_dueling_choice_follows_the_policy_of_the_file(policy: Any, choices: tuple[str, ...] | None) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = make_trial(policy)
    sampled = sample_double_dqn_params(trial, 0, 1, {"using_her_replay_buffer": False, "her_kwargs": {}})
    if choices is None:  # a custom policy class has no dueling counterpart: the file's policy stays
        assert "policy" not in sampled and "policy" not in trial.params
    else:
        assert sampled["policy"] in choices
        assert trial.distributions["policy"].choices == choices  # type: ignore[attr-defined]


def test_experiment_manager_defaults_to_our_file(tmp_path: Path) -> None:
    register()
    from rl_zoo3.exp_manager import ExperimentManager

    for algo in KEYS:
        assert ExperimentManager(argparse.Namespace(), algo, "CartPole-v1", str(tmp_path)).config == str(
            hyperparams_path(algo)
        )
    # --conf-file wins, and the zoo's own keys keep their files
    manager = ExperimentManager(argparse.Namespace(), "per_dqn", "CartPole-v1", str(tmp_path), config="mine.yml")
    assert manager.config == "mine.yml"
    assert ExperimentManager(argparse.Namespace(), "dqn", "CartPole-v1", str(tmp_path)).config == str(
        ZOO_HYPERPARAMS / "dqn.yml"
    )


def test_conf_file_from_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register()
    from rl_zoo3.exp_manager import ExperimentManager

    monkeypatch.chdir(ROOT)
    manager = ExperimentManager(
        argparse.Namespace(), "per_dqn", "PongNoFrameskip-v4", str(tmp_path), config="hyperparams/per_dqn.yml"
    )
    hyperparams, _ = manager.read_hyperparameters()
    assert hyperparams["policy"] == "CnnPolicy" and hyperparams["frame_stack"] == 4


@pytest.mark.parametrize("algo", KEYS)
def test_hyperparams_start_from_the_zoo_dqn_file(algo: str) -> None:
    ours = yaml.safe_load(hyperparams_path(algo).read_text())
    zoo = yaml.safe_load((ZOO_HYPERPARAMS / "dqn.yml").read_text())
    assert sorted(ours) == sorted(SECTIONS)
    # Each departure from the zoo's values is listed here and commented in the file: every atari section replays
    # the papers' 1e6 transitions, each frame stored once
    departures: dict[tuple[str, str], Any] = {("atari", "buffer_size"): 1_000_000, ("atari", "optimize_memory_usage"): True}
    departures |= {
        "per_dqn": {
            **{(section, "replay_buffer_kwargs"): "dict(alpha=0.6, beta=0.4)" for section in SECTIONS},
            # The PER paper's step size / 4
            ("atari", "learning_rate"): 2.5e-5,
            ("CartPole-v1", "learning_rate"): 5.75e-4,
        },
    }.get(algo, {})
    for section in SECTIONS:
        expected = dict(zoo[section])
        expected.update({key: value for (name, key), value in departures.items() if name == section})
        assert ours[section] == expected, section
    assert ours["atari"]["env_wrapper"] == ["stable_baselines3.common.atari_wrappers.AtariWrapper"]
    assert ours["atari"]["frame_stack"] == 4


def test_hyperparams_ship_with_the_package() -> None:
    for algo in KEYS:
        assert hyperparams_path(algo).is_file()
        assert hyperparams_path(algo).read_text() == (ROOT / "hyperparams" / f"{algo}.yml").read_text()
    assert DuelingDQN.policy_aliases["MlpPolicy"] is DuelingDQNPolicy  # why dueling_dqn.yml can say MlpPolicy
