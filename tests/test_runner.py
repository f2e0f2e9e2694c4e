"""Whole runs: determinism, caching, resume, answer handling and scoring, with scripted
policies and a scripted-answer test client (the local model's runs are in test_local_model)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import StubModel

from lmact import schedule as schedule_module
from lmact.demos import DEMO_SEED_BASE, DemoStore
from lmact.errors import LmactError
from lmact.models.base import (
    ModelAuthError,
    ModelCallError,
    ModelClient,
    ModelRequest,
    ModelResponse,
    TextPart,
)
from lmact.prompting import ACTION_LABEL
from lmact.regimes.icrl_config import make_icrl_config
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore


class ScriptedAnswers(StubModel):
    """A cacheable test client that answers from a fixed list, cycling, and counts calls."""

    def __init__(self, answers: Sequence[str]) -> None:
        super().__init__("test/scripted-answers")
        self.answers = list(answers)
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        # The answer depends on the request only, as a model's would.
        index = len(request.parts[-1].text) + len(request.parts)
        self.calls += 1
        return ModelResponse(
            text=self.answers[index % len(self.answers)], prompt_tokens=10, completion_tokens=1
        )


def runner_with(client: ModelClient, store: RunStore, demo_store: DemoStore) -> Runner:
    runner = Runner(store, demo_store, progress=False)
    runner.policies.register(client)
    return runner


def step_rows(store: RunStore, run_id: str) -> list[dict]:
    rows = []
    for step in store.steps(run_id):
        row = asdict(step)
        del row["latency_s"], row["from_cache"]
        rows.append(row)
    return rows


@pytest.mark.parametrize("task", ["tic_tac_toe", "grid_world"])
@pytest.mark.parametrize("model", ["random", "expert"])
def test_a_run_is_deterministic(tmp_path: Path, task: str, model: str) -> None:
    results = []
    for name in ("a", "b"):
        with RunStore(tmp_path / f"{name}.sqlite") as store:
            runner = Runner(store, DemoStore(tmp_path / f"demos-{name}"), progress=False)
            config = make_config(task, model=model, demos=2)
            summary = runner.evaluate(config, 6)
            results.append((summary.to_dict(), step_rows(store, config.run_id)))
    (first, first_steps), (second, second_steps) = results
    assert first_steps == second_steps and len(first_steps) > 6
    assert first == second


def test_scores_of_the_baselines(runner: Runner) -> None:
    expert = runner.evaluate(make_config("tic_tac_toe", model="expert", demos=0), 8)
    random = runner.evaluate(make_config("tic_tac_toe", model="random", demos=0), 8)
    assert expert.mean_return == expert.expert_return and expert.normalized_score == 1.0
    assert random.mean_return == random.random_return and random.normalized_score == 0.0
    assert expert.expert_return > expert.random_return
    assert expert.ci95[0] <= expert.mean_return <= expert.ci95[1]
    assert expert.illegal_rate == 0.0 and expert.steps > 8


def test_a_rerun_is_served_from_the_cache(tmp_path: Path, demo_store: DemoStore) -> None:
    config = make_config("grid_world", model="test/scripted-answers", demos=1, max_steps=6)
    with RunStore(tmp_path / "runs.sqlite") as store:
        client = ScriptedAnswers(["left", "up", "right", "down", "stay"])
        first = runner_with(client, store, demo_store).evaluate(config, 4)
        assert client.calls == first.calls_made > 0
        first_steps = step_rows(store, config.run_id)
    with RunStore(tmp_path / "runs.sqlite") as store:
        # Unfinished episodes are replayed from the cache: make every episode unfinished.
        store._db.execute("UPDATE episodes SET status = 'running'")
        client = ScriptedAnswers(["never", "called"])
        again = runner_with(client, store, demo_store).evaluate(config, 4)
        assert client.calls == 0 and again.calls_made == 0
        assert again.calls_cached == first.calls_made
        assert step_rows(store, config.run_id) == first_steps
        assert all(s.from_cache for s in store.steps(config.run_id))
    assert {**again.to_dict(), "calls_made": 0, "calls_cached": 0} == {
        **first.to_dict(),
        "calls_made": 0,
        "calls_cached": 0,
    }


def test_bad_answers_are_replaced_by_random_legal_actions(
    runner: Runner, run_store: RunStore
) -> None:
    client = ScriptedAnswers(["a1", "zz", "", "b2", "c3", "Action: a2", "xyz"])
    runner.policies.register(client)
    config = make_config("tic_tac_toe", model=client.name, demos=0)
    summary = runner.evaluate(config, 10)
    steps = run_store.steps(config.run_id)
    kinds = {s.kind for s in steps}
    assert kinds <= {"valid", "illegal", "invalid", "empty"} and "invalid" in kinds
    for step in steps:
        if step.kind == "valid":
            assert step.action == step.answer.lower()
        else:
            assert step.action in {f"{r}{c}" for r in "abc" for c in "123"}
    count = {kind: sum(s.kind == kind for s in steps) for kind in kinds}
    n = len(steps)
    assert summary.empty_rate == count.get("empty", 0) / n
    assert summary.invalid_rate == (count.get("empty", 0) + count["invalid"]) / n
    assert summary.illegal_rate == (n - count.get("valid", 0)) / n
    assert summary.empty_rate <= summary.invalid_rate <= summary.illegal_rate


def test_more_episodes_extend_a_run(runner: Runner, run_store: RunStore) -> None:
    config = make_config("tic_tac_toe", model="random", demos=0)
    runner.run(config, 3)
    before = step_rows(run_store, config.run_id)
    result = runner.run(config, 5)
    assert [e.episode for e in result.episodes] == [0, 1, 2, 3, 4]
    assert step_rows(run_store, config.run_id)[: len(before)] == before
    assert [e.seed for e in result.episodes] == [0, 1, 2, 3, 4]


def test_test_seeds_stay_below_demonstration_seeds(runner: Runner) -> None:
    config = make_config("tic_tac_toe", model="random", seed=DEMO_SEED_BASE - 2)
    runner.run(config, 2)
    with pytest.raises(LmactError, match="below"):
        runner.run(config, 3)


def test_text_only_model_refuses_images(runner: Runner) -> None:
    with pytest.raises(LmactError, match="accepts no images"):
        runner.run(make_config("tic_tac_toe", observation="png", model="local/gemma-3-270m"), 1)


def test_image_observations_run_with_scripted_policies(runner: Runner) -> None:
    summary = runner.evaluate(
        make_config("grid_world", observation="rgb", model="expert", demos=1), 2
    )
    assert summary.mean_return == 1.0 and summary.details["demos"] == 1


class FailsOnEpisode(ScriptedAnswers):
    """Answers like ScriptedAnswers, but the calls of the n-th episode it sees fail with
    `error`. A client sees requests only: a request that shows no more past actions than the
    one before starts a new episode (run one episode at a time to know which)."""

    def __init__(self, answers: Sequence[str], failing_episode: int, error: Exception) -> None:
        super().__init__(answers)
        self.failing_episode = failing_episode
        self.error = error
        self.episodes_begun = 0
        self.actions_shown = -1

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await asyncio.sleep(0)  # suspend, as a client waiting on the network would
        last = request.parts[-1]
        shown = last.text.count(ACTION_LABEL) if isinstance(last, TextPart) else 0
        if shown <= self.actions_shown:
            self.episodes_begun += 1
        self.actions_shown = shown
        if self.episodes_begun == self.failing_episode:
            raise self.error
        return await super().complete(request)


def one_at_a_time(runner: Runner) -> Runner:
    runner.max_connections = 1  # episodes start in order, one after another
    return runner


def test_a_failing_episode_does_not_lose_the_others(
    run_store: RunStore, demo_store: DemoStore
) -> None:
    config = make_config("tic_tac_toe", model="test/scripted-answers", demos=1)
    failing = FailsOnEpisode(
        ["a1", "b2", "c3"], failing_episode=2, error=ModelCallError("HTTP 400")
    )
    with pytest.raises(
        LmactError, match=r"1 of 5 episodes failed \(episode (\d): HTTP 400\)"
    ) as error:
        one_at_a_time(runner_with(failing, run_store, demo_store)).run(config, 5)
    # (Episodes whose prompts all repeat earlier ones' are served from the cache, so the
    # client's third episode need not be episode 2.)
    failed = int(re.search(r"episode (\d)", str(error.value)).group(1))  # type: ignore[union-attr]
    finished = run_store.finished_episodes(config.run_id)
    assert sorted(unit.index for unit in finished) == [e for e in range(5) if e != failed]
    calls_before = failing.calls
    # The rerun plays only the failed episode; the others' calls are not repeated.
    healthy = ScriptedAnswers(["a1", "b2", "c3"])
    result = runner_with(healthy, run_store, demo_store).run(config, 5)
    assert [e.episode for e in result.episodes] == [0, 1, 2, 3, 4]
    assert [result.episodes[unit.index] for unit in finished] == list(finished.values())
    assert result.calls_made == healthy.calls >= 1
    assert result.calls_made + result.calls_cached == result.episodes[failed].steps
    assert calls_before > 0


def test_a_refused_key_stops_the_whole_run(run_store: RunStore, demo_store: DemoStore) -> None:
    config = make_config("tic_tac_toe", model="test/scripted-answers", demos=1)
    refused = FailsOnEpisode(["a1"], failing_episode=0, error=ModelAuthError("HTTP 401: bad"))
    with pytest.raises(ModelAuthError, match="HTTP 401"):
        one_at_a_time(runner_with(refused, run_store, demo_store)).run(config, 4)
    assert run_store.finished_episodes(config.run_id) == {}


def test_a_dry_run_counts_the_expert_episodes_and_calls_nothing(
    run_store: RunStore, demo_store: DemoStore
) -> None:
    config = make_config("tic_tac_toe", model="test/scripted-answers", demos=2, demo_draw="shared")
    client = ScriptedAnswers(["a1"])
    runner = runner_with(client, run_store, demo_store)
    estimate = runner.estimate(config, 6)
    assert client.calls == 0 and run_store.runs() == []
    expert = runner.run(config.baseline("expert"), 6)
    assert estimate.calls == sum(e.steps for e in expert.episodes)
    assert estimate.episodes_todo == 6 and estimate.episodes_done == 0
    assert estimate.prefix_tokens == estimate.prepared.facts.prefix_tokens * estimate.calls
    assert estimate.prompt_tokens > estimate.prefix_tokens
    assert estimate.completion_tokens == estimate.calls * config.max_tokens
    assert estimate.cost_usd is None  # the test client has no prices


class NeedsAKey(ScriptedAnswers):
    def __init__(self, answers: Sequence[str], has_key: bool) -> None:
        super().__init__(answers)
        self.has_key = has_key

    def check_ready(self) -> None:
        if not self.has_key:
            raise LmactError("model test/scripted-answers needs an API key")


def test_a_finished_run_reads_back_without_a_key(
    run_store: RunStore, demo_store: DemoStore
) -> None:
    config = make_config("tic_tac_toe", model="test/scripted-answers", demos=1)
    first = runner_with(NeedsAKey(["a1"], has_key=True), run_store, demo_store).run(config, 3)
    keyless = NeedsAKey(["a1"], has_key=False)
    again = runner_with(keyless, run_store, demo_store).run(config, 3)
    assert again.episodes == first.episodes and keyless.calls == 0
    with pytest.raises(LmactError, match="needs an API key"):  # new episodes do need it
        runner_with(keyless, run_store, demo_store).run(config, 4)


def test_the_runs_of_one_model_share_its_caller_and_count_their_own_calls(
    run_store: RunStore, demo_store: DemoStore
) -> None:
    client = ScriptedAnswers(["a1", "b2", "c3"])
    runner = runner_with(client, run_store, demo_store)
    caller = runner.policies.caller(client.name)
    results = [
        runner.run(make_config("tic_tac_toe", model=client.name, demos=1, seed=seed), 2)
        for seed in (0, 10)
    ]
    assert runner.policies.caller(client.name) is caller
    assert all(result.calls_made > 0 for result in results)
    assert sum(result.calls_made for result in results) == caller.totals.calls_made
    assert caller.totals.calls_made == client.calls


@pytest.mark.parametrize("write_every_s", [0.0, 3600.0])
def test_steps_that_come_fast_are_written_with_their_episodes_end(
    runner: Runner, run_store: RunStore, monkeypatch: pytest.MonkeyPatch, write_every_s: float
) -> None:
    """Steps wait at most STEPS_WRITTEN_EVERY_S to be written: with no wait each step is its
    own write; with a long one an episode's steps go with its end. Either way the store
    holds the same steps."""
    monkeypatch.setattr(schedule_module, "STEPS_WRITTEN_EVERY_S", write_every_s)
    written: list[int] = []
    record_steps = run_store.record_steps

    def counted(run_id: str, steps: Sequence) -> None:
        written.append(len(steps))
        record_steps(run_id, steps)

    monkeypatch.setattr(run_store, "record_steps", counted)
    config = make_config("tic_tac_toe", model="random", demos=0)
    result = runner.run(config, 3)
    steps = sum(episode.steps for episode in result.episodes)
    assert len(run_store.steps(config.run_id)) == steps > 3
    assert written == ([1] * steps if write_every_s == 0 else [])


def test_a_chains_units_that_end_fast_are_written_together_with_the_same_records(
    tmp_path: Path, demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ends of a chain's units wait at most STEPS_WRITTEN_EVERY_S to be written: with no
    wait each unit's end is a write of its own; with a long one a replicate's rounds are one
    write. The stores hold the same episodes and steps either way."""
    config = make_icrl_config("bandit_easy", model="ucb1", replicates=3)
    stored = {}
    for write_every_s in (0.0, 3600.0):
        monkeypatch.setattr(schedule_module, "STEPS_WRITTEN_EVERY_S", write_every_s)
        with RunStore(tmp_path / f"every-{write_every_s}.sqlite") as store:
            writes: list[int] = []
            finish_units = store.finish_units

            def counted(run_id: str, ends: Sequence, claim_next: object = None) -> object:
                writes.append(len(ends))  # noqa: B023 (called within this iteration)
                return finish_units(run_id, ends, claim_next)  # noqa: B023

            monkeypatch.setattr(store, "finish_units", counted)
            runner = Runner(store, demo_store, progress=False)
            runner.run(config, 20)
            runner.close()
            assert sorted(writes) == ([1] * 60 if write_every_s == 0 else [20, 20, 20])
            episodes = store.finished_episodes(config.run_id)
            steps = [(s.unit, s.action, s.reward) for s in store.steps(config.run_id)]
            stored[write_every_s] = ({u: asdict(e) for u, e in episodes.items()}, steps)
    assert len(stored[0.0][0]) == 60 and len(stored[0.0][1]) == 60
    assert stored[0.0] == stored[3600.0]


def test_a_model_that_cannot_constrain_plays_unconstrained_and_the_run_says_so(
    run_store: RunStore, demo_store: DemoStore, capsys: pytest.CaptureFixture[str]
) -> None:
    client = ScriptedAnswers(["a1", "b2"])
    assert not client.constrains
    config = make_config("tic_tac_toe", model="test/scripted-answers", demos=0, max_steps=2,
                         constrained=True)  # fmt: skip
    runner_with(client, run_store, demo_store).run(config, 1)
    notice = capsys.readouterr().err
    assert "test/scripted-answers cannot constrain its answers" in notice
    assert notice.count("\n") == 1
    stored = run_store.run(config.run_id)
    assert stored is not None and "unconstrained" in stored.facts
    # Its requests carried the choices all the same (a constraint is part of each key).
    assert config.run_id != make_config("tic_tac_toe", model="test/scripted-answers", demos=0,
                                        max_steps=2).run_id  # fmt: skip
    with pytest.raises(LmactError, match="give either cot or constrained"):
        make_config("tic_tac_toe", model="x", constrained=True, chain_of_thought=True)
