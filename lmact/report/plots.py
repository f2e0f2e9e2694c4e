"""Plots of a run store's results, as matplotlib Figures and PNG files (matplotlib:
`pip install 'lmact[report]'`).

Every function takes plain rows (`lmact.report.tables.report_rows`, `curve_rows`) and
returns Figures, so a caller can save them, embed them or read their series back:

- `normalized_score_figure`: the LMAct figure; a panel per task, the normalized score of
  imitation runs against the number of demonstrations, a line per model and observation
  format with its 95% interval as a band, random (0) and expert (1) as reference lines;
- `answer_rate_figure`: the illegal or the invalid answer rate, in the same layout;
- `learning_curve_figures`: in-context RL curves, a figure per task, a panel per curve the
  papers draw for its kind (bandits: best-arm share, cumulative regret, average reward;
  classification: accuracy, held-out accuracy, regret, context length; else the return);
- `bandit_figure`: regret or suffix failures of in-context RL bandit runs, a bar per run
  with its 95% interval across replicates.

`report_figures` gives every figure some rows support, `write_figures` saves them. A
model keeps its colour across panels and figures of one `report_figures` call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmact.errors import LmactError
from lmact.options import column_labels, report_columns
from lmact.policies import SCRIPTED_POLICIES
from lmact.regimes.base import BASELINE_POLICIES, DRAWN_CURVES
from lmact.report.published import comparison
from lmact.report.tables import grouped_by
from lmact.text import visible

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Row = dict[str, Any]
# Matplotlib's "tab10", written out so colours are chosen before matplotlib is imported.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", ":", "-.")
# Symlog: linear from 0 to 1, logarithmic above, so 0 demonstrations sits left of 1.
DEMOS_LABEL = "demonstrations (log scale; 0 on a linear stretch left of 1)"
# Options that tell two runs of a model and format apart (the settings the report shows
# after the scores, `Column(place="setting")`, and how demonstrations were chosen); a line
# is split by those whose values differ within a task.
LINE_OPTIONS = (*column_labels(report_columns("setting")), "chosen_by")
RATE_TEXT = {
    "illegal_rate": "illegal answers (not a legal action; counts invalid and empty ones)",
    "invalid_rate": "invalid answers (not of the action form; counts empty ones)",
    "empty_rate": "empty answers",
}
BANDIT_TEXT = {
    "regret": "bandit regret (gap x pulls of worse arms), mean over replicates",
    "suffix_failure": "bandit suffix failures (share of replicates never pulling the best "
    "arm in the second half)",
}
# The fields of report rows the figures draw besides a table's columns (`TABLE_FIELDS`):
# the regimes' measures a report with plots computes.
PLOTTED_FIELDS = frozenset({
    "regret_low", "regret_high", "suffix_failure_low", "suffix_failure_high", DRAWN_CURVES,
    "median_reward", "k_min_frac", "greedy_frac", "horizon",  # beside the published values
})  # fmt: skip
_PANEL_COLUMNS = 3
# What one figure draws at most: past that it is no longer read, and each artist costs time
# (10,000 runs' lines and their legend took minutes and a gigabyte). Lines or bars a panel,
# panels a figure, entries a legend; the figure says what it left out, the tables hold all.
MAX_SERIES = 40
# A learning curve drawn with more points than this is drawn in bins (`_binned`).
MAX_CURVE_POINTS = 500
MAX_PANELS = 24
MAX_LEGEND = 48


def check_matplotlib() -> type[Figure]:
    """matplotlib's Figure, or the one-line error that names the extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise LmactError("plots need matplotlib: pip install 'lmact[report]'") from None
    return Figure


def _figure(**options: Any) -> Figure:
    # Outside pyplot's registry: no display, and nothing a caller must close.
    return check_matplotlib()(dpi=110, **options)


def _plain_text(figure: Figure) -> Figure:
    """Every text of the figure drawn as it is written: task and model names are the user's
    text, and a `$` in one would start mathtext (or TeX), which fails on most names. Their
    control characters are written out, as in the tables (no font has glyphs for them)."""
    from matplotlib.text import Text

    for text in figure.findobj(Text):
        text.set_usetex(False)
        text.set_parse_math(False)
        text.set_text(visible(text.get_text(), keep="\n"))
    return figure


