"""The run store's layout and its migrations: a store of layout 1 (releases up to 0.2,
tests/fixtures/) is rebuilt in place on open, once, in one transaction, with its units keyed
by chain, kind and index and its regime-named columns moved into JSON facts; several
processes opening it at once agree; a newer lmact's store is refused in one line."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lmact.records import UnitKey, UnitKind
from lmact.store import SCHEMA_VERSION, RunStore, StoreError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EVALUATION = UnitKind.EVALUATION
REGIME_COLUMNS = {"demos_used", "demos_hash", "prefix_tokens", "context"}
# The first release's tables, before any column was added to them (the 0.1 fixture holds
# them with the columns added up to 0.1; the 0.2 one with every layout-1 column).
FIRST_LAYOUT = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, config TEXT NOT NULL, created REAL NOT NULL,
    demos_used INTEGER, demos_hash TEXT, prefix_tokens INTEGER);
CREATE TABLE episodes (run_id TEXT NOT NULL, episode INTEGER NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL, total_return REAL, steps INTEGER, terminated INTEGER, valid INTEGER,
    illegal INTEGER, invalid INTEGER, empty INTEGER, prompt_tokens INTEGER,
    completion_tokens INTEGER, cached_tokens INTEGER, PRIMARY KEY (run_id, episode));
CREATE TABLE steps (run_id TEXT NOT NULL, episode INTEGER NOT NULL, step INTEGER NOT NULL,
    prompt_hash TEXT{hash_constraint}, completion TEXT NOT NULL, answer TEXT NOT NULL,
    kind TEXT NOT NULL, action TEXT NOT NULL, reward REAL NOT NULL, stop_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, latency_s REAL NOT NULL, from_cache INTEGER NOT NULL,
    PRIMARY KEY (run_id, episode, step));
CREATE TABLE model_calls (key TEXT PRIMARY KEY, model TEXT NOT NULL, response TEXT NOT NULL,
    created REAL NOT NULL);
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content(path: Path) -> list[str]:
    """The store's tables and rows, as SQL (not its journal mode)."""
    with sqlite3.connect(path) as db:
        dumped = list(db.iterdump())
    db.close()
    return dumped


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        found = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    db.close()
    return found


def query(path: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(path) as db:
        rows = db.execute(sql, params).fetchall()
    db.close()
    return rows


def first_layout_store(path: Path, hash_constraint: str = " NOT NULL") -> None:
    """A store as the first release wrote it: an imitation run whose episode 60000 stays
    an episode, and an in-context RL run with replicate 1's episode 2 and held-out
    evaluation 1 (units 100002 and 150001)."""
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_LAYOUT.format(hash_constraint=hash_constraint))
        runs = [("im", '{"regime": "imitation"}', 1, 2, "h", 30), ("rl", '{"regime": "icrl"}',
                2, None, None, None), ("odd", "{not json", 3, None, None, None)]  # fmt: skip
        db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)", runs)
        units = [("im", 60000), ("rl", 100002), ("rl", 150001), ("odd", 100002)]
        for run_id, unit in units:
            db.execute(
                "INSERT INTO episodes VALUES (?, ?, 0, 'done', 1.0, 1, 1, 1, 0, 0, 0, 3, 1, 0)",
                (run_id, unit),
            )
            db.execute(
                "INSERT INTO steps VALUES (?, ?, 0, 'h', 'a', 'a', 'valid', 'a', 1.0, 'stop', "
                "3, 1, 0, 0.1, 0)",
                (run_id, unit),
            )
    db.close()


