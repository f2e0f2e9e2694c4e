"""Runs: set up a run (task, model, packed demonstrations), play its episodes concurrently,
record everything in the run store, resume whatever an earlier attempt left unfinished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from tqdm import tqdm

from lmact.demos import Demonstration, DemoStore, demonstrations_hash
from lmact.errors import LmactError
from lmact.models.base import ModelAuthError, ModelClient, ModelOptions, ModelResponse
from lmact.models.caller import ModelCaller, TokenCountingCaller
from lmact.models.registry import resolve_model
from lmact.prompting import PromptBuilder, Step, pack_demonstrations
from lmact.regimes.imitation import (
    BASELINE_POLICIES,
    EpisodePlan,
    ImitationConfig,
    play_episode,
    prompt_settings,
)
from lmact.scoring import RunSummary, summarize
from lmact.store import EpisodeRecord, RunStore, StepRecord
from lmact.tasks import TaskSpec, get_task


@dataclass(frozen=True)
class PreparedRun:
    plan: EpisodePlan
    client: ModelClient
    demos_used: int
    demos_hash: str
    prefix_tokens: int
    stopped_by: str | None  # what ended the packing under a token budget


@dataclass(frozen=True)
class RunResult:
    config: ImitationConfig
    prepared: PreparedRun
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

    config: ImitationConfig
    prepared: PreparedRun
    episodes_todo: int
    episodes_done: int
    calls: int
    prompt_tokens: int
    prefix_tokens: int  # the cacheable part of `prompt_tokens`
    completion_tokens: int
    cost_usd: float | None
    cost_cached_usd: float | None  # if every call but the first reads the prefix from cache


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
    """Plays runs into a run store; one model client per model name, reused across runs."""

    def __init__(
        self,
        store: RunStore,
        demo_store: DemoStore,
        model_options: ModelOptions | None = None,
        max_connections: int | None = None,
        progress: bool = True,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self.store = store
        self.demo_store = demo_store
        self.model_options = model_options or ModelOptions()
        self.max_connections = max_connections
        self.progress = progress
        self.retry_backoff_s = retry_backoff_s
        self._clients: dict[str, ModelClient] = {}

    def client(self, name: str) -> ModelClient:
        if name not in self._clients:
            self._clients[name] = resolve_model(name, self.model_options)
        return self._clients[name]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _task(self, config: ImitationConfig) -> TaskSpec:
        task = get_task(config.task)
        if task.spec_hash != config.spec_hash:
            raise LmactError(f"task {task.name}'s spec changed since this configuration was made")
        return task

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

    def plan(self, config: ImitationConfig, record: bool = True) -> PreparedRun:
        """Resolve the model and pack the demonstrations; fails before any model call.
        `record`: save the run (its configuration and packing) in the store."""
        task = self._task(config)
        client = self.client(config.model)
        if task.is_image_observation(config.observation) and not client.accepts_images:
            texts = [o for o in task.observations if not task.is_image_observation(o)]
            remedy = (
                f"choose a text observation ({', '.join(texts)})"
                if texts
                else f"task {task.name} has only image observations: choose a model that sees them"
            )
            raise LmactError(f"model {config.model} accepts no images; {remedy}")
        builder = PromptBuilder(prompt_settings(config))
        with self._bar(config.demos or 0, f"demonstrations {task.name}", "demo") as bar:
            candidates: Iterable[Demonstration]
            if config.demos is not None:
                candidates = self.demo_store.load(
                    task, config.observation, 0, config.demos, bar.update
                )
            else:
                candidates = self.demo_store.stream(task, config.observation, bar.update)
            consumed: list[Demonstration] = []

            def steps_of(candidates: Iterable[Demonstration]) -> Iterator[tuple[Step, ...]]:
                for demonstration in candidates:
                    consumed.append(demonstration)
                    yield demonstration.steps

            packing = pack_demonstrations(
                builder,
                steps_of(candidates),
                client.count_tokens,
                exact=config.demos,
                budget=config.token_budget,
                context_window=client.context_window,
                answer_tokens=config.max_tokens,
                max_images=client.max_images,
            )
        demonstrations = consumed[: len(packing.demonstrations)]
        digest = demonstrations_hash(demonstrations)
        if record:
            self.store.save_run(
                config.run_id,
                config.model_dump(),
                len(demonstrations),
                digest,
                packing.prefix_tokens,
            )
        return PreparedRun(
            plan=EpisodePlan(config, task, builder, packing.prefix, bool(demonstrations)),
            client=client,
            demos_used=len(demonstrations),
            demos_hash=digest,
            prefix_tokens=packing.prefix_tokens,
            stopped_by=packing.stopped_by,
        )

    def _todo(self, config: ImitationConfig, episodes: int) -> list[int]:
        if episodes <= 0:
            raise LmactError(f"--episodes must be positive, not {episodes}")
        config.test_seed(episodes - 1)  # every test seed must stay below the demonstration seeds
        finished = self.store.finished_episodes(config.run_id)
        return [e for e in range(episodes) if e not in finished]

    def run(self, config: ImitationConfig, episodes: int) -> RunResult:
        """Play episodes 0 … episodes-1 of a run, skipping those already finished.

        Episodes run concurrently. One that fails (retries exhausted, an invalid request)
        stops alone: the others finish and are stored, and the run then raises, to be resumed
        by running it again. A refused key stops the whole run at once.
        """
        todo = self._todo(config, episodes)
        if todo:  # a finished run is read back from the store: no key or engine needed
            # Made once up front so that what the task itself needs (Stockfish, its data
            # files) is missing with one clear error before any model work.
            self._task(config).make_environment().close()
            self.client(config.model).check_ready()
        prepared = self.plan(config)
        plan, client = prepared.plan, prepared.client
        caller = ModelCaller(
            client, self.store, self.max_connections, backoff_s=self.retry_backoff_s
        )
        run_id = config.run_id
        concurrency = self.max_connections or client.max_concurrency
        failures = _EpisodeFailures()

        async def play_all() -> None:
            slots = asyncio.Semaphore(concurrency)

            async def play(episode: int, bar: tqdm) -> None:
                async with slots:
                    self.store.start_episode(run_id, episode, config.test_seed(episode))

                    def on_step(step: StepRecord) -> None:
                        self.store.record_step(run_id, step)
                        bar.set_postfix(
                            calls=caller.calls_made,
                            cached=caller.calls_cached,
                            retries=caller.retries,
                        )

                    try:
                        record = await play_episode(plan, caller, episode, on_step)
                    except ModelAuthError:
                        raise  # every other call would be refused too
                    except Exception as error:
                        failures.errors[episode] = error
                        return
                    self.store.finish_episode(run_id, record)
                    bar.update(1)

            description = f"{config.model} {config.task}/{config.observation}"
            with self._bar(episodes, description, "episode") as bar:
                bar.update(episodes - len(todo))
                async with asyncio.TaskGroup() as group:
                    for episode in todo:
                        group.create_task(play(episode, bar))

        if todo:
            try:
                asyncio.run(play_all())
            except* LmactError as group:
                raise group.exceptions[0] from None
        failures.raise_if_any(len(todo))
        records = self.store.finished_episodes(run_id)
        return RunResult(
            config=config,
            prepared=prepared,
            episodes=[records[e] for e in range(episodes)],
            calls_made=caller.calls_made,
            calls_cached=caller.calls_cached,
            retries=caller.retries,
        )

    def estimate(self, config: ImitationConfig, episodes: int) -> RunEstimate:
        """A dry run: the calls, tokens and cost of a run's unfinished episodes, with no model
        call and nothing stored. The expert plays, and each step's real prompt is counted."""
        todo = self._todo(config, episodes)
        prepared = self.plan(config, record=False)
        client = prepared.client
        counter = TokenCountingCaller(client)

        async def play_all() -> None:
            for episode in todo:
                await play_episode(prepared.plan, counter, episode, lambda step: None)

        asyncio.run(play_all())
        as_billed = ModelResponse(
            "", prompt_tokens=counter.prompt_tokens, completion_tokens=counter.completion_tokens
        )
        cached_reads = prepared.prefix_tokens * max(counter.calls - 1, 0)
        with_cache = replace(
            as_billed,
            cached_tokens=cached_reads,
            cache_write_tokens=prepared.prefix_tokens if counter.calls else 0,
        )
        return RunEstimate(
            config=config,
            prepared=prepared,
            episodes_todo=len(todo),
            episodes_done=episodes - len(todo),
            calls=counter.calls,
            prompt_tokens=counter.prompt_tokens,
            prefix_tokens=prepared.prefix_tokens * counter.calls,
            completion_tokens=counter.completion_tokens,
            cost_usd=client.cost_usd(as_billed),
            cost_cached_usd=client.cost_usd(with_cache),
        )

    def evaluate(self, config: ImitationConfig, episodes: int) -> RunSummary:
        """Run, then run the random and expert baselines on the same test seeds, and score."""
        result = self.run(config, episodes)
        baselines = {
            policy: self.run(config.baseline(policy), episodes) for policy in BASELINE_POLICIES
        }
        return summarize(result, baselines["random"].episodes, baselines["expert"].episodes)
