"""What in-context RL keeps of a step in the run store, and reads back: the earlier episodes
of the replicate its context showed, by index, under `context` in the step's facts (a JSON
object the store keeps without reading it; see docs/how-it-works.md).

Written and read here only, so that recording how a context was drawn instead (and
rebuilding it) changes this module and no other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmact.errors import LmactError
from lmact.records import StepRecord

CONTEXT = "context"


def step_facts(shown: Sequence[int]) -> dict[str, Any]:
    """A step's facts: the earlier episodes its context showed, in time order."""
    return {CONTEXT: list(shown)}


def shown_context(step: StepRecord) -> tuple[int, ...] | None:
    """The earlier episodes a stored step's context showed; None if it records none (a step
    of another regime). A damaged record is a one-line LmactError."""
    shown = step.facts.get(CONTEXT)
    if shown is None:
        return None
    if not isinstance(shown, list) or not all(
        isinstance(index, int) and not isinstance(index, bool) for index in shown
    ):
        raise LmactError(
            f"step {step.step} of episode {step.episode} (chain {step.chain}): its stored "
            "context is not a list of episode indices (the run store was edited or damaged)"
        )
    return tuple(shown)
