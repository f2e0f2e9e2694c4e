"""Write tests/fixtures/store-0.1.sqlite: a run store as this release writes it, for the test
that later releases still open, report and resume it.

It holds finished runs (the local model on tic-tac-toe with its two baselines, the expert on
grid world) and one unfinished run, left as a run killed in its last episode leaves it: the
episode marked running, its first step stored, every model call of it cached. The commands
are `FINISHED_RUNS` and `UNFINISHED_RUN` below; rerunning `UNFINISHED_RUN` on the fixture
must finish it without a new model call.

    python scripts/make_store_fixture.py    # --out tests/fixtures/store-0.1.sqlite
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

LOCAL = ["--model", "local/gemma-3-270m", "--threads", "2"]
FINISHED_RUNS = [
    ["run", "--task", "tic_tac_toe", *LOCAL, "--demos", "1", "--episodes", "3", "--max-steps", "4"],
    ["run", "--task", "grid_world", "--model", "expert", "--episodes", "2"],
]
UNFINISHED_RUN = ["run", "--task", "grid_world", *LOCAL, "--demos", "1", "--episodes", "2"]
UNFINISHED_RUN += ["--max-steps", "3"]


def lmact(args: list[str], store: Path, cache: Path) -> None:
    environment = {**os.environ, "LMACT_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "lmact.cli", *args, "--json", "--store", str(store)]
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)


def leave_unfinished(store: Path) -> None:
    """The last episode of the unfinished run back to the state a kill after its first step
    leaves: running, unowned, one step stored (its calls stay cached)."""
    db = sqlite3.connect(store, isolation_level=None)
    (run_id,) = db.execute(
        "SELECT run_id FROM runs WHERE config LIKE '%grid_world%' AND config LIKE '%local/gemma%'"
    ).fetchone()
    db.execute("BEGIN")
    db.execute(
        "UPDATE episodes SET status = 'running', owner = NULL, total_return = NULL, "
        "steps = NULL WHERE run_id = ? AND episode = 1",
        (run_id,),
    )
    db.execute("DELETE FROM steps WHERE run_id = ? AND episode = 1 AND step > 0", (run_id,))
    db.execute("COMMIT")
    # One file, no write-ahead log beside it.
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("VACUUM")
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/store-0.1.sqlite"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        store, cache = Path(work) / "store.sqlite", Path(work) / "cache"
        for run in [*FINISHED_RUNS, UNFINISHED_RUN]:
            lmact(run, store, cache)
        leave_unfinished(store)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(store.read_bytes())
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
