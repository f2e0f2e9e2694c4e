"""The run store in a PostgreSQL database, which workers on many hosts share.

The same tables, guarantees and SQL as the SQLite store (`lmact.store.sqlite`), spoken
through psycopg 3 (the `postgres` extra): a claim is a row taken by an insert, or taken
over by a compare-and-set when its owner is dead or its lease ran out; a worker renews the
leases of the units it plays (`RunStore.renew_claims`) while it lives. The lease is the
store's own (`lease_s` in its `lmact_store` table), so that all its workers agree on it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from lmact.store import schema
from lmact.store.base import CLAIM_LEASE_S, StoreError, process_identity
from lmact.store.location import StoreUrl
from lmact.store.merge import Merged
from lmact.store.reads import Transaction
from lmact.store.sqlite import RunStore
from lmact.text import error_line

INSTALL_HINT = 'a PostgreSQL store needs psycopg: pip install "lmact[postgres]"'
# The store's own settings and marks, beside the tables of `lmact.store.schema`.
META_TABLE = "lmact_store"
# All workers opening a new database at once: one creates the tables, under this lock.
_CREATE_LOCK = schema.APPLICATION_ID
# SQLite's types, as PostgreSQL names them (seeds and token counts pass 2**31).
_TYPES = (("INTEGER", "BIGINT"), ("REAL", "DOUBLE PRECISION"))


def postgres_tables() -> list[str]:
    """The statements that create the store's tables where they are missing."""
    statements = []
    for table, definition in schema.TABLES.items():
        for sqlite_type, postgres_type in _TYPES:
            definition = re.sub(rf"\b{sqlite_type}\b", postgres_type, definition)
        # As SQLite holds it (which enforces no foreign key unless asked): an episode's run
        # is saved first by lmact, and a merge or a test may write them in either order.
        definition = definition.replace(" REFERENCES runs(run_id)", "")
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} {definition}")
    return [
        *statements,
        f"CREATE TABLE IF NOT EXISTS {META_TABLE} (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # A worker renews and releases its claims by owner: found without a scan.
        "CREATE INDEX IF NOT EXISTS episodes_claims ON episodes (owner) WHERE status = 'running'",
    ]


