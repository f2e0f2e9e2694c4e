"""Values that cross layers and get stored, the same for every regime: token usage (a value
that adds), the key of a unit of work, the record of one step and of one episode, and the
enums of what is stored.

The store flattens them into its columns and reads them back; everything between the model
call and the report passes these values whole instead of copying their fields. What only
one regime records of a step or an episode is its `facts`, a JSON object the store keeps
without reading it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from lmact.envs.base import AnswerKind
from lmact.models.base import TOKEN_FIELDS, ModelResponse, StopReason

__all__ = [
    "STEP_LIMIT",
    "AnswerKind",
    "Ending",
    "EpisodeRecord",
    "StepRecord",
    "StopReason",
    "UnitKey",
    "UnitKind",
    "Usage",
]

# The end reason of an episode cut off by the step limit (truncated), not ended by the task.
STEP_LIMIT = "step limit"


@dataclass(frozen=True)
class Usage:
    """Tokens of one call, or summed over many: `a + b`, `sum(usages, Usage())`."""

    prompt_tokens: int = 0  # all prompt tokens, cached and cache-written ones included
    completion_tokens: int = 0  # all generated tokens, reasoning included (as billed)
    cached_tokens: int = 0  # prompt tokens served from a prefix / prompt cache
    cache_write_tokens: int = 0  # prompt tokens written to a provider's prompt cache
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(*(getattr(self, name) + getattr(other, name) for name in TOKEN_FIELDS))

    def __radd__(self, other: object) -> Usage:
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    @classmethod
    def of(cls, response: ModelResponse) -> Usage:
        """What one answer cost, as its provider reported it."""
        return cls(*(getattr(response, name) for name in TOKEN_FIELDS))

    @classmethod
    def from_columns(cls, values: dict[str, Any]) -> Usage:
        """Read back from a row's columns; a column that is NULL counts 0."""
        return cls(*(int(values.get(name) or 0) for name in TOKEN_FIELDS))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Ending(StrEnum):
    """How an episode ended: by the task (checkmate, solved …) or by the step limit."""

    TERMINATED = "terminated"
    TRUNCATED = "truncated"


class UnitKind(StrEnum):
    """What a unit of a run is: an episode its score counts, or an evaluation it does not
    (in-context RL's held-out evaluations, which only a measure reads)."""

    EPISODE = "episode"
    EVALUATION = "evaluation"


@functools.total_ordering
@dataclass(frozen=True)
class UnitKey:
    """One unit of a run, as the runner schedules it and the store keys it.

    `chain`: the chain the unit belongs to where a regime's units learn from earlier ones
    (an in-context RL replicate); 0 where every unit stands alone (imitation, replay).
    `index`: its number in that chain among the units of its kind: a run of N episodes
    has episodes 0 … N-1 in every chain.
    Ordered chain by chain, episodes before evaluations, as the store lists them.
    """

    chain: int
    index: int
    kind: UnitKind = UnitKind.EPISODE

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, UnitKey):
            return NotImplemented
        return self._order() < other._order()

    def _order(self) -> tuple[int, str, int]:
        return self.chain, self.kind.value, self.index


# The prompt hash of a step whose policy was shown no prompt (a scripted one).
NO_PROMPT = ""


@dataclass(frozen=True)
class StepRecord:
    episode: int  # the index of its unit (`UnitKey.index`)
    step: int
    prompt_hash: str
    completion: str  # the model's raw text
    answer: str  # the action text extracted from it
    kind: AnswerKind
    action: str  # the action executed (a random legal one unless valid, in imitation)
    reward: float
    stop_reason: StopReason
    usage: Usage
    latency_s: float
    from_cache: bool
    cost_usd: float | None = None
    chain: int = 0  # of its unit (`UnitKey.chain`)
    unit_kind: UnitKind = UnitKind.EPISODE
    # The regime's own facts of the step (a JSON object; in-context RL: the context shown).
    facts: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def unit(self) -> UnitKey:
        return UnitKey(self.chain, self.episode, self.unit_kind)

    def of_unit(self, unit: UnitKey) -> StepRecord:
        """This step as a step of `unit`."""
        if (self.chain, self.episode, self.unit_kind) == (unit.chain, unit.index, unit.kind):
            return self
        return replace(self, chain=unit.chain, episode=unit.index, unit_kind=unit.kind)


@dataclass(frozen=True)
class EpisodeRecord:
    episode: int  # the index of its unit (`UnitKey.index`)
    seed: int
    total_return: float
    steps: int
    terminated: bool  # the episode ended by itself, not by the step limit
    valid: int
    illegal: int
    invalid: int
    empty: int
    usage: Usage = Usage()
    cost_usd: float | None = None  # None if any step's cost is unknown
    unreadable: int = 0  # steps whose answer never came back readable (counted as empty)
    end_reason: str | None = None  # the task's reason, or STEP_LIMIT; None before 0.2
    chain: int = 0  # of its unit (`UnitKey.chain`)
    unit_kind: UnitKind = UnitKind.EPISODE
    facts: dict[str, Any] = field(default_factory=dict, hash=False)  # the regime's own

    @property
    def ending(self) -> Ending:
        return Ending.TERMINATED if self.terminated else Ending.TRUNCATED

    @property
    def unit(self) -> UnitKey:
        return UnitKey(self.chain, self.episode, self.unit_kind)

    def of_unit(self, unit: UnitKey) -> EpisodeRecord:
        """This episode as the record of `unit`."""
        if (self.chain, self.episode, self.unit_kind) == (unit.chain, unit.index, unit.kind):
            return self
        return replace(self, chain=unit.chain, episode=unit.index, unit_kind=unit.kind)


def flat_fields(record: StepRecord | EpisodeRecord) -> dict[str, Any]:
    """A record as the store's columns: its usage spread into one column per count."""
    # Read by name, not through `dataclasses.asdict` (which deep-copies): a step of a
    # one-round unit is written thousands of times a second.
    values = {name: getattr(record, name) for name in _own_fields(type(record))}
    usage = record.usage
    values.update((name, getattr(usage, name)) for name in TOKEN_FIELDS)
    return values


@functools.cache
def _own_fields(record_type: type[StepRecord] | type[EpisodeRecord]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(record_type) if f.name != "usage")


def column_names(record_type: type[StepRecord] | type[EpisodeRecord]) -> list[str]:
    """The store's columns of a record type, in the order `flat_fields` gives them."""
    return [*_own_fields(record_type), *TOKEN_FIELDS]
