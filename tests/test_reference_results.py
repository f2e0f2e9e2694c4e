"""The committed reference results (results/) are what the documented sweep gives: a slice
of tasks/sweeps/reference.toml (the scripted baselines on two tasks) played again from
scratch matches its committed rows exactly, and the committed files are what the README
and the report promise."""

from __future__ import annotations

import asyncio
import csv
from dataclasses import replace
from pathlib import Path

import pytest

from lmact.demos import DemoStore
from lmact.report.tables import report_rows
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.sweeps import load_sweep, play_sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SWEEP = ROOT / "tasks" / "sweeps" / "reference.toml"
SLICE_TASKS = {"tic_tac_toe", "grid_world"}
# What a scripted run's row holds that no machine or moment changes.
COMPARED = ["run_id", "task", "regime", "observation", "model", "episodes", "mean_return",
            "ci95_low", "ci95_high", "normalized_score", "illegal_rate", "invalid_rate",
            "empty_rate"]  # fmt: skip


def committed_rows() -> dict[str, dict[str, str]]:
    with (RESULTS / "report.csv").open(newline="") as file:
        return {row["run_id"]: row for row in csv.DictReader(file)}


def as_written(value: object) -> str:
    """A value as the CSV report writes it (csv's str of it; empty for None)."""
    return "" if value is None else str(value)


def test_a_slice_of_the_reference_sweep_played_again_matches_its_committed_rows(
    tmp_path: Path,
) -> None:
    sweep = load_sweep(SWEEP)
    scripted = [
        r for r in sweep.runs if r.config.model == "random" and r.config.task in SLICE_TASKS
    ]
    assert len(scripted) >= 4, "the reference sweep lost its scripted runs"
    sliced = replace(sweep, runs=scripted)
    with RunStore(tmp_path / "again.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        try:
            outcomes = asyncio.run(play_sweep(runner, sliced, lambda outcome: None))
        finally:
            runner.close()
        assert all(o.error is None for o in outcomes)
        rows = report_rows(store)
    committed = committed_rows()
    played = {row["run_id"] for row in rows}
    assert played == set(sliced.run_ids())  # the runs and the baselines they share
    for row in rows:
        assert row["run_id"] in committed, f"{row['model']} {row['task']} is not committed"
        again = {column: as_written(row.get(column)) for column in COMPARED}
        assert again == {column: committed[row["run_id"]][column] for column in COMPARED}


def test_the_committed_results_hold_what_the_readme_shows() -> None:
    committed = committed_rows()
    tasks = {row["task"] for row in committed.values()}
    assert {"chess", "crossword", "tic_tac_toe", "grid_world", "phoenix", "cheetah"} <= tasks
    assert {"bandit_easy", "bandit_hard"} <= tasks
    regimes = {row["regime"] for row in committed.values()}
    assert regimes == {"imitation", "replay", "icrl"}
    assert any(row["model"] == "local/gemma-3-270m" for row in committed.values())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(results/normalized-score.png)" in readme and "results/report.md" in readme
    for name in ("normalized-score.png", "report.md", "report.csv", "index.html"):
        assert (RESULTS / name).is_file(), name
    size = sum(path.stat().st_size for path in RESULTS.rglob("*") if path.is_file()
               and not path.name.endswith((".sqlite", ".sqlite-wal", ".sqlite-shm")))  # fmt: skip
    assert size < 5_000_000, f"results/ holds {size:,} bytes; keep it to a few MB"


@pytest.mark.parametrize("task", sorted(SLICE_TASKS))
def test_the_committed_markdown_table_agrees_with_the_csv(task: str) -> None:
    markdown = (RESULTS / "report.md").read_text(encoding="utf-8")
    for run_id, row in committed_rows().items():
        if row["task"] == task:
            assert f"| {run_id} |" in markdown


def test_the_committed_html_report_opens_offline_and_shows_the_figure() -> None:
    from browser import opened, pixel_colours

    with opened(RESULTS / "index.html") as browser:
        page = browser.page
        figure = page.locator('figure[data-figure="normalized-score"] img')
        assert figure.evaluate("image => image.complete && image.naturalWidth > 0")
        figure.scroll_into_view_if_needed()
        box = figure.bounding_box()
        assert box is not None
        region = (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                  int(box["y"] + min(box["height"], 800)))  # fmt: skip
        assert len(pixel_colours(page.screenshot(), region)) > 20  # drawn, not blank
        links = page.locator("td a[href^='runs/']")
        assert links.count() > 0
        for href in links.evaluate_all("links => links.map(link => link.getAttribute('href'))"):
            assert (RESULTS / href).is_file(), href  # every link has its committed page
        assert browser.console_errors == [] and browser.outside_requests == []
