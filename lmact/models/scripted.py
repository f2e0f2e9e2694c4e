"""Scripted policies behind the model interface, so baselines run through the same loop.

They read the live environment through the `PolicyOracle`, not the prompt, and cost no
tokens. Their calls are not cached: they are cheap and deterministic given the episode seed.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmact.errors import LmactError
from lmact.models.base import (
    ModelClient,
    ModelRequest,
    ModelResponse,
    Part,
    PolicyOracle,
    estimate_tokens,
)


class ScriptedPolicy(ModelClient):
    accepts_images = True
    cacheable = False
    max_concurrency = 64

    def count_tokens(self, parts: Sequence[Part]) -> int:
        return estimate_tokens(parts)

    def choose(self, oracle: PolicyOracle) -> str:
        raise NotImplementedError

    def cost_usd(self, response: ModelResponse) -> float | None:
        return 0.0  # reads the environment: no API charges

    async def complete(
        self, request: ModelRequest, oracle: PolicyOracle | None = None
    ) -> ModelResponse:
        if oracle is None:
            raise LmactError(f"model {self.name!r} is a scripted policy and needs an environment")
        return ModelResponse(text=self.choose(oracle))


class RandomPolicy(ScriptedPolicy):
    """A uniformly random legal action, drawn from the episode's seeded generator (by the
    environment: a continuous space draws from the space)."""

    def choose(self, oracle: PolicyOracle) -> str:
        return oracle.random_action()


class ExpertPolicy(ScriptedPolicy):
    """The environment's expert (minimax, shortest path, ...)."""

    def choose(self, oracle: PolicyOracle) -> str:
        return oracle.expert_action()
