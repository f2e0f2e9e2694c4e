"""A run killed with SIGKILL resumes: finished episodes are kept, and no model call that
had succeeded is made again. Uses the real local model in a real `lmact run` process."""

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

RUN = [
    "run",
    "--task",
    "tic_tac_toe",
    "--model",
    "local/gemma-3-270m",
    "--demos",
    "2",
    "--episodes",
    "6",
    "--threads",
    "2",
    "--json",
]


def lmact_run(store: Path, cache: Path) -> subprocess.Popen[str]:
    environment = {**os.environ, "LMACT_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "lmact.cli", *RUN, "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def progress(store: Path) -> tuple[int, int, int]:
    """(finished episodes, steps of unfinished episodes, cached calls) in a store."""
    if not store.exists():
        return 0, 0, 0
    with sqlite3.connect(store) as db:
        try:
            done = db.execute("SELECT COUNT(*) FROM episodes WHERE status = 'done'").fetchone()[0]
            partial = db.execute(
                "SELECT COUNT(*) FROM steps JOIN episodes USING (run_id, episode) "
                "WHERE status = 'running'"
            ).fetchone()[0]
            calls = db.execute("SELECT COUNT(*) FROM model_calls").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not written yet
            return 0, 0, 0
    return done, partial, calls


def test_a_killed_run_resumes_without_repeating_calls(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    reference = lmact_run(tmp_path / "reference.sqlite", cache)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    uninterrupted = json.loads(out)

    store = tmp_path / "killed.sqlite"
    victim = lmact_run(store, cache)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done, partial, _ = progress(store)
        if done >= 1 and partial >= 1:
            break
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_at_kill, _, calls_at_kill = progress(store)
    assert 1 <= done_at_kill < 6

    resumed = lmact_run(store, cache)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    # Every call that had succeeded before the kill came from the cache.
    assert calls_at_kill + summary["calls_made"] == uninterrupted["calls_made"]
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
