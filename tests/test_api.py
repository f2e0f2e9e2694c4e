"""The Python API: run a configuration, run a sweep, read results back as plain records."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmact import api
from lmact.errors import LmactError


def test_run_sweep_and_results_as_the_readme_shows(tmp_path: Path) -> None:
    store, cache = tmp_path / "r.sqlite", tmp_path / "cache"
    summary = api.run("tic_tac_toe", model="random", demos=2, episodes=5, store=store,
                      cache_dir=cache)  # fmt: skip
    assert summary["episodes"] == 5 and summary["demos"] == 2 and summary["model"] == "random"
    bandit = api.run("bandit_hard", regime="icrl", model="ucb1", episodes=20, replicates=2,
                     store=store, cache_dir=cache)  # fmt: skip
    assert bandit["regime"] == "icrl" and len(bandit["learning_curve"]) == 20
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(
        'name = "pair"\n[base]\ntask = "grid_world"\nepisodes = 2\n'
        '[axes]\nmodel = ["random", "expert"]\n'
    )
    outcomes = api.sweep(sweep_file, store=store, cache_dir=cache)
    assert [o["options"]["model"] for o in outcomes] == ["random", "expert"]
    assert outcomes[1]["summary"]["mean_return"] == 1.0 and outcomes[0]["error"] is None
    results = api.results(store)
    by_run = {run["run_id"]: run for run in results.runs}
    assert summary["run_id"] in by_run and bandit["run_id"] in by_run
    assert by_run[summary["run_id"]]["mean_return"] == pytest.approx(summary["mean_return"])
    episodes = [e for e in results.episodes if e["run_id"] == summary["run_id"]]
    assert len(episodes) == 5 and {"prompt_tokens", "total_return"} <= set(episodes[0])
    steps = [s for s in results.steps if s["run_id"] == summary["run_id"]]
    assert len(steps) == sum(e["steps"] for e in episodes)
    pair = api.results(store, sweep="pair")
    assert {run["task"] for run in pair.runs} == {"grid_world"}
    with pytest.raises(LmactError, match="unrecognized argument colour"):
        api.run("tic_tac_toe", colour="blue", store=store)


def test_episode_records_say_which_episodes_the_score_counts(tmp_path: Path) -> None:
    store = tmp_path / "r.sqlite"
    summary = api.run("classification", regime="icrl", model="random", episodes=10,
                      replicates=1, eval_every=5, eval_size=2, store=store,
                      cache_dir=tmp_path)  # fmt: skip
    episodes = [e for e in api.results(store).episodes if e["run_id"] == summary["run_id"]]
    scored = [e for e in episodes if e["scored"]]
    assert len(scored) == summary["episodes"] == 10 < len(episodes)  # evaluations besides
    assert {e["episode"] for e in scored} == set(range(10))
