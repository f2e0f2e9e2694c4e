"""`lmact report`'s markdown: per task, first what a reader asks (the pivot of the score
each regime reports), then the per-run tables, one per regime, with only the columns that
carry a value for their rows. CSV and JSON keep every column (`tables.format_table`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmact.errors import LmactError
from lmact.published import comparison
from lmact.report.pivot import markdown_pivot, pivots
from lmact.report.tables import (
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


# A published value beside a run's: `within` says whether the run reproduces it (within the
# tolerance the paper's file gives).
PUBLISHED_COLUMNS = (
    "source", "model", "run_id", "replicates", "measure", "published", "this_run", "within",
)  # fmt: skip
