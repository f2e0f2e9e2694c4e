"""Presets: the papers' protocols as options, each value with its source; a preset is
shorthand (the run it makes is the run of the options it resolves to), and options given
as well win, even when given at their default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import lmact

from lmact.errors import LmactError
from lmact.options import OPTIONS, read_run
from lmact.presets import apply_preset, presets, read_preset
from lmact.sweeps import load_sweep
from lmact.tasks import parse_task_options

PAPERS = ("Krishnamurthy", "Monea", "LMAct")
LMACT_TASKS = ("tic_tac_toe", "grid_world", "crossword", "chess", "cheetah", "phoenix")


def _as_run(name: str) -> dict[str, object]:
    """A preset's options, with a task where the preset leaves it to the user."""
    options = dict(presets()[name].options)
    options.setdefault("task", "classification")
    return options


def test_every_preset_reads_as_a_run_with_its_values_and_a_source_for_each() -> None:
    assert {name.split("-")[0] for name in presets()} == {p.lower() for p in PAPERS}
    names = set(presets())
    for level in ("hard", "easy"):
        assert {f"krishnamurthy-{level}", f"krishnamurthy-{level}-summary"} <= names
    for variant in ("naive", "naive-plus", "stochastic", "approximate", "upper-bound"):
        assert f"monea-{variant}" in names
    assert set(presets()["lmact"].tasks) == set(LMACT_TASKS)
    for name, preset in presets().items():
        for task in preset.tasks or [None]:
            options = preset.options_for(task)
            sources = preset.sources_for(task)
            assert set(sources) == set(options) and all(sources.values())
            given = {"task": task} if task else _task_of(name)
            read = read_run({"preset": name, "model": "random", **given})
            _check_landed(read, options)


def _check_landed(read: Any, options: dict[str, Any]) -> None:
    """Every option of a preset is what the run reads."""
    dumped = read.config.model_dump()
    for option, value in options.items():
        if option == "episodes":
            assert read.episodes == value
        elif option == "task_option":
            assert read.config.task_options == parse_task_options(value)
        elif (field := OPTIONS[option].target or option) in dumped:
            # A configuration leaves out what is at its default.
            kept = dumped[field] == value
            assert kept or (dumped[field] is None and OPTIONS[option].default == value)
        else:
            assert option == "regime" and read.config.regime == value


def _task_of(name: str) -> dict[str, str]:
    return {} if "task" in presets()[name].options else {"task": "classification"}


def test_a_preset_per_task_wants_one_of_its_tasks() -> None:
    with pytest.raises(LmactError, match="give --task, one of cheetah, chess"):
        read_run({"preset": "lmact", "task": "bandit_hard", "model": "random"})
    grid = read_run({"preset": "lmact", "task": "grid_world", "model": "random"}).config
    chess = read_run({"preset": "lmact", "task": "chess", "model": "random"}).config
    assert (grid.max_steps, chess.max_steps) == (25, 100)  # a task's own over the common
    assert grid.max_tokens == chess.max_tokens == 2048


def test_a_run_made_through_a_preset_is_the_run_made_by_hand() -> None:
    by_preset = read_run({"preset": "monea-naive-plus", "task": "classification"})
    by_hand = read_run(_as_run("monea-naive-plus"))
    assert by_preset.config == by_hand.config
    assert by_preset.config.run_id == by_hand.config.run_id
    assert by_preset.episodes == by_hand.episodes == 10_000


def test_options_given_win_over_the_preset_even_at_their_default(tmp_path: Path) -> None:
    # From Python or a sweep file: what is given is stated.
    values = apply_preset({"preset": "monea-naive", "temperature": 0.0, "task": "x"})
    assert values["temperature"] == 0.0 and values["variant"] == "naive"
    # On the command line, --temperature 0 is the default's value and still wins.
    common = ["--model", "ucb", "--replicates", "2", "--episodes", "3", "--store", "s.sqlite",
              "--cache-dir", "cache", "--json"]  # fmt: skip
    stated = lmact("run", "--preset", "krishnamurthy-hard", "--temperature", "1", *common,
                   cwd=tmp_path)  # fmt: skip
    default = lmact("run", "--preset", "krishnamurthy-hard", *common, cwd=tmp_path)
    by_hand = lmact("run", "--regime", "icrl", "--task", "bandit_hard", "--temperature", "1",
                    "--scenario", "buttons", *common, cwd=tmp_path)  # fmt: skip
    for done in (stated, default, by_hand):
        assert done.returncode == 0, done.stderr
    assert '"temperature": 1.0' in stated.stdout and '"temperature": 0.0' in default.stdout
    assert '"horizon": 3' in stated.stdout  # --episodes given: the preset's 100 gives way
    run_id = stated.stdout.split('"run_id": "')[1][:16]
    assert run_id in by_hand.stdout and run_id not in default.stdout


def test_presets_are_listed_and_shown_with_their_sources(tmp_path: Path) -> None:
    listed = lmact("presets", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [line.split(":")[0] for line in listed.stdout.splitlines()] == sorted(presets())
    shown = lmact("presets", "monea-stochastic", cwd=tmp_path)
    assert "--p-keep 0.1: the reference README" in shown.stdout
    assert "lmact run --regime icrl --variant stochastic --p-keep 0.1" in shown.stdout
    unknown = lmact("run", "--preset", "monea", "--task", "x", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown preset 'monea'" in unknown.stderr
    assert "monea-naive" in unknown.stderr and "Traceback" not in unknown.stderr


def test_a_sweep_file_takes_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(
        'name = "k"\n[base]\npreset = "krishnamurthy-hard"\nreplicates = 2\n'
        '[axes]\nmodel = ["ucb", "greedy"]\n'
    )
    runs = load_sweep(path).runs
    assert [run.config.model for run in runs] == ["ucb", "greedy"]
    assert all(run.config.task == "bandit_hard" and run.episodes == 100 for run in runs)


def test_a_damaged_preset_is_one_line_naming_its_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('description = "d"\npaper = "p"\n[options]\ntemperature = 1.0\n[source]\n')
    with pytest.raises(LmactError, match=r"mine\.toml.*no source for temperature") as caught:
        read_preset(path)
    assert "\n" not in str(caught.value)
    path.write_text("description = \n")
    with pytest.raises(LmactError, match=r"mine\.toml"):
        read_preset(path)
    with pytest.raises(LmactError, match="preset takes a preset's name"):
        apply_preset({"preset": 3})
