"""Sweep files that lie (issue 19): a grid too large to expand, option names shortened or
mistyped, exclusions that exclude nothing, a file that can be read only once. Each is
refused in one line naming the file, the table and the key, before anything is expanded,
stored or played; what is accepted is used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmact import cli, sweeps
from lmact.errors import LmactError
from lmact.options import read_run
from lmact.sweeps import (
    MAX_FILE_BYTES,
    MAX_GRID_RUNS,
    load_sweep,
    process_settings,
    read_sweep_file,
)

BASE = 'name = "x"\n[base]\ntask = "tic_tac_toe"\nepisodes = 1\n'


def write(folder: Path, text: str) -> Path:
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    """`lmact sweep FILE --dry-run`'s one line of error; nothing stored."""
    path = write(tmp_path, text)
    code = cli.main(["sweep", str(path), "--dry-run", "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert str(path) in err and not (tmp_path / "s.sqlite").exists()
    return err


def test_a_grid_above_the_bound_is_refused_before_it_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(axes: object) -> None:
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(sweeps, "_grid_points", never)
    axes = "".join(f"{name} = {list(range(1000))}\n" for name in ("seed", "demos", "max_steps"))
    path = write(tmp_path, BASE + "[axes]\n" + axes)  # 3 kB, a billion runs
    with pytest.raises(LmactError) as refused:
        read_sweep_file(path)
    message = str(refused.value)
    assert "1,000,000,000" in message and f"{MAX_GRID_RUNS:,}" in message


def test_the_bound_counts_the_axes_product_and_the_extra_runs(tmp_path: Path) -> None:
    side = int(MAX_GRID_RUNS**0.5)
    assert side * side == MAX_GRID_RUNS  # the grid below is exactly at the bound
    grid = BASE + f"[axes]\nseed = {list(range(side))}\ndemos = {list(range(side))}\n"
    assert len(read_sweep_file(write(tmp_path, grid)).runs) == MAX_GRID_RUNS
    with pytest.raises(LmactError, match=f"{MAX_GRID_RUNS + 1:,}"):
        read_sweep_file(write(tmp_path, grid + "[[runs]]\nseed = 7\n"))


def test_an_oversized_grid_is_one_line_from_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An unknown task: were the grid expanded, its first run would be refused instead.
    text = 'name = "x"\n[base]\ntask = "checkers"\n[axes]\n'
    text += f"seed = {list(range(101))}\ndemos = {list(range(100))}\n"
    err = refusal(tmp_path, text, capsys)
    assert "10,100" in err and f"{MAX_GRID_RUNS:,}" in err and "checkers" not in err


def table(where: str, body: str) -> str:
    """A sweep file whose table `where` holds `body` (BASE ends in its [base])."""
    return BASE + body if where == "[base]" else f"{BASE}{where}\n{body}"


@pytest.mark.parametrize(
    ("where", "body", "key", "meant"),
    [
        ("[base]", 'base_ur = "http://127.0.0.1:9/v1"\n', "base_ur", "base_url"),
        ("[axes]", "timeou = [1, 500]\n", "timeou", "timeout"),
        ("[axes]", "episode = [1, 2]\n", "episode", "episodes"),
        ("[[runs]]", "demo_poo = 3\n", "demo_poo", "demo_pool"),
        ("[base]", "colour = 1\n", "colour", None),
    ],
)
def test_a_shortened_or_mistyped_option_is_refused_with_the_name_meant(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    body: str,
    key: str,
    meant: str | None,
) -> None:
    err = refusal(tmp_path, table(where, body), capsys)
    assert f"{where} {key}" in err
    assert meant is None or f"did you mean {meant}?" in err


AXES = "[axes]\nmodel = ['random', 'expert']\ndemos = [0, 1]\n"


@pytest.mark.parametrize(
    ("where", "body", "key"),
    [
        ("[[exclude]]", "modle = 'random'\n", "modle"),  # mistyped
        ("[[exclude]]", "task = 'tic_tac_toe'\n", "task"),  # a [base] option, not an axis
        ("[[exclude]]", "demos = 3\n", "demos"),  # not on the axis
        ("[[exclude]]", "", ""),  # would exclude every point
        ("[base]", "dry_run = true\n", "dry_run"),
        ("[base]", "json = true\n", "json"),
        ("[[runs]]", "restart = true\n", "restart"),
        ("[[runs]]", "threads = 2\n", "threads"),  # of the process: [base] only
        ("[[runs]]", "token-budget = 100\ntoken_budget = 200\n", "token_budget"),
        ("[[runs]]", "seed = [1, 2]\n", "seed"),  # several values go in [axes]
        ("[[runs]]", "seed = 1970-01-01\n", "seed"),
    ],
)
def test_a_key_that_would_do_nothing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, body: str, key: str
) -> None:
    text = BASE + body + AXES if where == "[base]" else f"{BASE}{AXES}{where}\n{body}"
    err = refusal(tmp_path, text, capsys)
    assert f"{where} {key}" in err


def test_a_base_option_every_run_takes_from_elsewhere_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE + "demos = 2\n[axes]\ndemos = [0, 1]\nmodel = ['random']\n"
    err = refusal(tmp_path, text, capsys)
    assert "[base]" in err and "demos" in err
    # A [[runs]] that does not set it takes the base's: then it is used.
    sweep = read_sweep_file(write(tmp_path, text + "[[runs]]\nseed = 5\n"))
    assert [run["demos"] for run in sweep.runs] == [0, 1, 2]


def test_the_exact_names_are_used(tmp_path: Path) -> None:
    text = BASE + 'model = "random"\nbase_url = "http://127.0.0.1:9/v1"\ntimeout = 500\n'
    text += "[axes]\nseed = [1, 2]\n[[exclude]]\nseed = 2\n"
    read = read_sweep_file(write(tmp_path, text))
    settings = process_settings(read)
    assert settings.model.base_url == "http://127.0.0.1:9/v1" and settings.model.timeout_s == 500
    assert [run.config.seed for run in load_sweep(read).runs] == [1]


def test_run_options_are_exact_names_and_values(tmp_path: Path) -> None:
    with pytest.raises(LmactError, match="did you mean episodes"):  # not taken for episodes
        read_run({"task": "tic_tac_toe", "model": "random", "episode": 1})
    for value in (True, "1", 1.0):  # a TOML value of another type is no count
        with pytest.raises(LmactError, match="episodes takes an integer"):
            read_run({"task": "tic_tac_toe", "model": "random", "episodes": value})
    with pytest.raises(LmactError, match="no_past_actions takes true or false, not 1"):
        read_run({"task": "tic_tac_toe", "no_past_actions": 1})
    # A value that looks like a flag is a value.
    assert read_run({"task": "tic_tac_toe", "model": "-x"}).config.model == "-x"


def test_a_file_too_large_or_nested_too_deeply_is_refused(tmp_path: Path) -> None:
    padding = ("# " + "x" * 98 + "\n") * (MAX_FILE_BYTES // 100 + 1)
    with pytest.raises(LmactError, match="larger than"):
        read_sweep_file(write(tmp_path, 'name = "x"\n' + padding))
    with pytest.raises(LmactError, match="nested"):
        read_sweep_file(write(tmp_path, 'name = "x"\n[base]\nseed = ' + "[" * 5000))


def test_a_sweep_read_from_standard_input_is_read_once(tmp_path: Path) -> None:
    text = BASE + "[axes]\nmodel = ['random', 'expert']\n"
    done = subprocess.run(
        [sys.executable, "-m", "lmact.cli", "sweep", "/dev/stdin", "--dry-run",
         "--store", "s.sqlite"],
        input=text, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sweep x, 2 runs" in done.stdout and "no model was called" in done.stdout
