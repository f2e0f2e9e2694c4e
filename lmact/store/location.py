"""Where a run store is: a SQLite file (one host), or a PostgreSQL database that workers on
many hosts share (`postgresql://USER@HOST:PORT/DB`). `open_store` opens either."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from lmact.store.base import DEFAULT_STORE, StoreError

if TYPE_CHECKING:
    from lmact.store.sqlite import RunStore

URL_SCHEMES = ("postgresql", "postgres")
# Where a process finds its store when no --store names one (a worker started by a
# scheduler, say); --store and a sweep file's store win over it.
STORE_VARIABLE = "LMACT_STORE"


@dataclass(frozen=True)
class StoreUrl:
    """A PostgreSQL store's address. Its password, when it has one, is never shown: `str`
    gives the address without it (messages, `lmact run`'s output, result files), and only
    `dsn` (what the driver connects with) holds it."""

    dsn: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.dsn)
        if parts.scheme not in URL_SCHEMES:
            raise StoreError(f"a store URL starts with postgresql://, not {self}")
        try:
            port = parts.port
        except ValueError:
            raise StoreError(f"store {self}: the port is not a number") from None
        if not parts.hostname or not parts.path.strip("/"):
            raise StoreError(
                f"store {self}: name the server and the database, as "
                "postgresql://USER@HOST:PORT/DATABASE"
            )
        if port == 0:
            raise StoreError(f"store {self}: port 0 is no server's")

    def __str__(self) -> str:
        # Read from the text as given (a malformed port is shown, not parsed): messages
        # about a bad address name it too.
        parts = urlsplit(self.dsn)
        userinfo, at, host = parts.netloc.rpartition("@")
        user = f"{unquote(userinfo.split(':', 1)[0])}@" if at else ""
        return f"postgresql://{user}{host}{parts.path}"

    @property
    def database(self) -> str:
        return unquote(urlsplit(self.dsn).path.strip("/"))


StoreLocation = Path | StoreUrl


def store_location(value: str | os.PathLike[str] | StoreUrl | None) -> StoreLocation:
    """A store as given (a path, or a postgresql:// URL, stray whitespace around it
    ignored); None: $LMACT_STORE, else the default file."""
    if isinstance(value, StoreUrl):
        return value
    if value is None:
        value = os.environ.get(STORE_VARIABLE, "").strip() or DEFAULT_STORE
    if not isinstance(value, str | os.PathLike):
        raise StoreError(f"a run store is a path or a postgresql:// URL, not {value!r}")
    text = os.fspath(value)
    if isinstance(text, str) and text.strip().split(":", 1)[0].lower() in URL_SCHEMES:
        return StoreUrl(text.strip())
    return Path(text)


def open_store(location: StoreLocation | str | os.PathLike[str] | None = None) -> RunStore:
    """The store at `location` (`store_location` reads it), open: a SQLite file, or a
    PostgreSQL database."""
    place = store_location(location)
    if isinstance(place, StoreUrl):
        from lmact.store.postgres import PostgresStore

        return PostgresStore(place)
    from lmact.store.sqlite import RunStore

    return RunStore(place)


def open_played_store(location: StoreLocation | str | os.PathLike[str] | None = None) -> RunStore:
    """The store of runs already played at `location`, open, for a command that reads
    them: a one-line StoreError where there is none (a file not made, rather than an empty
    one made). A database is asked when it is opened."""
    place = store_location(location)
    if not isinstance(place, StoreUrl) and not place.exists():
        raise StoreError(f"no run store at {place}; start with `lmact run`")
    return open_store(place)
