"""The common end of the paper-effect experiments: where and how their JSON report and plot are written."""

import json
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch as th


def write_report(
    report: dict[str, Any],
    results_dir: Path,
    name: str,
    plot: Callable[[Path], None],
    cpu_time: float,
    wall_time: float,
    packages: tuple[str, ...],
) -> None:
    """
    Add the run's time, machine and package versions to ``report``, write it to ``<results_dir>/<name>.json``, draw
    the plot into ``<results_dir>/<name>.png`` and print the comparison with the paper and where both went.

    :param report: The experiment's report (with its ``comparison_with_paper`` sentence)
    :param results_dir: Folder of the results (created if needed)
    :param name: File name of both results, without suffix
    :param plot: Draws the plot into the path it is given
    :param cpu_time: Process CPU seconds of the experiment
    :param wall_time: Wall-clock seconds of the experiment
    :param packages: Distributions whose versions are recorded
    """
    report["runtime"] = dict(cpu_s=round(cpu_time, 1), wall_s=round(wall_time, 1))
    report["machine"] = dict(
        platform=platform.platform(), python=platform.python_version(), torch_threads=th.get_num_threads()
    )
    report["versions"] = {package: metadata.version(package) for package in packages}
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    png_path = results_dir / f"{name}.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(png_path)
    print(report["comparison_with_paper"])
    print(f"CPU {cpu_time:.0f} s, wall {wall_time:.0f} s. Wrote {json_path} and {png_path}")
