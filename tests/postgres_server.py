"""A throwaway PostgreSQL server for tests: Debian's binaries, a temporary directory, a
loopback port, trust authentication, and an unprivileged owner when the tests run as root
(the postmaster refuses to run as root, and the tests run as root here and in CI).

    with PostgresServer() as server:
        url = server.create_database("runs")   # postgresql://lmact@127.0.0.1:PORT/runs

psycopg is imported only by `create_database`, so this module imports without it.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

SUPERUSER = "lmact"
_DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries are not installed."""


def find_bindir() -> Path | None:
    """The directory of initdb, pg_ctl and postgres: Debian's newest version first (on
    Debian, `pg_config --bindir` names the client package's version, which may have no
    server), then wherever PATH finds pg_ctl."""
    versions = []
    for candidate in Path("/").glob(_DEBIAN_BINDIRS.lstrip("/")):
        try:
            version = tuple(int(part) for part in candidate.parent.name.split("."))
        except ValueError:
            continue
        if _has_server(candidate):
            versions.append((version, candidate))
    if versions:
        return max(versions)[1]
    pg_ctl = shutil.which("pg_ctl")
    # A PATH entry may be a symlink into a versioned directory: keep the programs together.
    bindir = Path(os.path.realpath(pg_ctl)).parent if pg_ctl else None
    return bindir if bindir is not None and _has_server(bindir) else None


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _free_port() -> int:
    # Racy (another process may take the port before the server binds it): `start` retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unprivileged_account() -> pwd.struct_passwd:
    # Debian's postgresql package creates `postgres`; `nobody` exists everywhere.
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no unprivileged account (postgres or nobody) to run PostgreSQL as")


def _as_user(account: pwd.struct_passwd) -> list[str]:
    """A command prefix that runs the rest as `account` (util-linux, in Debian's base)."""
    # setpriv execs the command itself (no PAM session, no extra parent process).
    if shutil.which("setpriv"):
        return [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
            "--",
        ]
    if shutil.which("runuser"):
        return ["runuser", "-u", account.pw_name, "--"]
    raise RuntimeError("neither setpriv nor runuser found to drop root privileges")


def _shared_tmp() -> str:
    """A temporary directory the unprivileged account can reach: TMPDIR if every ancestor
    lets others through, else /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if all(os.stat(p).st_mode & stat.S_IXOTH for p in (base, *base.parents)):
        return str(base)
    return "/tmp"


class PostgresServer:
    """A PostgreSQL server of its own in a temporary directory, on 127.0.0.1.

    `start()` (or `with`) runs initdb and the server; `stop()` (also at interpreter exit)
    stops it at once and removes the directory. `url` is the `postgres` database's URL,
    `create_database()` makes a fresh database and returns its URL."""

    def __init__(self, bindir: Path | None = None, startup_timeout: float = 60.0) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresUnavailable(
                "PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed"
            )
        self.bindir = found
        self.startup_timeout = startup_timeout
        self.port = 0
        self.directory: Path | None = None
        self._account = _unprivileged_account() if os.geteuid() == 0 else None
        self._prefix = _as_user(self._account) if self._account else []
        self._names = itertools.count(1)
        self._running = False

    # -- paths and URLs

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    @property
    def log_file(self) -> Path:
        return self._dir / "server.log"

    @property
    def url(self) -> str:
        return self.url_of("postgres")

    def url_of(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return self.directory

    # -- life cycle

    def start(self, attempts: int = 3) -> PostgresServer:
        if self.directory is not None:
            raise RuntimeError("the PostgreSQL server is already started")
        self.directory = Path(tempfile.mkdtemp(prefix="lmact-pg-", dir=_shared_tmp()))
        atexit.register(self.stop)
        try:
            if self._account is not None:
                os.chown(self.directory, self._account.pw_uid, self._account.pw_gid)
            self._initdb()
            for _ in range(attempts):
                self.port = _free_port()
                if self._pg_ctl_start():
                    self._running = True
                    return self
                # The server may still be starting (pg_ctl's deadline passed) or have lost
                # the port to another process: make sure it is gone before the next port.
                self._kill_postmaster()
            raise RuntimeError(
                f"PostgreSQL did not start ({attempts} attempts, each given "
                f"{self.startup_timeout:.0f} s); the end of its log:\n{self.log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and remove the directory."""
        if self.directory is None:
            return
        if self._running or self.data_dir.joinpath("postmaster.pid").exists():
            try:
                stopped = self._run(
                    ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"],
                    check=False,
                )
                failed = stopped.returncode != 0
            except subprocess.TimeoutExpired:
                failed = True
            if failed:
                self._kill_postmaster()
        self._running = False
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
        atexit.unregister(self.stop)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def postmaster_pid(self) -> int:
        """The server's main process (the first line of postmaster.pid)."""
        return int(self.data_dir.joinpath("postmaster.pid").read_text().split("\n", 1)[0])

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- databases

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a generated name if none is given); its URL."""
        import psycopg
        from psycopg import sql

        name = name or f"test_{next(self._names)}"
        # The name goes into the URL as it is: keep it to what needs no quoting.
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and _")
        # CREATE DATABASE cannot run inside a transaction.
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_of(name)

    # -- internals

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one of the server's programs as the unprivileged account, in the temporary
        directory (the account may not be able to enter the caller's directory)."""
        # PG* variables of the caller (PGPORT, PGDATA, PGHOST...) must not steer these.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        program = [str(self.bindir / command[0]), *command[1:]]
        result = subprocess.run(
            [*self._prefix, *program],
            cwd=self._dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.startup_timeout + 30,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{command[0]} failed (exit status {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def _initdb(self) -> None:
        # Trust, because the server listens on 127.0.0.1 only and its socket lives in a
        # directory only its owner (and root) can enter; no fsync: the data is thrown away.
        self._run(
            [
                "initdb",
                "-D", str(self.data_dir),
                "-U", SUPERUSER,
                "-E", "UTF8",
                "--locale=C",
                "--auth=trust",
                "--no-sync",
            ]
        )  # fmt: skip

    def _pg_ctl_start(self) -> bool:
        """Start the server on `self.port`; whether it accepts connections in time (pg_ctl
        -w waits until postmaster.pid says it is ready, or until the deadline)."""
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                # pg_ctl hands the options to a shell.
                f"-c unix_socket_directories={shlex.quote(str(self._dir))}",
                "-c fsync=off",
            ]
        )
        started = self._run(
            [
                "pg_ctl", "start",
                "-D", str(self.data_dir),
                "-l", str(self.log_file),
                "-o", options,
                "-w", "-t", str(int(self.startup_timeout)),
            ],
            check=False,
        )  # fmt: skip
        return started.returncode == 0

    def _kill_postmaster(self) -> None:
        """SIGKILL the postmaster, when pg_ctl could not stop it (its children exit when
        they see it gone)."""
        try:
            pid = self.postmaster_pid()
            # A stale postmaster.pid may name a pid since reused by another program.
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                return
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            return  # no pid file, or the process is gone already
