"""Runs: prepare a run (its regime says how), play its units, record everything in the run
store, resume whatever an earlier attempt left unfinished. The runner knows no regime by
name: it schedules units concurrently, or one after another where the regime says so.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from tqdm import tqdm

from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelAuthError, ModelOptions, ModelResponse
from lmact.policies import DryRunPolicy, Policies, Policy
from lmact.records import EpisodeRecord, StepRecord, UnitKey
from lmact.regimes import regime_of
from lmact.regimes.base import PreparedRun, Regime, RegimeConfig, RunContext
from lmact.scoring import EpisodeScores, score_episodes
from lmact.store import Claim, ClaimLostError, RunStore
from lmact.text import visible

# A server's pause at least this long is announced on stderr when there is no progress bar.
PAUSE_NOTICE_S = 5.0
# The progress line's counts are redrawn at most this often as steps are played.
PROGRESS_EVERY_S = 0.1
# How long a unit's steps may wait to be written together (a step that took longer, a model
# call say, is written at once): what the viewer of a running unit may lag by.
STEPS_WRITTEN_EVERY_S = 1.0


@dataclass(frozen=True)
class RunResult:
    config: RegimeConfig
    prepared: PreparedRun[Any, Any]
    episodes: list[EpisodeRecord]
    calls_made: int
    calls_cached: int
    retries: int


@dataclass(frozen=True)
class RunEstimate:
    """What a run would cost, from its episodes played by the expert instead of the model.

    The model's own trajectories differ (episodes may be longer or shorter), so the figures
    are estimates; completion tokens are the answer limit, an upper bound.
    """

    config: RegimeConfig
    prepared: PreparedRun[Any, Any]
    episodes_todo: int
    episodes_done: int
    calls: int
    prompt_tokens: int
    prefix_tokens: int  # the cacheable part of `prompt_tokens`
    completion_tokens: int
    cost_usd: float | None
    cost_cached_usd: float | None  # if every call but the first reads the prefix from cache
    demonstrations_needed: int  # all of a per-episode pool; the dry run generates them


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
    paused = policy.caller.paused_until_wall() if policy.caller is not None else None
    if paused is not None:
        status["paused"] = time.strftime("until %H:%M:%S", time.localtime(paused))
    bar.set_postfix(status)


class _EpisodeFailures:
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


class Runner:
    """Plays runs into a run store; one client and caller per model name (`policies`),
    shared by every run this runner plays."""

    def __init__(
        self,
        store: RunStore,
        demo_store: DemoStore,
        model_options: ModelOptions | None = None,
        max_connections: int | None = None,
        progress: bool = True,
        retry_backoff_s: float = 1.0,
        poll_s: float = 0.5,
        policies: Policies | None = None,
    ) -> None:
        self.store = store
        self.demo_store = demo_store
        self.max_connections = max_connections
        self.progress = progress
        self.poll_s = poll_s  # how often episodes another process plays are looked at
        self.playing: set[str] = set()  # the runs whose units are being played now
        self.policies = policies or Policies(
            store, model_options, max_connections, backoff_s=retry_backoff_s
        )

    def close(self) -> None:
        self.policies.close()

    @contextmanager
    def _bar(self, total: int, description: str, unit: str) -> Iterator[tqdm]:
        bar = tqdm(
            total=total,
            desc=description,
            unit=unit,
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        try:
            yield bar
        finally:
            bar.close()

    def plan(
        self,
        config: RegimeConfig,
        record: bool = True,
        units: Sequence[UnitKey] = (UnitKey(0, 0),),
    ) -> PreparedRun[Any, Any]:
        """Resolve the policy and prepare the run (pack demonstrations …); fails before any
        model call. `record`: save the run (its configuration and facts) in the store.
        `units`: those about to be played, first first."""
        prepared = self._prepare(config, self.policies.for_run(config.model, config), units)
        if record:
            self._record(prepared)
        return prepared

    def _prepare(
        self, config: RegimeConfig, policy: Policy, units: Sequence[UnitKey]
    ) -> PreparedRun[Any, Any]:
        run_id = config.run_id  # a hash of the configuration: made once, not per unit read
        context = RunContext(
            self.demo_store, self._bar, lambda unit: self.store.steps(run_id, unit)
        )
        prepared = regime_of(config).prepare(config, policy, context, units)
        _note_unconstrained(prepared)
        return prepared

    def _record(self, prepared: PreparedRun[Any, Any]) -> None:
        config, facts = prepared.config, prepared.facts
        self.store.save_run(config.run_id, config.model_dump(), facts.stored, facts.pinned)

    async def _prepare_off_loop(
        self, config: RegimeConfig, units: Sequence[UnitKey]
    ) -> PreparedRun[Any, Any]:
        """`plan`, with the slow part (starting the task's engine and the local model,
        generating demonstrations) on a worker thread, so that the other runs of this event
        loop (a sweep's) keep playing meanwhile. The policy is resolved here, on the loop's
        thread: one caller per model, however many runs prepare at once."""
        policy = self.policies.for_run(config.model, config)

        def ready_and_prepared() -> PreparedRun[Any, Any]:
            if units:  # a finished run is read back from the store: no engine needed
                # Made once up front so that what the task itself needs (Stockfish, its
                # data files) is missing with one clear error before any model work.
                config.task_spec().make_environment().close()
                policy.check_ready()
            return self._prepare(config, policy, units)

        prepared = await asyncio.to_thread(ready_and_prepared)
        self._record(prepared)
        return prepared

    def _todo(
        self, config: RegimeConfig, episodes: int
    ) -> tuple[list[UnitKey], list[list[UnitKey]]]:
        """All units of the run, in order, and the chains of those not finished yet."""
        chains = regime_of(config).chains(config, episodes)
        finished = self.store.finished_episodes(config.run_id)
        todo = [[unit for unit in chain if unit not in finished] for chain in chains]
        return [unit for chain in chains for unit in chain], [chain for chain in todo if chain]

    def run(self, config: RegimeConfig, episodes: int, restart: bool = False) -> RunResult:
        """`run_async` in an event loop of its own."""
        return asyncio.run(self.run_async(config, episodes, restart))

    async def run_async(
        self, config: RegimeConfig, episodes: int, restart: bool = False
    ) -> RunResult:
        """Play the units of a run of `episodes`, skipping those already finished.

        Chains of units run concurrently, each chain's units in order. One that fails
        (retries exhausted, an invalid request) stops alone: the others finish and are
        stored, and the run then raises, to be resumed by running it again. A refused key
        stops the whole run at once. Units that another process is playing in the same
        store are left to it, and waited for. `restart` discards the run's stored episodes
        first.
        """
        if restart:
            self.store.discard_run(config.run_id)
        units, chains = self._todo(config, episodes)
        todo = [unit for chain in chains for unit in chain]
        prepared = await self._prepare_off_loop(config, todo)
        failures = _EpisodeFailures()
        if todo:
            self.playing.add(config.run_id)
            try:
                await self._play_all(prepared, len(units), chains, failures)
            except* LmactError as group:
                raise group.exceptions[0] from None
            finally:
                self.playing.discard(config.run_id)
                self.store.release_claims(config.run_id)
        regime = regime_of(config)
        failures.raise_if_any(len(todo), lambda unit: regime.unit_label(config, unit))
        records = self.store.finished_episodes(config.run_id)
        scored = [unit for unit in units if regime.is_scored(config, unit)]
        tally = prepared.policy.tally
        return RunResult(
            config=config,
            prepared=prepared,
            episodes=[records[unit] for unit in scored],
            calls_made=tally.calls_made,
            calls_cached=tally.calls_cached,
            retries=tally.retries,
        )

    async def _play_all(
        self,
        prepared: PreparedRun[Any, Any],
        total: int,
        chains: list[list[UnitKey]],
        failures: _EpisodeFailures,
    ) -> None:
        """Play `chains` with at most `concurrency` chains at once, each in order."""
        config, policy = prepared.config, prepared.policy
        concurrency = self.max_connections or policy.max_concurrency
        # Names are anyone's text: an escape sequence in one would reach the terminal.
        description = visible(f"{config.model} {config.task}/{config.observation}")
        pending = deque(deque(chain) for chain in chains)
        with self._bar(total, description, "episode") as bar:
            schedule = _Schedule(self, prepared, regime_of(config), pending, [], failures, bar)
            with self._pauses_shown(bar, schedule):
                bar.update(total - sum(len(chain) for chain in chains))
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(concurrency, len(chains))):
                        group.create_task(schedule.worker())

    @contextmanager
    def _pauses_shown(self, bar: tqdm, schedule: _Schedule) -> Iterator[None]:
        """Says when a server pauses the run: on the progress line, else (from 5 s) on stderr."""
        policy = schedule.prepared.policy
        caller = policy.caller
        if caller is None:  # a scripted policy: no server to pause it
            yield
            return

        def on_pause(until: float, reason: str) -> None:
            schedule.show()
            if not self.progress and until - time.time() >= PAUSE_NOTICE_S:
                when = time.strftime("%H:%M:%S", time.localtime(until))
                notice = visible(f"{policy.name}: {reason}")  # a server's words among them
                print(f"lmact: {notice}: paused until {when}", file=sys.stderr)

        with caller.pauses_told_to(on_pause):
            yield

    def estimate(self, config: RegimeConfig, episodes: int) -> RunEstimate:
        """A dry run: the calls, tokens and cost of a run's unfinished units, with no model
        call and nothing stored. The expert plays, and each step's real prompt is counted."""
        units, chains = self._todo(config, episodes)
        todo = [unit for chain in chains for unit in chain]
        prepared = self.plan(config, record=False, units=todo)
        policy = prepared.policy
        counter = DryRunPolicy(policy)
        regime = regime_of(config)

        async def play_all() -> None:
            for unit in todo:
                await regime.play(prepared, counter, unit, lambda step: None)

        asyncio.run(play_all())
        as_billed = ModelResponse(
            "", prompt_tokens=counter.prompt_tokens, completion_tokens=counter.completion_tokens
        )
        written = counter.prefix_written_tokens
        with_cache = replace(
            as_billed, cached_tokens=counter.prefix_tokens - written, cache_write_tokens=written
        )
        return RunEstimate(
            config=config,
            prepared=prepared,
            episodes_todo=len(todo),
            episodes_done=len(units) - len(todo),
            calls=counter.calls,
            prompt_tokens=counter.prompt_tokens,
            prefix_tokens=counter.prefix_tokens,
            completion_tokens=counter.completion_tokens,
            cost_usd=policy.cost_usd(as_billed),
            cost_cached_usd=policy.cost_usd(with_cache),
            demonstrations_needed=prepared.facts.demonstrations_loaded,
        )

    def evaluate(self, config: RegimeConfig, episodes: int, restart: bool = False) -> RunSummary:
        """Run, then run the regime's baselines (random, expert) on the same units, and
        score. `restart` discards the run's stored episodes (not the baselines') first."""
        result = self.run(config, episodes, restart)
        baselines = {
            policy: self.run(baseline, episodes)
            for policy, baseline in regime_of(config).baselines(config).items()
        }
        return self.summarize(result, baselines)

    def summarize(self, result: RunResult, baselines: dict[str, RunResult]) -> RunSummary:
        """A run's summary: its scores against its baselines' results, and its measures."""
        config = result.config
        regime = regime_of(config)
        summary = summarize(
            regime, result, baselines["random"].episodes, baselines["expert"].episodes
        )
        measures = regime.measures(
            config,
            result.episodes,
            self.store.finished_steps(config.run_id),
            {policy: baseline.episodes for policy, baseline in baselines.items()},
        )
        return replace(summary, details={**summary.details, **measures})


@dataclass
class _Schedule:
    """The chains of one run still to play, shared by its workers; each chain's units are
    played in order. A chain whose next unit another process is playing waits aside and is
    polled until that unit is finished there, or its process ends (then it is played here)."""

    runner: Runner
    prepared: PreparedRun[Any, Any]
    regime: Regime[Any, Any]
    pending: deque[deque[UnitKey]]
    waiting: list[deque[UnitKey]]  # chains whose next unit another process is playing
    failures: _EpisodeFailures
    bar: tqdm
    shown_at: float = 0.0  # when the counts were last redrawn as steps went

    async def worker(self) -> None:
        while self.pending or self.waiting:
            if not self.pending:
                await asyncio.sleep(self.runner.poll_s)
                self.pending.extend(self.waiting)
                self.waiting.clear()
                continue
            await self.play_chain(self.pending.popleft())

    @cached_property
    def run_id(self) -> str:
        return self.prepared.config.run_id  # a hash of the configuration: made once

    async def play_chain(self, chain: deque[UnitKey]) -> None:
        store, config = self.runner.store, self.prepared.config
        while chain:
            unit = chain[0]
            seed = self.regime.unit_seed(config, unit)
            claim, _ = store.claim_episode(self.run_id, unit, seed)
            if claim is Claim.DONE:
                chain.popleft()
                self.bar.update(1)
                continue
            if claim is Claim.BUSY or not await self.play(unit):
                self.waiting.append(chain)
                self.show()
                return
            if unit in self.failures.errors:
                return  # the units after it in its chain build on it
            chain.popleft()

    async def play(self, unit: UnitKey) -> bool:
        """Play `unit`; False if another process took it over meanwhile. Its records are
        stored as the unit's, whatever the regime's play named them."""
        run_id, policy, store = self.run_id, self.prepared.policy, self.runner.store
        unwritten: list[StepRecord] = []
        written_at = time.monotonic()

        def on_step(step: StepRecord) -> None:
            # Steps that come fast are written together (with the unit's end, for a short
            # unit): a rerun replays an unfinished unit from its start anyway, its calls
            # from the cache, so steps not yet written cost no call.
            nonlocal written_at
            unwritten.append(step.of_unit(unit))
            if time.monotonic() - written_at >= STEPS_WRITTEN_EVERY_S:
                store.record_steps(run_id, unwritten)
                unwritten.clear()
                written_at = time.monotonic()
            self.show(as_steps_go=True)

        try:
            record = await self.regime.play(self.prepared, policy, unit, on_step)
            store.finish_episode(run_id, record.of_unit(unit), unwritten)
        except ModelAuthError:
            raise  # every other call would be refused too
        except ClaimLostError:
            return False
        except Exception as error:
            self.failures.errors[unit] = error
            return True
        self.bar.update(1)
        return True

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


@dataclass(frozen=True)
class RunSummary(EpisodeScores):
    """What `lmact run` prints (and `--json` emits): a run's scores, what identifies it,
    and its regime's own facts (`details`). Assembled here, above the scorer, which knows
    episode records only."""

    run_id: str
    regime: str
    task: str
    observation: str
    model: str
    seed: int
    calls_made: int
    calls_cached: int
    retries: int
    description: str  # what the run's prompt holds, in a few words
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """One flat JSON object: scores, usage counts and the regime's facts side by side."""
        values = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("usage", "details", "description")
        }
        return {
            **values,
            "ci95": list(self.ci95),
            **self.usage.as_dict(),
            **self.details,
        }


