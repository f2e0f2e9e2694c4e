"""`lmact merge`: the runs of other stores (shards of a sweep, or any stores) joined into one.

A finished unit the target does not hold finished is copied with its steps; one it holds
finished with the same results is left as it is; one it holds finished with other results
is a conflict, reported and not overwritten (nor is anything else of that run's units,
when the runs' configurations or pinned facts differ). Unfinished units are not copied:
a run resumed on the merged store plays them. The model-call cache is joined (an answer
the target already holds for a request stays), and so are the sweeps' names and grids.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from lmact.store.base import StoreError

_KEY = ("run_id", "chain", "unit_kind", "episode")
# What a unit's row holds besides its key that is not its result: who plays it, and when.
_NOT_RESULTS = frozenset({"status", "owner", "heartbeat"})
_MOST_LISTED = 10  # conflicts named in the report, at most


@dataclass
class Merged:
    """What one source added to the target."""

    runs: int = 0
    units: int = 0
    same: int = 0  # finished in both, with the same results
    calls: int = 0
    conflicts: list[str] = field(default_factory=list)


def merge_database(db: sqlite3.Connection, source: Path) -> Merged:
    """Join the store `source` (opened and brought to this release's layout already) into
    the store open as `db`, in one transaction."""
    db.execute("ATTACH DATABASE ? AS source", (str(source),))
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            merged = _merge(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.execute("DETACH DATABASE source")
    return merged


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA main.table_info({table})")]


def _merge(db: sqlite3.Connection) -> Merged:
    merged = Merged()
    differing = db.execute(
        "SELECT s.run_id FROM source.runs s JOIN main.runs m USING (run_id) "
        "WHERE s.config IS NOT m.config OR (s.facts IS NOT m.facts AND m.facts != '{}' "
        "AND s.facts != '{}')"
    ).fetchall()
    merged.conflicts += [f"run {run}: its configuration or facts differ" for (run,) in differing]
    db.execute("CREATE TEMP TABLE skipped_runs (run_id TEXT PRIMARY KEY)")
    db.executemany("INSERT INTO skipped_runs VALUES (?)", differing)
    merged.runs = db.execute(
        "INSERT INTO main.runs SELECT * FROM source.runs "
        "WHERE run_id NOT IN (SELECT run_id FROM main.runs)"
    ).rowcount
    db.execute(  # a run's facts recorded by the source where the target had none yet
        "UPDATE main.runs SET facts = (SELECT facts FROM source.runs s WHERE s.run_id = "
        "main.runs.run_id) WHERE facts = '{}' AND run_id IN (SELECT run_id FROM source.runs "
        "WHERE facts != '{}') AND run_id NOT IN (SELECT run_id FROM skipped_runs)"
    )
    _merge_units(db, merged)
    merged.calls = db.execute(
        "INSERT OR IGNORE INTO main.model_calls SELECT * FROM source.model_calls"
    ).rowcount
    db.execute("INSERT OR IGNORE INTO main.sweeps SELECT * FROM source.sweeps")
    db.execute("INSERT OR IGNORE INTO main.sweep_runs SELECT * FROM source.sweep_runs")
    db.execute("DROP TABLE temp.skipped_runs")
    return merged


def _merge_units(db: sqlite3.Connection, merged: Merged) -> None:
    """The source's finished units: copied where the target does not hold them finished,
    compared where it does."""
    columns = _columns(db, "episodes")
    results = [c for c in columns if c not in _NOT_RESULTS and c not in _KEY]
    joined = " AND ".join(f"s.{k} = m.{k}" for k in _KEY)
    differ = " OR ".join(f"s.{c} IS NOT m.{c}" for c in results)
    both = (
        f"FROM source.episodes s JOIN main.episodes m ON {joined} "
        "WHERE s.status = 'done' AND m.status = 'done'"
    )
    conflicting = db.execute(f"SELECT s.run_id, s.chain, s.unit_kind, s.episode {both} "
                             f"AND ({differ})").fetchall()  # fmt: skip
    merged.conflicts += [
        f"run {run}: {kind} {index}{f' of chain {chain}' if chain else ''} holds other results"
        for run, chain, kind, index in conflicting
    ]
    merged.same = db.execute(f"SELECT COUNT(*) {both} AND NOT ({differ})").fetchone()[0]
    key = ", ".join(_KEY)
    db.execute(
        f"CREATE TEMP TABLE incoming AS SELECT s.{key.replace(', ', ', s.')} "
        f"FROM source.episodes s LEFT JOIN main.episodes m ON {joined} "
        "WHERE s.status = 'done' AND (m.run_id IS NULL OR m.status != 'done') "
        "AND s.run_id NOT IN (SELECT run_id FROM skipped_runs)"
    )
    within = f"({key}) IN (SELECT {key} FROM temp.incoming)"
    db.execute(f"DELETE FROM main.steps WHERE {within}")  # an unfinished attempt's
    listed = ", ".join(columns)
    merged.units = db.execute(
        f"INSERT OR REPLACE INTO main.episodes ({listed}) SELECT {listed} "
        f"FROM source.episodes WHERE {within}"
    ).rowcount
    steps = ", ".join(_columns(db, "steps"))
    db.execute(f"INSERT INTO main.steps ({steps}) SELECT {steps} FROM source.steps WHERE {within}")
    db.execute("DROP TABLE temp.incoming")


def describe(source: Path, merged: Merged) -> str:
    """What a source added, in a line, and its conflicts (the first few), one a line."""
    line = (
        f"{source}: {merged.runs} runs and {merged.units} finished units added, "
        f"{merged.same} already held, {merged.calls} cached calls added"
    )
    if not merged.conflicts:
        return line
    shown = merged.conflicts[:_MOST_LISTED]
    more = len(merged.conflicts) - len(shown)
    tail = [f"  … and {more} more"] if more else []
    named = "1 conflict" if len(merged.conflicts) == 1 else f"{len(merged.conflicts)} conflicts"
    return "\n".join([f"{line}; {named}, not overwritten:",
                      *(f"  {conflict}" for conflict in shown), *tail])  # fmt: skip


def check_sources(sources: list[Path], into: Path) -> None:
    """Each source an existing file other than the target: one-line errors."""
    for source in sources:
        if not source.is_file():
            raise StoreError(f"lmact merge: no store {source}")
        if source.resolve() == into.resolve():
            raise StoreError(f"lmact merge: {source} is the store merged into")
