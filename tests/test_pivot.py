"""The report's first table per task and regime: the score the regime reports, a row per
model and format (and per setting that varies), a column per point of its axis."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmact import api
from lmact.report.pivot import markdown_pivot, pivots
from lmact.report.tables import report_rows
from lmact.store import RunStore


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:  # type: ignore[type-arg]
    folder = tmp_path_factory.mktemp("pivot")
    where = {"store": folder / "runs.sqlite", "cache_dir": folder / "cache"}
    for demos in (0, 2, 1):
        for model in ("random", "expert"):
            api.run("tic_tac_toe", model=model, demos=demos, episodes=3, **where)
    api.run("tic_tac_toe", model="random", token_budget=400, episodes=3, **where)
    for model in ("ucb1", "greedy"):
        icrl = {"regime": "icrl", "episodes": 20, "replicates": 2}
        api.run("bandit_hard", model=model, **icrl, **where)
    api.run("grid_world", regime="replay", model="random", episodes=2, **where)
    with RunStore(Path(where["store"])) as store:
        return report_rows(store)


def by_regime(rows: list[dict]) -> dict:  # type: ignore[type-arg]
    return {(pivot.task, pivot.regime): pivot for pivot in pivots(rows)}


def test_imitation_shows_the_normalized_score_by_demonstrations(rows: list[dict]) -> None:  # type: ignore[type-arg]
    pivot = by_regime(rows)[("tic_tac_toe", "imitation")]
    assert pivot.header == (
        "model", "observation", "demos 0", "demos 1", "demos 2", "demos ≤400 tokens"
    )  # fmt: skip
    table = {row[:2]: row[2:] for row in pivot.rows}
    # The expert is the scale's 1 on its own test episodes, the random policy its 0.
    assert all(cell.startswith("1.000 [") for cell in table[("expert", "txt")][:3])
    assert all(cell.startswith("0.000 [") for cell in table[("random", "txt")])
    assert table[("expert", "txt")][3] == ""  # no expert run with a token budget


def test_in_context_rl_shows_its_final_measures_and_replay_its_matched_share(
    rows: list[dict],  # type: ignore[type-arg]
) -> None:
    icrl = by_regime(rows)[("bandit_hard", "icrl")]
    assert {"final_return", "regret", "suffix_failure", "greedy_frac"} <= set(icrl.header)
    assert "demos 0" not in icrl.header
    models = [row[0] for row in icrl.rows]
    assert {"ucb1", "greedy"} <= set(models)
    replay = by_regime(rows)[("grid_world", "replay")]
    expert = next(row for row in replay.rows if row[0] == "expert")
    assert expert[-1].startswith("1.000")  # the demonstrator matches itself


def test_a_setting_that_varies_names_the_rows_it_tells_apart(rows: list[dict]) -> None:  # type: ignore[type-arg]
    varied = [dict(row, answer_match="exact") for row in rows if row["regime"] == "imitation"]
    pivot = by_regime([*rows, *varied])[("tic_tac_toe", "imitation")]
    assert pivot.header[:3] == ("model", "observation", "answer_match")
    assert {row[2] for row in pivot.rows} == {"lenient", "exact"}
    text = markdown_pivot(pivot)
    assert text.startswith("**imitation: normalized score")
    assert text.count("\n| expert | txt |") == 2
