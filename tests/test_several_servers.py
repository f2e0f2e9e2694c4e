"""A sweep across two real llama.cpp servers given as `base_url = [url1, url2]`: requests
spread across both, one stored answer per step, and nothing lost when one is SIGKILLed
mid-sweep (the survivor answers the rest)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest
from llama_servers import MODEL_ALIAS, LlamaServer, llama_servers

from lmact.cli import main
from lmact.store import RunStore

MODEL = f"openai-compatible/{MODEL_ALIAS}"
EPISODES = 4
KILL_AFTER_STEPS = 3  # answers stored before one server is killed


def sweep_file(folder: Path, urls: list[str]) -> Path:
    path = folder / "sweep.toml"
    listed = ", ".join(f'"{url}"' for url in urls)
    path.write_text(f"""
name = "two-servers"
[base]
task = "tic_tac_toe"
model = "{MODEL}"
demos = 0
episodes = {EPISODES}
seed = 0
max_steps = 2
max_tokens = 4
completions = true
context_window = 2048
timeout = 60
base_url = [{listed}]
""")
    return path


def fresh_steps(store: Path) -> int:
    """The model's answers stored so far (each is stored as it comes, before its step is:
    a unit's fast steps are written with its end); 0 before the store exists. Read-only:
    the sweep owns the store."""
    if not store.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute(
                "SELECT COUNT(*) FROM model_calls WHERE model = ?", (MODEL,)
            ).fetchone()[0]
    except sqlite3.DatabaseError:
        return 0  # being created: not a database yet, or no steps table


def kill_mid_answer(
    steps: int,
    store: Path,
    doomed: LlamaServer,
    others: list[LlamaServer],
    seen: dict[str, int],
    over: threading.Event,
) -> None:
    """SIGKILL `doomed` once `steps` fresh answers are stored and it is working on the next
    request it was sent (unless the sweep is `over` first); note what each server had
    answered by then and how many answers were stored."""
    while fresh_steps(store) < steps or not doomed.answering():
        if over.wait(0.02):
            return
    doomed.kill()
    seen["stored"] = fresh_steps(store)
    seen["doomed"] = doomed.answered()
    seen["survivor"] = sum(server.answered() for server in others)


@pytest.mark.slow
def test_a_sweep_across_two_llama_cpp_servers_loses_nothing_when_one_is_killed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "runs.sqlite"
    # One request at a time: the turns, and so each server's share, are the same every time.
    command = ["sweep", "", "--store", str(store), "--cache-dir", str(tmp_path / "cache"),
               "--max-connections", "1"]  # fmt: skip
    with llama_servers(tmp_path, 2) as (survivor, doomed):
        command[1] = str(sweep_file(tmp_path, [survivor.url, doomed.url]))
        seen: dict[str, int] = {}
        over = threading.Event()
        watcher = threading.Thread(
            target=kill_mid_answer, args=(KILL_AFTER_STEPS, store, doomed, [survivor], seen, over)
        )
        watcher.start()
        try:
            code = main(command)
        finally:
            over.set()
            watcher.join()
        first = capsys.readouterr()
        assert code == 0, first.err
        assert "sweep two-servers: 1 runs" in first.out and " failed " not in first.out
        answered = {"survivor": survivor.answered(), "doomed": doomed.answered()}

    with RunStore(store) as runs:
        (run,) = [r for r in runs.runs() if r.config["model"] == MODEL]
        episodes = runs.finished_episodes(run.run_id)
        steps = runs.steps(run.run_id)
    with closing(sqlite3.connect(store)) as db:
        stored_calls = db.execute(
            "SELECT COUNT(*) FROM model_calls WHERE model = ?", (MODEL,)
        ).fetchone()[0]
    made = sum(not s.from_cache for s in steps)
    cached = sum(s.from_cache for s in steps)

    # Every episode finished, each of its steps stored once, none missing.
    assert sorted(unit.index for unit in episodes) == list(range(EPISODES))
    for unit, episode in episodes.items():
        assert [s.step for s in steps if s.unit == unit] == list(range(episode.steps))
    assert made + cached == len(steps) == sum(e.steps for e in episodes.values())
    # One answer per request: each request a server answered is one stored call, and the
    # servers together answered exactly as many requests as were made.
    assert made == stored_calls == len({s.prompt_hash for s in steps})
    assert answered["survivor"] + answered["doomed"] == made
    # Spread across both: one request at a time, so the servers took turns (requests 0 and
    # 2 to the first, 1 to the second); the second was killed working on request 3, after
    # three answers were stored, and from then on the survivor answered everything.
    assert seen == {"stored": KILL_AFTER_STEPS, "doomed": 1, "survivor": 2}, seen
    assert answered == {"survivor": made - 1, "doomed": 1} and made > KILL_AFTER_STEPS + 1

    # Both servers are gone now: a rerun is served from the store and prints the same table.
    assert main(command) == 0
    assert capsys.readouterr().out == first.out
