"""Where a store is given (--store, $LMACT_STORE, a sweep file, the API): a path or a
postgresql:// URL, read at the boundary; a bad one is one line, and a password is never
shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmact.store import DEFAULT_STORE, StoreError, StoreUrl, open_store, store_location


def test_a_store_is_a_path_or_a_postgresql_url_and_lmact_store_is_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LMACT_STORE", raising=False)
    assert store_location(None) == DEFAULT_STORE
    assert store_location("runs/a.sqlite") == Path("runs/a.sqlite")
    url = store_location("  postgresql://lmact:s3cret@db:5432/runs \n")  # stray whitespace
    assert isinstance(url, StoreUrl) and url.database == "runs"
    assert str(url) == "postgresql://lmact@db:5432/runs" and "s3cret" not in repr(str(url))
    monkeypatch.setenv("LMACT_STORE", "postgres://worker@db/runs")
    assert str(store_location(None)) == "postgresql://worker@db/runs"
    assert store_location("here.sqlite") == Path("here.sqlite")  # a store given wins


@pytest.mark.parametrize(
    "given",
    ["postgresql://db:port/runs", "postgresql://db:5432/", "postgresql:///runs", 42],
)
def test_a_bad_store_is_refused_in_one_line(given: object) -> None:
    with pytest.raises(StoreError) as refused:
        store_location(given)  # type: ignore[arg-type]
    assert "\n" not in str(refused.value)


def test_a_server_that_does_not_answer_is_one_line_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as refused:
        open_store("postgresql://lmact:s3cret@127.0.0.1:9/runs")  # nothing listens on 9
    message = str(refused.value)
    assert "\n" not in message and "s3cret" not in message
    assert "postgresql://lmact@127.0.0.1:9/runs" in message
    done = subprocess.run(
        [sys.executable, "-m", "lmact.cli", "report", "--store",
         "postgresql://lmact:s3cret@127.0.0.1:9/runs"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr + done.stdout and len(done.stderr.splitlines()) == 1
