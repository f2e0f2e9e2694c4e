"""The run store: every run, episode and step, and the model-call cache, in one SQLite file.

WAL mode, one short transaction per write: a run killed at any moment leaves every
completed step and call on disk. A rerun skips finished episodes, replays unfinished ones
from the start (their model calls come back from the cache) and so reproduces every number.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from lmact.errors import LmactError
from lmact.records import (
    AnswerKind,
    EpisodeRecord,
    StepRecord,
    StopReason,
    Usage,
    column_names,
    flat_fields,
)

DEFAULT_STORE = Path("results") / "lmact.sqlite"
# The most test episodes one run may ask for: each is a row, a record and a unit of work.
MAX_EPISODES = 100_000

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
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    grid TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (name, run_id)
);
CREATE TABLE IF NOT EXISTS model_calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
);
"""

# Columns added after the first release: created in new stores and added to older ones.
_USAGE_COLUMNS = {
    "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0",
    "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cost_usd": "REAL",  # NULL: the model's prices are unknown
}
_ADDED_COLUMNS = {
    "steps": {
        **_USAGE_COLUMNS,
        # In-context RL: the earlier episodes a step's context held, as a JSON list.
        "context": "TEXT",
    },
    "episodes": {
        **_USAGE_COLUMNS,
        # Answers the server never made readable, recorded as empty (see ModelCaller).
        "unreadable": "INTEGER NOT NULL DEFAULT 0",
        # Why it ended: the task's reason ("checkmate", "solved") or "step limit".
        "end_reason": "TEXT",
        # The process playing a running episode, and when it last wrote a step.
        "owner": "TEXT",
        "heartbeat": "REAL",
    },
}
_LMACT_TABLES = frozenset({"runs", "episodes", "steps", "model_calls", "sweeps", "sweep_runs"})
# Marks a SQLite file as an lmact run store ("lmac"), and the layout it has.
APPLICATION_ID = 0x6C6D6163
SCHEMA_VERSION = 1
_SQLITE_HEADER = b"SQLite format 3\x00"
# How long opening a store waits for other processes that hold it (creating it, say).
OPEN_TIMEOUT_S = 60.0
# A claim whose owner runs on another host is trusted while it wrote within this long.
CLAIM_LEASE_S = 600.0


class StoreError(LmactError):
    """The run store cannot be used: not lmact's, unreadable, unwritable, full."""


class ClaimLostError(LmactError):
    """Another process took over an episode that this process was playing."""


class Claim(enum.Enum):
    """What `RunStore.claim_episode` found."""

    OURS = "ours"  # this process plays the episode now
    DONE = "done"  # finished, by anyone: never reopened
    BUSY = "busy"  # a live process is playing it


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    config: dict[str, Any]
    created: float
    demos_used: int | None
    demos_hash: str | None
    prefix_tokens: int | None


