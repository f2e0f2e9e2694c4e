"""What `lmact report` makes of a run store: the selected runs' table (markdown, CSV, JSON)
or learning curves, their plots, and the HTML report with a viewer page per run. The
command prints what `make_report` returns; `lmact.api.report` is the same from Python.
Errors name the report's options by name (`OptionError`); the command says them as flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmact.declarations import Named, Option, OptionError
from lmact.demos import DemoStore
from lmact.errors import LmactError, UnknownNameError
from lmact.options import checked
from lmact.report.markdown import markdown_curves, markdown_report
from lmact.report.page import counted
from lmact.report.tables import (
    CURVE_COLUMNS,
    CURVES,
    FORMAT_ALIASES,
    FORMATS,
    SUFFIXES,
    TABLE_FIELDS,
    Baselines,
    collector_paused,
    curve_rows,
    format_table,
    report_rows,
    select_rows,
    table_format,
    with_episodes,
)
from lmact.store import (
    MAX_EPISODES,
    RunStore,
    StoreLocation,
    StoreUrl,
    open_played_store,
    open_store,
    store_location,
)
from lmact.text import visible

if TYPE_CHECKING:
    from lmact.report.compare import Comparisons

# The episodes a run's viewer page in an HTML report shows: each is replayed to rebuild its
# prompts, which for long runs (chess, in-context RL's hundreds of episodes) takes minutes.
DEFAULT_VIEW_EPISODES = 20
# The viewer pages an HTML report writes, at most (of its first runs): each page replays its
# episodes, tens of milliseconds for tic-tac-toe, seconds for chess; a sweep of thousands of
# runs would take hours.
MAX_VIEWER_PAGES = 100
VIEW_EPISODES = Option(
    "view_episodes", int, least=0, most=MAX_EPISODES, metavar="N",
    help="--format html: a run's viewer page shows its first N episodes (default "
    f"{DEFAULT_VIEW_EPISODES}; replaying them is what a page costs); 0: no viewer pages",
)  # fmt: skip
VIEW_MAX_MB = Option(
    "view_max_mb", float, least=0, positive=True, metavar="MB",
    help="--format html: leave out (and name) the viewer pages larger than this; image "
    "observations make big pages (default: no limit)",
)  # fmt: skip


@dataclass(frozen=True)
class Report:
    """What a report made: the table to print (None when it was written to `out`, and for
    the HTML report), the files written, and for the HTML report its index and the number
    of viewer pages written under `out`/runs."""

    table: str | None = None
    written: list[Path] = field(default_factory=list)
    index: Path | None = None
    viewer_pages: int = 0


@dataclass(frozen=True)
class _Request:
    store: StoreLocation
    fmt: str
    tasks: list[str] | None
    models: list[str] | None
    sweep: str | None
    curves: bool
    plot: Path | None
    out: Path | None
    view_episodes: int | None
    view_max_mb: float | None
    demo_store: DemoStore


def make_report(
    store: Path | str | StoreUrl | None = None,
    *,
    format: str = "markdown",
    tasks: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    sweep: str | None = None,
    curves: bool = False,
    plot: Path | str | None = None,
    out: Path | str | None = None,
    view_episodes: int | None = None,
    view_max_mb: float | None = None,
    cache_dir: Path | str | None = None,
    workers: int | None = None,
) -> Report:
    """The report of the runs of `store` (of some `tasks` and `models`, each name possibly
    a comma list, or of one `sweep`): its table, or with `curves` the learning curves; with
    `plot`, every plot as PNG files into that folder; with `out`, the table and plots written
    there. `format` html: `out`/index.html and each run's viewer page (its first
    `view_episodes` episodes; those over `view_max_mb` left out, and named), demonstrations
    read from `cache_dir`."""
    process = checked({"cache_dir": cache_dir, "workers": workers})
    request = _Request(
        store_location(store), _report_format(format), list(tasks) if tasks is not None else None,
        list(models) if models is not None else None, sweep, curves,
        Path(plot) if plot is not None else None, Path(out) if out is not None else None,
        VIEW_EPISODES.check(view_episodes), VIEW_MAX_MB.check(view_max_mb),
        DemoStore.in_cache(process.get("cache_dir"), process.get("workers")),
    )  # fmt: skip
    if request.fmt == "html":
        return _html_report(request)
    for option in (VIEW_EPISODES, VIEW_MAX_MB):
        if getattr(request, option.name) is not None:
            raise OptionError(Named(option.name), " is an option of ", Named("format"), " html")
    return _table_report(request)


def _report_format(name: str) -> str:
    """`html`, or a table format's canonical name; an unknown one is an error naming all."""
    if name == "html":
        return name
    try:
        return table_format(name)
    except UnknownNameError:
        raise UnknownNameError("report format", name, (*FORMATS, "html", *FORMAT_ALIASES)) from None


