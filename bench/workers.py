"""One sweep played by 1, 2 and 4 worker processes sharing one PostgreSQL store.

A throwaway PostgreSQL server (Debian's, as the tests start it: tests/postgres_server.py)
holds a fresh database for each count of workers; a fake OpenAI-compatible provider
(bench/fake_provider.py, its own process) answers every request after a fixed latency with
the first legal action. Each worker is `lmact sweep FILE --store postgresql://…` in a
process of its own, with at most `--connections` requests in flight. Printed: each count's
wall time and its ratio to one worker's, whether its stored rows equal one worker's, and
the time a worker spends in the store per step (one worker, in this process, its store's
calls timed).

    python bench/workers.py [--latency 0.2] [--connections 4] [--episodes 96] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg
from fake_provider import fake_provider
from postgres_server import PostgresServer

from lmact.demos import DemoStore
from lmact.runner import Runner
from lmact.store import open_store
from lmact.sweeps import load_sweep, play_sweep

SWEEP = """
name = "workers"
[base]
task = "grid_world"
legal_actions = true
demos = 0
episodes = {episodes}
max_steps = 8
model = "openai-compatible/fake"
base_url = "{url}"
[axes]
seed = [0, 100, 200, 300]
"""
# The store's calls a worker makes as it plays (timed in `store_ms_per_step`).
TIMED = ("claim_episode", "record_steps", "finish_units", "get_call", "put_call",
         "renew_claims", "save_run", "finished_episodes")  # fmt: skip


def stored_rows(url: str) -> tuple[list[tuple], list[tuple]]:
    with psycopg.connect(url) as db:
        units = db.execute(
            "SELECT run_id, chain, unit_kind, episode, seed, status, total_return, steps "
            "FROM episodes ORDER BY 1, 2, 3, 4"
        ).fetchall()
        steps = db.execute(
            "SELECT run_id, chain, unit_kind, episode, step, prompt_hash, action, reward "
            "FROM steps ORDER BY 1, 2, 3, 4, 5"
        ).fetchall()
    return units, steps


def play_with(workers: int, sweep: Path, url: str, connections: int, cache: Path) -> float:
    """Wall seconds of `workers` processes playing the sweep into `url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LMACT"))}
    env["LMACT_CACHE_DIR"] = str(cache)
    command = [sys.executable, "-m", "lmact.cli", "sweep", str(sweep), "--store", url,
               "--max-connections", str(connections)]  # fmt: skip
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(workers)
    ]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a worker failed:\n{err}")
    return time.perf_counter() - started


def store_ms_per_step(sweep: Path, url: str, connections: int, cache: Path) -> float:
    """One worker in this process: the milliseconds its store's calls took, per step."""
    spent = [0.0]
    with open_store(url) as store:
        for name in TIMED:
            method = getattr(store, name)

            def timed(*args: object, _method=method, **kwargs: object) -> object:
                started = time.perf_counter()
                try:
                    return _method(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - started

            setattr(store, name, timed)
        runner = Runner(store, DemoStore.in_cache(cache), max_connections=connections,
                        progress=False)  # fmt: skip
        try:
            asyncio.run(play_sweep(runner, load_sweep(sweep), lambda outcome: None))
        finally:
            runner.close()
    _, steps = stored_rows(url)
    return spent[0] * 1000 / max(1, len(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer")
    parser.add_argument("--connections", type=int, default=4, help="per worker")
    parser.add_argument("--episodes", type=int, default=96, help="per run (4 runs)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, PostgresServer() as server, \
            fake_provider(args.latency) as url:  # fmt: skip
        sweep = Path(folder) / "sweep.toml"
        sweep.write_text(SWEEP.format(episodes=args.episodes, url=url))
        cache = Path(folder) / "cache"
        print(
            f"sweep: 4 runs x {args.episodes} episodes of grid_world (at most 8 steps), "
            f"answers after {args.latency:g} s, {args.connections} connections a worker"
        )
        print("| workers | seconds | ratio to 1 worker | rows equal to 1 worker's |")
        print("|---|---|---|---|")
        first: tuple[float, tuple] | None = None
        for count in args.workers:
            database = server.create_database(f"workers_{count}")
            seconds = play_with(count, sweep, database, args.connections, cache)
            rows = stored_rows(database)
            if first is None:
                first = (seconds, rows)
            print(f"| {count} | {seconds:.1f} | {first[0] / seconds:.2f}x | "
                  f"{'yes' if rows == first[1] else 'NO'} |", flush=True)  # fmt: skip
        database = server.create_database("timed")
        per_step = store_ms_per_step(sweep, database, args.connections, cache)
        print(f"\nthe store's time per step, one worker: {per_step:.2f} ms")


if __name__ == "__main__":
    main()