def test_a_new_store_is_of_this_layout_and_names_no_regime(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    RunStore(path).close()
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    for table in ("runs", "episodes", "steps"):
        assert not columns(path, table) & REGIME_COLUMNS
    assert {"chain", "unit_kind", "episode", "facts"} <= columns(path, "steps")
    assert "facts" in columns(path, "runs") and "facts" in columns(path, "episodes")


def test_the_first_layout_is_rekeyed_by_chain_kind_and_index(tmp_path: Path) -> None:
    path = tmp_path / "first.sqlite"
    first_layout_store(path)
    with RunStore(path) as store:
        assert list(store.finished_episodes("im")) == [UnitKey(0, 60000)]
        assert list(store.finished_episodes("rl")) == [UnitKey(1, 2), UnitKey(1, 1, EVALUATION)]
        # A configuration it cannot read: its units are taken as standing alone.
        assert list(store.finished_episodes("odd")) == [UnitKey(0, 100002)]
        assert [s.unit for s in store.steps("rl")] == [UnitKey(1, 2), UnitKey(1, 1, EVALUATION)]
        (episode,) = store.finished_episodes("im").values()
        assert episode.usage.cache_write_tokens == 0 and episode.cost_usd is None
        assert episode.end_reason is None and episode.facts == {}
        facts = {run_id: store.run(run_id).facts for run_id in ("im", "rl")}  # type: ignore[union-attr]
    assert facts == {"im": {"demos": 2, "demos_hash": "h", "prefix_tokens": 30}, "rl": {}}
    for table in ("runs", "episodes", "steps"):
        assert not columns(path, table) & REGIME_COLUMNS


@pytest.mark.parametrize("release", ["0.1", "0.2"])
def test_a_released_store_keeps_every_row_and_fact(tmp_path: Path, release: str) -> None:
    fixture, path = FIXTURES / f"store-{release}.sqlite", tmp_path / "store.sqlite"
    shutil.copyfile(fixture, path)
    old_runs = query(
        fixture, "SELECT run_id, config, demos_used, demos_hash, prefix_tokens FROM runs"
    )
    old_steps = query(fixture, "SELECT run_id, episode, step, action, reward FROM steps")
    old_contexts = {}
    if "context" in columns(fixture, "steps"):
        rows = query(fixture, "SELECT run_id, episode, step, context FROM steps")
        old_contexts = {(r, e, s): json.loads(c) for r, e, s, c in rows if c is not None}
    icrl = {run_id for run_id, config, *_ in old_runs if json.loads(config)["regime"] == "icrl"}
    with RunStore(path) as store:
        runs = {run.run_id: run for run in store.runs()}
        steps = {run_id: store.steps(run_id) for run_id in runs}
        episodes = sum(len(store.finished_episodes(run_id)) for run_id in runs)
    assert episodes == query(fixture, "SELECT COUNT(*) FROM episodes WHERE status = 'done'")[0][0]
    for run_id, _, demos, demos_hash, prefix_tokens in old_runs:
        expected = {"demos": demos, "demos_hash": demos_hash, "prefix_tokens": prefix_tokens}
        assert runs[run_id].facts == {k: v for k, v in expected.items() if v is not None}
    rebuilt = {
        (run_id, s.unit, s.step): (s.action, s.reward, s.facts.get("context"))
        for run_id, run_steps in steps.items()
        for s in run_steps
    }
    assert len(rebuilt) == len(old_steps)
    for run_id, unit, step, action, reward in old_steps:
        key = UnitKey(*divmod(unit, 100_000)) if run_id in icrl else UnitKey(0, unit)
        context = old_contexts.get((run_id, unit, step))
        assert rebuilt[run_id, key, step] == (action, reward, context)
    assert (not icrl) == (release == "0.1")  # the 0.2 fixture holds replicates to rekey


def test_an_up_to_date_store_is_opened_without_a_write(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    shutil.copyfile(FIXTURES / "store-0.2.sqlite", path)
    RunStore(path).close()  # migrated
    migrated = digest(path)
    with RunStore(path) as store:
        assert store.runs()
    assert digest(path) == migrated


def test_several_processes_opening_an_old_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    shutil.copyfile(FIXTURES / "store-0.2.sqlite", path)
    count = "from lmact.store import RunStore\nwith RunStore({!r}) as s:\n"
    count += "    print(sum(len(s.finished_episodes(r.run_id)) for r in s.runs()))"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", count.format(str(path))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(p.returncode == 0 for p in processes), [err for _, err in outputs]
    expected = query(
        FIXTURES / "store-0.2.sqlite", "SELECT COUNT(*) FROM episodes WHERE status = 'done'"
    )
    assert {int(out) for out, _ in outputs} == {expected[0][0]}
    assert query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert not query(path, "SELECT name FROM sqlite_master WHERE name LIKE '%layout2%'")


def test_a_migration_that_fails_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "first.sqlite"
    first_layout_store(path, hash_constraint="")  # a step without a prompt hash: not a store
    with sqlite3.connect(path) as db:
        db.execute("UPDATE steps SET prompt_hash = NULL WHERE run_id = 'rl'")
    db.close()
    before = content(path)
    with pytest.raises(StoreError) as error:
        RunStore(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert content(path) == before  # every table and row (its journal may be WAL now)
    assert query(path, "PRAGMA user_version") == [(0,)]


def test_a_newer_lmacts_store_is_refused_in_one_line_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    RunStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = digest(path)
    report = subprocess.run(
        [sys.executable, "-m", "lmact.cli", "report", "--store", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 2 and "Traceback" not in report.stderr
    assert len(report.stderr.strip().splitlines()) == 1
    assert "newer lmact" in report.stderr and str(path) in report.stderr
    assert digest(path) == before


def test_a_damaged_fact_stops_a_report_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    shutil.copyfile(FIXTURES / "store-0.2.sqlite", path)
    RunStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET facts = '{\"demos\": 1' WHERE rowid = 1")
    db.close()
    report = subprocess.run(
        [sys.executable, "-m", "lmact.cli", "report", "--store", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 2 and "Traceback" not in report.stderr
    assert len(report.stderr.strip().splitlines()) == 1
    assert str(path) in report.stderr and "not a JSON object" in report.stderr
