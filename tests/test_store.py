"""The run store's schema: a store written before columns were added still opens."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lmact.store import _SCHEMA, RunStore


def test_an_older_store_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA)  # the first release's tables, without the added columns
        db.execute(
            "INSERT INTO episodes (run_id, episode, seed, status, total_return, steps, "
            "terminated, valid, illegal, invalid, empty, prompt_tokens, completion_tokens, "
            "cached_tokens) VALUES ('r', 0, 0, 'done', 1.0, 3, 1, 3, 0, 0, 0, 30, 3, 0)"
        )
    with RunStore(path) as store:
        (episode,) = store.finished_episodes("r").values()
    assert episode.total_return == 1.0 and episode.steps == 3
    assert episode.usage.cache_write_tokens == 0 and episode.cost_usd is None
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(steps)")}
    assert {"cache_write_tokens", "reasoning_tokens", "cost_usd"} <= columns


def test_a_cache_row_damaged_into_invalid_utf8_reads_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with RunStore(path) as store:
        assert store.put_call("k", "m", '{"text": "a1"}') == '{"text": "a1"}'
        assert store.put_call("k", "m", '{"text": "b2"}') == '{"text": "a1"}'  # first wins
    with sqlite3.connect(path) as db:
        db.execute("UPDATE model_calls SET response = CAST(X'7B22FF' AS TEXT) WHERE key = 'k'")
    db.close()
    with RunStore(path) as store:
        assert store.get_call("k") == ""  # not a crash: the caller asks again
        store.replace_call("k", "m", '{"text": "c3"}')
        assert store.get_call("k") == '{"text": "c3"}'