def model_colours(rows: Iterable[Row]) -> dict[str, str]:
    """A colour per model, by sorted name: the same rows give every figure the same."""
    models = sorted({str(row["model"]) for row in rows if row.get("model") is not None})
    return {model: PALETTE[index % len(PALETTE)] for index, model in enumerate(models)}


def _panels(tasks: Sequence[str], title: str) -> tuple[Figure, dict[str, Axes]]:
    """A figure with a panel per task (the first MAX_PANELS), at most three a row."""
    if len(tasks) > MAX_PANELS:
        title += f" (the first {MAX_PANELS} of {len(tasks)} tasks)"
        tasks = tasks[:MAX_PANELS]
    columns = min(len(tasks), _PANEL_COLUMNS)
    lines = math.ceil(len(tasks) / columns)
    figure = _figure(figsize=(4.8 * columns + 2.2, 3.6 * lines + 0.5), layout="constrained")
    grid = figure.subplots(lines, columns, squeeze=False).flatten()
    for unused in grid[len(tasks) :]:
        figure.delaxes(unused)
    figure.suptitle(title)
    return figure, dict(zip(tasks, grid, strict=False))


def _legend(figure: Figure) -> None:
    """One legend for the figure, below the panels (a label once, whichever panel): to the
    right, a long title runs into it."""
    labelled: dict[str, Any] = {}
    for axes in figure.axes:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    if len(labelled) > MAX_LEGEND:
        left_out = len(labelled) - MAX_LEGEND + 1
        labelled = dict(list(labelled.items())[: MAX_LEGEND - 1])
        labelled[f"… {left_out} more"] = _no_mark()
    if labelled:
        columns = min(3, len(labelled))
        # A tall legend would squeeze the panels flat: the figure grows by its lines past 3.
        width, height = figure.get_size_inches()
        extra = max(0, math.ceil(len(labelled) / columns) - 3) * 0.2
        figure.set_size_inches(width, height + extra)
        figure.legend(labelled.values(), labelled.keys(), loc="outside lower center",
                      ncols=columns, fontsize="small")  # fmt: skip


def _no_mark() -> Any:
    """A legend entry's handle that draws nothing: for an entry that is a note."""
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none")


def _left_out(axes: Axes, task: str, count: int, what: str) -> None:
    """A legend entry: `count` more `what` (lines, runs) of the panel of `task` not drawn."""
    if count > 0:
        note = _no_mark()
        note.set_label(f"{task}: {count} more {what} not drawn (the table has every run)")
        axes.add_line(note)


def _demonstration_axis(axes: Axes, counts: Iterable[int]) -> None:
    axes.set_xscale("symlog", linthresh=1, linscale=0.6)
    ticks = sorted(set(counts))
    axes.set_xticks(ticks, [str(count) for count in ticks])
    axes.xaxis.set_minor_locator(_null_locator())
    axes.set_xlabel(DEMOS_LABEL)
    axes.grid(alpha=0.3)


def _null_locator() -> Any:
    from matplotlib.ticker import NullLocator

    return NullLocator()


def _line_option(row: Row, name: str) -> Any:
    if name == "chosen_by":
        return "token budget" if row.get("token_budget") is not None else "count"
    return row.get(name)


@dataclass(frozen=True)
class DemoLine:
    """One line against demonstrations: a model, an observation format and the values of
    the options that differ between its task's runs (`extras`), its rows by demos."""

    model: str
    observation: str
    extras: tuple[tuple[str, Any], ...]
    rows: list[Row]

    @property
    def label(self) -> str:
        extras = "".join(f", {name}={value}" for name, value in self.extras)
        return f"{self.model} ({self.observation}{extras})"


def imitation_lines(rows: Iterable[Row], value: str) -> dict[str, list[DemoLine]]:
    """Per task, the lines of imitation rows with a `value` to draw, sorted by label. The
    baseline policies are left out: they are the reference lines."""
    drawn = [
        row for row in rows
        if row.get("regime") == "imitation" and row.get("model") not in BASELINE_POLICIES
        and row.get("demos") is not None and row.get(value) is not None
    ]  # fmt: skip
    tasks: dict[str, list[DemoLine]] = {}
    for task, group in sorted(grouped_by(drawn, "task").items()):
        varying = [n for n in LINE_OPTIONS if len({_line_option(r, n) for r in group}) > 1]
        lines: dict[tuple[Any, ...], list[Row]] = {}
        for row in group:
            extras = tuple((name, _line_option(row, name)) for name in varying)
            key = (str(row["model"]), str(row.get("observation")), extras)
            lines.setdefault(key, []).append(row)
        tasks[task] = sorted(
            (
                DemoLine(*key, sorted(points, key=lambda r: r["demos"]))
                for key, points in lines.items()
            ),
            key=lambda line: line.label,
        )
    return tasks


