"""What a sweep promises: its dry run counts what it then does, the baselines its runs
share are played once, one provider's Retry-After pauses only that provider, and a sweep
killed with SIGKILL resumes with no successful call repeated and the same numbers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import StubModel
from loopback import RecordedRequest, Reply, chat_completion, loopback

from lmact.demos import DemoStore
from lmact.models.base import ModelRequest, ModelResponse, TransientModelError
from lmact.policies import ExpertPolicy
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.sweeps import estimate_sweep, load_sweep, play_sweep

LEGAL = re.compile(r"The legal actions in this state are: ([^\n]+)")


class Answers(StubModel):
    """Answers every request at once (with `b2`), after an optional Retry-After first."""

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        super().__init__(name)
        self.retry_after = retry_after
        self.answered_at: list[float] = []
        self.attempted_at: list[float] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.attempted_at.append(time.monotonic())
        if self.retry_after is not None:
            wait, self.retry_after = self.retry_after, None
            raise TransientModelError("HTTP 429: slow down", retry_after=wait)
        self.answered_at.append(time.monotonic())
        return ModelResponse(text="b2", prompt_tokens=10, completion_tokens=1)


def sweep_of(folder: Path, text: str) -> Path:
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def played(runner: Runner, path: Path) -> list:  # type: ignore[type-arg]
    sweep = load_sweep(path)
    return asyncio.run(play_sweep(runner, sweep, lambda outcome: None))


def test_the_dry_run_counts_what_the_sweep_then_does(tmp_path: Path) -> None:
    # One-step episodes: the expert the dry run plays in the model's place takes exactly
    # the model's steps, so every count must come out equal.
    text = 'name = "x"\n[base]\ntask = "tic_tac_toe"\nepisodes = 3\nmax_steps = 1\n'
    text += '[axes]\nmodel = ["test/answers", "random"]\ndemos = [0, 1, 2]\n'
    text += '[[runs]]\nregime = "icrl"\ntask = "bandit_easy"\nmodel = "test/answers"\n'
    text += "episodes = 4\nreplicates = 2\n"
    path = sweep_of(tmp_path, text)
    with RunStore(tmp_path / "s.sqlite") as store:
        demo_store = DemoStore(tmp_path / "demos")
        runner = Runner(store, demo_store, progress=False)
        runner.policies.register(Answers("test/answers"))
        estimate = estimate_sweep(runner, load_sweep(path))
        assert store.runs() == []  # nothing played, nothing recorded
        outcomes = played(runner, path)
        stored_demos = len(list((tmp_path / "demos").rglob("*.json*")))
    assert all(o.error is None for o in outcomes)
    by_model = {}
    for outcome in outcomes:
        summary = outcome.summary
        counts = by_model.setdefault(outcome.run.config.model, [0, 0])
        counts[0] += 1
        counts[1] += summary.calls_made + summary.calls_cached
    assert {m: [e.runs, e.calls] for m, e in estimate.models.items()} == by_model
    assert estimate.models["test/answers"].calls == 3 * 3 + 4 * 2
    assert estimate.demonstrations == 2  # tic-tac-toe's, shared by the runs
    assert stored_demos >= 1  # the demonstrations were generated into the store


def test_baselines_shared_by_runs_are_played_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acted: list[int] = []
    act = ExpertPolicy.act

    async def counted(self, request, situation):  # type: ignore[no-untyped-def]
        acted.append(1)
        return await act(self, request, situation)

    monkeypatch.setattr(ExpertPolicy, "act", counted)
    text = 'name = "x"\n[base]\ntask = "grid_world"\nepisodes = 3\n'
    text += '[axes]\nmodel = ["random"]\ndemos = [0, 1, 2, 4]\n'  # 4 runs, one expert baseline
    with RunStore(tmp_path / "s.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        outcomes = played(runner, sweep_of(tmp_path, text))
        experts = [r for r in store.runs() if r.config["model"] == "expert"]
        (expert,) = experts
        expert_steps = sum(e.steps for e in store.finished_episodes(expert.run_id).values())
    assert len(outcomes) == 4 and all(o.error is None for o in outcomes)
    # The demonstrations are the expert's too, but played by the demo store, not a policy.
    assert len(acted) == expert_steps


def test_a_retry_after_from_one_provider_pauses_only_that_provider(tmp_path: Path) -> None:
    text = 'name = "x"\n[base]\ntask = "tic_tac_toe"\nepisodes = 2\ndemos = 0\n'
    text += '[axes]\nmodel = ["test/limited", "test/free"]\n'
    limited, free = Answers("test/limited", retry_after=1.0), Answers("test/free")
    with RunStore(tmp_path / "s.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        runner.policies.register(limited)
        runner.policies.register(free)
        outcomes = played(runner, sweep_of(tmp_path, text))
    assert all(o.error is None for o in outcomes)
    paused_until = limited.attempted_at[0] + 1.0
    assert limited.attempted_at[1] >= paused_until  # its own calls waited out the pause
    assert free.answered_at and max(free.answered_at) < paused_until  # the other went on


def first_legal_action(request: RecordedRequest) -> Reply:
    time.sleep(0.03)  # slow enough to be killed mid-sweep
    if not whole(request):  # cut off by the kill: nobody is left to read an answer
        return Reply(status=400)
    content = request.json["messages"][-1]["content"]
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    return Reply(body=chat_completion(LEGAL.findall(text)[-1].split(", ")[0]))


def sweep_process(path: Path, store: Path, url: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "OPENAI_COMPATIBLE_BASE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "lmact.cli", "sweep", str(path), "--store", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def stored(store: Path, query: str) -> list[tuple]:  # type: ignore[type-arg]
    if not store.exists():
        return []
    try:
        with sqlite3.connect(store) as db:
            return db.execute(query).fetchall()
    except sqlite3.OperationalError:  # the schema is not written yet
        return []


def whole(request: RecordedRequest) -> bool:
    """Whether a request arrived whole: SIGKILL may cut one after its headers, and what
    reaches the server then is not a call (its body is short of JSON)."""
    try:
        request.json  # noqa: B018 - parsed to see that it is whole
    except ValueError:
        return False
    return True


def distinct_calls(requests: list[RecordedRequest]) -> set[str]:
    """The distinct calls among recorded requests (a retried call counts once; one cut
    off by the kill is none)."""
    return {json.dumps(request.json, sort_keys=True) for request in requests if whole(request)}


STEPS = "SELECT run_id, episode, step, prompt_hash, completion, action, reward FROM steps"


def test_a_sweep_killed_by_sigkill_resumes_without_repeating_a_call(tmp_path: Path) -> None:
    text = 'name = "x"\n[base]\nmodel = "openai-compatible/fake"\nlegal_actions = true\n'
    text += "episodes = 4\nmax_connections = 2\n"
    text += '[axes]\ntask = ["tic_tac_toe", "grid_world"]\ndemos = [0, 1]\nmax_steps = [8]\n'
    path = sweep_of(tmp_path, text)
    with loopback(first_legal_action) as server:
        url = f"{server.url}/v1"
        whole = sweep_process(path, tmp_path / "whole.sqlite", url)
        assert whole.wait(timeout=300) == 0, whole.stderr.read() if whole.stderr else ""
        needed = distinct_calls(server.requests)
        sent_by_whole = len(server.requests)

        killed = tmp_path / "killed.sqlite"
        victim = sweep_process(path, killed, url)
        deadline = time.monotonic() + 120
        while len(stored(killed, "SELECT 1 FROM model_calls")) < len(needed) // 3:
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        answered_at_kill = len(stored(killed, "SELECT 1 FROM model_calls"))
        assert 0 < answered_at_kill < len(needed)
        before_resume = len(server.requests)
        sent_by_victim = distinct_calls(server.requests[sent_by_whole:before_resume])

        resumed = sweep_process(path, killed, url)
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read() if resumed.stderr else ""
        sent_after = distinct_calls(server.requests[before_resume:])
    # Counted as distinct requests: a client may send one call twice (a retry after a
    # timeout on a busy machine) without any answer being asked for again.
    # Every call not stored at the kill is sent again, and no stored one is.
    assert len(sent_after) == len(needed) - answered_at_kill
    assert sent_after | sent_by_victim == needed
    # Repeated are only the calls in flight at the kill: at most one per connection.
    assert len(sent_after & sent_by_victim) <= 2
    assert sorted(stored(killed, STEPS)) == sorted(stored(tmp_path / "whole.sqlite", STEPS))