class RunStore:
    """One SQLite file; also the model-call cache (`get_call` / `put_call`).

    Any number of processes may share one store: an episode is played by the one process
    that claimed it (`claim_episode`), its steps and its end are written only while that
    claim holds, and a finished episode is never reopened.
    """

    def __init__(self, path: Path | str = DEFAULT_STORE) -> None:
        self.path = Path(path)
        self.owner = process_identity()
        _check_store_file(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        except sqlite3.Error as error:
            raise self._error(error) from None
        try:
            with self._guard():
                self._open_when_free()
        except BaseException:
            self._db.close()
            raise

    def _open_when_free(self) -> None:
        """Check and migrate the file, retrying while another process holds it: switching
        a new store to WAL needs it alone, and SQLite's busy timeout does not wait for that."""
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while True:
            try:
                self._check_ours()
                self._migrate()
                self._db.execute("PRAGMA synchronous=NORMAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _error(self, error: BaseException) -> StoreError:
        hint = ""
        if "disk I/O error" in str(error) or "full" in str(error):
            hint = " (is the disk full?); what was stored before is kept"
        return StoreError(f"run store {self.path}: {error}{hint}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's failures (a full disk, a file gone read-only) as one-line errors."""
        try:
            yield
        except sqlite3.Error as error:
            raise self._error(error) from None

    def _check_ours(self) -> None:
        """Refuse another program's SQLite file before writing anything to it."""
        application_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._tables()
        if application_id not in (0, APPLICATION_ID):
            raise StoreError(
                f"run store {self.path} is another program's SQLite database "
                f"(application_id {application_id:#x}); give lmact a file of its own"
            )
        if application_id == 0 and tables and not tables <= _LMACT_TABLES | {"sqlite_sequence"}:
            raise StoreError(
                f"run store {self.path} is another program's SQLite database (tables: "
                f"{', '.join(sorted(tables))}); give lmact a file of its own"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"run store {self.path} was written by a newer lmact (layout {version}, "
                f"this one reads {SCHEMA_VERSION}); upgrade lmact"
            )

    def _migrate(self) -> None:
        """Create the tables, add the columns of later releases, mark the file as lmact's.
        Writes nothing to a store that is up to date (so a read-only one still reads)."""
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        missing = self._missing_columns()
        marked = self._db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        if marked and not missing and self._tables() >= _LMACT_TABLES:
            return
        with self._transaction():
            # executescript would commit the transaction first: statement by statement.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            for table, name, declaration in self._missing_columns():
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _tables(self) -> set[str]:
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}

    def _missing_columns(self) -> list[tuple[str, str, str]]:
        missing = []
        for table, columns in _ADDED_COLUMNS.items():
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if not present:
                continue  # created with every column by the schema
            missing += [(table, n, d) for n, d in columns.items() if n not in present]
        return missing

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.release_claims()
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The model-call cache.

    def get_call(self, key: str) -> str | None:
        """The cached answer of a call; "" for a damaged entry (the caller asks again)."""
        with self._guard():
            return self._stored_call(key)

    def _stored_call(self, key: str) -> str | None:
        # Read as bytes: a row damaged into invalid UTF-8 must not fail the read.
        row = self._db.execute(
            "SELECT CAST(response AS BLOB) FROM model_calls WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        try:
            return bytes(row[0]).decode("utf-8")
        except UnicodeDecodeError:
            return ""

    def put_call(self, key: str, model: str, response_json: str) -> str | None:
        """Store an answer unless one is stored for the key already; returns the stored one.

        The first answer wins, so that two processes that sent the same request at once go
        on with the same answer, and a rerun reproduces what both recorded.
        """
        with self._guard(), self._transaction():
            self._db.execute(
                "INSERT INTO model_calls (key, model, response, created) VALUES (?,?,?,?) "
                "ON CONFLICT(key) DO NOTHING",
                (key, model, response_json, time.time()),
            )
            return self._stored_call(key)

    def replace_call(self, key: str, model: str, response_json: str) -> None:
        """Overwrite a cached answer (one that failed to load)."""
        with self._guard():
            self._db.execute(
                "INSERT OR REPLACE INTO model_calls (key, model, response, created) "
                "VALUES (?,?,?,?)",
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
        """Record a run; a run that has episodes keeps the demonstrations it started with.

        Raises StoreError if the run has stored episodes and `demos_hash` differs from the
        hash it recorded: its episodes would mix two prompts.
        """
        with self._guard(), self._transaction():
            row = self._db.execute(
                "SELECT demos_hash FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is not None and row[0] != demos_hash and self._has_episodes(run_id):
                raise StoreError(
                    f"run {run_id} in {self.path} was played with other demonstrations "
                    f"(hash {row[0]}, now {demos_hash}: the demonstration cache changed); "
                    "rerun with --restart to discard its episodes and play them afresh, or "
                    "use another --store"
                )
            self._db.execute(
                "INSERT INTO runs (run_id, config, created, demos_used, demos_hash, "
                "prefix_tokens) VALUES (?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET "
                "demos_used=excluded.demos_used, demos_hash=excluded.demos_hash, "
                "prefix_tokens=excluded.prefix_tokens",
                (
                    run_id,
                    json.dumps(config, sort_keys=True),
                    time.time(),
                    demos_used,
                    demos_hash,
                    prefix_tokens,
                ),
            )

    def _has_episodes(self, run_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM episodes WHERE run_id = ? LIMIT 1", (run_id,)
        ).fetchone()
        return row is not None

    def discard_run(self, run_id: str) -> int:
        """Delete a run's episodes and steps (not its cached calls); returns how many
        episodes were dropped. Refused while another live process plays one of them."""
        with self._guard(), self._transaction():
            rows = self._db.execute(
                "SELECT owner, heartbeat FROM episodes WHERE run_id = ? AND status = 'running'",
                (run_id,),
            ).fetchall()
            if any(self._held_by_other(owner, heartbeat) for owner, heartbeat in rows):
                raise StoreError(
                    f"run {run_id} is being played by another process; wait for it to end"
                )
            self._db.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))
            dropped = self._db.execute("DELETE FROM episodes WHERE run_id = ?", (run_id,))
            self._db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            return dropped.rowcount

    def runs(self) -> list[RunRecord]:
        with self._guard():
            rows = self._db.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created").fetchall()
        return [_run_record(row) for row in rows]

    def run(self, run_id: str) -> RunRecord | None:
        """One run by its id; None if the store has none of that id."""
        with self._guard():
            row = self._db.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return _run_record(row) if row is not None else None

    # Sweeps.

    def save_sweep(self, name: str, grid: dict[str, Any], run_ids: list[str]) -> None:
        """Record a sweep's grid and the runs (and baselines) it holds; a sweep of the same
        name is replaced."""
        with self._guard(), self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO sweeps (name, grid, created) VALUES (?, ?, ?)",
                (name, json.dumps(grid, sort_keys=True), time.time()),
            )
            self._db.execute("DELETE FROM sweep_runs WHERE name = ?", (name,))
            self._db.executemany(
                "INSERT OR IGNORE INTO sweep_runs (name, run_id) VALUES (?, ?)",
                [(name, run_id) for run_id in run_ids],
            )

    def sweep_runs(self, name: str) -> set[str]:
        """The run ids of a sweep; StoreError naming the sweeps there are if it is unknown."""
        with self._guard():
            known = [row[0] for row in self._db.execute("SELECT name FROM sweeps ORDER BY name")]
            rows = self._db.execute("SELECT run_id FROM sweep_runs WHERE name = ?", (name,))
            run_ids = {row[0] for row in rows}
        if name not in known:
            listed = ", ".join(known) if known else "none yet"
            raise StoreError(f"no sweep {name!r} in {self.path} (sweeps: {listed})")
        return run_ids

    # Episodes and steps.

    def finished_episodes(self, run_id: str) -> dict[int, EpisodeRecord]:
        names = column_names(EpisodeRecord)
        with self._guard():
            rows = self._db.execute(
                f"SELECT {', '.join(names)} FROM episodes WHERE run_id = ? "
                "AND status = 'done' ORDER BY episode",
                (run_id,),
            ).fetchall()
        return {row[0]: _episode_record(dict(zip(names, row, strict=True))) for row in rows}

    def _held_by_other(self, owner: str | None, heartbeat: float | None) -> bool:
        return owner is not None and owner != self.owner and claim_alive(owner, heartbeat)

    def claim_episode(self, run_id: str, episode: int, seed: int) -> tuple[Claim, str | None]:
        """Take an episode to play, atomically, unless it is finished or a live process
        plays it. Returns what was found and, when BUSY, the owner. Taking an episode drops
        the steps of an earlier, unfinished attempt (a crashed or released one)."""
        with self._guard(), self._transaction():
            row = self._db.execute(
                "SELECT status, owner, heartbeat FROM episodes WHERE run_id = ? AND episode = ?",
                (run_id, episode),
            ).fetchone()
            if row is not None:
                status, owner, heartbeat = row
                if status == "done":
                    return Claim.DONE, None
                if self._held_by_other(owner, heartbeat):
                    return Claim.BUSY, owner
            self._db.execute(
                "DELETE FROM steps WHERE run_id = ? AND episode = ?", (run_id, episode)
            )
            self._db.execute(
                "INSERT OR REPLACE INTO episodes (run_id, episode, seed, status, owner, "
                "heartbeat) VALUES (?, ?, ?, 'running', ?, ?)",
                (run_id, episode, seed, self.owner, time.time()),
            )
        return Claim.OURS, None

    def _check_claim(self, run_id: str, episode: int) -> None:
        touched = self._db.execute(
            "UPDATE episodes SET heartbeat = ? WHERE run_id = ? AND episode = ? "
            "AND status = 'running' AND owner = ?",
            (time.time(), run_id, episode, self.owner),
        )
        if touched.rowcount != 1:
            raise ClaimLostError(
                f"episode {episode} of run {run_id} was taken over by another process"
            )

    def record_step(self, run_id: str, step: StepRecord) -> None:
        values = flat_fields(step)
        if step.context is not None:
            values["context"] = json.dumps(list(step.context))
        columns = ", ".join(values)
        with self._guard(), self._transaction():
            self._check_claim(run_id, step.episode)
            self._db.execute(
                f"INSERT OR REPLACE INTO steps (run_id, {columns}) VALUES (?{', ?' * len(values)})",
                (run_id, *values.values()),
            )

    def finish_episode(self, run_id: str, episode: EpisodeRecord) -> None:
        """Mark a claimed episode done with its totals, which must agree with its steps."""
        values = {k: v for k, v in flat_fields(episode).items() if k != "episode"}
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._guard(), self._transaction():
            self._check_claim(run_id, episode.episode)
            steps, rewards = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(reward), 0) FROM steps "
                "WHERE run_id = ? AND episode = ?",
                (run_id, episode.episode),
            ).fetchone()
            if steps != episode.steps or not math.isclose(
                rewards, episode.total_return, abs_tol=1e-9
            ):
                raise StoreError(
                    f"episode {episode.episode} of run {run_id}: its {steps} stored steps "
                    f"(return {rewards}) disagree with its totals ({episode.steps} steps, "
                    f"return {episode.total_return}); it stays unfinished"
                )
            self._db.execute(
                f"UPDATE episodes SET status = 'done', owner = NULL, {assignments} "
                "WHERE run_id = ? AND episode = ?",
                (*values.values(), run_id, episode.episode),
            )

    def release_claims(self, run_id: str | None = None) -> None:
        """Give up this process's unfinished episodes (of one run, or all), so another
        process may play them at once."""
        query = "UPDATE episodes SET owner = NULL WHERE owner = ? AND status = 'running'"
        params: tuple[str, ...] = (self.owner,)
        if run_id is not None:
            query, params = query + " AND run_id = ?", (*params, run_id)
        with self._guard():
            self._db.execute(query, params)

    def steps(self, run_id: str, episode: int | None = None) -> list[StepRecord]:
        names = column_names(StepRecord)
        query = f"SELECT {', '.join(names)} FROM steps WHERE run_id = ?"
        params: tuple = (run_id,)
        if episode is not None:
            query += " AND episode = ?"
            params += (episode,)
        with self._guard():
            rows = self._db.execute(query + " ORDER BY episode, step", params).fetchall()
        return [self._step_record(dict(zip(names, row, strict=True))) for row in rows]

    def finished_steps(self, run_id: str) -> Callable[[int], list[StepRecord]]:
        """A reader of a finished run's steps by episode: the run's steps are read in one
        query, when first asked for (a measure that needs none reads none)."""
        by_episode: dict[int, list[StepRecord]] | None = None

        def steps_of(episode: int) -> list[StepRecord]:
            nonlocal by_episode
            if by_episode is None:
                by_episode = {}
                for step in self.steps(run_id):
                    by_episode.setdefault(step.episode, []).append(step)
            return by_episode.get(episode, [])

        return steps_of

    def _step_record(self, values: dict[str, Any]) -> StepRecord:
        usage = Usage.from_columns(values)
        plain = {k: v for k, v in values.items() if k not in usage.as_dict()}
        return StepRecord(
            **{
                **plain,
                "kind": _stored(AnswerKind, values["kind"], self.path),
                "stop_reason": _stored(StopReason, values["stop_reason"], self.path),
                "from_cache": bool(values["from_cache"]),
                "usage": usage,
                "context": _stored_context(values["context"], self.path),
            }
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _check_store_file(path: Path) -> None:
    """What can be told about a store path before SQLite opens it, as one-line errors."""
    if path.exists():
        if not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise StoreError(f"run store {path} is {kind}; give the path of a SQLite file")
        try:
            with open(path, "rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except OSError as error:
            raise StoreError(f"run store {path} cannot be read ({error.strerror})") from None
        if header and header != _SQLITE_HEADER:
            raise StoreError(
                f"run store {path} is not a SQLite database; give lmact a file of its own"
            )
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(
            f"run store {path}: cannot create {path.parent} ({error.strerror})"
        ) from None


def process_identity() -> str:
    """This process, as `host:pid:start`: the start time tells a reused pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot (Linux), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces; the fields after it are plain.
    return stat.rpartition(")")[2].split()[19]


def claim_alive(owner: str, heartbeat: float | None, lease_s: float = CLAIM_LEASE_S) -> bool:
    """Whether the process named by `owner` (see `process_identity`) may still be playing.

    On this host, the process is looked up; on another, its claim holds while its last
    write is younger than the lease.
    """
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return heartbeat is not None and time.time() - heartbeat < lease_s
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return not started or _start_time(pid) in ("", started)


_RUN_COLUMNS = "run_id, config, created, demos_used, demos_hash, prefix_tokens"


def _run_record(row: tuple) -> RunRecord:
    run_id, config, created, demos_used, demos_hash, prefix_tokens = row
    return RunRecord(run_id, json.loads(config), created, demos_used, demos_hash, prefix_tokens)


def _episode_record(values: dict[str, Any]) -> EpisodeRecord:
    usage = Usage.from_columns(values)
    plain = {k: v for k, v in values.items() if k not in usage.as_dict()}
    return EpisodeRecord(**{**plain, "terminated": bool(values["terminated"]), "usage": usage})


def _stored_context(value: object, path: Path) -> tuple[int, ...] | None:
    """A step's recorded context read back: a JSON list of episode indices, or NULL."""
    if value is None:
        return None
    try:
        indices = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        indices = None
    if not isinstance(indices, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in indices
    ):
        raise StoreError(f"run store {path}: a step's context is not a list of episode indices")
    return tuple(indices)


_Vocabulary = TypeVar("_Vocabulary", bound=StrEnum)


def _stored(vocabulary: type[_Vocabulary], value: object, path: Path) -> _Vocabulary:
    """A stored word read back as its enum; one that lmact never writes is a damaged store."""
    try:
        return vocabulary(value)
    except ValueError:
        raise StoreError(
            f"run store {path}: {value!r} is not a {vocabulary.__name__} lmact writes "
            "(the file was edited or damaged)"
        ) from None
