"""The run store: every run, episode and step, and the model-call cache, in one SQLite file.

WAL mode, one short transaction per write: a run killed at any moment leaves every
completed step and call on disk. A rerun skips finished episodes, replays unfinished ones
from the start (their model calls come back from the cache) and so reproduces every number.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_STORE = Path("results") / "lmact.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created REAL NOT NULL,
    demos_used INTEGER,
    demos_hash TEXT,
    prefix_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS episodes (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    episode INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    total_return REAL,
    steps INTEGER,
    terminated INTEGER,
    valid INTEGER,
    illegal INTEGER,
    invalid INTEGER,
    empty INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cached_tokens INTEGER,
    PRIMARY KEY (run_id, episode)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    episode INTEGER NOT NULL,
    step INTEGER NOT NULL,
    prompt_hash TEXT NOT NULL,
    completion TEXT NOT NULL,
    answer TEXT NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    reward REAL NOT NULL,
    stop_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    from_cache INTEGER NOT NULL,
    PRIMARY KEY (run_id, episode, step)
);
CREATE TABLE IF NOT EXISTS model_calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
);
"""

# Columns added after the first release: created in new stores and added to older ones.
_ADDED_COLUMNS = {
    table: {
        "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0",
        "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
        "cost_usd": "REAL",  # NULL: the model's prices are unknown
    }
    for table in ("steps", "episodes")
}


@dataclass(frozen=True)
class StepRecord:
    episode: int
    step: int
    prompt_hash: str
    completion: str  # the model's raw text
    answer: str  # the action text extracted from it
    kind: str  # valid | illegal | invalid | empty
    action: str  # the action executed (a random legal one unless valid)
    reward: float
    stop_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_s: float
    from_cache: bool
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True)
class EpisodeRecord:
    episode: int
    seed: int
    total_return: float
    steps: int
    terminated: bool  # the episode ended by itself, not by the step limit
    valid: int
    illegal: int
    invalid: int
    empty: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None  # None if any step's cost is unknown


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    config: dict[str, Any]
    created: float
    demos_used: int | None
    demos_hash: str | None
    prefix_tokens: int | None


class RunStore:
    """One SQLite file; also the model-call cache (`get_call` / `put_call`)."""

    def __init__(self, path: Path | str = DEFAULT_STORE) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, declaration in columns.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The model-call cache.

    def get_call(self, key: str) -> str | None:
        row = self._db.execute("SELECT response FROM model_calls WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put_call(self, key: str, model: str, response_json: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO model_calls (key, model, response, created) VALUES (?,?,?,?)",
            (key, model, response_json, time.time()),
        )

    # Runs.

    def save_run(
        self,
        run_id: str,
        config: dict[str, Any],
        demos_used: int | None = None,
        demos_hash: str | None = None,
        prefix_tokens: int | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO runs (run_id, config, created, demos_used, demos_hash, prefix_tokens) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET demos_used=excluded."
            "demos_used, demos_hash=excluded.demos_hash, prefix_tokens=excluded.prefix_tokens",
            (
                run_id,
                json.dumps(config, sort_keys=True),
                time.time(),
                demos_used,
                demos_hash,
                prefix_tokens,
            ),
        )

    def runs(self) -> list[RunRecord]:
        rows = self._db.execute(
            "SELECT run_id, config, created, demos_used, demos_hash, prefix_tokens FROM runs "
            "ORDER BY created"
        ).fetchall()
        return [_run_record(row) for row in rows]

    # Episodes and steps.

    def finished_episodes(self, run_id: str) -> dict[int, EpisodeRecord]:
        names = [f.name for f in fields(EpisodeRecord)]
        rows = self._db.execute(
            f"SELECT {', '.join(names)} FROM episodes WHERE run_id = ? AND status = 'done' "
            "ORDER BY episode",
            (run_id,),
        ).fetchall()
        return {row[0]: _episode_record(dict(zip(names, row, strict=True))) for row in rows}

    def start_episode(self, run_id: str, episode: int, seed: int) -> None:
        """Mark an episode as running, dropping the steps of an earlier, unfinished attempt."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM steps WHERE run_id = ? AND episode = ?", (run_id, episode)
            )
            self._db.execute(
                "INSERT OR REPLACE INTO episodes (run_id, episode, seed, status) "
                "VALUES (?, ?, ?, 'running')",
                (run_id, episode, seed),
            )

    def record_step(self, run_id: str, step: StepRecord) -> None:
        values = asdict(step)
        columns = ", ".join(values)
        self._db.execute(
            f"INSERT OR REPLACE INTO steps (run_id, {columns}) VALUES (?{', ?' * len(values)})",
            (run_id, *values.values()),
        )

    def finish_episode(self, run_id: str, episode: EpisodeRecord) -> None:
        values = asdict(episode)
        assignments = ", ".join(f"{name} = ?" for name in values if name != "episode")
        self._db.execute(
            f"UPDATE episodes SET status = 'done', {assignments} WHERE run_id = ? AND episode = ?",
            (*[v for k, v in values.items() if k != "episode"], run_id, episode.episode),
        )

    def steps(self, run_id: str, episode: int | None = None) -> list[StepRecord]:
        names = [f.name for f in fields(StepRecord)]
        query = f"SELECT {', '.join(names)} FROM steps WHERE run_id = ?"
        params: tuple = (run_id,)
        if episode is not None:
            query += " AND episode = ?"
            params += (episode,)
        rows = self._db.execute(query + " ORDER BY episode, step", params).fetchall()
        records = []
        for row in rows:
            values = dict(zip(names, row, strict=True))
            records.append(StepRecord(**{**values, "from_cache": bool(values["from_cache"])}))
        return records

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _run_record(row: tuple) -> RunRecord:
    run_id, config, created, demos_used, demos_hash, prefix_tokens = row
    return RunRecord(run_id, json.loads(config), created, demos_used, demos_hash, prefix_tokens)


def _episode_record(values: dict[str, Any]) -> EpisodeRecord:
    return EpisodeRecord(**{**values, "terminated": bool(values["terminated"])})
