"""The model catalog: facts about hosted models (`catalog.toml` beside this module).

A client asks `model_facts(name)` for its limits, image token rule and prices; user options
(`ModelOptions`) override any of them, so a model not listed works with explicit values.
"""

from __future__ import annotations

import math
import tomllib
from functools import cache
from importlib.resources import files
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmact.errors import LmactError
from lmact.models.base import ModelResponse

ImageRule = Literal["openai-tiles", "openai-patches", "anthropic", "gemini", "flat"]
MILLION = 1_000_000


class ModelFacts(BaseModel):
    """What lmact knows about one model before calling it; prices in USD per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_window: int | None = Field(None, gt=0)
    max_images: int | None = Field(None, ge=0)
    image_rule: ImageRule = "flat"
    image_base_tokens: int = 85
    image_tile_tokens: int = 170
    image_patch_multiplier: float = 1.0
    image_flat_tokens: int = 256
    tokenizer: str | None = None  # a tiktoken encoding, where the provider publishes one
    reasoning: bool = False  # takes max_completion_tokens and no temperature (OpenAI)
    input_price: float | None = Field(None, ge=0)
    cached_input_price: float | None = Field(None, ge=0)
    cache_write_price: float | None = Field(None, ge=0)
    output_price: float | None = Field(None, ge=0)

    def image_tokens(self, width: int, height: int) -> int:
        """Prompt tokens of one image of this size, by the provider's published rule."""
        if self.image_rule == "openai-tiles":
            return _openai_tile_tokens(
                width, height, self.image_base_tokens, self.image_tile_tokens
            )
        if self.image_rule == "openai-patches":
            return math.ceil(_openai_patches(width, height) * self.image_patch_multiplier)
        if self.image_rule == "anthropic":
            return _anthropic_image_tokens(width, height)
        if self.image_rule == "gemini":
            return _gemini_image_tokens(width, height)
        return self.image_flat_tokens

    def cost_usd(self, response: ModelResponse) -> float | None:
        """A call's cost from its usage; None when the prices are unknown.

        Cached prompt tokens are billed at the cached price and cache writes at the write
        price when the catalog has them, else at the plain input price.
        """
        if self.input_price is None or self.output_price is None:
            return None
        cached_price = self.cached_input_price
        write_price = self.cache_write_price
        cached = response.cached_tokens
        written = response.cache_write_tokens
        uncached = max(response.prompt_tokens - cached - written, 0)
        total = (
            uncached * self.input_price
            + cached * (self.input_price if cached_price is None else cached_price)
            + written * (self.input_price if write_price is None else write_price)
            + response.completion_tokens * self.output_price
        )
        return total / MILLION


def _openai_tile_tokens(width: int, height: int, base: int, per_tile: int) -> int:
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return base + per_tile * math.ceil(width / 512) * math.ceil(height / 512)


def _openai_patches(width: int, height: int, patch: int = 32, cap: int = 1536) -> int:
    patches = math.ceil(width / patch) * math.ceil(height / patch)
    if patches <= cap:
        return patches
    # Downscale so that whole patches fit the cap, as the provider documents.
    shrink = math.sqrt(cap * patch * patch / (width * height))
    width_patches = width * shrink / patch
    height_patches = height * shrink / patch
    shrink *= min(
        math.floor(width_patches) / width_patches, math.floor(height_patches) / height_patches
    )
    return min(cap, math.ceil(width * shrink / patch) * math.ceil(height * shrink / patch))


def _anthropic_image_tokens(width: int, height: int) -> int:
    scale = min(1.0, 1568 / max(width, height), math.sqrt(1_150_000 / (width * height)))
    return math.ceil((width * scale) * (height * scale) / 750)


def _gemini_image_tokens(width: int, height: int, per_tile: int = 258) -> int:
    if width <= 384 and height <= 384:
        return per_tile
    return per_tile * math.ceil(width / 768) * math.ceil(height / 768)


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prices_as_of: str
    models: dict[str, ModelFacts]


@cache
def catalog() -> Catalog:
    text = (files("lmact.models") / "catalog.toml").read_text()
    try:
        return Catalog.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValidationError) as error:
        raise LmactError(f"the model catalog is malformed: {error}") from None


def catalog_entry(name: str) -> str | None:
    """The catalog key that describes `name`: itself, or the longest key it extends with "-"."""
    models = catalog().models
    if name in models:
        return name
    matches = [key for key in models if name.startswith(key + "-")]
    return max(matches, key=len) if matches else None


def model_facts(name: str) -> ModelFacts:
    """The catalog's facts for a model, or empty facts (all unknown) for an unlisted one."""
    entry = catalog_entry(name)
    return catalog().models[entry] if entry else ModelFacts()
