"""How a run's units are played: chains of units, each in order, several chains at once; a
unit is claimed in the run store before it is played, and its steps and end are written
only while that claim holds. Units that end fast have their ends written together."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from tqdm import tqdm

from lmact.budget import BudgetReached
from lmact.errors import LmactError
from lmact.models.base import ModelAuthError
from lmact.policies import Policy
from lmact.records import EpisodeRecord, StepRecord, UnitKey
from lmact.regimes.base import PreparedRun, Regime
from lmact.store import Claim, ClaimLostError, RunStore, StoreError, UnitEnd

# The progress line's counts are redrawn at most this often as steps are played.
PROGRESS_EVERY_S = 0.1
# How long a unit's steps, or the ends of a chain's units, may wait to be written together
# (a step or unit that took longer, a model call say, is written at once): what the viewer
# of a running unit may lag by, and what a killed process replays (its calls from the cache).
STEPS_WRITTEN_EVERY_S = 1.0

# What a store's claim answered: the claim, and the owner of a unit another process plays.
Claimed = tuple[Claim, str | None]


def _show_progress(bar: tqdm, policy: Policy, elsewhere: int) -> None:
    """The progress line's counts: calls, cache hits, retries, units played elsewhere."""
    tally = policy.tally
    status: dict[str, object] = {
        "calls": tally.calls_made,
        "cached": tally.calls_cached,
        "retries": tally.retries,
    }
    if elsewhere:
        status["elsewhere"] = elsewhere  # played by another process: waited for
    limit = policy.caller.connection_limit() if policy.caller is not None else None
    if limit is not None and limit[0] < limit[1]:
        status["limit"] = f"{limit[0]}/{limit[1]}"  # fewer connections: the provider is full
    paused = policy.caller.paused_until_wall() if policy.caller is not None else None
    if paused is not None:
        status["paused"] = time.strftime("until %H:%M:%S", time.localtime(paused))
    bar.set_postfix(status)


class EpisodeFailures:
    """Episodes that failed, kept so that the others can finish before the run reports them."""

    def __init__(self) -> None:
        self.errors: dict[UnitKey, BaseException] = {}

    def raise_if_any(self, episodes: int, label: Callable[[UnitKey], str]) -> None:
        """Raise the first failure (`label` names its unit), with the count of them."""
        if not self.errors:
            return
        first = min(self.errors)
        error = self.errors[first]
        if not isinstance(error, LmactError):
            raise error  # a bug: keep its traceback
        raise LmactError(
            f"{len(self.errors)} of {episodes} episodes failed ({label(first)}: {error}); "
            "the others are stored and every successful model call is cached: rerun the "
            "same command to resume"
        )


@dataclass
class Schedule:
    """The chains of one run still to play, shared by its workers; each chain's units are
    played in order. A chain whose next unit another process is playing waits aside and is
    polled until that unit is finished there, or its process ends (then it is played here)."""

    store: RunStore
    poll_s: float  # how often a chain waiting on another process's unit looks again
    prepared: PreparedRun[Any, Any]
    regime: Regime[Any, Any]
    pending: deque[deque[UnitKey]]
    waiting: list[deque[UnitKey]]  # chains whose next unit another process is playing
    failures: EpisodeFailures
    bar: tqdm
    shown_at: float = 0.0  # when the counts were last redrawn as steps went
    # The cap that stopped the run (`--max-cost`): no worker takes another unit, and those
    # with calls in flight let them end (their answers cached, so none is sent again).
    stopped: BudgetReached | None = None
    # Told of each unit this process finished, once its end is written (the trackers).
    on_finished: Callable[[str, EpisodeRecord], None] = lambda run_id, record: None

    async def worker(self) -> None:
        while (self.pending or self.waiting) and self.stopped is None:
            if not self.pending:
                await asyncio.sleep(self.poll_s)
                self.pending.extend(self.waiting)
                self.waiting.clear()
                continue
            await self.play_chain(self.pending.popleft())

    async def renew_leases(self) -> None:
        """Renew the leases of the units this process plays, every third of the store's
        lease, while it plays: a worker on another host takes a unit over only once its
        lease ran out (a dead worker's, then)."""
        while True:
            await asyncio.sleep(self.store.lease_s / 3)
            with contextlib.suppress(StoreError):  # a server gone: the next write says so
                self.store.renew_claims()

    @cached_property
    def run_id(self) -> str:
        return self.prepared.config.run_id  # a hash of the configuration: made once

    async def play_chain(self, chain: deque[UnitKey]) -> None:
        claimed: Claimed | None = None  # the next unit's, when taken with earlier ends
        while chain:
            unit = chain[0]
            if claimed is None:
                claimed = self.store.claim_episode(self.run_id, unit, self._seed(unit))
            claim, claimed = claimed[0], None
            if claim is Claim.DONE:
                chain.popleft()
                self.bar.update(1)
                continue
            played = False
            if claim is Claim.OURS:
                played, claimed = await _Stretch(self, chain).play()
            if not played:  # another process plays it, or took it over meanwhile
                self.waiting.append(chain)
                self.show()
                return
            if self.stopped is not None or (chain and chain[0] in self.failures.errors):
                return  # the units after it in its chain build on it

    def _seed(self, unit: UnitKey) -> int:
        return self.regime.unit_seed(self.prepared.config, unit)

    def show(self, as_steps_go: bool = False) -> None:
        """The progress line's counts; as steps are played, redrawn at most every
        `PROGRESS_EVERY_S` (a redraw costs more than a step of a scripted one-round unit)."""
        if self.bar.disable:
            return
        if as_steps_go:
            now = time.monotonic()
            if now - self.shown_at < PROGRESS_EVERY_S:
                return
            self.shown_at = now
        _show_progress(self.bar, self.prepared.policy, len(self.waiting))


