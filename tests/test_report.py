"""`lmact report`: tables of a store with runs of every regime (grouping, filters, formats)
and each plot's series read back from its figure, checked against the rows."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import CYCLER, TIC_TAC_TOE_DEMOS, store_of_every_regime

from lmact.cli import main
from lmact.report.markdown import markdown_report
from lmact.report.plots import (
    DEMOS_LABEL,
    answer_rate_figure,
    bandit_figure,
    normalized_score_figure,
    report_figures,
)
from lmact.report.tables import (
    COLUMNS,
    carrying_columns,
    curve_rows,
    report_rows,
    select_rows,
)
from lmact.scoring import normalized_interval
from lmact.store import RunStore


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMACT_CACHE_DIR", str(folder / "cache"))
        return store_of_every_regime(folder)


@pytest.fixture(scope="module")
def rows(store_path: Path) -> list[dict[str, Any]]:
    with RunStore(store_path) as store:
        return report_rows(store)


@pytest.fixture
def figures(rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield report_figures(rows, curve_rows(rows))


def _report(store_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["report", "--store", str(store_path), *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _row(rows: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    (row,) = [r for r in rows if all(r.get(k) == v for k, v in fields.items())]
    return row


def test_the_rows_hold_every_regime_with_the_columns_that_mean_something_for_it(
    rows: list[dict[str, Any]],
) -> None:
    assert {row["regime"] for row in rows} == {"imitation", "replay", "icrl"}
    budget = _row(rows, task="grid_world", token_budget=4000)
    assert budget["demos"] >= 1  # what the budget packed
    counted = _row(rows, task="tic_tac_toe", model=CYCLER, demos=2)
    assert counted["token_budget"] is None
    assert counted["normalized_low"] <= counted["normalized_score"] <= counted["normalized_high"]
    assert counted["illegal_rate"] > 0 and counted["invalid_rate"] <= counted["illegal_rate"]
    ucb1 = _row(rows, regime="icrl", model="ucb1")
    assert ucb1["history"] == "raw" and ucb1["variant"] == "naive"
    assert ucb1["regret_low"] <= ucb1["regret"] <= ucb1["regret_high"]
    assert _row(rows, regime="replay", model="random")["demos"] == 1


def test_markdown_is_grouped_by_task_and_md_is_its_alias(
    store_path: Path, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    markdown = _report(store_path, capsys, "--format", "md")
    # The tables, then the paired comparisons of runs sharing seeds (tests/test_compare.py).
    markdown, comparisons, _ = markdown.partition("\n## Paired comparisons\n")
    assert markdown == markdown_report(rows) and comparisons
    sections = markdown.split("### ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["tic_tac_toe", "grid_world", "bandit_hard"]
    for section in sections:
        task = section.splitlines()[0]
        group = [row for row in rows if row["task"] == task]
        # First the pivot of each regime's score, then a table of runs per regime.
        pivot_at = section.index("**imitation: normalized score") if task != "bandit_hard" else (
            section.index("**icrl: final measures**")
        )  # fmt: skip
        assert pivot_at < section.index(" runs**")
        for regime in {row["regime"] for row in group}:
            table = section.split(f"**{regime} runs**\n\n")[1].split("\n\n")[0].splitlines()
            same = [row for row in group if row["regime"] == regime]
            shown = carrying_columns(same)
            assert table[0] == "| " + " | ".join(shown) + " |"
            assert len(table) == 2 + len(same)
            # Only columns that carry a value: none is empty in every row.
            assert set(shown) < set(COLUMNS) and all(
                any(row.get(column) is not None for row in same) for column in shown
            )
    one_task = _report(store_path, capsys, "--task", "bandit_hard")
    assert one_task.startswith("### bandit_hard\n\n**icrl: final measures**")
    # CSV keeps every column.
    assert _report(store_path, capsys, "--format", "csv").startswith(",".join(COLUMNS) + "\n")


def test_task_and_model_filters_take_repeats_and_comma_lists(
    store_path: Path, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    out = _report(store_path, capsys, "--format", "csv", "--task", "tic_tac_toe,grid_world",
                  "--model", CYCLER, "--model", "expert")  # fmt: skip
    chosen = list(csv.DictReader(io.StringIO(out)))
    assert {(r["task"], r["model"]) for r in chosen} == {
        (task, model) for task in ("tic_tac_toe", "grid_world") for model in (CYCLER, "expert")
    }
    assert main(["report", "--store", str(store_path), "--model", f"{CYCLER},typo"]) == 2
    assert "no run of model 'typo' in the store (models: expert, greedy" in capsys.readouterr().err
    assert len(chosen) == len(select_rows(rows, tasks=["tic_tac_toe", "grid_world"],
                                          models=[CYCLER, "expert"]))  # fmt: skip
    assert [r["task"] for r in chosen] == sorted((r["task"] for r in chosen), reverse=True)


def test_json_gives_the_rows_and_each_runs_episode_records(
    store_path: Path, rows: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    records = json.loads(_report(store_path, capsys, "--format", "json"))
    assert sorted(r["run_id"] for r in records) == sorted(r["run_id"] for r in rows)
    by_id = {row["run_id"]: row for row in rows}
    for record in records:
        episodes = record.pop("episode_records")
        assert record == json.loads(json.dumps(by_id[record["run_id"]]))
        assert len(episodes) == record["episodes"]
        assert {"episode", "seed", "total_return", "prompt_tokens"} <= set(episodes[0])
    ucb1 = next(r for r in records if r["model"] == "ucb1")
    assert len(ucb1["learning_curve"]) == 20


def test_the_normalized_score_figure_draws_each_line_band_and_baseline(
    rows: list[dict[str, Any]],
) -> None:
    figure = normalized_score_figure(rows)
    assert figure is not None
    panels = {axes.get_title(): axes for axes in figure.axes}
    assert set(panels) == {"tic_tac_toe", "grid_world"}
    tic = panels["tic_tac_toe"]
    assert tic.get_xscale() == "symlog" and tic.get_xlabel() == DEMOS_LABEL
    assert "normalized score" in tic.get_ylabel()
    lines = {line.get_label(): line for line in tic.get_lines()}
    assert set(lines) == {f"{CYCLER} (txt)", "expert (1)", "random (0)"}
    assert list(lines["expert (1)"].get_ydata()) == [1, 1]
    assert list(lines["random (0)"].get_ydata()) == [0, 0]
    expected = sorted((r for r in rows if r["task"] == "tic_tac_toe" and r["model"] == CYCLER),
                      key=lambda r: r["demos"])  # fmt: skip
    line = lines[f"{CYCLER} (txt)"]
    assert list(line.get_xdata()) == list(TIC_TAC_TOE_DEMOS)
    assert list(line.get_ydata()) == [r["normalized_score"] for r in expected]
    (band,) = tic.collections
    vertices = band.get_paths()[0].vertices
    for row in expected:
        at = vertices[np.isclose(vertices[:, 0], row["demos"])][:, 1]
        assert min(at) == pytest.approx(row["normalized_low"])
        assert max(at) == pytest.approx(row["normalized_high"])
    assert [tick.get_text() for tick in tic.get_xticklabels()] == ["0", "1", "2"]


def test_a_line_per_model_and_format_split_by_an_option_that_differs(
    rows: list[dict[str, Any]],
) -> None:
    figure = normalized_score_figure(rows)
    assert figure is not None
    grid = next(axes for axes in figure.axes if axes.get_title() == "grid_world")
    drawn = {line.get_label(): list(line.get_xdata()) for line in grid.get_lines()}
    budget = _row(rows, task="grid_world", token_budget=4000)["demos"]
    assert drawn == {
        f"{CYCLER} (txt, chosen_by=count)": [0, 2],
        f"{CYCLER} (txt, chosen_by=token budget)": [budget],
        f"{CYCLER} (coords, chosen_by=count)": [1],
        "expert (1)": [0, 1],
        "random (0)": [0, 1],
    }
    colours = {line.get_color() for line in grid.get_lines() if CYCLER in line.get_label()}
    assert len(colours) == 1  # a colour per model; formats differ by marker and style


@pytest.mark.parametrize("rate", ["illegal_rate", "invalid_rate"])
def test_the_answer_rate_figures_follow_the_rows(rows: list[dict[str, Any]], rate: str) -> None:
    figure = answer_rate_figure(rows, rate)
    assert figure is not None
    (tic,) = [axes for axes in figure.axes if axes.get_title() == "tic_tac_toe"]
    (line,) = tic.get_lines()
    expected = sorted((r for r in rows if r["task"] == "tic_tac_toe" and r["model"] == CYCLER),
                      key=lambda r: r["demos"])  # fmt: skip
    assert list(line.get_ydata()) == [r[rate] for r in expected]
    assert tic.get_xscale() == "symlog" and tic.get_ylim() == (-0.03, 1.03)
    assert rate.removesuffix("_rate") in tic.get_ylabel()


@pytest.mark.parametrize("measure", ["regret", "suffix_failure"])
def test_the_bandit_bars_and_intervals_follow_the_rows(
    rows: list[dict[str, Any]], measure: str
) -> None:
    figure = bandit_figure(rows, measure)
    assert figure is not None
    (axes,) = figure.axes
    assert axes.get_title() == "bandit_hard"
    labels = [tick.get_text() for tick in axes.get_xticklabels()]
    models = [label.split(" (")[0] for label in labels]
    assert models == ["expert", "greedy", "random", "ucb1"]
    expected = [_row(rows, regime="icrl", model=model) for model in models]
    assert [bar.get_height() for bar in axes.patches] == [r[measure] for r in expected]
    (errors,) = [c for c in axes.containers if hasattr(c, "has_yerr")]
    segments = errors.lines[2][0].get_segments()
    drawn = [bound for segment in segments for bound in segment[:, 1]]
    assert drawn == pytest.approx(
        [bound for r in expected for bound in (r[f"{measure}_low"], r[f"{measure}_high"])]
    )


def test_report_figures_name_every_supported_plot_with_one_colour_per_model(
    figures: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    assert set(figures) == {
        "normalized-score", "illegal-rate", "invalid-rate", "bandit-regret",
        "bandit-suffix-failure", "bandit_hard-learning-curves", "published-values",
    }  # fmt: skip
    # The paper's tic-tac-toe expert (0.85) beside lmact's, a dashed tick: no tolerance.
    (panel,) = [a for a in figures["published-values"].axes if a.get_title() == "tic_tac_toe"]
    (tick,) = panel.collections[-1:]
    assert tick.get_linestyle()[0][1] is not None  # dashed
    assert tick.get_segments()[0][0][1] == pytest.approx(0.85)
    cycler = {
        line.get_color()
        for name in ("normalized-score", "illegal-rate")
        for axes in figures[name].axes
        for line in axes.get_lines()
        if line.get_label().startswith(CYCLER)
    }
    assert len(cycler) == 1
    # Krishnamurthy et al.'s three curves; ucb1, a scripted policy, labelled a baseline.
    best, regret, reward = figures["bandit_hard-learning-curves"].axes
    assert [a.get_title() for a in (best, regret, reward)] == [
        "best arm chosen", "cumulative regret", "average reward so far",
    ]  # fmt: skip
    (ucb1,) = [line for line in best.get_lines() if line.get_label() == "ucb1 (baseline)"]
    (expert,) = [line for line in best.get_lines() if line.get_label() == "expert (baseline)"]
    assert set(expert.get_ydata()) == {1.0}  # the expert always presses the best button
    assert list(regret.get_lines()[0].get_ydata()) == sorted(regret.get_lines()[0].get_ydata())
    (bars,) = figures["bandit-regret"].axes
    ucb1_bar = next(bar for bar, tick in zip(bars.patches, bars.get_xticklabels(), strict=True)
                    if tick.get_text().startswith("ucb1"))  # fmt: skip
    assert ucb1_bar.get_facecolor()[:3] == pytest.approx(_rgb(ucb1.get_color()))
    only_replay = [r for r in rows if r["regime"] == "replay"]
    assert report_figures(only_replay, []) == {}


def _rgb(colour: str) -> tuple[float, ...]:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)


def test_out_writes_the_table_and_every_plot_into_a_folder(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _report(store_path, capsys, "--format", "csv", "--task", "tic_tac_toe,bandit_hard",
                  "--out", str(tmp_path / "out"))  # fmt: skip
    assert out == ""  # the table went to the file
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == sorted([
        "report.csv", "normalized-score.png", "illegal-rate.png", "invalid-rate.png",
        "bandit-regret.png", "bandit-suffix-failure.png", "bandit_hard-learning-curves.png",
        "published-values.png",  # the paper's tic-tac-toe expert beside lmact's
    ])  # fmt: skip
    table = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert {row["task"] for row in table} == {"tic_tac_toe", "bandit_hard"}
    from PIL import Image

    with Image.open(tmp_path / "out" / "normalized-score.png") as image:
        assert image.size == (770, 451)  # one panel (one imitation task)
    main(["report", "--store", str(store_path), "--curves", "--out", str(tmp_path / "c")])
    assert (tmp_path / "c" / "curves.md").read_text().startswith("| run_id | task |")


def test_the_normalized_interval_follows_the_baselines() -> None:
    assert normalized_interval((2.0, 4.0), 0.0, 8.0) == (0.25, 0.5)
    assert normalized_interval((2.0, 4.0), 8.0, 0.0) == (0.5, 0.75)  # expert below random
    assert normalized_interval((2.0, 4.0), 1.0, 1.0) is None


def test_a_missing_extra_and_an_unknown_format_are_one_line_errors(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import sys

    assert main(["report", "--store", str(store_path), "--format", "xml"]) == 2
    assert "markdown, csv, json, html, md" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    assert main(["report", "--store", str(store_path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error == "lmact: error: plots need matplotlib: pip install 'lmact[report]'\n"
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_curves_in_the_terminal_are_a_few_points_of_each_and_csv_holds_every_point(
    store_path: Path, capsys: pytest.CaptureFixture[str], rows: list[dict[str, Any]]
) -> None:
    every = curve_rows(rows)
    shown = _report(store_path, capsys, "--curves")
    lines = [line for line in shown.splitlines() if line.startswith("| ") and "run_id" not in line]
    kinds = {(line.split(" | ")[0], line.split(" | ")[5]) for line in lines}
    assert len(lines) <= 5 * len(kinds) < len(every)
    assert {"return", "best_arm_share", "cumulative_regret", "average_reward"} <= {
        kind for _, kind in kinds
    }
    assert f"of {len(every)} curve points" in shown and "--format csv" in shown
    table = _report(store_path, capsys, "--curves", "--format", "csv")
    assert len(table.strip().splitlines()) == len(every) + 1


def test_classification_curves_are_monea_et_als(tmp_path: Path) -> None:
    from lmact.demos import DemoStore
    from lmact.regimes.icrl import make_icrl_config
    from lmact.runner import Runner

    with RunStore(tmp_path / "c.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        config = make_icrl_config("classification", model="expert", replicates=2,
                                  eval_every=10, eval_size=4)  # fmt: skip
        runner.run(config, 30)
        runner.run(make_icrl_config("classification", model="random", replicates=2), 30)
        found = report_rows(store)
    figure = report_figures(found, curve_rows(found))["classification-learning-curves"]
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["accuracy so far", "held-out accuracy", "regret", "context length"]
    accuracy, held_out, regret, context = figure.axes
    (right,) = [line for line in accuracy.get_lines() if line.get_label() == "expert (baseline)"]
    assert set(right.get_ydata()) == {1.0}
    (expert,) = [line for line in held_out.get_lines() if line.get_label() == "expert (baseline)"]
    assert list(expert.get_xdata()) == [1, 11, 21] and set(expert.get_ydata()) == {1.0}
    (wrong,) = [line for line in regret.get_lines() if line.get_label() == "random (baseline)"]
    assert wrong.get_ydata()[-1] > 10  # twelve labels: a random one is mostly wrong
    (held,) = [line for line in context.get_lines() if line.get_label() == "random (baseline)"]
    assert list(held.get_ydata()) == list(range(30))  # naive: every earlier example
