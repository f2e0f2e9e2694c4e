"""Reports of hostile stores: thousands of runs of one task (the paired comparisons must not
pair them all), names that matplotlib would read as mathtext, names with commas, names that
a spreadsheet would run as formulas, and names and completions holding terminal escapes."""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
import shutil
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from helpers import CYCLER, StubModel, copy_run, cycler_store, measured_lmact

from lmact.cli import main
from lmact.demos import DemoStore
from lmact.models.base import ModelRequest, ModelResponse
from lmact.regimes.imitation import make_config
from lmact.report import compare
from lmact.report.compare import (
    MAX_KIND_PAIRS,
    PAIRED_BY,
    SETTINGS,
    comparison_rows,
    find_comparisons,
    find_pairs,
)
from lmact.report.plots import (
    MAX_LEGEND,
    MAX_PANELS,
    MAX_SERIES,
    bandit_figure,
    learning_curve_figures,
    report_figures,
)
from lmact.report.tables import csv_cell, curve_rows, format_table, report_rows
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.text import visible

# Runs of one store: 10,000 runs hold 49,995,000 pairs.
MANY = 10_000
MATH = "$\\frac{$"  # unbalanced mathtext: matplotlib's parser fails on it
FORMULA = '=HYPERLINK("http://example.com","click")'
ESCAPES = ("\x1b[31m", "\x00", "\x07", "\u202e")


def _base_store(folder: Path) -> tuple[Path, str]:
    path = folder / "runs.sqlite"
    return path, cycler_store(path, folder / "demos")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMACT_CACHE_DIR", str(folder / "cache"))
        return _base_store(folder)


def _copy_of(base: tuple[Path, str], folder: Path) -> tuple[Path, str]:
    path = folder / "runs.sqlite"
    shutil.copy(base[0], path)
    return path, base[1]


