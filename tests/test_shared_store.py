"""Any number of processes on one run store: each episode is played by the one process that
claimed it, a finished episode is never reopened, a crashed process's claims are taken
over, and every interleaving stores the numbers one process would."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import RecordedRequest, Reply, chat_completion, loopback

from lmact.demos import DemoStore
from lmact.records import AnswerKind, EpisodeRecord, StepRecord, StopReason, UnitKey, Usage
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import Claim, ClaimLostError, open_store, process_identity

CELLS = [f"{row}{column}" for row in "abc" for column in "123"]


def lmact_process(*args: str, store: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lmact.cli", *args, "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    return out


def check_consistent(store: Path) -> int:
    """Every episode finished, with totals equal to its stored steps; the episode count."""
    with sqlite3.connect(store) as db:
        running = db.execute("SELECT COUNT(*) FROM episodes WHERE status != 'done'").fetchone()
        assert running == (0,)
        rows = db.execute(
            "SELECT e.run_id, e.episode, e.steps, e.total_return, e.valid, "
            "COUNT(s.step), COALESCE(SUM(s.reward), 0), SUM(s.kind = 'valid') "
            "FROM episodes e LEFT JOIN steps s USING (run_id, episode) "
            "GROUP BY e.run_id, e.episode"
        ).fetchall()
    for run_id, episode, steps, total, valid, stored_steps, rewards, stored_valid in rows:
        where = f"run {run_id} episode {episode}"
        assert (steps, valid) == (stored_steps, stored_valid), where
        assert total == pytest.approx(rewards), where
    return len(rows)


@pytest.mark.slow
def test_two_configurations_sharing_baselines_run_at_once(tmp_path: Path) -> None:
    env = {**os.environ, "LMACT_CACHE_DIR": str(tmp_path / "cache")}
    run = ["run", "--task", "grid_world", "--episodes", "40", "--demos", "0", "--json"]
    for trial in range(3):
        store = tmp_path / f"trial-{trial}.sqlite"
        processes = [
            lmact_process(*run, "--model", model, store=store, env=env)
            for model in ("random", "expert")
        ]
        random_run, expert_run = (json.loads(finish(p)) for p in processes)
        # The two runs are each other's baselines: three runs of 40 episodes in all.
        assert check_consistent(store) == 80
        assert random_run["random_return"] == random_run["mean_return"]
        assert expert_run["expert_return"] == expert_run["mean_return"]
        assert expert_run["random_return"] == random_run["mean_return"]


def random_answers(request: RecordedRequest) -> Reply:
    """A model that answers differently each time: a random cell, after a short think."""
    time.sleep(0.002)
    return Reply(body=chat_completion(random.choice(CELLS)))


@pytest.mark.slow
def test_the_same_command_twice_at_once_stores_one_consistent_run(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI")} | {
        "LMACT_CACHE_DIR": str(tmp_path / "cache")
    }
    store = tmp_path / "shared.sqlite"
    with loopback(random_answers) as server:
        run = [
            "run",
            "--task",
            "tic_tac_toe",
            "--model",
            "openai-compatible/m",
            "--base-url",
            f"{server.url}/v1",
            "--episodes",
            "24",
            "--max-connections",
            "4",
            "--json",
        ]
        twins = [lmact_process(*run, store=store, env=env) for _ in range(2)]
        first, second = (json.loads(finish(p)) for p in twins)
        calls = len(server.requests)
        rerun = json.loads(finish(lmact_process(*run, store=store, env=env)))
        assert len(server.requests) == calls  # nothing left to play or to ask
    assert check_consistent(store) == 3 * 24
    counters = ("calls_made", "calls_cached", "retries", "cached_tokens")
    results = [{k: v for k, v in r.items() if k not in counters} for r in (first, second, rerun)]
    assert results[0] == results[1] == results[2]
    # Each episode was played by one process: the calls made add up to what was asked.
    assert first["calls_made"] + second["calls_made"] <= calls


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process other than this one, to own claims in the store."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def identity_of(process: subprocess.Popen[bytes]) -> str:
    host = process_identity().split(":")[0]
    stat = Path(f"/proc/{process.pid}/stat").read_text()
    return f"{host}:{process.pid}:{stat.rpartition(')')[2].split()[19]}"


def a_step(episode: int, step: int = 0, reward: float = 0.0) -> StepRecord:
    return StepRecord(
        episode,
        step,
        "hash",
        "a1",
        "a1",
        AnswerKind.VALID,
        "a1",
        reward,
        StopReason.STOP,
        Usage(prompt_tokens=1, completion_tokens=1),
        0.0,
        False,
    )


def test_a_claim_holds_while_its_process_lives(
    store_place: Path | str, sleeper: subprocess.Popen[bytes]
) -> None:
    with open_store(store_place) as mine, open_store(store_place) as theirs:
        theirs.owner = identity_of(sleeper)
        assert theirs.claim_episode("r", UnitKey(0, 0), 0) == (Claim.OURS, None)
        assert mine.claim_episode("r", UnitKey(0, 0), 0) == (Claim.BUSY, theirs.owner)
        theirs.record_step("r", a_step(0))
        with pytest.raises(ClaimLostError):
            mine.record_step("r", a_step(0))
        sleeper.kill()
        sleeper.wait()
        # Its process is gone: the episode is taken over and its steps are dropped.
        assert mine.claim_episode("r", UnitKey(0, 0), 0) == (Claim.OURS, None)
        assert mine.steps("r") == []
        with pytest.raises(ClaimLostError):
            theirs.record_step("r", a_step(0))


def test_a_reused_pid_does_not_hold_a_claim(store_place: Path | str) -> None:
    with open_store(store_place) as mine, open_store(store_place) as theirs:
        host, pid, start = mine.owner.split(":")
        theirs.owner = f"{host}:{pid}:{int(start) - 1}"  # this pid, an earlier process
        assert theirs.claim_episode("r", UnitKey(0, 0), 0)[0] is Claim.OURS
        assert mine.claim_episode("r", UnitKey(0, 0), 0)[0] is Claim.OURS


def test_a_finished_episode_is_never_reopened(store_place: Path | str) -> None:
    with open_store(store_place) as store:
        store.claim_episode("r", UnitKey(0, 0), 0)
        store.record_step("r", a_step(0, reward=1.0))
        store.finish_episode("r", make_record(steps=1, total=1.0))
        assert store.claim_episode("r", UnitKey(0, 0), 0) == (Claim.DONE, None)
        assert len(store.steps("r")) == 1 and list(store.finished_episodes("r")) == [UnitKey(0, 0)]


def test_totals_that_disagree_with_the_steps_are_refused(store_place: Path | str) -> None:
    with open_store(store_place) as store:
        store.claim_episode("r", UnitKey(0, 0), 0)
        store.record_step("r", a_step(0, reward=1.0))
        with pytest.raises(Exception, match="disagree with its totals"):
            store.finish_episode("r", make_record(steps=1, total=2.0))
        assert store.finished_episodes("r") == {}


def make_record(steps: int, total: float) -> EpisodeRecord:
    return EpisodeRecord(0, 0, total, steps, True, steps, 0, 0, 0, Usage(1, 1, 0))


def test_released_claims_are_free_at_once(store_place: Path | str) -> None:
    with open_store(store_place) as store:
        store.claim_episode("r", UnitKey(0, 0), 0)
    with open_store(store_place) as other:
        other.owner = "elsewhere:1:1"  # a process on another host, whose lease is fresh
        assert other.claim_episode("r", UnitKey(0, 0), 0)[0] is Claim.OURS


def test_a_run_waits_for_an_episode_another_process_plays(
    tmp_path: Path, store_place: Path | str, sleeper: subprocess.Popen[bytes]
) -> None:
    config = make_config("tic_tac_toe", model="random", demos=0)
    results: list = []

    def play_the_run() -> None:  # in a thread: a store connection belongs to its thread
        with open_store(store_place) as mine:
            runner = Runner(mine, DemoStore(tmp_path / "demos"), progress=False, poll_s=0.05)
            results.append(runner.run(config, 5))

    with open_store(store_place) as theirs:
        theirs.owner = identity_of(sleeper)
        theirs.claim_episode(config.run_id, UnitKey(0, 2), config.test_seed(2))
        thread = threading.Thread(target=play_the_run)
        thread.start()
        deadline = time.monotonic() + 30
        while len(theirs.finished_episodes(config.run_id)) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        assert thread.is_alive() and UnitKey(0, 2) not in theirs.finished_episodes(config.run_id)
        os.kill(sleeper.pid, signal.SIGKILL)  # the other process dies mid-episode
        sleeper.wait()
        thread.join(timeout=30)
        assert not thread.is_alive()
    (result,) = results
    assert [e.episode for e in result.episodes] == [0, 1, 2, 3, 4]


def test_steps_written_with_their_units_end_are_checked_and_held_as_one_write(
    store_place: Path | str,
) -> None:
    with open_store(store_place) as store:
        store.claim_episode("r", UnitKey(0, 0), 0)
        store.record_steps("r", [a_step(0, reward=1.0)])
        late = [a_step(0, step=1, reward=0.5)]
        # Totals that disagree with the steps stored and given: nothing of it is written.
        with pytest.raises(Exception, match="disagree with its totals"):
            store.finish_episode("r", make_record(steps=2, total=2.0), late)
        assert [s.step for s in store.steps("r")] == [0]
        store.finish_episode("r", make_record(steps=2, total=1.5), late)
        assert [s.reward for s in store.steps("r")] == [1.0, 0.5]
        # Steps given for another unit than the one finished are refused before a write.
        store.claim_episode("r", UnitKey(0, 1), 0)
        with pytest.raises(ValueError, match="several units"):
            store.finish_episode("r", make_record(1, 1.0).of_unit(UnitKey(0, 1)), [a_step(0)])
        with open_store(store_place) as other:
            other.owner = "elsewhere:1:1"
            # A unit another process holds takes none of this process's steps.
            with pytest.raises(ClaimLostError):
                other.finish_episode("r", make_record(1, 1.0).of_unit(UnitKey(0, 1)), [a_step(1)])
        assert store.steps("r", UnitKey(0, 1)) == []