def _table_report(request: _Request) -> Report:
    if request.out is not None or request.plot is not None:
        from lmact.report.plots import check_matplotlib

        check_matplotlib()  # without it, fail before anything is written
    from lmact.report.compare import comparison_section

    fmt = request.fmt
    rows, found = _rows_compared(request, compares=fmt == "markdown" and not request.curves)
    curves = curve_rows(rows)
    if request.curves and not curves and fmt == "markdown":
        raise LmactError("the run store holds no in-context RL run (--regime icrl) yet")
    if request.curves:  # markdown: a few points a curve; CSV and JSON every point
        table = (
            markdown_curves(curves)
            if fmt == "markdown"
            else format_table(curves, fmt, CURVE_COLUMNS)
        )
    else:  # markdown leads with each regime's pivot; CSV and JSON keep every column
        table = markdown_report(rows) if fmt == "markdown" else format_table(rows, fmt)
    if found is not None:
        section = comparison_section(found.rows, found.left_off, found.counted)
        table += f"\n{section}" if section else ""
    written = []
    if request.plot is not None:
        written += _plot_files(rows, curves, request.plot, "--plot")
    if request.out is None:
        return Report(table, written)
    written += _plot_files(rows, curves, request.out, "--out", required=False)
    path = request.out / f"{'curves' if request.curves else 'report'}.{SUFFIXES[fmt]}"
    try:
        path.write_text(table, encoding="utf-8")
    except OSError as error:
        raise OptionError(Named("out"), f" {path}: {error.strerror}") from None
    return Report(None, [*written, path])


def _names(values: list[str] | None, rows: list[dict[str, Any]], column: str) -> list[str] | None:
    """A repeated option's names, each value possibly a comma list; None if not given. A
    value that is exactly the `column` of some row is that one name, commas and all (a task
    of a dataset, or given by its path, may have one)."""
    if values is None:
        return None
    known = _known(rows, column)
    return [
        name
        for value in values
        for name in ([value] if value in known else [n.strip() for n in value.split(",")])
        if name
    ]


def _known(rows: list[dict[str, Any]], column: str) -> set[str]:
    return {str(row[column]) for row in rows if row.get(column) is not None}


def _opened(request: _Request) -> RunStore:
    """The report's store, open; a one-line error where there is none."""
    return open_played_store(request.store)


def _report_rows(request: _Request, store: RunStore, reads: Baselines) -> list[dict[str, Any]]:
    """The rows the report shows: the selected runs (with their episodes for JSON), with
    the measures it shows (a table of runs needs no learning curve); their units read
    through `reads`, which keeps them for the comparisons."""
    members = store.sweep_runs(request.sweep) if request.sweep is not None else None
    rows = report_rows(store, _wanted(request), reads)
    tasks = _names(request.tasks, rows, "task")
    models = _names(request.models, rows, "model")
    _check_names(rows, "task", tasks)
    _check_names(rows, "model", models)
    rows = select_rows(rows, tasks=tasks, models=models, run_ids=members)
    if request.fmt == "json" and not request.curves:
        rows = with_episodes(store, rows)
    return rows


def _wanted(request: _Request) -> frozenset[str] | None:
    """The regimes' measures the report shows: all in JSON; a table's columns, the learning
    curves for --curves, and what the plots draw where there are plots."""
    if request.fmt == "json" and not request.curves:
        return None
    wanted = TABLE_FIELDS | (set(CURVES) if request.curves else set())
    if request.fmt == "html" or request.plot is not None or request.out is not None:
        from lmact.report.plots import PLOTTED_FIELDS

        wanted |= PLOTTED_FIELDS
    return wanted


def _check_names(rows: list[dict[str, Any]], column: str, names: list[str] | None) -> None:
    """A name no run has is a one-line error naming those there are (a typo, most often)."""
    known = sorted(_known(rows, column))
    for name in names or []:
        if name not in known:
            listed = visible(", ".join(known)) or "none"  # the store's names: anyone's text
            raise LmactError(f"no run of {column} {name!r} in the store ({column}s: {listed})")


