"""What every run store shares, whatever holds it: its errors, the run record, how the
regimes' own facts are written and read back (a JSON object, opaque to the store), and who
holds a claim on an episode."""

from __future__ import annotations

import enum
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from lmact.errors import LmactError
from lmact.records import EpisodeRecord, StepRecord, UnitKey, UnitKind, Usage, flat_fields

DEFAULT_STORE = Path("results") / "lmact.sqlite"
# The most test episodes one run may ask for: each is a row, a record and a unit of work.
MAX_EPISODES = 100_000
# A claim whose owner runs on another host holds while its lease was renewed within this
# long (a worker renews its claims every third of it: `RunStore.renew_claims`); a claim of
# this host holds while its process lives. A PostgreSQL store keeps its own (`lease_s`).
CLAIM_LEASE_S = 60.0


class StoreError(LmactError):
    """The run store cannot be used: not lmact's, unreadable, unwritable, full."""


class ClaimLostError(LmactError):
    """Another process took over an episode that this process was playing."""


class Claim(enum.Enum):
    """What `RunStore.claim_episode` found."""

    OURS = "ours"  # this process plays the episode now
    DONE = "done"  # finished, by anyone: never reopened
    BUSY = "busy"  # a live process is playing it


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    config: dict[str, Any]
    created: float
    # What the run's regime stored with it (`RunFacts.stored`): imitation's demonstrations
    # (`demos`, `demos_hash`, `prefix_tokens`), say. Read only.
    facts: dict[str, Any] = field(default_factory=dict, hash=False)


class UnitResult(NamedTuple):
    """What a score reads of a finished unit (`RunStore.finished_units`): its key, seed,
    return and cost, named as in `EpisodeRecord`, without the rest of its record: a run of
    100,000 episodes in a few megabytes."""

    chain: int
    unit_kind: UnitKind
    episode: int  # the unit's index (`UnitKey.index`)
    seed: int
    total_return: float
    cost_usd: float | None

    @property
    def unit(self) -> UnitKey:
        return UnitKey(self.chain, self.episode, self.unit_kind)


class UnitEnd(NamedTuple):
    """A played unit's end, as `RunStore.finish_units` writes it: its record, its steps not
    written before, and whether those are all of them (then counted, not read back)."""

    record: EpisodeRecord
    steps: Sequence[StepRecord]
    all_steps: bool


@dataclass(frozen=True)
class UnitSums:
    """Sums over finished units (`RunStore.finished_units`), as the store takes them."""

    units: int
    steps: int
    illegal: int
    invalid: int
    empty: int
    unreadable: int
    usage: Usage


def facts_text(facts: dict[str, Any]) -> str:
    """A regime's facts as the store writes them: a JSON object. Anything else is a bug in
    the regime that gave them (TypeError), never written."""
    if not isinstance(facts, dict):
        raise TypeError(f"a regime's facts are a dict of JSON values, not {type(facts).__name__}")
    if not facts:
        return "{}"  # most records' (every episode's in most regimes)
    return json.dumps(facts, sort_keys=True, allow_nan=False)


# A step's facts as the JSON text stored (`RunStore.step_values`), not parsed.
FACTS_TEXT = "facts_text"


def read_facts(value: object, where: str | Callable[[], str], path: Path) -> dict[str, Any]:
    """Stored facts read back: a JSON object, or a one-line StoreError naming the store and
    `where` they were (a damaged or edited file), never a traceback. `where` may be a
    function, called only to say so."""
    if value == "{}":  # most rows: nothing of the regime's
        return {}
    try:
        facts = json.loads(value) if isinstance(value, str | bytes) else None
    except (ValueError, RecursionError):
        facts = None
    if not isinstance(facts, dict):
        named = where() if callable(where) else where
        raise StoreError(
            f"run store {path}: the facts of {named} are not a JSON object (the file was "
            "edited or damaged)"
        )
    return facts


def read_config(value: object, run_id: str, path: Path) -> Any:
    """A run's stored configuration (any JSON: a report shows what it cannot read)."""
    try:
        return json.loads(value) if isinstance(value, str | bytes) else None
    except (ValueError, RecursionError):
        raise StoreError(
            f"run store {path}: the configuration of run {run_id} is not JSON (the file was "
            "edited or damaged)"
        ) from None


def totals_agree(steps: int, rewards: float, expected_steps: int, expected: float) -> bool:
    """Whether an episode's totals are those of its stored steps."""
    return steps == expected_steps and math.isclose(rewards, expected, abs_tol=1e-9)


def process_identity() -> str:
    """This process, as `host:pid:start`: the start time tells a reused pid apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot (Linux), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces; the fields after it are plain.
    return stat.rpartition(")")[2].split()[19]


def claim_alive(owner: str, heartbeat: float | None, lease_s: float = CLAIM_LEASE_S) -> bool:
    """Whether the process named by `owner` (see `process_identity`) may still be playing.

    On this host, the process is looked up; on another, its claim holds while its last
    write is younger than the lease.
    """
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return heartbeat is not None and time.time() - heartbeat < lease_s
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return not started or _start_time(pid) in ("", started)


Vocabulary = TypeVar("Vocabulary", bound=StrEnum)


def stored_word(vocabulary: type[Vocabulary], value: object, path: Path) -> Vocabulary:
    """A stored word read back as its enum; one that lmact never writes is a damaged store."""
    try:
        return vocabulary(value)
    except ValueError:
        raise StoreError(
            f"run store {path}: {value!r} is not a {vocabulary.__name__} lmact writes "
            "(the file was edited or damaged)"
        ) from None


def unit_named(unit: UnitKey) -> str:
    """A unit in an error message, in the store's own words (a regime names it better)."""
    where = f" of chain {unit.chain}" if unit.chain else ""
    return f"{unit.kind.value} {unit.index}{where}"


def step_rows(unit: UnitKey, steps: Sequence[StepRecord]) -> list[dict[str, Any]]:
    """The rows of steps that must all be `unit`'s."""
    if any(step.unit != unit for step in steps):
        raise ValueError(f"steps of several units given as those of {unit_named(unit)}")
    return [row_values(step) for step in steps]


def row_values(record: StepRecord | EpisodeRecord) -> dict[str, Any]:
    """A record's columns as written: its unit's kind as text, its facts as JSON."""
    values = flat_fields(record)
    return {**values, "unit_kind": record.unit_kind.value, "facts": facts_text(record.facts)}
