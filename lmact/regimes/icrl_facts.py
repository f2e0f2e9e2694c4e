"""What in-context RL keeps of a step in the run store, and reads back: how the step's context
was drawn from the replicate's earlier episodes, under `context` in the step's facts (a JSON
object the store keeps without reading it; see docs/how-it-works.md).

A step records the rule that drew its context, how many earlier episodes it held and how
many the replicate had played (`ContextDraw`), a few numbers whatever the horizon; the
context itself is rebuilt from the replicate's stored actions, as a resumed run and the
viewer do. Earlier stores hold the indices of the episodes held instead, a list as long as
the context: such a step is still read (`shown_context`).

Written and read here only, so that what a step records changes this module and no other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from lmact.errors import LmactError


class StepFacts(Protocol):
    """What the readers here use of a stored step (a `StepRecord` has it; so does a row of
    those columns, `FactsRow`, which a report reads without making records)."""

    @property
    def step(self) -> int: ...
    @property
    def episode(self) -> int: ...
    @property
    def chain(self) -> int: ...
    @property
    def facts(self) -> dict[str, Any]: ...


class FactsRow(NamedTuple):
    chain: int
    episode: int
    step: int
    facts: dict[str, Any]


FACTS_COLUMNS = FactsRow._fields  # the stored step's columns a `FactsRow` is read from

CONTEXT = "context"
# The rules a context is drawn by (the variants', supervised drawing as naive does).
NEWEST = "newest"  # the newest earlier episodes that fit
NEWEST_SUCCESSFUL = "newest successful"  # the newest successful ones that fit
STOCHASTIC = "stochastic"  # successful ones kept at random by the step's own generator
APPROXIMATE = "approximate"  # one of the replicate's growing contexts
RULES = (NEWEST, NEWEST_SUCCESSFUL, STOCHASTIC, APPROXIMATE)
_FIELDS = ("rule", "held", "before", "drawn")


@dataclass(frozen=True)
class ContextDraw:
    """How a step's context was drawn: by `rule`, holding `held` of the `before` episodes
    the replicate had played; `drawn` is the approximate context drawn (None before there
    are any). The generators behind a draw are seeded from the run's seed and the step's
    place, so nothing more is needed to draw it again."""

    rule: str
    held: int
    before: int
    drawn: int | None = None

    def shown(self) -> tuple[int, ...] | None:
        """The episodes held, where the record alone says them (the newest of all)."""
        return tuple(range(self.before - self.held, self.before)) if self.rule == NEWEST else None


def step_facts(draw: ContextDraw) -> dict[str, Any]:
    """A step's facts: how its context was drawn."""
    record: dict[str, Any] = {"rule": draw.rule, "held": draw.held, "before": draw.before}
    if draw.drawn is not None:
        record["drawn"] = draw.drawn
    return {CONTEXT: record}


def _damaged(step: StepFacts, what: str) -> LmactError:
    return LmactError(
        f"step {step.step} of episode {step.episode} (chain {step.chain}): its stored "
        f"context is not {what} (the run store was edited or damaged)"
    )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def context_draw(step: StepFacts) -> ContextDraw | tuple[int, ...] | None:
    """What a stored step records of its context: how it was drawn, or (a step of an
    earlier release) the indices of the episodes it held; None if it records nothing (a step
    of another regime). A damaged record is a one-line LmactError."""
    stored = step.facts.get(CONTEXT)
    if stored is None:
        return None
    if isinstance(stored, list):
        if not all(_count(index) for index in stored):
            raise _damaged(step, "a list of episode indices")
        return tuple(stored)
    if not isinstance(stored, dict):
        raise _damaged(step, "a record of how it was drawn")
    rule, held, before, drawn = (stored.get(k) for k in _FIELDS)
    counts = _count(held) and _count(before) and (drawn is None or _count(drawn))
    if rule not in RULES or not counts or held > before or set(stored) - set(_FIELDS):
        raise _damaged(step, "a record of how it was drawn")
    return ContextDraw(rule, held, before, drawn)


def shown_context(step: StepFacts) -> tuple[int, ...] | None:
    """The earlier episodes a stored step's context held, where the step says them (the
    naive and supervised variants' newest episodes, or a step of an earlier release); None
    if it does not (another regime's step, or a draw that only the replicate's history
    resolves: replay the run, as the viewer does). A damaged record is a one-line
    LmactError."""
    recorded = context_draw(step)
    return recorded.shown() if isinstance(recorded, ContextDraw) else recorded


def context_held(step: StepFacts) -> int | None:
    """How many earlier episodes a stored step's context held; None if it records none."""
    recorded = context_draw(step)
    if recorded is None:
        return None
    return recorded.held if isinstance(recorded, ContextDraw) else len(recorded)


def describe_context(step: StepFacts) -> str | None:
    """What a stored step's context held, in words; None if it records nothing."""
    recorded = context_draw(step)
    if recorded is None:
        return None
    shown = recorded.shown() if isinstance(recorded, ContextDraw) else recorded
    if shown is not None:
        return f"earlier episodes {_listed(shown)}" if shown else "no earlier episode"
    assert isinstance(recorded, ContextDraw)  # an old list always says its episodes
    held = f"{recorded.held} of {recorded.before} earlier episodes"
    if recorded.rule == NEWEST_SUCCESSFUL:
        return f"{held}, the newest successful ones"
    if recorded.rule == STOCHASTIC:
        return f"{held}, successful ones kept at random"
    drawn = f"approximate context {recorded.drawn}: " if recorded.drawn is not None else ""
    return drawn + held


def _listed(indices: tuple[int, ...], most: int = 12) -> str:
    """Indices as a list, a long one cut in its middle (a context may hold thousands)."""
    if len(indices) <= most:
        return ", ".join(map(str, indices))
    head, tail = indices[: most // 2], indices[-2:]
    return f"{', '.join(map(str, head))}, …, {', '.join(map(str, tail))} ({len(indices)} in all)"