class PostgresStore(RunStore):
    """A run store in a PostgreSQL database (`StoreUrl`); see the module's docstring."""

    INDEX_HINT = ""
    RESPONSE_READ = "response"

    def __init__(self, url: StoreUrl) -> None:  # not RunStore's, which opens a file
        self.path = url  # what messages name: the address without its password
        self.owner = process_identity()
        self._claimed = False
        self._db = _Connection(_connect(url))
        import psycopg  # installed: `_connect` imported it

        self._driver_error = psycopg.Error  # a server gone, a refused statement: `_guard`'s
        try:
            with self._guard():
                self._create_or_check()
        except BaseException:
            self._db.close()
            raise

    def _create_or_check(self) -> None:
        """Make the tables of a new database (one worker; the others wait on its lock),
        refuse another program's or a newer lmact's, and read the store's lease."""
        with self._transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(?)", (_CREATE_LOCK,))
            tables = {
                row[0]
                for row in self._db.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                ).fetchall()
            }
            if tables and META_TABLE not in tables:
                raise StoreError(
                    f"run store {self.path} holds another program's tables "
                    f"({', '.join(sorted(tables)[:5])}); give lmact a database of its own"
                )
            if META_TABLE in tables:
                self._check_layout()
            for statement in postgres_tables():
                self._db.execute(statement)
            self._db.execute(
                f"INSERT INTO {META_TABLE} (name, value) VALUES ('layout', ?), "
                "('lease_s', ?) ON CONFLICT DO NOTHING",
                (str(schema.SCHEMA_VERSION), repr(CLAIM_LEASE_S)),
            )
            self.lease_s = self._stored_lease()

    def _check_layout(self) -> None:
        row = self._db.execute(f"SELECT value FROM {META_TABLE} WHERE name = 'layout'").fetchone()
        if row is not None and (not row[0].isdigit() or int(row[0]) > schema.SCHEMA_VERSION):
            raise StoreError(
                f"run store {self.path} was written by a newer lmact (layout {row[0]}, this "
                f"one reads {schema.SCHEMA_VERSION}); upgrade lmact"
            )

    def _stored_lease(self) -> float:
        row = self._db.execute(f"SELECT value FROM {META_TABLE} WHERE name = 'lease_s'").fetchone()
        try:
            lease = float(row[0])
        except (TypeError, ValueError):
            lease = float("nan")
        if not 0 < lease < 86_400:
            raise StoreError(
                f"run store {self.path}: its lease_s ({row[0] if row else 'none'}) is not a "
                "number of seconds between 0 and a day"
            )
        return lease

    def _error(self, error: BaseException) -> StoreError:
        first = error_line(error, named=False)
        return StoreError(f"run store {self.path}: {_hide(first, self.path)}")

    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Any:
        """A transaction: reads of one moment ("BEGIN": repeatable read), or a write (rows
        a claim or a write touches are locked until it ends)."""
        statement = "BEGIN ISOLATION LEVEL REPEATABLE READ" if begin == "BEGIN" else "BEGIN"
        return Transaction(self._db, statement)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Held by one worker at a time, on any host, by `name`: a PostgreSQL advisory lock on
        a connection of its own (a wait does not hold up the store's), which the server frees
        when the worker dies."""
        key = int.from_bytes(hashlib.sha256(f"lmact:{name}".encode()).digest()[:8], "big",
                             signed=True)  # fmt: skip
        connection = _Connection(_connect(self.path))
        try:
            with self._guard():
                connection.execute("SELECT pg_advisory_lock(?)", (key,))
            yield
        finally:
            connection.close()  # its session's locks go with it

    def merge_from(self, source: Any) -> Merged:
        raise StoreError(
            f"lmact merge joins SQLite stores; {self.path} is a PostgreSQL store, which workers "
            "share without merging"
        )


class _Connection:
    """A psycopg connection as the store's SQL speaks to it: `?` placeholders, a cursor
    per statement (its rowcount and rows), booleans as the integers the tables hold."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cursor = self._connection.cursor()
        cursor.execute(_placeholders(sql), _values(params))
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._connection.cursor() as cursor:
            cursor.executemany(_placeholders(sql), [_values(row) for row in rows])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()


@functools.lru_cache(maxsize=1024)
def _placeholders(sql: str) -> str:
    """The store's SQL (`?` placeholders, no literal `?` or `%`) as psycopg takes it."""
    return sql.replace("%", "%%").replace("?", "%s")


def _values(params: Sequence[Any]) -> tuple[Any, ...]:
    values = tuple(int(value) if isinstance(value, bool) else value for value in params)
    for value in values:
        if isinstance(value, str) and "\x00" in value:
            raise StoreError(
                "a PostgreSQL store cannot hold text with a NUL character (a model's answer "
                "held one); use a SQLite store for this run"
            )
    return values


def _connect(url: StoreUrl) -> Any:
    """A connection to the store's server, its sums of integers read back as integers (the
    server sums them as arbitrary-precision numbers)."""
    try:
        import psycopg
        from psycopg.adapt import Loader
    except ImportError:
        raise StoreError(INSTALL_HINT) from None

    class WholeNumbers(Loader):
        def load(self, data: Any) -> int | float:
            value = Decimal(bytes(data).decode())
            return int(value) if value == value.to_integral_value() else float(value)

    try:
        connection = psycopg.connect(url.dsn, autocommit=True, connect_timeout=30)
    except psycopg.Error as error:
        text = str(error).strip().splitlines()
        raise StoreError(
            f"run store {url}: cannot connect ({_hide(text[0] if text else 'no answer', url)})"
        ) from None
    connection.adapters.register_loader("numeric", WholeNumbers)
    return connection


def _hide(text: str, url: StoreUrl) -> str:
    """`text` with the store's full address (password and all) replaced by its shown one."""
    return text.replace(url.dsn, str(url))
