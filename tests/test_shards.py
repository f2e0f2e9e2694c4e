"""A sweep played in shards on machines with no database between them, then merged: the
merged store reports as one machine's, a conflicting shard is reported and not
overwritten."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from helpers import lmact

SWEEP = """
name = "shards"

[base]
episodes = 6

[axes]
task = ["tic_tac_toe", "grid_world"]
model = ["random", "expert"]

[[runs]]
regime = "icrl"
task = "bandit_easy"
model = "ucb1"
replicates = 4
"""


def _units(path: Path) -> set[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return set(db.execute("SELECT run_id, chain, unit_kind, episode, total_return FROM "
                              "episodes WHERE status = 'done'"))  # fmt: skip


def _report(folder: Path, store: str) -> list[str]:
    done = lmact("report", "--store", store, "--format", "csv", cwd=folder)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    return [header, *sorted(rows)]  # runs are listed as they were made: any order


def test_shards_merged_report_as_one_machines_store(tmp_path: Path) -> None:
    (tmp_path / "sweep.toml").write_text(SWEEP)
    common = ["--cache-dir", "c"]
    for store, shard in (("full.sqlite", []), ("s0.sqlite", ["--shard", "0/2"]),
                         ("s1.sqlite", ["--shard", "1/2"])):  # fmt: skip
        done = lmact("sweep", "sweep.toml", "--store", store, *shard, *common, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        if shard:
            assert "(merge the shards)" in done.stdout
    full, first, second = (_units(tmp_path / f) for f in ("full.sqlite", "s0.sqlite", "s1.sqlite"))
    assert first and second and not first & second and first | second == full
    merged = lmact("merge", "s0.sqlite", "s1.sqlite", "--into", "m.sqlite", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert _units(tmp_path / "m.sqlite") == full
    assert _report(tmp_path, "m.sqlite") == _report(tmp_path, "full.sqlite")
    again = lmact("merge", "s0.sqlite", "--into", "m.sqlite", cwd=tmp_path)  # idempotent
    assert again.returncode == 0 and "0 finished units added" in again.stdout


def test_a_conflicting_store_is_reported_and_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "sweep.toml").write_text(SWEEP)
    done = lmact("sweep", "sweep.toml", "--store", "a.sqlite", "--cache-dir", "c", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shutil.copy(tmp_path / "a.sqlite", tmp_path / "b.sqlite")
    with sqlite3.connect(tmp_path / "b.sqlite") as db:  # one episode with another result
        db.execute("UPDATE episodes SET total_return = total_return + 1 WHERE rowid = 1")
    before = _units(tmp_path / "a.sqlite")
    merged = lmact("merge", "b.sqlite", "--into", "a.sqlite", cwd=tmp_path)
    assert merged.returncode == 1 and "1 conflict, not overwritten" in merged.stdout
    assert "holds other results" in merged.stdout
    assert _units(tmp_path / "a.sqlite") == before  # kept as the target held it
    bad = lmact("sweep", "sweep.toml", "--shard", "2/2", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "I/N" in bad.stderr
    missing = lmact("merge", "nowhere.sqlite", "--into", "a.sqlite", cwd=tmp_path)
    assert missing.returncode == 2 and "no store nowhere.sqlite" in missing.stderr