def summarize(
    regime: Regime[Any, Any],
    result: RunResult,
    random_episodes: Sequence[EpisodeRecord],
    expert_episodes: Sequence[EpisodeRecord],
) -> RunSummary:
    config = result.config
    scores = score_episodes(result.episodes, random_episodes, expert_episodes)
    facts = result.prepared.facts
    return RunSummary(
        **{name: getattr(scores, name) for name in EpisodeScores.__dataclass_fields__},
        run_id=config.run_id,
        regime=config.regime,
        task=config.task,
        observation=config.observation,
        model=config.model,
        seed=config.seed,
        calls_made=result.calls_made,
        calls_cached=result.calls_cached,
        retries=result.retries,
        description=regime.describe(facts),
        details=regime.summary_fields(config, facts),
    )


def _note_unconstrained(prepared: PreparedRun[Any, Any]) -> None:
    """A run asked to constrain its answers whose model cannot: said on stderr in one line,
    and kept with the run (`unconstrained` in its facts: why)."""
    config, policy = prepared.config, prepared.policy
    reason = policy.unconstrained_because
    if not getattr(config, "constrained", False) or reason is None:
        return
    prepared.facts.stored["unconstrained"] = reason
    print(f"lmact: {visible(policy.name)} cannot constrain its answers ({reason}): this run "
          "is played unconstrained", file=sys.stderr)  # fmt: skip
