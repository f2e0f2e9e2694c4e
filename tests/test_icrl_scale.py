"""In-context RL at length: what a step stores does not grow with the replicate, a long
replicate stopped late resumes with no call made twice and the numbers of one never
stopped, the stochastic draw made from the newest back is the draw of every successful
episode in turn, a finished replicate's state is let go, and what a step records of its
context reads back (or is one line when damaged)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from helpers import StubModel

from lmact.demos import DemoStore
from lmact.envs.base import AnswerKind
from lmact.errors import LmactError
from lmact.models.base import ModelCallError, ModelRequest, ModelResponse, TextPart
from lmact.records import StepRecord, StopReason, Usage
from lmact.regimes.icrl import by_replicate, make_icrl_config
from lmact.regimes.icrl_context import PastEpisode, _kept, _uniform_that_fit
from lmact.regimes.icrl_facts import context_held, describe_context, shown_context
from lmact.runner import Runner
from lmact.store import RunStore

ROUNDS = 2000
BUTTONS = ("blue", "green", "red", "yellow", "purple")


def played(path: Path, demo_store: DemoStore, config: object, rounds: int) -> int:
    """Play (or extend) a run to `rounds` in the store at `path`, closed after: its size."""
    with RunStore(path) as store:
        Runner(store, demo_store, progress=False).run(config, rounds)  # type: ignore[arg-type]
    return path.stat().st_size  # closed: its write-ahead log is folded in


@pytest.mark.slow
def test_a_long_replicate_stores_as_much_a_round_at_its_end_as_at_its_start(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    config = make_icrl_config("bandit_hard", model="ucb1", replicates=1)
    path = tmp_path / "runs.sqlite"
    # Each run extends the one before, the replicate read back from the store.
    sizes = {rounds: played(path, demo_store, config, rounds) for rounds in (1, 201, 1800, 2000)}
    early, late = sizes[201] - sizes[1], sizes[2000] - sizes[1800]
    assert 0 < late <= 1.5 * early
    with sqlite3.connect(path) as db:
        facts = [n for (n,) in db.execute("SELECT length(facts) FROM steps ORDER BY episode")]
    assert len(facts) == ROUNDS
    assert max(facts[-200:]) <= max(facts[1:201]) + 2  # a digit more, not a longer list


class Pressing(StubModel):
    """Presses a button chosen from its prompt's length (the same prompt, the same button),
    counting its calls; every call from `fail_at` on is refused."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__("test/pressing")
        self.calls = 0
        self.fail_at = fail_at

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise ModelCallError("HTTP 400: refused from here on")
        size = sum(len(p.text) for p in request.parts if isinstance(p, TextPart))
        return ModelResponse(text=BUTTONS[size * 7 % 5], prompt_tokens=size // 4)


def pressed(store: RunStore, model: Pressing) -> Runner:
    runner = Runner(store, DemoStore(Path(store.path).parent / "demos"), progress=False)
    runner.policies.register(model)
    return runner


@pytest.mark.slow
def test_a_replicate_stopped_at_round_1500_resumes_with_no_call_made_twice(
    tmp_path: Path,
) -> None:
    config = make_icrl_config("bandit_hard", model="test/pressing", replicates=1,
                              variant="stochastic", p_keep=0.2, token_budget=2000)  # fmt: skip
    with RunStore(tmp_path / "whole.sqlite") as store:
        whole = pressed(store, Pressing()).run(config, ROUNDS)
        expected = [(s.unit, s.prompt_hash, s.action, s.reward, s.facts)
                    for s in store.steps(config.run_id)]  # fmt: skip
    with RunStore(tmp_path / "stopped.sqlite") as store:
        with pytest.raises(LmactError, match="refused from here on"):
            pressed(store, Pressing(fail_at=1501)).run(config, ROUNDS)
        assert len(store.finished_episodes(config.run_id)) == 1500
    with RunStore(tmp_path / "stopped.sqlite") as store:  # as a new process opens it
        again = Pressing()
        resumed = pressed(store, again).run(config, ROUNDS)
        steps = [(s.unit, s.prompt_hash, s.action, s.reward, s.facts)
                 for s in store.steps(config.run_id)]  # fmt: skip
    assert again.calls == ROUNDS - 1500 and resumed.calls_cached == 0
    assert steps == expected
    assert by_replicate(resumed.episodes) == by_replicate(whole.episodes)
    held = [s[4]["context"]["held"] for s in steps]
    assert 0 < max(held[-100:]) < 400  # the budget bounds the draw, late as early


@pytest.mark.parametrize("successful", [0, 1, 64, 3000])
def test_the_stochastic_keep_draws_decide_each_successful_episode_in_turn(
    successful: int,
) -> None:
    words = [7, 1, 42, 3, 5]
    episodes = list(range(0, 3 * successful, 3))  # the successful ones among all
    rng = np.random.default_rng(words)
    in_turn = [index for index in episodes if rng.random() < 0.1]
    assert _kept(episodes, 0.1, words) == in_turn


def test_kept_episodes_that_do_not_fit_are_trimmed_to_a_uniform_subset() -> None:
    """Monea et al.'s stochastic variant: all kept when they fit; else a uniformly random
    subset that does, in time order (not the newest)."""
    episodes = [PastEpisode(i, (), 1.0, (), 10) for i in range(100)]
    kept = list(range(0, 100, 2))  # 50 kept, 10 tokens each
    assert _uniform_that_fit(episodes, 500, None, kept, [1, 2]) == kept
    assert _uniform_that_fit(episodes, None, 50, kept, [1, 2]) == kept
    counts = np.zeros(100)
    for step in range(400):
        chosen = _uniform_that_fit(episodes, 100, None, kept, [1, step])
        assert len(chosen) == 10 and chosen == sorted(chosen) and set(chosen) <= set(kept)
        counts[chosen] += 1
        # The same step's stream draws the same subset (a resumed run's, the viewer's).
        assert chosen == _uniform_that_fit(episodes, 100, None, kept, [1, step])
        assert len(_uniform_that_fit(episodes, 1000, 7, kept, [1, step])) == 7
    # Each kept episode is in about a fifth of the trimmed contexts, the old as the new.
    shares = counts[kept] / 400
    assert shares.min() > 0.12 and shares.max() < 0.3
    assert abs(shares[:25].mean() - shares[25:].mean()) < 0.05


@pytest.mark.parametrize("variant", ["naive", "naive-positive", "stochastic", "approximate"])
def test_a_cap_on_examples_bounds_every_variants_context(runner: Runner, variant: str) -> None:
    config = make_icrl_config(
        "bandit_hard", model="ucb1", variant=variant, max_examples=5, p_keep=0.5, replicates=2
    )
    runner.run(config, 40)
    held = [context_held(step) for step in runner.store.steps(config.run_id)]
    assert max(held) == 5 and all(h is not None and h <= 5 for h in held)
    assert (
        config.run_id
        != make_icrl_config(
            "bandit_hard", model="ucb1", variant=variant, p_keep=0.5, replicates=2
        ).run_id
    )


def test_a_finished_replicate_is_let_go(runner: Runner) -> None:
    config = make_icrl_config("bandit_hard", model="ucb1", replicates=3)
    result = runner.run(config, 20)
    assert len(result.episodes) == 60
    assert result.prepared.plan.replicates == {}


def a_step(facts: dict[str, object]) -> StepRecord:
    return StepRecord(
        episode=9, step=0, prompt_hash="", completion="", answer="", kind=AnswerKind.VALID,
        action="blue", reward=1.0, stop_reason=StopReason.STOP, usage=Usage(), latency_s=0.0,
        from_cache=False, cost_usd=0.0, facts=facts,
    )  # fmt: skip


def test_what_a_step_records_of_its_context_reads_back() -> None:
    newest = a_step({"context": {"rule": "newest", "held": 3, "before": 9}})
    assert shown_context(newest) == (6, 7, 8) and context_held(newest) == 3
    kept = a_step({"context": {"rule": "stochastic", "held": 2, "before": 9}})
    assert shown_context(kept) is None and context_held(kept) == 2  # the history says which
    assert "2 of 9 earlier episodes" in (describe_context(kept) or "")
    drawn = a_step({"context": {"rule": "approximate", "held": 1, "before": 9, "drawn": 4}})
    assert "context 4" in (describe_context(drawn) or "")
    old = a_step({"context": [0, 2, 5]})  # as earlier stores hold it
    assert shown_context(old) == (0, 2, 5) and context_held(old) == 3
    for damaged in ({"rule": "newest", "held": 10, "before": 9}, {"rule": "all"}, "naive",
                    {"rule": "newest", "held": 1, "before": 2, "extra": 0}):  # fmt: skip
        with pytest.raises(LmactError, match="not a record of how it was drawn") as error:
            context_held(a_step({"context": damaged}))
        assert "\n" not in str(error.value)