def _html_report(request: _Request) -> Report:
    """`out`/index.html, and `out`/runs/RUN_ID.html, the viewer page of each run (its first
    `view_episodes` episodes; of the first MAX_VIEWER_PAGES runs) that the index links to."""
    from lmact.report.html import render_report
    from lmact.report.plots import check_matplotlib, report_figures

    if request.out is None:
        raise OptionError(Named("format"), " html needs ", Named("out"), " DIR: the page "
                          "comes with a viewer page per run, written beside it")  # fmt: skip
    if request.curves:
        raise OptionError(Named("curves"), " is for the table formats; the HTML report draws "
                          "the learning curves")  # fmt: skip
    check_matplotlib()  # without it, fail before anything is written
    rows, found = _rows_compared(request, compares=True)
    if not rows:
        raise LmactError("the selected runs have no finished episode yet; start with `lmact run`")
    curves = curve_rows(rows)
    written = _plot_files(rows, curves, request.plot, "--plot") if request.plot else []
    viewed = DEFAULT_VIEW_EPISODES if request.view_episodes is None else request.view_episodes
    viewed_runs = [row["run_id"] for row in rows[:MAX_VIEWER_PAGES]]
    pages, left_out = _viewer_pages(request, viewed_runs, viewed)
    notes = [
        f"Viewer pages of {counted(len(left_out), 'run')} left out, each over "
        f"{request.view_max_mb:g} MB: {', '.join(left_out)}; `lmact view RUN_ID` writes one."
    ] if left_out else []  # fmt: skip
    if viewed and len(rows) > MAX_VIEWER_PAGES:
        notes.append(f"Viewer pages of the first {MAX_VIEWER_PAGES} of {len(rows)} runs only; "
                     "`lmact view RUN_ID` writes any other.")  # fmt: skip
    report = render_report(rows, report_figures(rows, curves), run_pages=pages,
                           store=request.store, comparisons=found.rows if found else None,
                           notes=notes)  # fmt: skip
    index = request.out / "index.html"
    _write_page(index, report)
    return Report(None, written, index, len(pages))


def _rows_compared(
    request: _Request, compares: bool
) -> tuple[list[dict[str, Any]], Comparisons | None]:
    """The report's rows and, with `compares` (and rows), their paired comparisons, the
    runs' units read once for both (and let go after: a page's figures and viewer pages
    need none)."""
    from lmact.report.compare import find_comparisons

    with _opened(request) as store:
        reads = Baselines(store, keep_runs=compares)  # the comparisons read runs again
        rows = _report_rows(request, store, reads)
        if not compares or not rows:
            return rows, None
        with collector_paused():
            return rows, find_comparisons(store, rows, reads=reads)


def _viewer_pages(
    request: _Request, run_ids: list[str], episodes: int
) -> tuple[dict[str, str], list[str]]:
    """Each run's viewer page (its first `episodes` episodes) written under `out`: where
    each is, relative to the report's index.html, and the runs whose page was left out,
    being over `view_max_mb`."""
    from lmact.report.html import run_page_path
    from lmact.report.viewer import render_viewer

    pages: dict[str, str] = {}
    left_out: list[str] = []
    if not episodes or request.out is None:
        return pages, left_out
    limit = None if request.view_max_mb is None else request.view_max_mb * 1_000_000
    with open_store(request.store) as store:
        for run_id in run_ids:
            page = render_viewer(store, run_id, demo_store=request.demo_store,
                                 max_episodes=episodes)  # fmt: skip
            if limit is not None and len(page.encode("utf-8")) > limit:
                left_out.append(run_id)
                continue
            pages[run_id] = run_page_path(run_id)
            _write_page(request.out / pages[run_id], page)
    return pages, left_out


def _write_page(path: Path, page: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise OptionError(Named("out"), f" {path}: {error.strerror or error}") from None


def _plot_files(
    rows: list[dict[str, Any]], curves: list[dict[str, Any]], folder: Path, option: str,
    required: bool = True,
) -> list[Path]:  # fmt: skip
    """Every plot the rows support, written under `folder`; with `required`, having none
    is an error (--plot asks for plots; --out for a report, plots where there are any)."""
    from lmact.report.plots import write_report_plots

    written = write_report_plots(rows, curves, folder, option)
    if required and not written:
        raise LmactError("the selected runs have nothing to plot: plots need imitation "
                         "runs with normalized scores, or in-context RL runs")  # fmt: skip
    return written
