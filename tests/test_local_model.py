"""The embedded model (Gemma 3 270M through llama.cpp), for real: tokens, prefix reuse, runs."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import conversation_request, episode_requests

from lmact.demos import DemoStore
from lmact.models.base import ModelOptions, TextPart
from lmact.models.local import LocalModel
from lmact.models.registry import resolve_model
from lmact.prompting import PromptSettings
from lmact.regimes.icrl import make_icrl_config
from lmact.regimes.icrl_facts import shown_context
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


def test_a_conversation_is_answered_from_its_turns_as_one_text(model: LocalModel) -> None:
    request = conversation_request(system="Answer.\n", answer_prefix="Action:", max_tokens=4)
    response = asyncio.run(model.complete(request))
    # Turn starts add no text: the prompt is the turns' texts between system and prefix.
    text = TextPart(request.completion_text())
    assert text.text == "Answer.\nin 1\nAction: a\nRight.\nin 2\nAction:"
    assert response.prompt_tokens == model.count_tokens([text])
    assert model.count_tokens(request.parts) == model.count_tokens(
        [p for p in request.parts if isinstance(p, TextPart)]
    )
    assert response.stop_reason in {"stop", "length"} and response.completion_tokens > 0


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
            played = [(s.completion, s.action, s.reward, shown_context(s)) for s in steps]
            runs.append((result, played))
    (first, steps), (again, steps_again) = runs
    assert len(first.episodes) == episodes and first.calls_made > 0
    assert again.calls_made == 0 and again.calls_cached == len(steps) == len(steps_again)
    assert steps == steps_again
    assert steps[-1][3] == tuple(range(episodes - 1))  # naive: every earlier episode


@pytest.mark.parametrize(
    ("regime", "task", "episodes"),
    [("imitation", "tic_tac_toe", 2), ("icrl", "bandit_hard", 8), ("icrl", "classification", 6)],
)
def test_a_constrained_local_model_gives_no_illegal_answer(
    tmp_path: Path, regime: str, task: str, episodes: int
) -> None:
    """Under a grammar of the legal actions every answer is one of them; unconstrained, the
    270M model mostly names something else (figures in the closing note of issue 22)."""
    make = make_config if regime == "imitation" else make_icrl_config
    extra = {"demos": 1} if regime == "imitation" else {"replicates": 1}
    rates = {}
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), ModelOptions(threads=2),
                        progress=False)  # fmt: skip
        try:
            for constrained in (True, False):
                config = make(task, model="local/gemma-3-270m", max_steps=4,
                              constrained=constrained, **extra)  # fmt: skip
                result = runner.run(config, episodes)
                kinds = [s.kind.value for s in store.steps(config.run_id)]
                rates[constrained] = sum(k != "valid" for k in kinds) / len(kinds)
                if constrained:
                    legal = {s.completion for s in store.steps(config.run_id)}
                    assert all(not text.startswith(" ") for text in legal)
                    assert len(result.episodes) == episodes
        finally:
            runner.close()
    assert rates[True] == 0.0
    print(f"{task}: not valid, constrained {rates[True]:.2f}, unconstrained {rates[False]:.2f}")
