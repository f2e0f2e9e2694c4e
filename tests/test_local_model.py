"""The embedded model (Gemma 3 270M through llama.cpp), for real: tokens, prefix reuse, runs."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import episode_requests

from lmact.demos import DemoStore
from lmact.models.base import ModelOptions, TextPart
from lmact.models.local import LocalModel, PrefixTurns, shared_start
from lmact.models.registry import resolve_model
from lmact.prompting import PromptSettings
from lmact.regimes.icrl import make_icrl_config
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> LocalModel:
    client = resolve_model("local/gemma-3-270m", ModelOptions(threads=2))
    assert isinstance(client, LocalModel)
    return client


def test_token_count_matches_what_the_model_reports(model: LocalModel) -> None:
    request = episode_requests("tic_tac_toe", "txt", PromptSettings(), demos=2)[1][0][0]
    response = asyncio.run(model.complete(request))
    expected = model.count_tokens([*request.parts, TextPart(request.answer_prefix)])
    assert response.prompt_tokens == expected > 100
    assert response.stop_reason in {"stop", "length"}


def test_prefix_reuse_gives_the_same_answers(model: LocalModel) -> None:
    requests = [r for r, _ in episode_requests("tic_tac_toe", "txt", PromptSettings(), 2)[1][:3]]
    assert len(requests) >= 2
    fresh = LocalModel("local/gemma-3-270m", ModelOptions(threads=2), reuse_prefix=False)
    reused = [asyncio.run(model.complete(r)) for r in requests]
    recomputed = [asyncio.run(fresh.complete(r)) for r in requests]
    assert [r.text for r in reused] == [r.text for r in recomputed]
    # Every later step starts from the KV cache of the earlier prompt: at least its prefix.
    prefix_tokens = model.count_tokens(requests[0].parts[: requests[0].stable_prefix_parts])
    assert all(r.cached_tokens >= prefix_tokens for r in reused[1:])
    assert all(r.cached_tokens == 0 for r in recomputed)


def test_end_to_end_run_with_the_local_model(tmp_path: Path) -> None:
    results = []
    for name in ("first", "second"):
        with RunStore(tmp_path / f"{name}.sqlite") as store:
            runner = Runner(
                store, DemoStore(tmp_path / "demos"), ModelOptions(threads=2), progress=False
            )
            config = make_config(
                "tic_tac_toe",
                model="local/gemma-3-270m",
                demos=2,
                demo_draw="shared",  # the KV cache figures depend on the previous prompt
                max_steps=3,
                show_legal_actions=True,
            )
            summary = runner.evaluate(config, 2)
            steps = [
                {k: v for k, v in asdict(s).items() if k not in ("latency_s", "from_cache")}
                for s in store.steps(config.run_id)
            ]
            runner.close()
            results.append((summary, steps))
    (summary, steps), (again, steps_again) = results
    assert summary.details["demos"] == 2 and summary.episodes == 2 and 2 <= summary.steps <= 6
    assert summary.usage.prompt_tokens > summary.details["prefix_tokens"] > 0
    assert summary.usage.completion_tokens > 0 and summary.calls_made + summary.calls_cached == len(
        steps
    )
    assert all(s["completion"] == s["completion"].split("\n")[0] for s in steps)  # stops at EOL
    assert steps == steps_again  # greedy decoding: the same completions in a fresh store
    assert {**summary.to_dict(), "calls_made": 0, "calls_cached": 0} == {
        **again.to_dict(),
        "calls_made": 0,
        "calls_cached": 0,
    }


@pytest.mark.parametrize(
    ("task", "episodes", "variant"),
    [("bandit_hard", 12, "naive"), ("tic_tac_toe", 3, "naive")],
)
def test_in_context_rl_with_the_local_model(
    tmp_path: Path, task: str, episodes: int, variant: str
) -> None:
    """The local model plays episode after episode with its own past in context; a rerun
    in a fresh process-like runner is served from the cache, step for step."""
    config = make_icrl_config(
        task, model="local/gemma-3-270m", variant=variant, replicates=1, max_steps=4
    )
    runs = []
    for attempt in ("first", "again"):
        with RunStore(tmp_path / "runs.sqlite") as store:
            runner = Runner(
                store, DemoStore(tmp_path / "demos"), ModelOptions(threads=2), progress=False
            )
            try:
                result = runner.run(config, episodes, restart=attempt == "again")
            finally:
                runner.close()
            steps = store.steps(config.run_id)
            runs.append((result, [(s.completion, s.action, s.reward, s.context) for s in steps]))
    (first, steps), (again, steps_again) = runs
    assert len(first.episodes) == episodes and first.calls_made > 0
    assert again.calls_made == 0 and again.calls_cached == len(steps) == len(steps_again)
    assert steps == steps_again
    assert steps[-1][3] == tuple(range(episodes - 1))  # naive: every earlier episode


def test_the_waiting_call_that_shares_the_longest_prefix_goes_next() -> None:
    """A call waiting at the local model that starts like the one just answered goes
    before an earlier call of another prompt, so the KV cache keeps their prefix; a
    waiter cancelled meanwhile loses its place, and a cancelled holder passes its turn."""
    turns, order = PrefixTurns(), []

    async def call(prompt: str, hold_s: float = 0.01) -> None:
        async with turns.turn(prompt):
            order.append(prompt)
            await asyncio.sleep(hold_s)

    async def main() -> None:
        first = asyncio.create_task(call("demos A, step 1", 0.05))
        await asyncio.sleep(0.01)  # the first holds the model; the others queue
        others = [asyncio.create_task(call(p)) for p in ("demos B, step 1", "demos A, step 2")]
        cancelled = asyncio.create_task(call("demos A, step 1 and more"))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(first, *others)
        await call("demos B, step 2")  # free again: no wait

    asyncio.run(main())
    assert order == ["demos A, step 1", "demos A, step 2", "demos B, step 1", "demos B, step 2"]
    order.clear()

    async def next_step_comes_just_after() -> None:
        first = asyncio.create_task(call("demos A, step 1", 0.02))
        await asyncio.sleep(0.005)
        other = asyncio.create_task(call("demos B, step 1"))
        await first  # the episode then sends its next step at once, as the runner does
        await asyncio.sleep(0.001)
        await asyncio.gather(call("demos A, step 1, step 2"), other)

    asyncio.run(next_step_comes_just_after())
    # The turn lingered for the step that reuses the whole cache, though B waited first.
    assert order == ["demos A, step 1", "demos A, step 1, step 2", "demos B, step 1"]
    assert shared_start("abcdef", "abcxyz") == 3 and shared_start("", "abc") == 0
    assert shared_start("abc", "abc") == 3