class _LineStyles:
    """A marker per observation format and a line style per format and set of differing
    options, each in order of first use, so a figure keeps them across its panels."""

    def __init__(self) -> None:
        self.markers: dict[str, str] = {}
        self.styles: dict[tuple[Any, ...], str] = {}

    def __call__(self, line: DemoLine) -> tuple[str, str]:
        marker = self.markers.setdefault(
            line.observation, MARKERS[len(self.markers) % len(MARKERS)]
        )
        style = self.styles.setdefault(
            (line.observation, line.extras), LINE_STYLES[len(self.styles) % len(LINE_STYLES)]
        )
        return marker, style


def _draw_demo_lines(
    axes: Axes, lines: list[DemoLine], value: str, colours: dict[str, str],
    styles: _LineStyles, band: tuple[str, str] | None,
) -> None:  # fmt: skip
    for line in lines:
        marker, style = styles(line)
        x = [row["demos"] for row in line.rows]
        colour = colours.get(line.model, PALETTE[0])
        axes.plot(x, [row[value] for row in line.rows], label=line.label, color=colour,
                  marker=marker, linestyle=style)  # fmt: skip
        banded = [r for r in line.rows if band and None not in (r[band[0]], r[band[1]])]
        if band and banded:
            axes.fill_between([row["demos"] for row in banded], [row[band[0]] for row in banded],
                              [row[band[1]] for row in banded], color=colour, alpha=0.18,
                              linewidth=0)  # fmt: skip


def normalized_score_figure(
    rows: Sequence[Row], colours: dict[str, str] | None = None
) -> Figure | None:
    """The LMAct figure: a panel per task, normalized score against demonstrations; None
    when no imitation run has a normalized score."""
    tasks = imitation_lines(rows, "normalized_score")
    if not tasks:
        return None
    colours = colours or model_colours(rows)
    styles = _LineStyles()
    figure, panels = _panels(list(tasks), "Normalized score against demonstrations")
    for task, axes in panels.items():
        axes.axhline(1, color="black", linestyle="--", linewidth=1, label="expert (1)")
        axes.axhline(0, color="grey", linestyle=":", linewidth=1, label="random (0)")
        lines = tasks[task][:MAX_SERIES]
        _draw_demo_lines(axes, lines, "normalized_score", colours, styles,
                         band=("normalized_low", "normalized_high"))  # fmt: skip
        _left_out(axes, task, len(tasks[task]) - len(lines), "lines")
        _demonstration_axis(axes, [row["demos"] for line in lines for row in line.rows])
        axes.set_title(task)
        axes.set_ylabel("normalized score (mean, 95% interval)")
    _legend(figure)
    return _plain_text(figure)


def answer_rate_figure(
    rows: Sequence[Row], rate: str = "illegal_rate", colours: dict[str, str] | None = None
) -> Figure | None:
    """A panel per task: the share of steps with an answer of that kind (`illegal_rate`,
    `invalid_rate`, `empty_rate`) against demonstrations; None without imitation runs."""
    tasks = imitation_lines(rows, rate)
    if not tasks:
        return None
    colours = colours or model_colours(rows)
    styles = _LineStyles()
    figure, panels = _panels(list(tasks), f"Share of steps with {RATE_TEXT[rate]}")
    for task, axes in panels.items():
        lines = tasks[task][:MAX_SERIES]
        _draw_demo_lines(axes, lines, rate, colours, styles, band=None)
        _left_out(axes, task, len(tasks[task]) - len(lines), "lines")
        _demonstration_axis(axes, [row["demos"] for line in lines for row in line.rows])
        axes.set_ylim(-0.03, 1.03)  # a rate: the whole range, so panels compare at a glance
        axes.yaxis.set_major_formatter(_percent())
        axes.set_title(task)
        axes.set_ylabel(f"{rate.removesuffix('_rate')} answers (share of steps)")
    _legend(figure)
    return _plain_text(figure)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)