class _Stretch:
    """A chain's first unit (claimed by this process) and the units after it that end
    within `STEPS_WRITTEN_EVERY_S` of its start, played one after another; their ends are
    written together with the claim of the unit after them (the later ones claimed in that
    transaction), and each written unit leaves the chain. A chain of short units (a scripted
    policy's bandit rounds) so costs one transaction a second, not one a unit; a unit whose
    steps come slowly writes them as they come, after the ends before it."""

    def __init__(self, schedule: Schedule, chain: deque[UnitKey]) -> None:
        self.schedule, self.chain = schedule, chain
        self.ends: list[UnitEnd] = []  # played, not written yet: the chain's first units
        self.started = time.monotonic()

    async def play(self) -> tuple[bool, Claimed | None]:
        """Whether the stretch was played (False: taken over), and the claim of the unit
        after it, taken with its ends."""
        while True:
            unit = self.chain[len(self.ends)]
            try:
                end = await self.play_unit(unit)
            except ClaimLostError:
                return False, None
            except ModelAuthError:
                self.write_ends()  # what was played before it is kept
                raise  # every other call would be refused too
            except BudgetReached as error:  # the run stops, letting calls in flight end
                self.schedule.stopped = self.schedule.stopped or error
                return self.write_ends(), None
            except Exception as error:
                self.schedule.failures.errors[unit] = error
                return self.write_ends(), None
            self.ends.append(end)
            following = self.chain[len(self.ends)] if len(self.chain) > len(self.ends) else None
            slow = time.monotonic() - self.started >= STEPS_WRITTEN_EVERY_S
            if following is None or slow or not end.all_steps:
                return self.written(following)

    def written(self, following: UnitKey | None) -> tuple[bool, Claimed | None]:
        """Write the ends, claiming `following`: the stretch played, and that claim."""
        schedule = self.schedule
        next_claim = None if following is None else (following, schedule._seed(following))
        try:
            claimed = schedule.store.finish_units(schedule.run_id, self.ends, next_claim)
        except ClaimLostError:
            return False, None
        except Exception as error:  # a store that refused them: the first one's failure
            schedule.failures.errors[self.ends[0].record.unit] = error
            return True, None
        self._leave_chain()
        return True, claimed

    def write_ends(self) -> bool:
        """Write the ends played before a unit that stopped the stretch (it failed, or the
        run stops): whether the stretch may go on being reported as played."""
        if not self.ends:
            return True
        played, _ = self.written(None)
        return played

    def _leave_chain(self) -> None:
        schedule = self.schedule
        for end in self.ends:
            self.chain.popleft()
            schedule.bar.update(1)
            schedule.on_finished(schedule.run_id, end.record)
        self.ends.clear()

    async def play_unit(self, unit: UnitKey) -> UnitEnd:
        """Play `unit`, its records stored as the unit's whatever the regime's play named
        them; its steps that come fast wait for its end (with the ends before it)."""
        schedule = self.schedule
        unwritten: list[StepRecord] = []
        written_at = time.monotonic()
        flushed = False  # whether some of its steps were written before its end

        def on_step(step: StepRecord) -> None:
            # A rerun replays an unfinished unit from its start anyway, its calls from the
            # cache, so steps not yet written cost no call.
            nonlocal written_at, flushed
            unwritten.append(step.of_unit(unit))
            if time.monotonic() - written_at >= STEPS_WRITTEN_EVERY_S:
                if self.ends:  # the unit is claimed with the ends before it
                    self._write_before(unit)
                schedule.store.record_steps(schedule.run_id, unwritten)
                unwritten.clear()
                written_at, flushed = time.monotonic(), True
            schedule.show(as_steps_go=True)

        record: EpisodeRecord = await schedule.regime.play(
            schedule.prepared, schedule.prepared.policy, unit, on_step
        )
        return UnitEnd(record.of_unit(unit), unwritten, not flushed)

    def _write_before(self, unit: UnitKey) -> None:
        """Write the ends played before `unit`, claiming it: its steps may then be written.
        What stops the write stops the unit's play (a lost claim: the chain waits)."""
        schedule = self.schedule
        claimed = schedule.store.finish_units(
            schedule.run_id, self.ends, (unit, schedule._seed(unit))
        )
        self._leave_chain()
        if claimed is None or claimed[0] is not Claim.OURS:
            raise ClaimLostError(f"{unit} was taken over by another process")
