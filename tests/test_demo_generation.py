"""Generating a pool of demonstrations: said before it is made, resumed after a kill, and made
once per task and rendering for every run that draws from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from processes import wait_until

from lmact import cli, demos
from lmact.demos import DEMO_SEED_BASE, DemoStore, GenerationForecast, demonstrations_hash
from lmact.regimes.imitation import make_config
from lmact.runner import RunEstimate, Runner
from lmact.tasks import get_task

TESTS = Path(__file__).parent

# `lmact demos` whose expert plays the first 20 grid worlds, then never ends the 21st: the
# process is surely killed part-way, whatever the machine's speed.
STALLED_DEMOS = """
import sys, time
from lmact import cli, demos
played = demos.play_expert_episode

def stalling(task, env, observation, seed):
    if seed >= demos.DEMO_SEED_BASE + 20:
        time.sleep(3600)
    return played(task, env, observation, seed)

demos.play_expert_episode = stalling
sys.exit(cli.main(["demos", "grid_world", "--episodes", "40", "--workers", "1",
                   "--cache-dir", sys.argv[1]]))
"""


def episodes_file(cache: Path, task: str, observation: str) -> Path:
    return DemoStore.in_cache(cache).directory(get_task(task), observation) / "episodes.jsonl"


def test_a_killed_generation_keeps_what_it_stored_and_the_rerun_makes_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, path = tmp_path / "cache", episodes_file(tmp_path / "cache", "grid_world", "txt")
    with open(tmp_path / "output.txt", "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", STALLED_DEMOS, str(cache)], stdout=sink, stderr=sink, cwd=TESTS
        )
    try:
        assert wait_until(lambda: path.exists() and path.stat().st_size > 0, timeout=60)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
    kept = path.read_bytes()
    stored = len(kept.splitlines())
    assert kept.endswith(b"\n") and 0 < stored < 40  # whole batches only, and not all
    played: list[int] = []
    real = demos.play_expert_episode

    def counted(*args: Any) -> demos.Demonstration:
        played.append(args[-1] - DEMO_SEED_BASE)
        return real(*args)

    monkeypatch.setattr(demos, "play_expert_episode", counted)
    capsys.readouterr()
    assert cli.main(["demos", "grid_world", "--episodes", "40", "--cache-dir", str(cache)]) == 0
    assert played == list(range(stored, 40))  # the stored ones are not played again
    out = capsys.readouterr().out
    assert f"generated {40 - stored} in " in out and f"({stored} were stored already)" in out
    assert path.read_bytes().startswith(kept)
    # What a generation that was never stopped stores, byte for byte.
    fresh = DemoStore.in_cache(tmp_path / "fresh")
    fresh.load(get_task("grid_world"), "txt", 0, 40)
    assert path.read_bytes() == episodes_file(tmp_path / "fresh", "grid_world", "txt").read_bytes()


def test_a_forecast_extrapolates_the_sample_over_the_workers() -> None:
    forecast = GenerationForecast(
        "chess", "fen", wanted=1000, stored=88, sampled=1, sample_s=3.0, each_s=3.0, workers=2
    )
    assert forecast.missing == 912
    assert forecast.seconds == pytest.approx(3.0 + 911 * 3.0 / 2)
    assert "912 of the first 1000 demonstrations of chess/fen" in forecast.describe()


def test_a_pooled_generation_is_foretold_with_its_workers(tmp_path: Path) -> None:
    told: list[GenerationForecast] = []
    # Every expert counts as slow here: one episode timed, the rest played by the pool.
    store = DemoStore(tmp_path / "demos", workers=2, pool_after_s=0.0, on_forecast=told.append)
    store.load(get_task("tic_tac_toe"), "txt", 0, 5)
    assert [(f.wanted, f.stored, f.sampled, f.workers) for f in told] == [(5, 0, 1, 2)]
    [generation] = store.generations
    assert generation.forecast == told[0] and generation.seconds > 0
    store.load(get_task("tic_tac_toe"), "txt", 0, 5)
    assert len(told) == 1 and len(store.generations) == 1  # stored: nothing to generate


def estimated(runner: Runner, **options: Any) -> RunEstimate:
    options = {"model": "random", "demos": 2, "demo_draw": "per-episode", **options}
    return runner.estimate(make_config("tic_tac_toe", **options), 2)


def test_a_dry_run_says_what_it_generates_before_and_after(
    runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    first = estimated(runner, demo_pool=30)
    told = capsys.readouterr().err
    assert "lmact: dry run: 30 of the first 30 demonstrations of tic_tac_toe/txt" in told
    assert first.demonstrations_needed == first.demonstrations_generated == 30
    assert first.demonstrations_generation_s > 0 and first.demonstrations_forecast_s > 0
    assert first.demonstration_workers == 1  # a quick expert plays here
    again = estimated(runner, demo_pool=30)
    assert again.demonstrations_generated == 0 and "dry run" not in capsys.readouterr().err
    assert again.demonstrations_generation_s == again.demonstrations_forecast_s == 0


def test_runs_that_differ_in_prompt_options_read_the_same_demonstrations(
    runner: Runner, demo_store: DemoStore
) -> None:
    first = estimated(runner, demo_pool=30)
    assert first.demonstrations_generated == 30
    path = demo_store.directory(get_task("tic_tac_toe"), "txt") / "episodes.jsonl"
    stored = path.read_bytes()
    prompt_options: list[dict[str, Any]] = [
        {"show_legal_actions": True},
        {"chain_of_thought": True, "max_tokens": 64},
        {"past_actions": False, "answer_match": "exact"},
        {"inline_observations": True},
    ]
    run_ids = {first.config.run_id}
    for options in prompt_options:
        other = estimated(runner, demo_pool=30, **options)
        run_ids.add(other.config.run_id)
        assert other.demonstrations_generated == 0, options  # read, not made again
        assert other.prepared.facts.demonstrations_hash == first.prepared.facts.demonstrations_hash
    assert len(run_ids) == 1 + len(prompt_options)  # each a run of its own
    assert path.read_bytes() == stored
    # Another rendering is another pool, made for it.
    assert estimated(runner, demo_pool=30, observation="png").demonstrations_generated == 30


def test_a_pool_of_1000_extends_the_pool_of_100(runner: Runner, demo_store: DemoStore) -> None:
    task = get_task("tic_tac_toe")
    hundred = estimated(runner, demo_pool=100)
    path = demo_store.directory(task, "txt") / "episodes.jsonl"
    first_hundred = path.read_bytes()
    thousand = estimated(runner, demo_pool=1000)
    assert (hundred.demonstrations_generated, thousand.demonstrations_generated) == (100, 900)
    assert path.read_bytes().startswith(first_hundred)
    # A per-episode run's hash is its pool's: the first 100 of the 1,000 are the pool of 100.
    pool = demo_store.load(task, "txt", 0, 1000)
    assert demonstrations_hash(pool[:100]) == hundred.prepared.facts.demonstrations_hash
    assert demonstrations_hash(pool) == thousand.prepared.facts.demonstrations_hash
    assert [d.seed - DEMO_SEED_BASE for d in pool] == list(range(1000))
