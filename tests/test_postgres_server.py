"""The tests' own PostgreSQL server (tests/postgres_server.py): it answers, each test's
database is its own, and the server does not run as root."""

from __future__ import annotations

from pathlib import Path

import pytest
from postgres_server import PostgresServer
from processes import running


def _uid_of(pid: int) -> int:
    """The real uid of a running process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line in /proc/{pid}/status")


def test_the_server_answers_a_query(postgres_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_each_database_is_its_own(postgres_server: PostgresServer) -> None:
    psycopg = pytest.importorskip("psycopg")
    first, second = postgres_server.create_database(), postgres_server.create_database()
    assert first != second
    with psycopg.connect(first, autocommit=True) as connection:
        connection.execute("CREATE TABLE runs (id integer)")
        connection.execute("INSERT INTO runs VALUES (1)")
    exists = "SELECT count(*) FROM pg_tables WHERE tablename = 'runs'"
    with psycopg.connect(first) as connection:
        assert connection.execute(exists).fetchone() == (1,)
    with psycopg.connect(second) as connection:
        assert connection.execute(exists).fetchone() == (0,)


def test_a_named_database_has_that_name(postgres_server: PostgresServer) -> None:
    psycopg = pytest.importorskip("psycopg")
    url = postgres_server.create_database("named_store")
    assert url == f"postgresql://lmact@127.0.0.1:{postgres_server.port}/named_store"
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT current_database(), current_user").fetchone() == (
            "named_store",
            "lmact",
        )


def test_the_server_does_not_run_as_root(postgres_server: PostgresServer) -> None:
    pid = postgres_server.postmaster_pid()
    assert _uid_of(pid) != 0


# The session's server first: its fixture skips, or fails in CI, when PostgreSQL is missing.
@pytest.mark.usefixtures("postgres_server")
def test_stopping_ends_the_server_and_removes_its_directory() -> None:
    server = PostgresServer().start()
    directory, pid = server.directory, server.postmaster_pid()
    assert directory is not None and directory.is_dir()
    server.stop()
    assert not directory.exists()
    # Gone, or a zombie its new parent has not reaped yet (`running` counts that as ended).
    assert not running([pid])
    server.stop()  # a second stop does nothing
