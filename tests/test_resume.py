"""A run killed with SIGKILL resumes (imitation, and in-context RL): finished episodes are
kept, and no model call that had succeeded is made again. Uses the real local model in a
real `lmact run` process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MODEL = "local/gemma-3-270m"
COMMON = ["run", "--model", MODEL, "--threads", "2", "--json"]
# A run of each kind, its number of episodes, and how many must be finished at the kill:
# imitation (episodes concurrently) and in-context RL (two replicates, rounds in order, the
# context of each round read back from the store when the run resumes).
RUNS = {
    "imitation": (["--task", "tic_tac_toe", "--demos", "2", "--episodes", "6"], 6, 1),
    "icrl": (
        ["--regime", "icrl", "--task", "bandit_hard", "--episodes", "12", "--replicates", "2"],
        24,
        4,
    ),
}


def lmact_run(store: Path, cache: Path, args: list[str]) -> subprocess.Popen[str]:
    environment = {**os.environ, "LMACT_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "lmact.cli", *COMMON, *args, "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def progress(store: Path) -> tuple[int, int, int]:
    """(finished episodes, calls beyond the steps of finished episodes, stored calls) in a
    store. Calls beyond: answers of episodes still being played (whose steps may not be
    written yet: a unit's fast steps are written with its end)."""
    if not store.exists():
        return 0, 0, 0
    with sqlite3.connect(store) as db:
        try:
            done = db.execute("SELECT COUNT(*) FROM episodes WHERE status = 'done'").fetchone()[0]
            steps = db.execute(  # of the model's run (baselines make no call)
                "SELECT COALESCE(SUM(steps), 0) FROM episodes WHERE status = 'done' AND run_id "
                "IN (SELECT run_id FROM runs WHERE json_extract(config, '$.model') = ?)",
                (MODEL,),
            ).fetchone()[0]
            calls = db.execute("SELECT COUNT(*) FROM model_calls").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not written yet
            return 0, 0, 0
    return done, calls - steps, calls


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_a_killed_run_resumes_without_repeating_calls(tmp_path: Path, kind: str) -> None:
    args, total, finished_at_kill = RUNS[kind]
    cache = tmp_path / "cache"
    reference = lmact_run(tmp_path / "reference.sqlite", cache, args)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    uninterrupted = json.loads(out)

    store = tmp_path / "killed.sqlite"
    victim = lmact_run(store, cache, args)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done, unfinished, _ = progress(store)
        if done >= finished_at_kill and (unfinished >= 1 or kind == "icrl"):  # icrl: 1-step
            break
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_at_kill, _, calls_at_kill = progress(store)
    assert finished_at_kill <= done_at_kill < total

    resumed = lmact_run(store, cache, args)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    # Every call that had succeeded before the kill came from the cache.
    assert calls_at_kill + summary["calls_made"] == uninterrupted["calls_made"]
    if kind == "imitation":  # killed mid-episode: its first steps come back from the cache
        assert summary["calls_cached"] >= 1
    # Prompt tokens served from llama.cpp's KV cache depend on the process's history (the
    # resumed process starts cold): a cost figure, not a result.
    counters = {"calls_made": 0, "calls_cached": 0, "cached_tokens": 0}
    assert {**summary, **counters} == {**uninterrupted, **counters}
    with sqlite3.connect(store) as db, sqlite3.connect(tmp_path / "reference.sqlite") as ref:
        query = (
            "SELECT run_id, episode, step, prompt_hash, completion, kind, action, reward "
            "FROM steps ORDER BY run_id, episode, step"
        )
        assert db.execute(query).fetchall() == ref.execute(query).fetchall()
