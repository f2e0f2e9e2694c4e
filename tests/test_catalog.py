"""The model catalog: entries, name matching, image token rules and prices."""

from __future__ import annotations

import pytest

from lmact.models.base import ModelResponse
from lmact.models.catalog import ModelFacts, catalog, catalog_entry, model_facts


def test_every_entry_is_complete() -> None:
    entries = catalog().models
    assert entries
    for name, facts in entries.items():
        assert name.split("/")[0] in {"openai", "anthropic", "google"}, name
        assert facts.context_window and facts.max_images, name
        assert facts.input_price is not None and facts.output_price is not None, name


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("openai/gpt-4o", "openai/gpt-4o"),
        ("openai/gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("openai/gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("anthropic/claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
        ("openai/gpt-4oo", None),
        ("openai-compatible/llama", None),
    ],
)
def test_names_match_their_entry_or_the_longest_they_extend(name: str, entry: str | None) -> None:
    assert catalog_entry(name) == entry


def test_an_unlisted_model_has_no_facts() -> None:
    facts = model_facts("openai-compatible/my-model")
    assert facts.context_window is None and facts.input_price is None
    assert facts.image_tokens(512, 512) == facts.image_flat_tokens


@pytest.mark.parametrize(
    ("rule", "size", "tokens"),
    [
        # OpenAI's published examples (high detail, 85 + 170 per 512 px tile).
        ("openai-tiles", (1024, 1024), 765),
        ("openai-tiles", (2048, 4096), 1105),
        ("openai-tiles", (512, 512), 255),
        # 32 px patches: 1024x1024 is 1024 patches; 1800x2400 is capped at 1536 and shrunk.
        ("openai-patches", (1024, 1024), 1024),
        ("openai-patches", (1800, 2400), 1452),
        # Anthropic: width * height / 750; 1000x1000 is 1334, as its docs list.
        ("anthropic", (1000, 1000), 1334),
        ("anthropic", (200, 200), 54),
        # Gemini: 258 up to 384x384, else 258 per 768 px tile.
        ("gemini", (384, 384), 258),
        ("gemini", (1000, 1000), 1032),
    ],
)
def test_image_token_rules(rule: str, size: tuple[int, int], tokens: int) -> None:
    assert ModelFacts(image_rule=rule).image_tokens(*size) == tokens  # type: ignore[arg-type]


def test_cost_bills_cached_reads_and_cache_writes_at_their_prices() -> None:
    facts = ModelFacts(
        input_price=3.0, cached_input_price=0.3, cache_write_price=3.75, output_price=15.0
    )
    response = ModelResponse(
        "a1",
        prompt_tokens=10_000,
        cached_tokens=6_000,
        cache_write_tokens=2_000,
        completion_tokens=100,
    )
    expected = (2_000 * 3.0 + 6_000 * 0.3 + 2_000 * 3.75 + 100 * 15.0) / 1e6
    assert facts.cost_usd(response) == pytest.approx(expected)
    # Without a cached price, cached tokens cost the full input price.
    plain = ModelFacts(input_price=3.0, output_price=15.0)
    assert plain.cost_usd(response) == pytest.approx((10_000 * 3.0 + 100 * 15.0) / 1e6)
    assert ModelFacts().cost_usd(response) is None
