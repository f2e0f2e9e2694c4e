"""Reading a run store: its runs, sweeps, finished units and steps, in SQL that every
backend of `RunStore` speaks (placeholders `?`, translated where a driver wants others)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from lmact.models.base import TOKEN_FIELDS
from lmact.records import (
    AnswerKind,
    EpisodeRecord,
    StepRecord,
    StopReason,
    UnitKey,
    UnitKind,
    Usage,
    column_names,
)
from lmact.store.base import (
    FACTS_TEXT,
    RunRecord,
    StoreError,
    UnitResult,
    UnitSums,
    read_config,
    read_facts,
    stored_word,
    unit_named,
)
from lmact.store.reader import StoredSteps

# The columns a record's usage is read back from (a set: every column of every row is
# tested against it when a report reads thousands of episodes).
USAGE_COLUMNS = frozenset(TOKEN_FIELDS)
# A unit's key in a WHERE clause, bound from `unit_key`.
AT_UNIT = "chain = ? AND unit_kind = ? AND episode = ?"
UNIT_ORDER = "chain, unit_kind, episode"
RUN_COLUMNS = "run_id, config, created, facts"
STEP_COLUMNS = frozenset(column_names(StepRecord))
# The episodes' columns `finished_units` sums: the answer kinds' first (as `UnitSums`).
SUMMED = ("steps", "illegal", "invalid", "empty", "unreadable", *TOKEN_FIELDS)


def unit_key(unit: UnitKey) -> tuple[int, str, int]:
    return unit.chain, unit.kind.value, unit.index


class Transaction:
    """A transaction on a store's connection, begun with `begin` (each backend's words),
    committed at the end of the block or rolled back on an error. A rollback that fails
    (the connection gone: the server or the file rolled back already) leaves the first
    error to be seen."""

    def __init__(self, db: Any, begin: str) -> None:
        self._db, self._begin = db, begin

    def __enter__(self) -> None:
        self._db.execute(self._begin)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
            return
        with contextlib.suppress(Exception):
            self._db.execute("ROLLBACK")


class StoreReads:
    """What `RunStore` reads, over the connection its backend opened (`_db`)."""

    path: Path | str
    _db: Any  # a DB-API connection: `execute` and cursors' `fetchone/fetchall/fetchmany`
    # The driver's failures, which `_guard` turns into the backend's one-line `_error`.
    _driver_error: type[Exception]
    # Marks a condition as not to be served by the key's index (SQLite's unary `+`): with
    # one, SQLite sorts what the index gives in order. Other backends need none.
    INDEX_HINT = "+"
    # How a cached answer is read: SQLite's as bytes (a row damaged into invalid UTF-8 must
    # not fail the read); a server's text is valid.
    RESPONSE_READ = "CAST(response AS BLOB)"

    def _error(self, error: BaseException) -> StoreError:
        raise NotImplementedError

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """The driver's failures (a full disk, a server gone, a refused statement) as
        one-line errors."""
        try:
            yield
        except self._driver_error as error:
            raise self._error(error) from None

    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> AbstractContextManager[None]:
        raise NotImplementedError

    def _kinds_clause(self, kinds: Collection[UnitKind] | None, table: str = "") -> str:
        """The condition on units' kinds, its values bound after the others; none for None."""
        if kinds is None:
            return ""
        return f" AND {self.INDEX_HINT}{table}unit_kind IN ({', '.join('?' * len(kinds))})"

    def runs(self) -> list[RunRecord]:
        with self._guard():
            rows = self._db.execute(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY created").fetchall()
        return [self._run_record(row) for row in rows]

    def run(self, run_id: str) -> RunRecord | None:
        """One run by its id; None if the store has none of that id."""
        with self._guard():
            row = self._db.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return self._run_record(row) if row is not None else None

    def _run_record(self, row: tuple) -> RunRecord:
        run_id, config, created, facts = row
        return RunRecord(
            run_id,
            read_config(config, run_id, self.path),
            created,
            read_facts(facts, f"run {run_id}", self.path),
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

    def finished_episodes(
        self, run_id: str, units: Collection[UnitKey] | None = None
    ) -> dict[UnitKey, EpisodeRecord]:
        """A run's finished units (all, or those of `units` that are), chain by chain
        (episodes, then evaluations)."""
        names = column_names(EpisodeRecord)
        select = f"SELECT {', '.join(names)} FROM episodes WHERE run_id = ? AND status = 'done'"
        with self._guard(), self._transaction("BEGIN"):
            if units is None:
                rows = self._db.execute(f"{select} ORDER BY {UNIT_ORDER}", (run_id,)).fetchall()
            else:  # a page's few units, each by its key
                rows = [
                    row
                    for unit in sorted(units)
                    for row in self._db.execute(
                        f"{select} AND {AT_UNIT}", (run_id, *unit_key(unit))
                    )
                ]
        records = [self._episode_record(run_id, dict(zip(names, row, strict=True))) for row in rows]
        return {record.unit: record for record in records}

    def finished_unit_keys(self, run_id: str, chains: int | None = None) -> list[UnitKey]:
        """The keys of a run's finished units (of its first `chains` chains, or all), chain
        by chain, and nothing else of them."""
        below = "" if chains is None else " AND chain < ?"
        with self._guard():
            rows = self._db.execute(
                "SELECT chain, unit_kind, episode FROM episodes WHERE run_id = ? AND "
                f"status = 'done'{below} ORDER BY {UNIT_ORDER}",
                (run_id,) if chains is None else (run_id, chains),
            ).fetchall()
        kinds = {kind.value: kind for kind in UnitKind}  # words not lmact's: a damaged store
        return [
            UnitKey(c, i, kinds.get(k) or stored_word(UnitKind, k, self.path)) for c, k, i in rows
        ]

    def finished_count(self, run_id: str) -> int:
        """How many units of a run are finished."""
        with self._guard():
            query = "SELECT COUNT(*) FROM episodes WHERE run_id = ? AND status = 'done'"
            return int(self._db.execute(query, (run_id,)).fetchone()[0])

    def finished_units(
        self, run_id: str, kinds: Collection[UnitKind] | None = None
    ) -> tuple[list[UnitResult], UnitSums]:
        """A run's finished units (of `kinds`, or all), chain by chain, as a score reads
        them: each one's key, seed, return and cost (`UnitResult`), and their sums of
        steps, answer kinds and tokens, summed by SQL; both as of one moment."""
        where = f"run_id = ? AND status = 'done'{self._kinds_clause(kinds)}"
        params = (run_id, *(kind.value for kind in kinds or ()))
        summed = ", ".join(f"COALESCE(SUM({name}), 0)" for name in SUMMED)
        with self._guard(), self._transaction("BEGIN"):
            rows = self._db.execute(
                "SELECT chain, unit_kind, episode, seed, total_return, cost_usd FROM episodes "
                f"WHERE {where} ORDER BY {UNIT_ORDER}",
                params,
            ).fetchall()
            count, *sums = self._db.execute(
                f"SELECT COUNT(*), {summed} FROM episodes WHERE {where}", params
            ).fetchone()
        make, words = UnitResult._make, {kind.value: kind for kind in UnitKind}
        try:
            units = [make((c, words[w], e, s, r, k)) for c, w, e, s, r, k in rows]
        except KeyError as error:
            stored_word(UnitKind, error.args[0], self.path)  # raises: a word lmact never writes
            raise
        totals = dict(zip(SUMMED, sums, strict=True))
        usage = Usage.from_columns(totals)
        return units, UnitSums(count, *(totals[name] for name in SUMMED[:5]), usage)

    def steps(self, run_id: str, unit: UnitKey | None = None, count: int = 1) -> list[StepRecord]:
        """A run's stored steps (of one unit and the `count` - 1 after it in its chain, or
        of all), chain by chain, in order."""
        names = column_names(StepRecord)
        query = f"SELECT {', '.join(names)} FROM steps WHERE run_id = ?"
        params: tuple = (run_id,)
        if unit is not None:
            query += " AND chain = ? AND unit_kind = ? AND episode >= ? AND episode < ?"
            params += (*unit_key(unit), unit.index + count)
        with self._guard():
            rows = self._db.execute(f"{query} ORDER BY {UNIT_ORDER}, step", params).fetchall()
        return [self._step_record(run_id, dict(zip(names, row, strict=True))) for row in rows]

    def finished_steps(self, run_id: str) -> StoredSteps:
        """A reader of a finished run's steps (`StoredSteps`): nothing is read until asked."""
        return StoredSteps(self, run_id)

    def step_values(
        self,
        run_id: str,
        columns: Sequence[str],
        kinds: Collection[UnitKind] | None = None,
        first_step: bool = False,
    ) -> Iterator[tuple[Any, ...]]:
        """Only `columns` of a run's stored steps (of units of `kinds`, or all; with
        `first_step`, each unit's first), unit by unit in order, as a stream: what a measure
        reads of many steps, without their completions. `unit_kind`, `kind` and
        `stop_reason` come back as their enums, `from_cache` as a bool, `facts` as a dict
        (`FACTS_TEXT`: as the JSON text stored, for a reader that parses each distinct text
        once)."""
        read, selected = self._step_columns(run_id, columns)
        query = (
            f"SELECT {', '.join(selected)} FROM steps WHERE run_id = ?{self._kinds_clause(kinds)}"
            f"{' AND step = 0' if first_step else ''} ORDER BY {UNIT_ORDER}, step"
        )
        with self._guard():
            cursor = self._db.execute(query, (run_id, *(kind.value for kind in kinds or ())))
            while rows := cursor.fetchmany(4096):
                if not any(read):
                    yield from rows
                    continue
                for row in rows:
                    yield tuple(v if r is None else r(v) for r, v in zip(read, row, strict=True))

    def first_step_groups(
        self, run_id: str, columns: Sequence[str], summed: str, kinds: Collection[UnitKind]
    ) -> list[tuple[Any, ...]]:
        """The first steps of a run's finished units of `kinds`, grouped by `columns` (as
        `step_values` names them, read back as it reads them): each group's values, how
        many steps it holds, the sum of their `summed` column and a chain it holds a step
        of (for a message to name one), counted by SQL, as of one moment."""
        read, selected = self._step_columns(run_id, columns, summed)
        grouped = ", ".join(selected)
        where = f"WHERE s.run_id = ? AND s.step = 0{self._kinds_clause(kinds, 's.')}"
        params = (run_id, *(kind.value for kind in kinds))
        # Every first step counted, then those of unfinished units (a few) taken out: a join
        # with each step's unit took as long again as the count.
        with self._guard(), self._transaction("BEGIN"):
            rows = self._db.execute(
                f"SELECT {grouped}, COUNT(*), COALESCE(SUM({summed}), 0), MIN(chain) "
                f"FROM steps s {where} GROUP BY {grouped}",
                params,
            ).fetchall()
            unfinished = self._db.execute(
                f"SELECT {', '.join(f's.{name}' for name in selected)}, s.{summed} "
                "FROM episodes e JOIN steps s ON s.run_id = e.run_id AND s.chain = e.chain "
                "AND s.unit_kind = e.unit_kind AND s.episode = e.episode AND s.step = 0 "
                f"WHERE e.run_id = ? AND e.status != 'done'{self._kinds_clause(kinds, 'e.')}",
                params,
            ).fetchall()
        groups = {tuple(row[: len(columns)]): list(row[len(columns) :]) for row in rows}
        for *values, amount in unfinished:
            group = groups[tuple(values)]
            group[0], group[1] = group[0] - 1, group[1] - (amount or 0)
        return [
            (*(v if r is None else r(v) for r, v in zip(read, values, strict=True)), *counted)
            for values, counted in groups.items()
            if counted[0]
        ]

    def _step_columns(
        self, run_id: str, columns: Sequence[str], *also: str
    ) -> tuple[list[Callable[[Any], Any] | None], list[str]]:
        """How `columns` of stored steps are read back (`_reader_of`) and selected (the
        column `FACTS_TEXT` names); ValueError for none, or for a name (of them or `also`)
        that is not a step's column."""
        unknown = [name for name in (*columns, *also) if name not in STEP_COLUMNS | {FACTS_TEXT}]
        if unknown or not columns:
            raise ValueError(f"not columns of a stored step: {unknown or columns!r}")
        read = [self._reader_of(name, run_id) for name in columns]
        return read, ["facts" if name == FACTS_TEXT else name for name in columns]

    def _reader_of(self, column: str, run_id: str) -> Callable[[Any], Any] | None:
        """How `step_values` reads a stored column back (None: as it is)."""
        words = {"unit_kind": UnitKind, "kind": AnswerKind, "stop_reason": StopReason}
        if column in words:
            vocabulary = words[column]
            return lambda value: stored_word(vocabulary, value, self.path)
        if column == "from_cache":
            return bool
        if column == "facts":
            return lambda value: read_facts(value, f"a step of run {run_id}", self.path)
        return None

    def _step_record(self, run_id: str, values: dict[str, Any]) -> StepRecord:
        usage = Usage.from_columns(values)
        plain = {k: v for k, v in values.items() if k not in USAGE_COLUMNS}
        unit = self._unit(values)

        def where() -> str:
            return f"step {values['step']} of {unit_named(unit)} of run {run_id}"

        return StepRecord(
            **{
                **plain,
                "kind": stored_word(AnswerKind, values["kind"], self.path),
                "stop_reason": stored_word(StopReason, values["stop_reason"], self.path),
                "from_cache": bool(values["from_cache"]),
                "usage": usage,
                "unit_kind": unit.kind,
                "facts": read_facts(values["facts"], where, self.path),
            }
        )

    def _episode_record(self, run_id: str, values: dict[str, Any]) -> EpisodeRecord:
        usage = Usage.from_columns(values)
        plain = {k: v for k, v in values.items() if k not in USAGE_COLUMNS}
        unit = self._unit(values)
        return EpisodeRecord(
            **{
                **plain,
                "terminated": bool(values["terminated"]),
                "usage": usage,
                "unit_kind": unit.kind,
                "facts": read_facts(
                    values["facts"], lambda: f"{unit_named(unit)} of run {run_id}", self.path
                ),
            }
        )

    def _unit(self, values: dict[str, Any]) -> UnitKey:
        kind = stored_word(UnitKind, values["unit_kind"], self.path)
        return UnitKey(values["chain"], values["episode"], kind)