def _curve_label(point: Row) -> str:
    """A run's line: a scripted policy is a baseline (its prompt settings play no part);
    a model by its context variant and history."""
    if point["model"] in SCRIPTED_POLICIES:
        variant = point.get("variant")
        return f"{point['model']} (baseline{'' if variant in (None, 'naive') else ', ' + variant})"
    history = point.get("history")
    suffix = f", {history} history" if history not in (None, "raw") else ""
    return f"{point['model']} ({point['variant']}{suffix})"


@dataclass(frozen=True)
class CurvePanel:
    curve: str  # the curve rows' `curve`
    title: str
    ylabel: str
    share: bool = False  # a share: from 0 to 100%


# What each kind of task's figure draws, a panel a curve, as the papers draw them: on
# bandits Krishnamurthy et al.'s best-arm share, cumulative regret and average reward so
# far; on classification Monea et al.'s accuracy, held-out accuracy at its evaluation
# points, wrong predictions so far and the context's length; else the learning curve.
BANDIT_PANELS = (
    CurvePanel("best_arm_share", "best arm chosen", "share of replicates", share=True),
    CurvePanel("cumulative_regret", "cumulative regret", "gap x worse pulls so far"),
    CurvePanel("average_reward", "average reward so far", "mean reward up to the round"),
)
CLASSIFICATION_PANELS = (
    CurvePanel("average_reward", "accuracy so far", "share right up to the step", share=True),
    CurvePanel("held_out_accuracy", "held-out accuracy", "share right", share=True),
    CurvePanel("cumulative_regret", "regret", "wrong predictions so far"),
    CurvePanel("context_examples", "context length", "earlier examples held"),
)
LEARNING_PANELS = (CurvePanel("return", "learning curve", "return"),)


def _curve_of(point: Row) -> str:
    """Which curve a point is of: a point without the `curve` column (made by hand, as
    before curves had kinds) is of the learning curve."""
    return str(point.get("curve", "return"))


def _panels_of(points: Sequence[Row]) -> tuple[tuple[CurvePanel, ...], str]:
    kinds = {_curve_of(point) for point in points}
    if "best_arm_share" in kinds:
        return BANDIT_PANELS, "round"
    if kinds & {"held_out_accuracy", "cumulative_regret"}:
        return CLASSIFICATION_PANELS, "step"
    return LEARNING_PANELS, "episode"


def learning_curve_figures(
    curves: Sequence[Row], colours: dict[str, str] | None = None
) -> dict[str, Figure]:
    """A Figure per task, from `lmact.report.curve_rows`: a panel per curve the papers draw
    for its kind of task (`_panels_of`), a line per run (the mean across replicates), its
    95% interval as a band."""
    colours = colours or model_colours(curves)
    variants = sorted({str(point["variant"]) for point in curves})
    figures = {}
    for task, points in sorted(grouped_by(curves, "task").items()):
        panels, unit = _panels_of(points)
        kinds = {_curve_of(point) for point in points}
        drawn = [panel for panel in panels if panel.curve in kinds]
        figure = _figure(figsize=(4.6 * len(drawn) + 1.2, 4.2), layout="constrained")
        grid = figure.subplots(1, len(drawn), squeeze=False).flatten()
        runs = sorted(grouped_by(points, "run_id").values(), key=lambda p: _curve_label(p[0]))
        by_curve = [_by_curve(run) for run in runs[:MAX_SERIES]]  # a run's points read once
        for panel, axes in zip(drawn, grid, strict=True):
            for run in by_curve:
                _draw_curve(axes, run.get(panel.curve, []), panel, colours, variants)
            axes.set_title(panel.title)
            axes.set_xlabel(unit)
            axes.set_ylabel(f"{panel.ylabel} (mean, 95% interval)")
            axes.grid(alpha=0.3)
            if panel.share:
                axes.set_ylim(-0.02, 1.02)
                axes.yaxis.set_major_formatter(_percent())
        _left_out(grid[0], task, len(runs) - MAX_SERIES, "runs")
        figure.suptitle(f"{task}: in-context RL, over replicates")
        _legend(figure)
        figures[task] = _plain_text(figure)
    return figures


def _by_curve(points: Sequence[Row]) -> dict[str, list[Row]]:
    """A run's points per curve (`_curve_of`), in their order."""
    curves: dict[str, list[Row]] = {}
    for point in points:
        curves.setdefault(_curve_of(point), []).append(point)
    return curves


