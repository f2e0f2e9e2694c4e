"""Reports of hostile stores: thousands of runs of one task (the paired comparisons must not
pair them all), names that matplotlib would read as mathtext, names with commas, names that
a spreadsheet would run as formulas, and names and completions holding terminal escapes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import CYCLER, Cycler, StubModel, copy_run

from lmact.cli import main
from lmact.demos import DemoStore
from lmact.models.base import ModelRequest, ModelResponse
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.text import visible

# Runs of one store: 10,000 runs hold 49,995,000 pairs.
MANY = 10_000
MATH = "$\\frac{$"  # unbalanced mathtext: matplotlib's parser fails on it
FORMULA = '=HYPERLINK("http://example.com","click")'
ESCAPES = ("\x1b[31m", "\x00", "\x07", "\u202e")


def _base_store(folder: Path) -> tuple[Path, str]:
    """A store with one Cycler run of tic-tac-toe (4 episodes) and its baselines."""
    path = folder / "runs.sqlite"
    with RunStore(path) as store:
        runner = Runner(store, DemoStore(folder / "demos"), progress=False)
        runner.policies.register(Cycler())
        try:
            config = make_config("tic_tac_toe", model=CYCLER, demos=1)
            runner.evaluate(config, 4)
        finally:
            runner.close()
    return path, config.run_id


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
    copy_run(path, run_id, 1, tag="esctask", task="red\x1b[31m")
    copy_run(path, run_id, 1, tag="escmodel", model="test/\u202eevil")
    return path


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
