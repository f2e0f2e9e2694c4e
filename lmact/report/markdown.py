"""`lmact report`'s markdown: per task, first what a reader asks (the pivot of the score
each regime reports), then the per-run tables, one per regime, with only the columns that
carry a value for their rows. CSV and JSON keep every column (`tables.format_table`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmact.errors import LmactError
from lmact.report.pivot import markdown_pivot, pivots
from lmact.report.published import PUBLISHED_COLUMNS, comparison
from lmact.report.tables import (
    CURVE_COLUMNS,
    carrying_columns,
    format_value,
    grouped_by,
    grouped_by_task,
    markdown_table,
)

Row = dict[str, Any]


def markdown_report(rows: Sequence[Row]) -> str:
    """The report's tables in markdown: per task a heading, its pivots, its runs."""
    if not rows:
        raise LmactError("the run store holds no finished episode yet; start with `lmact run`")
    sections = []
    for task, task_rows in grouped_by_task(rows).items():
        parts = [f"### {format_value('task', task)}\n"]
        parts += [markdown_pivot(pivot) for pivot in pivots(task_rows)]
        for regime, regime_rows in grouped_by(task_rows, "regime").items():
            table = markdown_table(regime_rows, carrying_columns(regime_rows))
            parts.append(f"**{regime} runs**\n\n{table}")
        if published := comparison(task_rows):
            parts.append(f"**Published values beside these runs**\n\n"
                         f"{markdown_table(published, PUBLISHED_COLUMNS)}")  # fmt: skip
        sections.append("\n".join(parts))
    return "\n".join(sections)


# Points a curve shows in the terminal (`lmact report --curves`): its first, its last and
# evenly spaced ones between; CSV and JSON hold every point.
CURVE_POINTS_SHOWN = 5


def markdown_curves(curves: Sequence[Row]) -> str:
    """The curves in a terminal's measure: a few points of each (run, curve), and where
    the rest is."""
    shown = []
    for run_curves in grouped_by(curves, "run_id").values():
        for points in grouped_by(run_curves, "curve").values():
            last, spaces = len(points) - 1, CURVE_POINTS_SHOWN - 1
            picks = sorted({round(i * last / spaces) for i in range(CURVE_POINTS_SHOWN)})
            shown += [points[i] for i in picks] if last > 0 else points
    note = (
        f"{len(shown)} of {len(curves)} curve points: each curve's first, last and "
        f"{CURVE_POINTS_SHOWN - 2} between; `--format csv` or `--format json` give every point.\n"
    )
    # An option no shown run sets (a layout, a scenario) is no column in a terminal.
    columns = [c for c in CURVE_COLUMNS if any(row.get(c) not in (None, "") for row in shown)]
    return markdown_table(shown, columns) + "\n" + note