def _draw_curve(
    axes: Axes, run: Sequence[Row], panel: CurvePanel, colours: dict[str, str], variants: list[str]
) -> None:
    """One run's points of `panel`'s curve, drawn (binned when long), with its band where
    it has an interval."""
    points = sorted(run, key=lambda p: p["episode"])
    if not points:
        return
    banded = all(p["low"] is not None and p["high"] is not None for p in points)
    if not banded:  # a curve with no interval (the context's length): its line alone
        points = [{**p, "low": p["mean"], "high": p["mean"]} for p in points]
    (x, mean, low, high), width = _binned(points)
    colour = colours.get(str(points[0]["model"]), PALETTE[0])
    style = LINE_STYLES[variants.index(str(points[0]["variant"])) % len(LINE_STYLES)]
    label = _curve_label(points[0]) + (f", means of {width} points" if width > 1 else "")
    axes.plot(x, mean, label=label, color=colour, linestyle=style)
    if banded:
        axes.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)


def _binned(run: Sequence[Row]) -> tuple[list[list[float]], int]:
    """A run's curve as drawn (x, mean, low, high) and how many episodes a point stands
    for: up to MAX_CURVE_POINTS points as they are; a longer curve in bins of consecutive
    episodes, each drawn at its middle with the means of its points' means and bounds
    (10,000 rounds of one replicate zigzag between 0 and 1 at every pixel: seconds to draw,
    and nothing to read)."""
    width = math.ceil(len(run) / MAX_CURVE_POINTS)
    columns = [[p["episode"] + 1 for p in run]]
    columns += [[p[key] for p in run] for key in ("mean", "low", "high")]
    if width > 1:
        bins = range(0, len(run), width)
        columns = [[sum(c[i : i + width]) / len(c[i : i + width]) for i in bins] for c in columns]
    return columns, width


def _curve_legend(figure: Figure, axes: Axes) -> None:
    """The legend in the panel while it is short; past 10 entries beside it, the figure made
    wider and taller to hold it (inside, it would hide the curves and break the layout)."""
    entries = len(axes.get_legend_handles_labels()[1])
    if entries <= 10:
        axes.legend(fontsize="small")
        return
    columns = math.ceil(entries / 20)
    width, height = figure.get_size_inches()
    figure.set_size_inches(
        width + 2.8 * columns, max(height, 0.2 * math.ceil(entries / columns) + 1)
    )
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), ncols=columns)


def bandit_figure(
    rows: Sequence[Row], measure: str = "regret", colours: dict[str, str] | None = None
) -> Figure | None:
    """A panel per bandit task: a bar per in-context RL run (model, variant, history) with
    `measure` (`regret` or `suffix_failure`) and its 95% interval across replicates; None
    when no run has the measure."""
    drawn = [r for r in rows if r.get("regime") == "icrl" and r.get(measure) is not None]
    if not drawn:
        return None
    colours = colours or model_colours(rows)
    tasks = dict(sorted(grouped_by(drawn, "task").items()))
    figure, panels = _panels(list(tasks), BANDIT_TEXT[measure].capitalize())
    for task, axes in panels.items():
        bars = sorted(tasks[task], key=_bar_label)[:MAX_SERIES]
        x = list(range(len(bars)))
        heights = [row[measure] for row in bars]
        axes.bar(x, heights, color=[colours.get(str(r["model"]), PALETTE[0]) for r in bars])
        _interval_bars(axes, x, bars, measure)
        axes.set_xticks(x, [_bar_label(row) for row in bars], rotation=30, ha="right",
                        fontsize="small")  # fmt: skip
        axes.set_title(task)
        runs = len(tasks[task])
        shown = f"; the first {len(bars)} of {runs} runs" if runs > len(bars) else ""
        axes.set_xlabel(f"model (variant, history){shown}")
        axes.set_ylabel(f"{measure.replace('_', ' ')} (95% interval)")
        axes.grid(alpha=0.3, axis="y")
        if measure == "suffix_failure":
            axes.set_ylim(0, 1.05)
            axes.yaxis.set_major_formatter(_percent())
    return _plain_text(figure)


def _bar_label(row: Row) -> str:
    # Visible here too: a tick's text is set again from its label when the figure is drawn.
    return visible(f"{row['model']} ({row.get('variant')}, {row.get('history')})")