def _report(capsys: pytest.CaptureFixture[str], store: Path, *args: str) -> str:
    code = main(["report", "--store", str(store), *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def named(base: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base store with copies of its run: a model named MATH, a task named MATH (a task
    given by a path, or of a dataset, may be named anything), a task with a comma and one
    that is a formula, and a model and a task holding terminal escapes."""
    path, run_id = _copy_of(base, tmp_path_factory.mktemp("named"))
    copy_run(path, run_id, 1, tag="math", model=f"test/{MATH}")
    copy_run(path, run_id, 1, tag="mathtask", task=MATH)
    copy_run(path, run_id, 1, tag="comma", task="odd,name")
    copy_run(path, run_id, 1, tag="other", model="test/other")
    copy_run(path, run_id, 1, tag="formula", task=FORMULA, model="@SUM(1+1)")
    copy_run(path, run_id, 1, tag="esctask", task="red\x1b[31m")
    copy_run(path, run_id, 1, tag="escmodel", model="test/\u202eevil")
    return path


# --- Thousands of runs: the paired comparisons look at kinds of runs, not pairs ------------


def _brute_force(
    played: list[dict[str, Any]], seeds: list[frozenset[int]], limit: int
) -> tuple[list[tuple[int, int]], int]:
    """Every pair, as the report paired them before: sorted by the options that differ (a
    stable sort: table order breaks ties), those sharing a seed, the first `limit`."""
    pairs = [
        (a, b)
        for a, b in itertools.combinations(range(len(played)), 2)
        if all(played[a].get(name) == played[b].get(name) for name in PAIRED_BY)
    ]
    pairs.sort(key=lambda p: sum(played[p[0]].get(n) != played[p[1]].get(n)
                                 for n in ("model", *SETTINGS)))  # fmt: skip
    sharing = [(a, b) for a, b in pairs if seeds[a] & seeds[b]]
    return sharing[:limit], len(sharing) - len(sharing[:limit])


def test_the_pairs_found_by_kind_are_those_of_every_pair_in_the_same_order() -> None:
    draw = random.Random(19)
    for _ in range(400):
        runs = draw.randint(0, 24)
        played = [
            {"task": "t", "regime": draw.choice(["imitation", "icrl"]),
             "observation": draw.choice(["txt", "png"]), "model": draw.choice("xyz"),
             "demos": draw.choice([0, 1, 2]), "history": draw.choice([None, "raw"])}
            for _ in range(runs)
        ]  # fmt: skip
        seeds = [frozenset(draw.sample(range(6), draw.randint(0, 3))) for _ in range(runs)]
        limit = draw.randint(1, 15)
        found = find_pairs(played, seeds, limit)
        assert (found.shown, found.left_off) == _brute_force(played, seeds, limit)
        assert found.counted


def _runs(count: int, **varying: Any) -> list[dict[str, Any]]:
    return [
        {"run_id": f"r{i}", "task": "t", "regime": "imitation", "observation": "txt",
         "model": "m", "demos": 1, **{name: value(i) for name, value in varying.items()}}
        for i in range(count)
    ]  # fmt: skip


def test_ten_thousand_runs_alike_are_one_kind_and_their_pairs_are_counted_not_built() -> None:
    found = find_pairs(_runs(MANY), [frozenset(range(4))] * MANY, limit=12)
    assert found.shown == [(0, j) for j in range(1, 13)]
    assert found.left_off == MANY * (MANY - 1) // 2 - 12 and found.counted
    assert found.examined == 1  # one kind, paired with itself; one set of seeds


def test_ten_thousand_models_on_the_same_seeds_are_looked_at_within_the_budget() -> None:
    tracemalloc.start()
    try:
        found = find_pairs(_runs(MANY, model=str), [frozenset(range(4))] * MANY, limit=12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30_000_000  # a pair of kinds merged only if its first pair can be shown
    assert found.shown == [(0, j) for j in range(1, 13)]  # one option (the model) differs
    assert found.left_off == MANY * (MANY - 1) // 2 - 12 and found.counted
    assert found.examined <= MAX_KIND_PAIRS + 1


def test_ten_thousand_runs_on_disjoint_seeds_stop_counting_at_the_budget() -> None:
    seeds = [frozenset({i}) for i in range(MANY)]
    found = find_pairs(_runs(MANY, model=str), seeds, limit=12, budget=1000)
    assert found.shown == [] and found.left_off == 0
    assert not found.counted and found.examined <= 2000
    section = compare.comparison_section([{"task": "t"}], 5, counted=False)
    assert "More pairs (at least 5) left out" in section


@pytest.fixture(scope="module")
def many_runs(base: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base store with 1,999 copies of its run: 2,000 runs of one task."""
    path, run_id = _copy_of(base, tmp_path_factory.mktemp("many"))
    copy_run(path, run_id, 1999)
    return path


def test_the_comparisons_of_two_thousand_runs_hold_little_memory(
    many_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RunStore(many_runs) as store:
        rows = report_rows(store)
        compared: list[str] = []
        paired_comparison = compare.paired_comparison

        def counted(*args: Any) -> Any:
            compared.append("one")
            return paired_comparison(*args)

        monkeypatch.setattr(compare, "paired_comparison", counted)
        tracemalloc.start()
        try:
            shown, left_off = comparison_rows(store, rows)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # Every pair built (1,999,000), as before, held over 100 MB.
        assert peak < 20_000_000
        assert len(shown) == len(compared) == 12 and left_off == 2000 * 1999 // 2 - 12
        monkeypatch.undo()
        found = find_comparisons(store, rows)
    assert found.rows == shown and found.counted and found.examined == 1


def _measured_report(store: Path, *args: str) -> tuple[str, int]:
    """`lmact report` in a process of its own: its output and its peak memory in bytes."""
    done, peak = measured_lmact("report", "--store", str(store), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout, peak


@pytest.mark.slow
def test_a_report_of_ten_thousand_runs_in_every_format_holds_modest_memory(
    base: tuple[Path, str], tmp_path: Path
) -> None:
    store, run_id = _copy_of(base, tmp_path)
    copy_run(store, run_id, MANY - 1)
    peaks = {}
    markdown, peaks["md"] = _measured_report(store)
    pairs = MANY * (MANY - 1) // 2
    assert f"\n{pairs - 12} more pairs left out;" in markdown
    table, peaks["csv"] = _measured_report(store, "--format", "csv")
    assert len(table.splitlines()) == MANY + 3  # a header, the runs and their 2 baselines
    records, peaks["json"] = _measured_report(store, "--format", "json")
    assert len(json.loads(records)) == MANY + 2
    html = ["--format", "html", "--out", str(tmp_path / "html"), "--cache-dir", str(base[0].parent)]
    _, peaks["html"] = _measured_report(store, *html)
    assert len(list((tmp_path / "html" / "runs").iterdir())) == 100  # MAX_VIEWER_PAGES
    # Every pair built, as before, took 3.5 GB and more; a row per run is a few kB.
    assert max(peaks.values()) < 800_000_000, peaks


# --- Names drawn as they are written: a `$` is no mathtext ---------------------------------


def _texts(figure: Any) -> list[str]:
    from matplotlib.text import Text

    figure.canvas.draw()  # mathtext would fail here
    return [text.get_text() for text in figure.findobj(Text)]


def test_a_name_with_dollars_goes_through_every_report_format(
    named: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert MATH in _report(capsys, named, "--format", "md")
    assert MATH in _report(capsys, named, "--format", "csv")
    assert json.dumps(MATH) in _report(capsys, named, "--format", "json")
    written = _report(capsys, named, "--plot", str(tmp_path / "plots"))
    assert list((tmp_path / "plots").glob("*.png")) and written
    page = _report(capsys, named, "--format", "html", "--out", str(tmp_path / "html"),
                   "--view-episodes", "0")  # fmt: skip
    assert MATH in (tmp_path / "html" / "index.html").read_text() and page


def test_the_figures_draw_a_name_with_dollars_as_written(named: Path) -> None:
    with RunStore(named) as store:
        rows = report_rows(store)
    figures = report_figures(rows, curve_rows(rows))
    texts = [text for figure in figures.values() for text in _texts(figure)]
    assert f"test/{MATH} (txt)" in texts  # a legend label: the model
    assert MATH in texts  # a panel's title: the task
    icrl = [{"regime": "icrl", "task": MATH, "model": f"test/{MATH}", "variant": "naive",
             "history": "raw", "regret": 1.0, "run_id": "r"}]  # fmt: skip
    bars = _texts(bandit_figure(icrl))
    assert f"test/{MATH} (naive, raw)" in bars and MATH in bars  # a tick label, the title
    curve = [{**icrl[0], "episode": e, "mean": 0.5, "low": 0.0, "high": 1.0} for e in range(3)]
    (figure,) = learning_curve_figures(curve).values()
    assert f"{MATH}: in-context RL, over replicates" in _texts(figure)


def test_a_figure_of_a_thousand_models_draws_a_bounded_number_of_lines_and_says_so() -> None:
    rows = [{"run_id": f"r{i}", "task": f"t{i % 30}", "regime": "imitation", "observation": "txt",
             "model": f"m{i:04d}", "demos": 1, "normalized_score": 0.5, "normalized_low": 0.0,
             "normalized_high": 1.0, "illegal_rate": 0.1, "invalid_rate": 0.0, "regret": 1.0,
             "variant": "naive", "history": "raw"} for i in range(3000)]  # fmt: skip
    figure = report_figures(rows, [])["normalized-score"]
    assert len(figure.axes) == MAX_PANELS  # of 30 tasks
    assert f"(the first {MAX_PANELS} of 30 tasks)" in figure.get_suptitle()
    for axes in figure.axes:  # two reference lines, a line per model, the note
        assert len(axes.lines) == MAX_SERIES + 3
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert len(legend) == MAX_LEGEND and legend[-1].startswith("… ")
    assert "t0: 60 more lines not drawn (the table has every run)" in _texts(figure)
    bars = bandit_figure([{**row, "regime": "icrl"} for row in rows if row["task"] == "t0"])
    assert len(bars.axes[0].patches) == MAX_SERIES
    assert bars.axes[0].get_xlabel().endswith("the first 40 of 100 runs")
    curves = [{"run_id": f"r{i}", "task": "t", "model": f"m{i:02d}", "variant": "naive",
               "history": "raw", "episode": 0, "mean": 0.5, "low": 0.0, "high": 1.0}
              for i in range(50)]  # fmt: skip
    (curve,) = learning_curve_figures(curves).values()
    assert len(curve.axes[0].lines) == MAX_SERIES + 1
    assert "t: 10 more runs not drawn (the table has every run)" in _texts(curve)


# --- A name with a comma -------------------------------------------------------------------


def _tasks_and_models(table: str) -> list[tuple[str, str]]:
    return [(row["task"], row["model"]) for row in csv.DictReader(io.StringIO(table))]


def test_a_task_named_with_a_comma_is_selected_whole_and_comma_lists_still_work(
    named: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alone = _report(capsys, named, "--format", "csv", "--task", "odd,name")
    assert _tasks_and_models(alone) == [("odd,name", CYCLER)]
    both = _report(capsys, named, "--format", "csv", "--task", "odd,name", "--task", MATH)
    assert sorted(_tasks_and_models(both)) == sorted([("odd,name", CYCLER), (MATH, CYCLER)])
    listed = _report(capsys, named, "--format", "csv", "--model", f"test/other, {CYCLER}",
                     "--task", "tic_tac_toe")  # fmt: skip
    assert sorted(m for _, m in _tasks_and_models(listed)) == [CYCLER, "test/other"]
    assert main(["report", "--store", str(named), "--task", "odd"]) == 2
    assert "no run of task 'odd'" in capsys.readouterr().err


# --- Formulas in CSV -------------------------------------------------------------------------


def test_csv_text_cells_that_start_as_formulas_are_quoted_and_numbers_stay_numbers(
    named: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = list(csv.DictReader(io.StringIO(_report(capsys, named, "--format", "csv"))))
    (row,) = [row for row in rows if row["model"].endswith("SUM(1+1)")]
    assert row["task"] == "'" + FORMULA and row["model"] == "'@SUM(1+1)"
    table = format_table(
        [{"run_id": "r", "task": text, "model": "m", "mean_return": -0.25, "cost_usd": -1.5}
         for text in ("=1+1", "+1", "-1", "@A1", "\tx", "\rx", "plain", "a=b")],
        "csv",
    )  # fmt: skip
    cells = list(csv.DictReader(io.StringIO(table)))
    assert [cell["task"] for cell in cells] == ["'=1+1", "'+1", "'-1", "'@A1", "'\tx",
                                                "'\\x0dx", "plain", "a=b"]  # fmt: skip
    assert {cell["mean_return"] for cell in cells} == {"-0.25"}
    assert {cell["cost_usd"] for cell in cells} == {"-1.5"}
    assert csv_cell(-0.25) == -0.25 and csv_cell(None) is None


# --- Terminal escapes --------------------------------------------------------------------------


def _raw(text: str) -> list[str]:
    return [escape for escape in (*ESCAPES, "\x1b", "\u202e") if escape in text]


def test_visible_writes_controls_and_bidirectional_overrides_as_escapes() -> None:
    assert visible("a\x1b[31mb\x00c\x07d\u202ee\x7f\x9b\u2066") == (
        "a\\x1b[31mb\\x00c\\x07d\\u202ee\\x7f\\x9b\\u2066"
    )
    assert visible("one\ntwo\tthree\r") == "one\\x0atwo\\x09three\\x0d"
    assert visible("one\ntwo\tthree\r", keep="\n\t") == "one\ntwo\tthree\\x0d"
    assert visible("plain, ünïcödé — ✓") == "plain, ünïcödé — ✓"


def test_names_with_escapes_are_shown_escaped_in_the_markdown_report_and_compare(
    base: tuple[Path, str], named: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    markdown = _report(capsys, named)
    assert not _raw(markdown)
    assert "red\\x1b[31m" in markdown and "test/\\u202eevil" in markdown
    cycler = base[1]  # the run the others are copies of
    evil_model, evil_task = f"{cycler}-escmodel00001", f"{cycler}-esctask00001"
    assert main(["compare", evil_model, cycler, "--store", str(named)]) == 0
    compared = capsys.readouterr().out
    assert not _raw(compared) and "test/\\u202eevil" in compared
    assert main(["compare", evil_task, cycler, "--store", str(named)]) == 2
    refused = capsys.readouterr().err
    assert not _raw(refused) and "red\\x1b[31m" in refused


def test_output_to_a_terminal_is_escaped_and_to_a_file_kept_as_stored(
    named: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _report(capsys, named, "--format", "csv")
    assert "red\x1b[31m" in table  # CSV is data: a file or a pipe gets the name as stored

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["report", "--store", str(named), "--format", "csv"]) == 0
    shown = terminal.getvalue()
    assert not _raw(shown) and "red\\x1b[31m" in shown and "\n" in shown


class Escaper(StubModel):
    """Answers with terminal escapes, a NUL and a bidirectional override around a move."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        text = "\x1b[31mb2\x00\x07\u202e" + "\x1b]0;owned\x07"
        return ModelResponse(text=text, prompt_tokens=5, completion_tokens=1)


def test_view_to_stdout_shows_a_completions_escapes_written_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_path = tmp_path / "runs.sqlite"
    with RunStore(store_path) as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        runner.policies.register(Escaper("test/escaper"))
        try:
            config = make_config("tic_tac_toe", model="test/escaper", demos=0)
            runner.run(config, 1)
        finally:
            runner.close()
        (step, *_) = store.steps(config.run_id)
    assert all(escape in step.completion for escape in ESCAPES)  # stored as answered
    code = main(["view", config.run_id, "--out", "-", "--store", str(store_path),
                 "--cache-dir", str(tmp_path)])  # fmt: skip
    page = capsys.readouterr().out
    assert code == 0 and page.startswith("<!doctype html>")
    assert not _raw(page)
    assert "\\x1b[31mb2\\x00\\x07\\u202e" in page
    # A page written to a file (or served, or in an HTML report) shows them written out too.
    code = main(["view", config.run_id, "--out", str(tmp_path / "page.html"), "--store",
                 str(store_path), "--cache-dir", str(tmp_path)])  # fmt: skip
    written = (tmp_path / "page.html").read_text()
    assert code == 0 and not _raw(written)
    assert "\\x1b[31mb2\\x00\\x07\\u202e" in written


def test_a_runs_progress_line_shows_a_model_names_escapes_written_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=True)
        runner.policies.register(Escaper("test/\x1b[2Jclear"))
        try:
            runner.run(make_config("tic_tac_toe", model="test/\x1b[2Jclear", demos=0), 1)
        finally:
            runner.close()
    progress = capsys.readouterr().err
    assert "test/\\x1b[2Jclear" in progress and "\x1b[2J" not in progress


def test_a_sweep_named_with_escapes_prints_them_written_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('name = "evil\\u001b[2J\\u202e"\n[base]\ntask = "tic_tac_toe"\n'
                     'episodes = 1\n[axes]\nmodel = ["random", "expert"]\n')  # fmt: skip
    code = main(["sweep", str(sweep), "--store", str(tmp_path / "runs.sqlite"),
                 "--cache-dir", str(tmp_path)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "sweep evil\\x1b[2J\\u202e: 2 runs" in captured.out
    assert "sweep evil\\x1b[2J\\u202e: 1/2 runs finished" in captured.err
    assert not _raw(captured.out) and not _raw(captured.err)
