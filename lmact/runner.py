"""Runs: prepare a run (its regime says how), play its units, record everything in the run
store, resume whatever an earlier attempt left unfinished. The runner knows no regime by
name: it schedules units concurrently, or one after another where the regime says so.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from tqdm import tqdm

from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelAuthError, ModelOptions, ModelResponse
from lmact.policies import DryRunPolicy, Policies, Policy
from lmact.records import EpisodeRecord, StepRecord
from lmact.regimes import regime_of
from lmact.regimes.base import PreparedRun, Regime, RegimeConfig, RunContext
from lmact.scoring import EpisodeScores, score_episodes
from lmact.store import Claim, ClaimLostError, RunStore

# A server's pause at least this long is announced on stderr when there is no progress bar.
PAUSE_NOTICE_S = 5.0


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


def _show_progress(bar: tqdm, policy: Policy, elsewhere: set[int]) -> None:
    """The progress line's counts: calls, cache hits, retries, units played elsewhere."""
    tally = policy.tally
    status: dict[str, object] = {
        "calls": tally.calls_made,
        "cached": tally.calls_cached,
        "retries": tally.retries,
    }
    if elsewhere:
        status["elsewhere"] = len(elsewhere)  # played by another process: waited for
    paused = policy.caller.paused_until_wall() if policy.caller is not None else None
    if paused is not None:
        status["paused"] = time.strftime("until %H:%M:%S", time.localtime(paused))
    bar.set_postfix(status)


class _EpisodeFailures:
    """Episodes that failed, kept so that the others can finish before the run reports them."""

    def __init__(self) -> None:
        self.errors: dict[int, BaseException] = {}

    def raise_if_any(self, episodes: int) -> None:
        if not self.errors:
            return
        first = min(self.errors)
        error = self.errors[first]
        if not isinstance(error, LmactError):
            raise error  # a bug: keep its traceback
        raise LmactError(
            f"{len(self.errors)} of {episodes} episodes failed (episode {first}: {error}); "
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
        self, config: RegimeConfig, record: bool = True, units: Sequence[int] = (0,)
    ) -> PreparedRun[Any, Any]:
        """Resolve the policy and prepare the run (pack demonstrations …); fails before any
        model call. `record`: save the run (its configuration and facts) in the store.
        `units`: those about to be played, first first."""
        policy = self.policies.for_run(config.model)
        context = RunContext(self.demo_store, self._bar)
        prepared = regime_of(config).prepare(config, policy, context, units)
        if record:
            facts = prepared.facts
            self.store.save_run(
                config.run_id,
                config.model_dump(),
                facts.demonstrations,
                facts.demonstrations_hash,
                facts.prefix_tokens,
            )
        return prepared

    def _todo(self, config: RegimeConfig, episodes: int) -> list[int]:
        units = regime_of(config).units(config, episodes)
        finished = self.store.finished_episodes(config.run_id)
        return [unit for unit in units if unit not in finished]

    def run(self, config: RegimeConfig, episodes: int, restart: bool = False) -> RunResult:
        """Play units 0 … episodes-1 of a run, skipping those already finished.

        Units run concurrently unless the regime plays them in order. One that fails
        (retries exhausted, an invalid request) stops alone: the others finish and are
        stored, and the run then raises, to be resumed by running it again. A refused key
        stops the whole run at once. Units that another process is playing in the same
        store are left to it, and waited for. `restart` discards the run's stored episodes
        first.
        """
        if restart:
            self.store.discard_run(config.run_id)
        todo = self._todo(config, episodes)
        if todo:  # a finished run is read back from the store: no key or engine needed
            # Made once up front so that what the task itself needs (Stockfish, its data
            # files) is missing with one clear error before any model work.
            config.task_spec().make_environment().close()
            self.policies.for_run(config.model).check_ready()
        prepared = self.plan(config, units=todo)
        failures = _EpisodeFailures()
        if todo:
            try:
                asyncio.run(self._play_all(prepared, episodes, todo, failures))
            except* LmactError as group:
                raise group.exceptions[0] from None
            finally:
                self.store.release_claims()
        failures.raise_if_any(len(todo))
        records = self.store.finished_episodes(config.run_id)
        tally = prepared.policy.tally
        return RunResult(
            config=config,
            prepared=prepared,
            episodes=[records[e] for e in range(episodes)],
            calls_made=tally.calls_made,
            calls_cached=tally.calls_cached,
            retries=tally.retries,
        )

    async def _play_all(
        self,
        prepared: PreparedRun[Any, Any],
        episodes: int,
        todo: list[int],
        failures: _EpisodeFailures,
    ) -> None:
        """Play `todo` with at most `concurrency` units at once (one, in order, if the
        regime says so)."""
        config, policy = prepared.config, prepared.policy
        regime = regime_of(config)
        concurrency = 1 if regime.units_in_order else self.max_connections or policy.max_concurrency
        description = f"{config.model} {config.task}/{config.observation}"
        with self._bar(episodes, description, "episode") as bar:
            schedule = _Schedule(self, prepared, regime, deque(todo), set(), failures, bar)
            with self._pauses_shown(bar, policy, schedule.elsewhere):
                bar.update(episodes - len(todo))
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(concurrency, len(todo))):
                        group.create_task(schedule.worker())

    @contextmanager
    def _pauses_shown(self, bar: tqdm, policy: Policy, elsewhere: set[int]) -> Iterator[None]:
        """Says when a server pauses the run: on the progress line, else (from 5 s) on stderr."""
        caller = policy.caller
        if caller is None:  # a scripted policy: no server to pause it
            yield
            return

        def on_pause(until: float, reason: str) -> None:
            _show_progress(bar, policy, elsewhere)
            if not self.progress and until - time.time() >= PAUSE_NOTICE_S:
                when = time.strftime("%H:%M:%S", time.localtime(until))
                print(f"lmact: {policy.name}: {reason}: paused until {when}", file=sys.stderr)

        with caller.pauses_told_to(on_pause):
            yield

    def estimate(self, config: RegimeConfig, episodes: int) -> RunEstimate:
        """A dry run: the calls, tokens and cost of a run's unfinished units, with no model
        call and nothing stored. The expert plays, and each step's real prompt is counted."""
        todo = self._todo(config, episodes)
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
            episodes_done=episodes - len(todo),
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
        regime = regime_of(config)
        baselines = {
            policy: self.run(baseline, episodes)
            for policy, baseline in regime.baselines(config).items()
        }
        return summarize(regime, result, baselines["random"].episodes, baselines["expert"].episodes)


