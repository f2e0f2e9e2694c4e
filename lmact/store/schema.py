"""The SQLite layout of a run store, and the migrations that bring an older store to it.

Layout 2 (this one) keys a unit by (chain, unit_kind, episode), as `lmact.records.UnitKey`
names it, and keeps what only one regime records in a JSON object per level: `runs.facts`,
`episodes.facts`, `steps.facts`. Layout 1 (releases up to 0.2) keyed a unit by one number,
an in-context RL unit being `replicate * 100000 + episode` (a held-out evaluation k:
`replicate * 100000 + 50000 + k`), and kept imitation's facts and in-context RL's contexts
in columns of their own. A store's layout is its `PRAGMA user_version`; an unmarked lmact
store (before 0.1 marked them) is of layout 1.

An older store is migrated when it is opened, in place and in one transaction (a failure
leaves it as it was), under the write lock, after reading its layout again: of several
processes opening it at once, the first migrates and the others find it done. A store of a
newer layout is refused before anything is written to it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from lmact.store.base import StoreError

# Marks a SQLite file as an lmact run store ("lmac"), and the layout it has.
APPLICATION_ID = 0x6C6D6163
SCHEMA_VERSION = 2

_USAGE = """
    prompt_tokens INTEGER{null},
    completion_tokens INTEGER{null},
    cached_tokens INTEGER{null},
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL,"""  # cost NULL: the model's prices are unknown
# A unit's key; the defaults are those of a regime whose every unit stands alone.
_UNIT = """
    chain INTEGER NOT NULL DEFAULT 0,
    unit_kind TEXT NOT NULL DEFAULT 'episode' CHECK (unit_kind IN ('episode', 'evaluation')),
    episode INTEGER NOT NULL,"""
# `facts`: what the run's regime records and no other does, a JSON object (see docs).
TABLES = {
    "runs": """(
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created REAL NOT NULL,
    facts TEXT NOT NULL DEFAULT '{}'
)""",
    "episodes": f"""(
    run_id TEXT NOT NULL REFERENCES runs(run_id),{_UNIT}
    seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    total_return REAL,
    steps INTEGER,
    terminated INTEGER,
    valid INTEGER,
    illegal INTEGER,
    invalid INTEGER,
    empty INTEGER,{_USAGE.format(null="")}
    unreadable INTEGER NOT NULL DEFAULT 0,
    end_reason TEXT,
    owner TEXT,
    heartbeat REAL,
    facts TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (run_id, chain, unit_kind, episode)
)""",
    "steps": f"""(
    run_id TEXT NOT NULL,{_UNIT}
    step INTEGER NOT NULL,
    prompt_hash TEXT NOT NULL,
    completion TEXT NOT NULL,
    answer TEXT NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    reward REAL NOT NULL,
    stop_reason TEXT NOT NULL,{_USAGE.format(null=" NOT NULL")}
    latency_s REAL NOT NULL,
    from_cache INTEGER NOT NULL,
    facts TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (run_id, chain, unit_kind, episode, step)
)""",
    "sweeps": """(
    name TEXT PRIMARY KEY,
    grid TEXT NOT NULL,
    created REAL NOT NULL
)""",
    "sweep_runs": """(
    name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (name, run_id)
)""",
    "model_calls": """(
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)""",
}
# Columns added to layout 2 after its release, by table: created with the table in a new
# store, added to an older one (a nullable column or one with a default).
ADDED_COLUMNS: dict[str, dict[str, str]] = {}
LMACT_TABLES = frozenset(TABLES)
# The tables layout 1 keyed by a unit number, rebuilt by the migration.
_REKEYED = ("runs", "episodes", "steps")
# Layout 1's encoding of in-context RL units (see the module's docstring).
_STRIDE, _EVALUATIONS = 100_000, 50_000


def check_ours(db: sqlite3.Connection, path: Path) -> None:
    """Refuse another program's SQLite file, or a newer lmact's store, before writing."""
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = table_names(db)
    if application_id not in (0, APPLICATION_ID):
        raise StoreError(
            f"run store {path} is another program's SQLite database "
            f"(application_id {application_id:#x}); give lmact a file of its own"
        )
    if application_id == 0 and tables and not tables <= LMACT_TABLES | {"sqlite_sequence"}:
        raise StoreError(
            f"run store {path} is another program's SQLite database (tables: "
            f"{', '.join(sorted(tables))}); give lmact a file of its own"
        )
    _check_version(version, path)


def _check_version(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"run store {path} was written by a newer lmact (layout {version}, "
            f"this one reads {SCHEMA_VERSION}); upgrade lmact"
        )


def table_names(db: sqlite3.Connection) -> set[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows}


def columns_of(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def up_to_date(db: sqlite3.Connection) -> bool:
    """Whether the store is of this layout, whole: then opening it writes nothing (so a
    read-only store still reads)."""
    marked = db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    version = db.execute("PRAGMA user_version").fetchone()[0]
    return (
        marked
        and version == SCHEMA_VERSION
        and table_names(db) >= LMACT_TABLES
        and not _missing_columns(db)
    )


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the store to this layout; the caller holds the write lock (BEGIN IMMEDIATE)
    and commits. The layout is read again here: another process may have migrated it
    between the first look and the lock."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    _check_version(version, path)
    tables = table_names(db)
    if version < SCHEMA_VERSION and tables & set(_REKEYED):
        _from_layout_1(db)
    for table, definition in TABLES.items():
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} {definition}")
    for table, name, declaration in _missing_columns(db):
        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _missing_columns(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    missing = []
    for table, columns in ADDED_COLUMNS.items():
        present = set(columns_of(db, table))
        if present:  # else created with every column
            missing += [(table, n, d) for n, d in columns.items() if n not in present]
    return missing


# --- Layout 1 to 2 ---------------------------------------------------------------------------


def _from_layout_1(db: sqlite3.Connection) -> None:
    """Rebuild the runs, episodes and steps tables in layout 2: units keyed by their chain,
    kind and index, regime-named columns moved into `facts`. A layout-1 store may lack
    columns that later releases of it added: they take their defaults."""
    present = table_names(db)
    db.execute("CREATE TEMP TABLE layout1_icrl_runs (run_id TEXT PRIMARY KEY)")
    run_facts: list[tuple[str, str]] = []
    if "runs" in present:
        rows = db.execute("SELECT run_id, config FROM runs").fetchall()
        icrl = [(run_id,) for run_id, config in rows if _regime(config) == "icrl"]
        db.executemany("INSERT OR IGNORE INTO temp.layout1_icrl_runs VALUES (?)", icrl)
        run_facts = _layout_1_run_facts(db)
    for table in _REKEYED:
        if table in present:
            _rebuild(db, table)
    db.executemany("UPDATE runs SET facts = ? WHERE run_id = ?", run_facts)
    db.execute("DROP TABLE temp.layout1_icrl_runs")


def _regime(config: object) -> str | None:
    """A layout-1 run's regime, from its stored configuration; None if it cannot be read
    (its units are then taken as standing alone, as every regime's but in-context RL's)."""
    try:
        values = json.loads(config) if isinstance(config, str | bytes) else None
    except (ValueError, RecursionError):
        return None
    return values.get("regime") if isinstance(values, dict) else None


# Layout 1's run columns, by the name of the fact imitation (and replay) now store them as.
_RUN_COLUMNS = {"demos": "demos_used", "demos_hash": "demos_hash", "prefix_tokens": "prefix_tokens"}


def _layout_1_run_facts(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """(facts, run_id) of the runs that had values in layout 1's regime-named columns; a
    fact a run never had (NULL) is left out."""
    old = set(columns_of(db, "runs"))
    named = {fact: column for fact, column in _RUN_COLUMNS.items() if column in old}
    if not named:
        return []
    rows = db.execute(f"SELECT run_id, {', '.join(named.values())} FROM runs")
    updates = []
    for run_id, *values in rows:
        facts = {fact: v for fact, v in zip(named, values, strict=True) if v is not None}
        if facts:
            updates.append((json.dumps(facts, sort_keys=True), run_id))
    return updates


def _rebuild(db: sqlite3.Connection, table: str) -> None:
    """`table` rebuilt in layout 2 from its layout-1 rows (SQLite cannot change a primary
    key in place): a new table filled, the old one dropped, the new one renamed."""
    old = set(columns_of(db, table))
    new = f"{table}_layout2"
    db.execute(f"CREATE TABLE {new} {TABLES[table]}")
    values = {name: _layout_1_value(table, name, old) for name in columns_of(db, new)}
    kept = {name: value for name, value in values.items() if value is not None}
    db.execute(
        f"INSERT INTO {new} ({', '.join(kept)}) SELECT {', '.join(kept.values())} FROM {table}"
    )
    db.execute(f"DROP TABLE {table}")
    db.execute(f"ALTER TABLE {new} RENAME TO {table}")


_ICRL = "run_id IN (SELECT run_id FROM temp.layout1_icrl_runs)"
_OFFSET = f"(episode % {_STRIDE})"
_IS_EVALUATION = f"({_ICRL} AND {_OFFSET} >= {_EVALUATIONS})"


def _layout_1_value(table: str, column: str, old: set[str]) -> str | None:
    """The SQL expression of a layout-2 column over a layout-1 row; None: its default."""
    if column == "chain":
        return f"CASE WHEN {_ICRL} THEN episode / {_STRIDE} ELSE 0 END"
    if column == "unit_kind":
        return f"CASE WHEN {_IS_EVALUATION} THEN 'evaluation' ELSE 'episode' END"
    if column == "episode":
        return (
            f"CASE WHEN {_IS_EVALUATION} THEN {_OFFSET} - {_EVALUATIONS} "
            f"WHEN {_ICRL} THEN {_OFFSET} ELSE episode END"
        )
    if column == "facts" and table == "steps" and "context" in old:
        # In-context RL's context (the JSON list it stored, as it was: a damaged one is
        # reported when it is read) under the name the regime now writes it by.
        return "CASE WHEN context IS NULL THEN '{}' ELSE '{\"context\": ' || context || '}' END"
    return column if column in old else None


# The first bytes of every SQLite database file.
_SQLITE_HEADER = b"SQLite format 3\x00"


# Filesystems over a network (or a virtual machine's share), by their Linux type names:
# SQLite's WAL mode needs every process on one host (its documentation), and their locks
# do not hold across hosts, so a store there could be corrupted by two hosts at once.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "lustre", "gpfs", "ceph",
    "fuse.ceph", "fuse.cephfs", "glusterfs", "fuse.glusterfs", "beegfs", "fuse.sshfs",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "pvfs2", "orangefs", "panfs",
})  # fmt: skip
# The mount table read to find a store's filesystem (Linux; elsewhere none is refused).
MOUNTS = Path("/proc/self/mounts")


def filesystem_type(path: Path, mounts: Path | None = None) -> str | None:
    """The type of the filesystem `path` is on, from the mount table (the mount point that
    is the longest prefix of its resolved path); None where there is no table to read."""
    try:
        table = (mounts or MOUNTS).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    target, best, found = path.resolve(), -1, None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # Spaces and tabs in a mount point are written as octal escapes (\040, \011).
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
        if (target == point or point in target.parents) and len(point.parts) >= best:
            best, found = len(point.parts), fields[2]
    return found


def check_local_filesystem(path: Path) -> None:
    """A store on a network filesystem is refused, in one line: SQLite does not keep one
    there safe for processes on several hosts."""
    kind = filesystem_type(path.parent)
    if kind in NETWORK_FILESYSTEMS:
        raise StoreError(
            f"run store {path} is on a network filesystem ({kind}), where SQLite's locks do "
            "not hold across hosts; keep the store on a local disk, or give workers on "
            "several hosts a PostgreSQL store (--store postgresql://USER@HOST:PORT/DB)"
        )


def check_store_file(path: Path) -> None:
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
        check_local_filesystem(path)
        return
    check_local_filesystem(path)  # before a folder is made there
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(
            f"run store {path}: cannot create {path.parent} ({error.strerror})"
        ) from None
