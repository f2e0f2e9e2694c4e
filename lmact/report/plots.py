"""Plots of a run store's results, as PNG files (matplotlib: `pip install 'lmact[report]'`).

In-context RL learning curves: one figure per task, one line per model and variant, the
mean return at each episode index across replicates with its 95% interval as a band.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmact.errors import LmactError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display is needed or used
        from matplotlib import pyplot
    except ImportError:
        raise LmactError("plots need matplotlib: pip install 'lmact[report]'") from None
    return pyplot


def learning_curve_figures(curves: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A matplotlib Figure per task, from `lmact.report.curve_rows`."""
    pyplot = _pyplot()
    by_task: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}
    for point in curves:
        line = (str(point["model"]), str(point["variant"]))
        by_task.setdefault(str(point["task"]), {}).setdefault(line, []).append(point)
    figures = {}
    for task, lines in sorted(by_task.items()):
        figure, axes = pyplot.subplots(figsize=(7, 4.2), dpi=110)
        for (model, variant), points in sorted(lines.items()):
            points = sorted(points, key=lambda p: p["episode"])
            x = [p["episode"] + 1 for p in points]
            (drawn,) = axes.plot(x, [p["mean"] for p in points], label=f"{model} ({variant})")
            low, high = [p["low"] for p in points], [p["high"] for p in points]
            axes.fill_between(x, low, high, color=drawn.get_color(), alpha=0.2, linewidth=0)
        axes.set_title(f"{task}: in-context RL learning curves")
        axes.set_xlabel("episode")
        axes.set_ylabel("return (mean over replicates, 95% interval)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        figures[task] = figure
    return figures


def write_learning_curves(curves: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """One PNG per task under `folder`; returns the files written."""
    if not curves:
        raise LmactError("the run store holds no in-context RL run (--regime icrl) to plot")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LmactError(f"--plot {folder}: {error.strerror}") from None
    written = []
    pyplot = _pyplot()
    for task, figure in learning_curve_figures(curves).items():
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', task)}-learning-curves.png"
        try:
            figure.savefig(path)
        except OSError as error:
            raise LmactError(f"--plot {path}: {error.strerror}") from None
        finally:
            pyplot.close(figure)
        written.append(path)
    return written