@dataclass
class _Schedule:
    """The units of one run still to play, shared by its workers. A unit that another
    process is playing is set aside and polled until it is finished there, or its process
    ends (then it is played here)."""

    runner: Runner
    prepared: PreparedRun[Any, Any]
    regime: Regime[Any, Any]
    pending: deque[int]
    elsewhere: set[int]  # units another process is playing
    failures: _EpisodeFailures
    bar: tqdm

    async def worker(self) -> None:
        store, config = self.runner.store, self.prepared.config
        while self.pending or self.elsewhere:
            if not self.pending or (self.regime.units_in_order and self.elsewhere):
                await asyncio.sleep(self.runner.poll_s)
                self.pending.extendleft(sorted(self.elsewhere, reverse=True))
                self.elsewhere.clear()
                continue
            unit = self.pending.popleft()
            seed = self.regime.unit_seed(config, unit)
            claim, _ = store.claim_episode(config.run_id, unit, seed)
            if claim is Claim.DONE:
                self.bar.update(1)
            elif claim is Claim.BUSY:
                self.elsewhere.add(unit)
                self.show()
            else:
                await self.play(unit)

    async def play(self, unit: int) -> None:
        run_id, policy = self.prepared.config.run_id, self.prepared.policy

        def on_step(step: StepRecord) -> None:
            self.runner.store.record_step(run_id, step)
            self.show()

        try:
            record = await self.regime.play(self.prepared, policy, unit, on_step)
            self.runner.store.finish_episode(run_id, record)
        except ModelAuthError:
            raise  # every other call would be refused too
        except ClaimLostError:
            self.elsewhere.add(unit)
            return
        except Exception as error:
            self.failures.errors[unit] = error
            if self.regime.units_in_order:
                self.pending.clear()  # the units after it build on it
            return
        self.bar.update(1)

    def show(self) -> None:
        _show_progress(self.bar, self.prepared.policy, self.elsewhere)


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
