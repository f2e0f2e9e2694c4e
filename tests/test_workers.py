"""Many workers, one sweep, one PostgreSQL store: each on a host of its own (a UTS namespace
with its own host name), against one loopback model server. A worker killed mid-sweep
loses its leases when they run out and another worker plays its units; the store ends as
one worker's would, no finished episode is played twice, and the only calls sent again
are those the killed worker had in flight."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from loopback import RecordedRequest, Reply, chat_completion, loopback

from lmact.store import open_store

MOVES = ("up", "down", "left", "right")
CONNECTIONS = 2  # a worker's requests in flight at once, at most
LEASE_S = 2.0
SWEEP = """
name = "workers"
[base]
task = "grid_world"
demos = 0
episodes = 6
max_steps = 6
model = "openai-compatible/m"
base_url = "{url}/v1"
[axes]
seed = [0, 1, 2]
"""


def deterministic_moves(request: RecordedRequest) -> Reply:
    """An answer that depends on the request alone, after a short think: any worker that
    plays an episode plays it alike."""
    time.sleep(0.05)
    move = MOVES[hashlib.sha256(request.body).digest()[0] % len(MOVES)]
    return Reply(body=chat_completion(move))


def worker(host: str, sweep: Path, store: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`lmact sweep` as a worker on a host of its own: its own UTS namespace and host name
    (its claims are another host's to the others, judged by their leases)."""
    command = [sys.executable, "-m", "lmact.cli", "sweep", str(sweep), "--store", store,
               "--max-connections", str(CONNECTIONS)]  # fmt: skip
    script = f"hostname {host} && exec {shlex.join(command)}"
    return subprocess.Popen(["unshare", "--uts", "sh", "-c", script], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def rows(url: str) -> tuple[list[tuple], list[tuple]]:
    """What a sweep stored, whoever played it: every unit and step, as ordered values."""
    with psycopg.connect(url) as db:
        running = db.execute("SELECT COUNT(*) FROM episodes WHERE status != 'done'").fetchone()
        assert running == (0,)
        units = db.execute(
            "SELECT run_id, chain, unit_kind, episode, seed, total_return, steps, valid, "
            "illegal, invalid, empty FROM episodes ORDER BY 1, 2, 3, 4"
        ).fetchall()
        steps = db.execute(
            "SELECT run_id, chain, unit_kind, episode, step, prompt_hash, completion, action, "
            "reward FROM steps ORDER BY 1, 2, 3, 4, 5"
        ).fetchall()
    return units, steps


def held_by(url: str, host: str) -> list[tuple]:
    """The units a host's worker plays now (its claims)."""
    with psycopg.connect(url) as db:
        return db.execute(
            "SELECT run_id, chain, unit_kind, episode FROM episodes WHERE status = 'running' "
            "AND owner LIKE %s",
            (f"{host}:%",),
        ).fetchall()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_three_workers_on_three_hosts_play_one_sweep_once_and_survive_a_kill(
    tmp_path: Path, postgres_server: object
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "LMACT"))}
    env["LMACT_CACHE_DIR"] = str(tmp_path / "cache")
    shared = postgres_server.create_database("shared")  # type: ignore[attr-defined]
    alone = postgres_server.create_database("alone")  # type: ignore[attr-defined]
    with open_store(shared):  # made now, to shorten its lease for the test
        pass
    with psycopg.connect(shared, autocommit=True) as db:
        db.execute("UPDATE lmact_store SET value = %s WHERE name = 'lease_s'", (str(LEASE_S),))
    with loopback(deterministic_moves) as server:
        sweep = tmp_path / "sweep.toml"
        sweep.write_text(SWEEP.format(url=server.url))
        workers = [worker(f"worker-{i}", sweep, shared, env) for i in range(3)]
        deadline = time.monotonic() + 120
        # Mid-sweep, the first worker playing units of the model's runs: killed then.
        while len(server.requests) < 20 or not held_by(shared, "worker-0"):
            assert time.monotonic() < deadline, "the first worker held no unit in 2 minutes"
            time.sleep(0.02)
        workers[0].send_signal(signal.SIGKILL)
        orphaned = held_by(shared, "worker-0")
        killed_at = len(server.requests)
        for survivor in workers[1:]:
            _, err = survivor.communicate(timeout=300)
            assert survivor.returncode == 0, err
            assert "Traceback" not in err
        workers[0].wait()
        shared_requests = [request.body for request in server.requests]
        alone_worker = worker("alone", sweep, alone, env)
        _, err = alone_worker.communicate(timeout=300)
        assert alone_worker.returncode == 0, err
        alone_requests = [request.body for request in server.requests[len(shared_requests) :]]
    assert killed_at > 0 and orphaned  # its units were taken over when their leases ran out
    # The store ends as one worker's: every unit and step alike.
    assert rows(shared) == rows(alone)
    # Each request was sent once, but for those the killed worker had in flight (sent
    # again by the worker that took its unit over): no finished episode was played twice.
    repeated = sum(count - 1 for count in Counter(shared_requests).values())
    assert repeated <= CONNECTIONS
    assert set(shared_requests) == set(alone_requests)


def test_two_hosts_racing_for_one_demonstration_pool_generate_it_once(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers on hosts whose cache folder is shared but whose file locks do not see
    each other (as on some network filesystems): the store's lock lets one generate the
    pool; the other reads it, and generates nothing."""
    from contextlib import nullcontext

    from lmact.demos import DemoStore
    from lmact.tasks import get_task

    def unlocked(self: DemoStore, folder: Path) -> nullcontext[None]:
        folder.mkdir(parents=True, exist_ok=True)  # what the file lock made, without the lock
        return nullcontext()

    monkeypatch.setattr(DemoStore, "_locked", unlocked)
    played: list[int] = []
    play = DemoStore._expert_episodes

    def counted(self: DemoStore, *args: object, **kwargs: object) -> object:
        for demonstration in play(self, *args, **kwargs):
            played.append(demonstration.seed)
            time.sleep(0.001)  # a slower expert: a long window for the race
            yield demonstration

    monkeypatch.setattr(DemoStore, "_expert_episodes", counted)
    task, wanted = get_task("tic_tac_toe"), 300
    loaded: list[list] = []

    def worker_loads() -> None:
        with open_store(postgres_url) as store:
            demos = DemoStore(tmp_path / "shared-cache", workers=1, generation_lock=store.exclusive)
            loaded.append(demos.load(task, "txt", 0, wanted))

    threads = [threading.Thread(target=worker_loads) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(loaded) == 2 and [d.seed for d in loaded[0]] == [d.seed for d in loaded[1]]
    assert sorted(played) == sorted(set(played)) and len(played) == wanted  # each once
    lines = DemoStore(tmp_path / "shared-cache").directory(task, "txt") / "episodes.jsonl"
    assert len(lines.read_text().splitlines()) == wanted
