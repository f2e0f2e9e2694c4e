"""The run store in one SQLite file: every run, episode and step, and the model-call cache.

WAL mode, one short transaction per write: a run killed at any moment leaves every
completed step and call on disk. A rerun skips finished episodes, replays unfinished ones
from the start (their model calls come back from the cache) and so reproduces every number.
The layout and its migrations are `lmact.store.schema`'s.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmact.records import (
    EpisodeRecord,
    StepRecord,
    UnitKey,
)
from lmact.store import schema
from lmact.store.base import (
    CLAIM_LEASE_S,
    DEFAULT_STORE,
    Claim,
    ClaimLostError,
    StoreError,
    UnitEnd,
    claim_alive,
    facts_text,
    process_identity,
    read_facts,
    row_values,
    step_rows,
    totals_agree,
    unit_named,
)
from lmact.store.merge import Merged, merge_database
from lmact.store.reads import AT_UNIT, StoreReads, Transaction, unit_key

# How long opening a store waits for other processes that hold it (creating it, say).
OPEN_TIMEOUT_S = 60.0


class RunStore(StoreReads):
    """One SQLite file; also the model-call cache (`get_call` / `put_call`).

    Any number of processes may share one store: an episode is played by the one process
    that claimed it (`claim_episode`), its steps and its end are written only while that
    claim holds, and a finished episode is never reopened.
    """

    _driver_error = sqlite3.Error  # a full disk, a file gone read-only: `_guard`'s

    def __init__(self, path: Path | str = DEFAULT_STORE) -> None:
        self.path = Path(path)
        self.owner = process_identity()
        self._claimed = False  # whether this store ever claimed a unit: its close releases
        self.lease_s = CLAIM_LEASE_S  # another host's claim holds while renewed within it
        schema.check_store_file(self.path)
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
                schema.check_ours(self._db, self.path)
                self._migrate()
                self._db.execute("PRAGMA synchronous=NORMAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        """Bring the file to this release's layout (`lmact.store.schema`) and mark it as
        lmact's; writes nothing to a store that is up to date."""
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        if schema.up_to_date(self._db):
            return
        with self._transaction():
            schema.migrate(self._db, self.path)

    def _error(self, error: BaseException) -> StoreError:
        hint = ""
        if "disk I/O error" in str(error) or "full" in str(error):
            hint = " (is the disk full?); what was stored before is kept"
        return StoreError(f"run store {self.path}: {error}{hint}")

    def merge_from(self, source: Path) -> Merged:
        """Join another store's runs into this one (`lmact.store.merge`): open `source`
        first, which brings it to this release's layout."""
        with RunStore(source), self._guard():
            return merge_database(self._db, source)

    def close(self) -> None:
        if self._claimed:  # a reader's close writes nothing (the release scans every unit)
            with contextlib.suppress(StoreError):  # a store gone: its claims end with it
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
        # Read as bytes where the backend may hold invalid UTF-8 (SQLite): a row damaged so
        # must not fail the read.
        row = self._db.execute(
            f"SELECT {self.RESPONSE_READ} FROM model_calls WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        if isinstance(row[0], str):
            return row[0]
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
                "INSERT INTO model_calls (key, model, response, created) VALUES (?,?,?,?) "
                "ON CONFLICT (key) DO UPDATE SET model = excluded.model, "
                "response = excluded.response, created = excluded.created",
                (key, model, response_json, time.time()),
            )

    # Runs.

    def save_run(
        self,
        run_id: str,
        config: dict[str, Any],
        facts: dict[str, Any] | None = None,
        pinned: Mapping[str, str] | None = None,
    ) -> None:
        """Record a run with its regime's `facts` (a JSON object, replacing those stored).

        `pinned` names the facts a run that has episodes must keep, each with what it stands
        for: its episodes were played under them (imitation pins its demonstrations' hash).
        Raises StoreError if one differs from the value stored: the episodes would mix two
        prompts.
        """
        text = facts_text(facts or {})
        with self._guard(), self._transaction():
            row = self._db.execute("SELECT facts FROM runs WHERE run_id = ?", (run_id,))
            stored = row.fetchone()
            if stored is not None and pinned and self._has_episodes(run_id):
                before = read_facts(stored[0], f"run {run_id}", self.path)
                self._check_pinned(run_id, before, facts or {}, pinned)
            self._db.execute(
                "INSERT INTO runs (run_id, config, created, facts) VALUES (?,?,?,?) "
                "ON CONFLICT(run_id) DO UPDATE SET facts = excluded.facts",
                (run_id, json.dumps(config, sort_keys=True), time.time(), text),
            )

    def _check_pinned(
        self, run_id: str, before: dict[str, Any], now: dict[str, Any], pinned: Mapping[str, str]
    ) -> None:
        for name, what in pinned.items():
            if before.get(name) != now.get(name):
                raise StoreError(
                    f"run {run_id} in {self.path} was played with other {what}: its {name} "
                    f"was {before.get(name)}, now {now.get(name)}; rerun with --restart to "
                    "discard its episodes and play them afresh, or use another --store"
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

    # Sweeps.

    def save_sweep(self, name: str, grid: dict[str, Any], run_ids: list[str]) -> None:
        """Record a sweep's grid and the runs (and baselines) it holds; a sweep of the same
        name is replaced."""
        with self._guard(), self._transaction():
            self._db.execute(
                "INSERT INTO sweeps (name, grid, created) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET grid = excluded.grid, created = excluded.created",
                (name, json.dumps(grid, sort_keys=True), time.time()),
            )
            self._db.execute("DELETE FROM sweep_runs WHERE name = ?", (name,))
            self._db.executemany(
                "INSERT INTO sweep_runs (name, run_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(name, run_id) for run_id in run_ids],
            )

    # Episodes and steps.

    def _held_by_other(self, owner: str | None, heartbeat: float | None) -> bool:
        return (
            owner is not None
            and owner != self.owner
            and claim_alive(owner, heartbeat, self.lease_s)
        )

    def claim_episode(self, run_id: str, unit: UnitKey, seed: int) -> tuple[Claim, str | None]:
        """Take a unit to play, atomically, unless it is finished or a live process plays
        it. Returns what was found and, when BUSY, the owner. Taking a unit drops the steps
        of an earlier, unfinished attempt (a crashed or released one)."""
        with self._guard(), self._transaction():
            return self._claim(run_id, unit, seed)

    def _claim(self, run_id: str, unit: UnitKey, seed: int) -> tuple[Claim, str | None]:
        """`claim_episode`'s statements, within the caller's transaction: a unit never
        claimed before (most, in a new run) is taken by its insert alone."""
        taken = self._db.execute(
            "INSERT INTO episodes (run_id, chain, unit_kind, episode, seed, status, owner, "
            "heartbeat) VALUES (?, ?, ?, ?, ?, 'running', ?, ?) ON CONFLICT DO NOTHING",
            (run_id, *unit_key(unit), seed, self.owner, time.time()),
        )
        self._claimed = True
        if taken.rowcount == 1:
            return Claim.OURS, None
        row = self._db.execute(
            f"SELECT status, owner, heartbeat FROM episodes WHERE run_id = ? AND {AT_UNIT}",
            (run_id, *unit_key(unit)),
        ).fetchone()
        if row is None:  # deleted since (a discarded run): busy, looked at again later
            return Claim.BUSY, None
        status, owner, heartbeat = row
        if status == "done":
            return Claim.DONE, None
        if self._held_by_other(owner, heartbeat):
            return Claim.BUSY, owner
        # Taken over only as it was seen: of two processes that saw one expired claim (on a
        # server, where both may read before either writes), one takes it.
        taken = self._db.execute(
            "UPDATE episodes SET seed = ?, owner = ?, heartbeat = ? WHERE run_id = ? AND "
            f"{AT_UNIT} AND status = 'running' AND owner IS NOT DISTINCT FROM ? AND "
            "heartbeat IS NOT DISTINCT FROM ?",
            (seed, self.owner, time.time(), run_id, *unit_key(unit), owner, heartbeat),
        )
        if taken.rowcount != 1:
            return Claim.BUSY, owner
        self._db.execute(  # the earlier attempt's
            f"DELETE FROM steps WHERE run_id = ? AND {AT_UNIT}", (run_id, *unit_key(unit))
        )
        return Claim.OURS, None

    def _check_claim(self, run_id: str, unit: UnitKey) -> None:
        touched = self._db.execute(
            f"UPDATE episodes SET heartbeat = ? WHERE run_id = ? AND {AT_UNIT} "
            "AND status = 'running' AND owner = ?",
            (time.time(), run_id, *unit_key(unit), self.owner),
        )
        if touched.rowcount != 1:
            raise ClaimLostError(_taken_over(run_id, unit))

    def record_step(self, run_id: str, step: StepRecord) -> None:
        """Store a step of a unit this process claimed (the unit the step names)."""
        self.record_steps(run_id, [step])

    def record_steps(self, run_id: str, steps: Sequence[StepRecord]) -> None:
        """Store steps of one unit this process claimed, in one transaction."""
        if not steps:
            return
        unit = steps[0].unit
        rows = step_rows(unit, steps)  # facts that are not JSON fail here, before a write
        with self._guard(), self._transaction():
            self._check_claim(run_id, unit)
            self._insert_steps(run_id, rows)

    def _insert_steps(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        names = list(rows[0])
        updated = ", ".join(f"{name} = excluded.{name}" for name in names)
        self._db.executemany(
            f"INSERT INTO steps (run_id, {', '.join(names)}) VALUES (?{', ?' * len(names)}) "
            f"ON CONFLICT (run_id, chain, unit_kind, episode, step) DO UPDATE SET {updated}",
            [(run_id, *row.values()) for row in rows],
        )

    def finish_episode(
        self,
        run_id: str,
        episode: EpisodeRecord,
        steps: Sequence[StepRecord] = (),
        *,
        all_steps: bool = False,
        claim_next: tuple[UnitKey, int] | None = None,
    ) -> tuple[Claim, str | None] | None:
        """`finish_units` of one unit."""
        return self.finish_units(run_id, [UnitEnd(episode, steps, all_steps)], claim_next)

    def finish_units(
        self, run_id: str, ends: Sequence[UnitEnd], claim_next: tuple[UnitKey, int] | None = None
    ) -> tuple[Claim, str | None] | None:
        """Mark units done with their totals, in one transaction: the first one claimed by
        this process, the others (the units after it in its chain, played while their ends
        waited) claimed here; each one's totals must agree with its steps, those stored
        before and those it carries. `claim_next`, a unit and its seed: claimed in the same
        transaction (`claim_episode`'s answer returned), as the next unit of a chain is, so
        a chain of short units costs one transaction for many units."""
        rows = [step_rows(end.record.unit, end.steps) for end in ends]  # checked before a write
        with self._guard(), self._transaction():
            for index, (end, unit_rows) in enumerate(zip(ends, rows, strict=True)):
                unit = end.record.unit
                if index and self._claim(run_id, unit, end.record.seed)[0] is not Claim.OURS:
                    raise ClaimLostError(_taken_over(run_id, unit))
                self._finish(run_id, end, unit_rows)
            return None if claim_next is None else self._claim(run_id, *claim_next)

    def _finish(self, run_id: str, end: UnitEnd, rows: list[dict[str, Any]]) -> None:
        """`finish_units`' statements for one unit, within its transaction: any failure
        rolls the whole transaction back, the steps given included."""
        episode, unit = end.record, end.record.unit
        values = {k: v for k, v in row_values(episode).items() if k not in _KEY_COLUMNS}
        assignments = ", ".join(f"{name} = ?" for name in values)
        if rows:
            self._insert_steps(run_id, rows)
        if end.all_steps:
            count, rewards = len(end.steps), sum(step.reward for step in end.steps)
        else:
            count, rewards = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(reward), 0) FROM steps "
                f"WHERE run_id = ? AND {AT_UNIT}",
                (run_id, *unit_key(unit)),
            ).fetchone()
        finished = self._db.execute(  # only while this process holds the unit
            f"UPDATE episodes SET status = 'done', owner = NULL, {assignments} "
            f"WHERE run_id = ? AND {AT_UNIT} AND status = 'running' AND owner = ?",
            (*values.values(), run_id, *unit_key(unit), self.owner),
        )
        if finished.rowcount != 1:
            raise ClaimLostError(_taken_over(run_id, unit))
        if not totals_agree(count, rewards, episode.steps, episode.total_return):
            raise StoreError(
                f"{unit_named(unit)} of run {run_id}: its {count} stored steps (return {rewards}) "
                f"disagree with its totals ({episode.steps} steps, return "
                f"{episode.total_return}); it stays unfinished"
            )

    def exclusive(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Held by one process at a time among those that share this store, by `name` (a
        demonstration pool's generation): on one host, the cache's own file lock serves."""
        return contextlib.nullcontext()

    def renew_claims(self) -> None:
        """Renew the lease of every unit this process plays (the runner does, every third of
        the lease): another host takes a unit over only when its lease ran out."""
        if not self._claimed:
            return
        with self._guard():
            self._db.execute(
                "UPDATE episodes SET heartbeat = ? WHERE owner = ? AND status = 'running'",
                (time.time(), self.owner),
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

    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Transaction:
        """A write transaction; with "BEGIN", reads of one moment (SQLite's snapshot)."""
        return Transaction(self._db, begin)


_KEY_COLUMNS = frozenset({"chain", "unit_kind", "episode"})


def _taken_over(run_id: str, unit: UnitKey) -> str:
    return f"{unit_named(unit)} of run {run_id} was taken over by another process"
