"""The LMAct prompt: layout, byte-stable prefixes, and packing demonstrations to a budget."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from helpers import demonstrations, episode_requests

from lmact.errors import LmactError
from lmact.models.base import ImagePart, ModelRequest, Part, TextPart
from lmact.prompting import (
    ACTION_LABEL,
    PromptBuilder,
    PromptSettings,
    count_images,
    episode_parts,
    pack_demonstrations,
)


def characters(parts: Sequence[Part]) -> int:
    """An exactly additive 'tokenizer' (one token per character), so packing is checkable."""
    return sum(len(p.text) if isinstance(p, TextPart) else 1000 for p in parts)


def flatten(request: ModelRequest) -> list[str]:
    """A request as a sequence of characters, each image one element (its hash)."""
    out: list[str] = []
    for part in request.parts:
        out += list(part.text) if isinstance(part, TextPart) else [f"<{part.sha256}>"]
    return out


@pytest.mark.parametrize(
    ("task", "observation"),
    [
        ("tic_tac_toe", "txt"),
        ("tic_tac_toe", "png"),
        ("grid_world", "txt"),
        ("grid_world", "coords"),
        ("grid_world", "rgb"),
    ],
)
@pytest.mark.parametrize("settings", [PromptSettings(), PromptSettings(True, True)])
def test_each_prompt_extends_the_previous_one(
    task: str, observation: str, settings: PromptSettings
) -> None:
    _, requests = episode_requests(task, observation, settings, demos=2)
    assert len(requests) >= 2
    first_prefix = requests[0][0].parts[: requests[0][0].stable_prefix_parts]
    for (request, tail), (following, _) in itertools.pairwise(requests):
        # The demonstration block is the same parts, byte for byte, at every step ...
        assert following.parts[: following.stable_prefix_parts] == first_prefix
        # ... and step t+1's prompt starts with step t's, up to the tail.
        assert request.parts[-1].text.endswith(tail)
        body = flatten(request)[: -len(tail)]
        assert flatten(following)[: len(body)] == body


def test_prompt_layout_in_text() -> None:
    _, requests = episode_requests("tic_tac_toe", "txt", PromptSettings(True, False), 1)
    request, tail = requests[1]
    text = request.completion_text()
    assert text.startswith("You act in an environment")
    assert text.endswith(tail + ACTION_LABEL)
    # One demonstration episode, then the current one with its first step's action shown.
    assert text.count("This is the episode you are playing now") == 1
    current = text.split("This is the episode you are playing now")[1]
    assert current.count("Observation:") == 2 and current.count("Action: ") == 1
    assert "The legal actions in this state are: " in tail
    assert request.stop == ("\n",) and request.answer_prefix == ACTION_LABEL


def test_chain_of_thought_asks_for_reasoning() -> None:
    _, requests = episode_requests("grid_world", "txt", PromptSettings(False, True), 0)
    request, tail = requests[0]
    assert "Reasoning: <your reasoning>" in tail and request.answer_prefix == "Reasoning:"
    assert "demonstrations" not in tail  # the instruction for zero demonstrations


def test_images_are_inline_at_their_observation() -> None:
    _, requests = episode_requests("tic_tac_toe", "png", PromptSettings(), demos=1)
    request = requests[-1][0]
    kinds = [type(p) for p in request.parts]
    images = kinds.count(ImagePart)
    assert images >= 2
    for index, part in enumerate(request.parts):
        if isinstance(part, ImagePart):
            assert request.parts[index - 1].text.endswith("Observation:\n")
            assert request.parts[index + 1].text.startswith("\n")
    with pytest.raises(ValueError, match="cannot hold images"):
        request.completion_text()


def test_budget_packs_as_many_whole_demonstrations_as_fit() -> None:
    builder = PromptBuilder(PromptSettings())
    candidates = demonstrations("grid_world", "coords", 40)
    for budget in (1_200, 3_000, 6_000):
        packing = pack_demonstrations(builder, iter(candidates), characters, budget=budget)
        used = len(packing.demonstrations)
        assert 1 <= used < len(candidates)
        assert packing.prefix_tokens == characters(packing.prefix) <= budget
        assert list(packing.demonstrations) == candidates[:used]  # whole episodes, in order
        assert characters(builder.prefix(candidates[: used + 1])) > budget


def test_budget_too_small_for_one_demonstration() -> None:
    builder = PromptBuilder(PromptSettings())
    with pytest.raises(LmactError, match="token budget 50 is too small for one demonstration"):
        pack_demonstrations(
            builder, iter(demonstrations("grid_world", "txt", 2)), characters, budget=50
        )


def test_context_window_caps_a_budget() -> None:
    builder = PromptBuilder(PromptSettings())
    candidates = demonstrations("tic_tac_toe", "txt", 20)
    free = pack_demonstrations(builder, iter(candidates), characters, budget=10_000)
    capped = pack_demonstrations(
        builder, iter(candidates), characters, budget=10_000, context_window=2_000, answer_tokens=8
    )
    assert len(capped.demonstrations) < len(free.demonstrations)
    assert capped.prefix_tokens + capped.reserve_tokens <= 2_000


def test_exact_count_must_fit_the_context() -> None:
    builder = PromptBuilder(PromptSettings())
    candidates = demonstrations("tic_tac_toe", "txt", 6)
    packing = pack_demonstrations(builder, iter(candidates), characters, exact=6)
    assert len(packing.demonstrations) == 6
    with pytest.raises(LmactError, match="exceeds the model's context window of 1000 tokens"):
        pack_demonstrations(builder, iter(candidates), characters, exact=6, context_window=1000)
    zero = pack_demonstrations(builder, iter(candidates), characters, exact=0)
    assert zero.demonstrations == () and "demonstrations" not in zero.prefix[0].text


def test_the_image_limit_bounds_the_demonstrations() -> None:
    builder = PromptBuilder(PromptSettings())
    candidates = demonstrations("tic_tac_toe", "png", 12)
    per_episode = [count_images(episode_parts(d)) for d in candidates]
    limit = sum(per_episode[:3]) + max(per_episode[:3])  # three fit, with a current episode
    packing = pack_demonstrations(
        builder, iter(candidates), characters, budget=10**9, max_images=limit
    )
    assert len(packing.demonstrations) == 3
    assert packing.stopped_by == "image limit"
    assert count_images(packing.prefix) + max(per_episode[:3]) <= limit
    # Asked for exactly four: a clear error before any call.
    with pytest.raises(LmactError, match=f"exceeds the model's limit of {limit} images"):
        pack_demonstrations(builder, iter(candidates), characters, exact=4, max_images=limit)
    with pytest.raises(LmactError, match="choose a text observation"):
        pack_demonstrations(builder, iter(candidates), characters, budget=10**9, max_images=2)


def test_packing_says_what_stopped_it() -> None:
    builder = PromptBuilder(PromptSettings())
    candidates = demonstrations("tic_tac_toe", "txt", 20)
    by_budget = pack_demonstrations(builder, iter(candidates), characters, budget=2_000)
    assert by_budget.stopped_by == "token budget"
    by_window = pack_demonstrations(
        builder, iter(candidates), characters, budget=10**6, context_window=2_000
    )
    assert by_window.stopped_by == "context window"
    everything = pack_demonstrations(builder, iter(candidates), characters, budget=10**6)
    assert everything.stopped_by is None and len(everything.demonstrations) == 20
