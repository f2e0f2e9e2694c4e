"""Write a run store fixture as the current code writes it, for the test that later releases
still open, report and resume it.

Two fixtures are kept in tests/fixtures/: `store-0.1.sqlite` (release 0.1: imitation only)
and `store-0.2.sqlite` (made before the store stopped knowing regimes: imitation, replay
and in-context RL). Each holds finished runs and one unfinished run, left as a kill
leaves it: an episode marked running, every model call of it cached. The commands are
`FIXTURES[release]` below; rerunning the unfinished run on the fixture must finish it
without a new model call. Rerun this script only to write a fixture of a new schema.

    python scripts/make_store_fixture.py --release 0.2   # --out tests/fixtures/store-0.2.sqlite
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOCAL = ["--model", "local/gemma-3-270m", "--threads", "2"]
FINISHED_RUNS = [
    ["run", "--task", "tic_tac_toe", *LOCAL, "--demos", "1", "--episodes", "3", "--max-steps", "4"],
    ["run", "--task", "grid_world", "--model", "expert", "--episodes", "2"],
]
UNFINISHED_RUN = ["run", "--task", "grid_world", *LOCAL, "--demos", "1", "--episodes", "2"]
UNFINISHED_RUN += ["--max-steps", "3"]

ICRL = ["run", "--regime", "icrl", *LOCAL]
# The bandit runs of 0.2 drew their buttons' colours: today's default is the paper's names.
DRAWN = ["--buttons", "drawn"]
FINISHED_RUNS_0_2 = [
    ["run", "--task", "tic_tac_toe", *LOCAL, "--demos", "1", "--episodes", "2", "--max-steps", "3"],
    ["run", "--regime", "replay", "--task", "grid_world", *LOCAL, "--episodes", "1"],
    [*ICRL, "--task", "bandit_hard", "--episodes", "4", "--replicates", "2", *DRAWN],
]
# Killed mid-replicate: replicate 1 has played its first two episodes of four.
UNFINISHED_RUN_0_2 = [
    *ICRL, "--task", "bandit_easy", "--episodes", "4", "--replicates", "2", *DRAWN,
]  # fmt: skip
# In this schema an in-context RL unit is replicate * 100000 + episode.
ICRL_UNIT_STRIDE = 100_000


@dataclass(frozen=True)
class Fixture:
    finished: list[list[str]]
    unfinished: list[str]
    unfinished_run: str  # a SQL condition on runs.config naming the unfinished run
    killed_unit: int  # left running; the units after it in its chain are not yet begun


FIXTURES = {
    "0.1": Fixture(
        FINISHED_RUNS,
        UNFINISHED_RUN,
        "config LIKE '%grid_world%' AND config LIKE '%local/gemma%'",
        killed_unit=1,
    ),
    "0.2": Fixture(
        FINISHED_RUNS_0_2,
        UNFINISHED_RUN_0_2,
        "config LIKE '%bandit_easy%' AND config LIKE '%local/gemma%'",
        killed_unit=ICRL_UNIT_STRIDE + 2,
    ),
}


def lmact(args: list[str], store: Path, cache: Path) -> None:
    environment = {**os.environ, "LMACT_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "lmact.cli", *args, "--json", "--store", str(store)]
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)


def leave_unfinished(store: Path, fixture: Fixture) -> None:
    """The unfinished run back to the state a kill after the first step of its killed unit
    leaves: that unit running, unowned, one step stored; the units after it in its chain
    not begun (their calls stay cached)."""
    db = sqlite3.connect(store, isolation_level=None)
    (run_id,) = db.execute(f"SELECT run_id FROM runs WHERE {fixture.unfinished_run}").fetchone()
    unit = fixture.killed_unit
    chain_end = unit - unit % ICRL_UNIT_STRIDE + ICRL_UNIT_STRIDE
    db.execute("BEGIN")
    db.execute(
        "UPDATE episodes SET status = 'running', owner = NULL, total_return = NULL, "
        "steps = NULL WHERE run_id = ? AND episode = ?",
        (run_id, unit),
    )
    db.execute("DELETE FROM steps WHERE run_id = ? AND episode = ? AND step > 0", (run_id, unit))
    for table in ("episodes", "steps"):
        db.execute(
            f"DELETE FROM {table} WHERE run_id = ? AND episode > ? AND episode < ?",
            (run_id, unit, chain_end),
        )
    db.execute("COMMIT")
    # One file, no write-ahead log beside it.
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("VACUUM")
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", choices=sorted(FIXTURES), default="0.2")
    parser.add_argument("--out", type=Path, help="default: tests/fixtures/store-RELEASE.sqlite")
    args = parser.parse_args()
    fixture = FIXTURES[args.release]
    out = args.out or Path(f"tests/fixtures/store-{args.release}.sqlite")
    with tempfile.TemporaryDirectory() as work:
        store, cache = Path(work) / "store.sqlite", Path(work) / "cache"
        for run in [*fixture.finished, fixture.unfinished]:
            lmact(run, store, cache)
        leave_unfinished(store, fixture)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(store.read_bytes())
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
