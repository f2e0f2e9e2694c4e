"""The HTML report: one self-contained page of a run store's runs, the file a user opens.

It holds what `lmact report` prints and draws: a table of runs per task (the markdown
table's columns and number formats), every plot the runs support as an inline PNG with a
caption, a link from each run to its episode viewer page, and, when given, a table of
paired comparisons. Like every page lmact writes it loads nothing (`lmact.report.page`): the
plots are `data:` URIs, and it has no script at all. All text on it is escaped: task and
model names are the user's text.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmact.report.page import counted, data_uri, document, escape
from lmact.report.pivot import Pivot, pivots
from lmact.report.published import PUBLISHED_COLUMNS, comparison
from lmact.report.tables import carrying_columns, format_value, grouped_by, grouped_by_task
from lmact.text import visible

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURE_CAPTIONS", "figure_caption", "figure_png", "render_report", "run_page_path"]

Row = Mapping[str, Any]

# What each plot of `plots.report_figures` shows, by its name: the first sentence is also
# its alt text. The learning curves (one figure per task) are captioned by their title.
FIGURE_CAPTIONS = {
    "normalized-score": "Normalized score against the number of demonstrations, a panel per "
    "task. The LMAct figure: (mean - random) / (expert - random) of each imitation run, a line "
    "per model and observation format with its 95% interval as a band; the expert scores 1 "
    "and random 0. The demonstration axis is symmetric-log, so 0 demonstrations show.",
    "illegal-rate": "Share of steps with an illegal answer against the number of "
    "demonstrations, a panel per task. An answer is illegal when it is not a legal action "
    "there; invalid and empty answers count.",
    "invalid-rate": "Share of steps with an invalid answer against the number of "
    "demonstrations, a panel per task. An answer is invalid when it is not of the action "
    "form; empty answers count.",
    "bandit-regret": "Bandit regret of each in-context RL run, a panel per task. Regret is the "
    "gap times the pulls of worse arms, the mean over replicates with its 95% interval; the "
    "expert's is 0, random's is what no learning costs.",
    "bandit-suffix-failure": "Bandit suffix failures of each in-context RL run, a panel per "
    "task. The share of replicates that never pull the best arm in the second half "
    "(Krishnamurthy et al.), with its 95% interval.",
}
_LEARNING_CURVES = "-learning-curves"


def figure_png(figure: Figure) -> bytes:
    """A matplotlib figure as PNG bytes, as `write_figures` would save it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def figure_caption(name: str, figure: Figure | None = None) -> str:
    """The caption of the plot `name` (a `report_figures` key)."""
    if name in FIGURE_CAPTIONS:
        return FIGURE_CAPTIONS[name]
    if name.endswith(_LEARNING_CURVES):
        title = figure.axes[0].get_title() if figure is not None and figure.axes else name
        return (
            f"{title.capitalize()}. The mean return at each episode across replicates, a "
            "line per run (model and context variant), its 95% interval as a band."
        )
    return name.replace("-", " ").capitalize() + "."