def _interval_bars(axes: Axes, x: Sequence[int], bars: Sequence[Row], measure: str) -> None:
    """Error bars at the runs with an interval (a store from before intervals has none)."""
    low, high = f"{measure}_low", f"{measure}_high"
    known = [(i, r) for i, r in zip(x, bars, strict=True) if None not in (r.get(low), r.get(high))]
    if not known:
        return
    axes.errorbar(
        [i for i, _ in known], [r[measure] for _, r in known],
        yerr=[[max(0.0, r[measure] - r[low]) for _, r in known],
              [max(0.0, r[high] - r[measure]) for _, r in known]],
        fmt="none", ecolor="black", capsize=4, linewidth=1,
    )  # fmt: skip


def published_figure(rows: Sequence[Row], colours: dict[str, str] | None = None) -> Figure | None:
    """A panel per task whose runs a paper published values for (`lmact.report.published`): per
    measure and run, the run's value as a bar, the published one as a black tick with the
    tolerance a reproduction must meet as a grey band; None when no run has one."""
    lines = comparison(rows)
    if not lines:
        return None
    colours = colours or model_colours(rows)
    tasks = dict(sorted(grouped_by(lines, "task").items()))
    figure, panels = _panels(list(tasks), "Published values (ticks, with their tolerance) "
                             "beside lmact's runs (bars)")  # fmt: skip
    for task, axes in panels.items():
        shown = tasks[task][: MAX_SERIES * 4]
        x = list(range(len(shown)))
        axes.bar(x, [line["this_run"] for line in shown],
                 color=[colours.get(str(line["model"]), PALETTE[0]) for line in shown])  # fmt: skip
        for position, line in zip(x, shown, strict=True):
            if line["tolerance"] is not None:  # a paper's own agent's value has none
                band = (
                    line["published"] - line["tolerance"],
                    line["published"] + line["tolerance"],
                )
                axes.fill_between([position - 0.4, position + 0.4], *band, color="grey",
                                  alpha=0.35, linewidth=0)  # fmt: skip
            style = "solid" if line["tolerance"] is not None else "dashed"
            axes.hlines(line["published"], position - 0.4, position + 0.4, color="black",
                        linestyles=style)  # fmt: skip
        labels = [visible(f"{line['model']}: {line['measure']}") for line in shown]
        axes.set_xticks(x, labels, rotation=45, ha="right", fontsize="small")
        axes.set_title(task)
        axes.set_ylabel("value")
        axes.grid(alpha=0.3, axis="y")
    return _plain_text(figure)


def report_figures(rows: Sequence[Row], curves: Sequence[Row]) -> dict[str, Figure]:
    """Every figure the rows (`report_rows`) and curves (`curve_rows`) support, by a
    name that is also its file's stem; a model has one colour in all of them."""
    colours = model_colours([*rows, *curves])
    candidates = {
        "normalized-score": normalized_score_figure(rows, colours),
        "illegal-rate": answer_rate_figure(rows, "illegal_rate", colours),
        "invalid-rate": answer_rate_figure(rows, "invalid_rate", colours),
        "bandit-regret": bandit_figure(rows, "regret", colours),
        "bandit-suffix-failure": bandit_figure(rows, "suffix_failure", colours),
        "published-values": published_figure(rows, colours),
    }
    figures = {name: figure for name, figure in candidates.items() if figure is not None}
    for task, figure in learning_curve_figures(curves, colours).items():
        figures[f"{_file_stem(task)}-learning-curves"] = figure
    return figures


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def write_figures(figures: dict[str, Figure], folder: Path, option: str = "--out") -> list[Path]:
    """Each figure as `folder/NAME.png`; returns the files written. `option` is the
    command-line option named in an error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LmactError(f"{option} {folder}: {error.strerror}") from None
    written = []
    for name, figure in figures.items():
        path = folder / f"{_file_stem(name)}.png"
        try:
            figure.savefig(path)
        except OSError as error:
            raise LmactError(f"{option} {path}: {error.strerror}") from None
        written.append(path)
    return written


def write_report_plots(
    rows: Sequence[Row], curves: Sequence[Row], folder: Path, option: str = "--out"
) -> list[Path]:
    """Every plot the rows support, as PNG files under `folder` (stable names)."""
    return write_figures(report_figures(rows, curves), folder, option)


def write_learning_curves(curves: Sequence[Row], folder: Path) -> list[Path]:
    """One PNG per task under `folder`; returns the files written."""
    if not curves:
        raise LmactError("the run store holds no in-context RL run (--regime icrl) to plot")
    figures = learning_curve_figures(curves)
    named = {f"{task}-learning-curves": figure for task, figure in figures.items()}
    return write_figures(named, folder, "--plot")
