"""The table a reader of a report asks for first, per task and regime: the score the regime
reports, one row per model (and format, and whatever else varies), one column per point of
the regime's main axis.

Imitation: the normalized score with its interval, one column per number of
demonstrations (as the LMAct figure plots it). In-context RL: its final measures, one
column each. Replay: the share of demonstrated actions matched. A regime says which with
its `headline` (a `Headline`); a regime without one gets its mean return per model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lmact.options import column_labels, report_columns
from lmact.regimes import REGIMES
from lmact.regimes.headline import Headline
from lmact.report.tables import format_value, grouped_by

Row = dict[str, Any]

_DEFAULT_HEADLINE = Headline(title="mean return", value="mean_return", interval="ci95")
# What tells runs of one task and regime apart, besides the headline's own columns, in the
# order a row names them: the model first.
_ROW_KEYS = ("model", "observation")
# Settings that add to a row's name when they vary within a table (else two runs with
# different settings would claim one cell).
_VARYING_KEYS = tuple(column_labels(report_columns("setting")))  # `Column(place="setting")`


@dataclass(frozen=True)
class Pivot:
    """One pivot table: `header` names the row-name columns then the value columns; each
    row is its name cells then its value cells, as text."""

    task: str
    regime: str
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def headline_of(regime: str) -> Headline:
    found = REGIMES.get(regime)
    return getattr(found, "headline", None) or _DEFAULT_HEADLINE


def pivots(rows: Iterable[Row]) -> list[Pivot]:
    """The pivot tables of report rows (from `tables.report_rows`), per task, then per
    regime in the order the rows name them."""
    made = []
    for task, task_rows in grouped_by(rows, "task").items():
        for regime, regime_rows in grouped_by(task_rows, "regime").items():
            made.append(_pivot(task, regime, regime_rows, headline_of(regime)))
    return made


def _pivot(task: str, regime: str, rows: Sequence[Row], headline: Headline) -> Pivot:
    key_columns = _key_columns(rows, headline)
    if headline.across is not None:
        columns = _axis_points(rows, headline.across)
        cell_of: Callable[[Row], dict[str, str]] = lambda row: {  # noqa: E731
            _axis_label(row, headline.across): _score(row, headline)
        }
        value_header = tuple(f"{headline.across_label} {point}" for point in columns)
    elif not headline.measures:  # one column: the value with its interval
        columns = [headline.value]
        cell_of = lambda row: {headline.value: _score(row, headline)}  # noqa: E731
        value_header = (headline.value,)
    else:
        columns = [m for m in headline.measures if any(row.get(m) is not None for row in rows)]
        cell_of = lambda row: {  # noqa: E731
            m: format_value(m, row.get(m)) for m in columns if row.get(m) is not None
        }
        value_header = tuple(columns)
    table: dict[tuple[str, ...], dict[str, str]] = {}
    for row in rows:
        name = tuple(format_value(c, row.get(c)) for c in key_columns)
        cells = table.setdefault(name, {})
        for column, text in cell_of(row).items():
            # Runs that differ only in what no column names (say, their seeds) share a cell.
            cells[column] = f"{cells[column]} / {text}" if column in cells else text
    body = tuple(
        (*name, *(cells.get(column, "") for column in columns))
        for name, cells in sorted(table.items())
    )
    return Pivot(task, regime, headline.title, (*key_columns, *value_header), body)


def _key_columns(rows: Sequence[Row], headline: Headline) -> list[str]:
    """The columns that name a row: model and format, then any setting that varies."""
    varying = [
        column
        for column in _VARYING_KEYS
        if column != headline.across and len({str(row.get(column)) for row in rows}) > 1
    ]
    return [*_ROW_KEYS, *varying]


def _axis_points(rows: Sequence[Row], across: str) -> list[str]:
    """The distinct points of the axis, numbers in numeric order, then token budgets."""
    labels = {_axis_label(row, across) for row in rows}
    numeric = sorted((label for label in labels if label.isdigit()), key=int)
    return numeric + sorted(labels - set(numeric))


def _axis_label(row: Row, across: str) -> str:
    value = row.get(across)
    if row.get("token_budget") is not None:  # a budget's run packs what fits: its own column
        return f"≤{row['token_budget']} tokens"
    return format_value(across, value) if value is not None else "none"


def _score(row: Row, headline: Headline) -> str:
    """The headline value with its 95% interval, or the mean return where the value is not
    defined (no baselines stored, or expert = random)."""
    value = row.get(headline.value)
    low, high = (row.get(f"{headline.interval}_low"), row.get(f"{headline.interval}_high"))
    if value is None and headline.value != "mean_return":
        value, low, high = row.get("mean_return"), row.get("ci95_low"), row.get("ci95_high")
        if value is None:
            return ""
        return f"return {value:.3f}"
    if value is None:
        return ""
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def markdown_pivot(pivot: Pivot) -> str:
    """A pivot as a markdown table under a line naming what it shows."""
    lines = [
        f"**{pivot.regime}: {pivot.title}**",
        "",
        "| " + " | ".join(pivot.header) + " |",
        "|" + "---|" * len(pivot.header),
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in pivot.rows]
    return "\n".join(lines) + "\n"