def run_page_path(run_id: str) -> str:
    """Where a run's viewer page sits, relative to the report's index.html. A run id is
    hex; anything else a store might hold is kept to a plain file name."""
    return f"runs/{re.sub(r'[^A-Za-z0-9_-]', '_', run_id)}.html"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _table(rows: Sequence[Row], columns: Sequence[str], links: Mapping[str, str]) -> str:
    """An HTML table of `rows`: a header of `columns`, numbers right-aligned, the run id
    a link to its page where `links` has one."""
    head = "".join(f'<th scope="col">{escape(column)}</th>' for column in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            shown = escape(format_value(column, value))
            if column == "run_id" and str(value) in links:
                shown = f'<a href="{escape(links[str(value)])}">{shown}</a>'
            number = ' class="num"' if _is_number(value) else ""
            cells.append(f"<td{number}>{shown}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _names(rows: Sequence[Row], column: str) -> list[str]:
    return sorted({str(row[column]) for row in rows if row.get(column) is not None})


def _shown_name(name: str) -> str:
    """A name as the page shows it: escaped, its control characters and bidirectional
    overrides written out (one would reverse the text after it), as in the tables."""
    return escape(visible(name))


def _summary(rows: Sequence[Row], store: str | Path | None) -> str:
    tasks = list(grouped_by_task(rows))  # in the order of their tables, each a link to it
    models, regimes = _names(rows, "model"), _names(rows, "regime")
    linked = ", ".join(
        f'<a href="#task-{index}">{_shown_name(task)}</a>' for index, task in enumerate(tasks, 1)
    )
    listed = [
        f"<b>{counted(len(rows), 'run')}</b>",
        f"{counted(len(tasks), 'task')} ({linked})",
        f"{counted(len(models), 'model')} ({_shown_name(', '.join(models))})",
        f"{counted(len(regimes), 'regime')} ({_shown_name(', '.join(regimes))})",
    ]
    source = f" from the run store <code>{escape(store)}</code>" if store is not None else ""
    return f'<p class="summary">{" · ".join(listed)}{source}.</p>'


def _runs_section(rows: Sequence[Row], links: Mapping[str, str]) -> str:
    groups = grouped_by_task(rows)
    if not groups:
        return '<section id="runs"><h2>Runs</h2><p class="none">No finished run.</p></section>'
    parts = []
    for index, (task, group) in enumerate(groups.items(), start=1):
        tables = "".join(
            f"<h4>{escape(regime)} runs</h4>{_table(same, carrying_columns(same), links)}"
            for regime, same in grouped_by(group, "regime").items()
        )
        if published := comparison(group):
            tables += (
                '<h4 class="published">Published values beside these runs</h4>'
                f"{_table(published, PUBLISHED_COLUMNS, links)}"
            )
        parts.append(
            f'<section class="task" id="task-{index}" data-task="{escape(task)}">'
            f"<h3>{_shown_name(task)} <small>{counted(len(group), 'run')}</small></h3>"
            f"{tables}</section>"
        )
    viewer = " A run id links to its episodes, step by step, in the viewer." if links else ""
    return (
        '<section id="runs"><h2>Runs</h2><p class="hint">A row per run, grouped by task and '
        "regime, with the columns of <code>lmact report</code> that carry a value for them "
        f"(docs/reports.md; the CSV and JSON formats have every column).{viewer}</p>"
        f"{''.join(parts)}</section>"
    )


def _scores_section(rows: Sequence[Row]) -> str:
    """Per task, the pivot of the score each regime reports: what a reader asks first."""
    made = pivots(rows)
    if not made:
        return ""
    parts = []
    for task, task_pivots in grouped_by(
        ({"task": p.task, "pivot": p} for p in made), "task"
    ).items():
        tables = "".join(_pivot_table(entry["pivot"]) for entry in task_pivots)
        parts.append(
            f'<section class="scores" data-task="{escape(task)}">'
            f"<h3>{_shown_name(task)}</h3>{tables}</section>"
        )
    return (
        '<section id="scores"><h2>Scores</h2><p class="hint">Per task and regime, the score '
        "it reports: a row per model and format, the 95% bootstrap interval in brackets.</p>"
        f"{''.join(parts)}</section>"
    )


def _pivot_table(pivot: Pivot) -> str:
    head = "".join(f'<th scope="col">{escape(column)}</th>' for column in pivot.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in pivot.rows
    )
    return (
        f'<h4 class="pivot-title">{escape(pivot.regime)}: {escape(pivot.title)}</h4>'
        f'<div class="table-wrap"><table class="pivot" data-regime="{escape(pivot.regime)}">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _figures_section(figures: Mapping[str, Figure]) -> str:
    if not figures:
        return ""
    shown = []
    for name, figure in figures.items():
        caption = figure_caption(name, figure)
        alt = caption.split(". ")[0].removesuffix(".")
        shown.append(
            f'<figure id="figure-{escape(name)}" data-figure="{escape(name)}">'
            f'<img src="{data_uri(figure_png(figure))}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return f'<section id="plots"><h2>Plots</h2>{"".join(shown)}</section>'


def _comparisons_section(comparisons: Sequence[Row] | None) -> str:
    """Paired comparisons, a row each, the columns in order of first appearance."""
    if comparisons is None:
        return ""
    if not comparisons:
        body = '<p class="none">No paired comparison.</p>'
    else:
        columns = list(dict.fromkeys(key for row in comparisons for key in row))
        body = _table(comparisons, columns, {})
    return f'<section id="comparisons"><h2>Paired comparisons</h2>{body}</section>'


def render_report(
    rows: Sequence[Row],
    figures: Mapping[str, Figure],
    *,
    run_pages: Mapping[str, str] | None = None,
    store: str | Path | None = None,
    comparisons: Sequence[Row] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The report page: a summary of `rows` (from `tables.report_rows`), a table of runs
    per task, `figures` (from `plots.report_figures`, by name) inline with a caption each,
    each run id linked to `run_pages[run_id]` (a URL relative to the page) where given, and
    `comparisons` (rows of paired comparisons) as a table of its own when given; `notes`,
    lines of plain text, under the summary."""
    links = dict(run_pages or {})
    contents = [("scores", "Scores")] if rows else []
    if figures:
        contents.append(("plots", "Plots"))
    contents.append(("runs", "Runs"))
    if comparisons is not None:
        contents.append(("comparisons", "Paired comparisons"))
    toc = " · ".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in contents)
    body = (
        f"<header><h1>lmact report</h1>{_summary(rows, store)}{_notes(notes)}"
        f"<nav>{toc}</nav></header>"
        f"<main>{_scores_section(rows)}{_figures_section(figures)}{_runs_section(rows, links)}"
        f"{_comparisons_section(comparisons)}</main>"
    )
    return document("lmact report", _CSS, body)


def _notes(notes: Sequence[str]) -> str:
    return "".join(f'<p class="hint note">{escape(note)}</p>' for note in notes)


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 28px 40px; font: 14px/1.45 system-ui, -apple-system,
  "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 16px; margin: 20px 0 6px; }
h3 small { color: #57606a; font-weight: 400; font-size: 13px; margin-left: 6px; }
h4 { font-size: 13.5px; margin: 12px 0 4px; color: #424a53; }
table.pivot td { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.summary { margin: 4px 0; }
.hint, .none { color: #57606a; margin: 4px 0 8px; }
.summary a, nav a, td a { color: #0969da; text-decoration: none; }
nav a:hover, td a:hover { text-decoration: underline; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px;
  background: #eaeef2; padding: 0 4px; border-radius: 3px; }
.table-wrap { overflow-x: auto; border: 1px solid #d0d7de; border-radius: 6px; }
table { border-collapse: collapse; font-size: 12.5px; width: max-content; min-width: 100%; }
th, td { padding: 4px 10px; text-align: left; white-space: nowrap;
  border-bottom: 1px solid #eaeef2; }
thead th { position: sticky; top: 0; background: #f6f8fa; font-weight: 600;
  border-bottom: 1px solid #d0d7de; }
tbody tr:nth-child(even) { background: #f6f8fa; }
tbody tr:hover { background: #ddf4ff; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
  font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
figure { margin: 18px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { max-width: 900px; color: #424a53; margin-top: 6px; }
"""
