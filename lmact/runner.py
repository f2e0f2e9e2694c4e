"""Runs: set up a run (task, model, packed demonstrations), play its episodes concurrently,
record everything in the run store, resume whatever an earlier attempt left unfinished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tqdm import tqdm

from lmact.demos import Demonstration, DemoStore, demonstrations_hash
from lmact.errors import LmactError
from lmact.models.base import ModelClient, ModelOptions
from lmact.models.caller import ModelCaller
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


@dataclass(frozen=True)
class RunResult:
    config: ImitationConfig
    episodes: list[EpisodeRecord]
    demos_used: int
    demos_hash: str
    prefix_tokens: int
    calls_made: int
    calls_cached: int


class Runner:
    """Plays runs into a run store; one model client per model name, reused across runs."""

    def __init__(
        self,
        store: RunStore,
        demo_store: DemoStore,
        model_options: ModelOptions | None = None,
        max_connections: int | None = None,
        progress: bool = True,
    ) -> None:
        self.store = store
        self.demo_store = demo_store
        self.model_options = model_options or ModelOptions()
        self.max_connections = max_connections
        self.progress = progress
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

    def plan(self, config: ImitationConfig) -> PreparedRun:
        """Resolve the model and pack the demonstrations; fails before any model call."""
        task = self._task(config)
        client = self.client(config.model)
        if task.is_image_observation(config.observation) and not client.accepts_images:
            raise LmactError(
                f"model {config.model} accepts no images; choose a text observation "
                f"({', '.join(o for o in task.observations if not task.is_image_observation(o))})"
            )
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
            )
        demonstrations = consumed[: len(packing.demonstrations)]
        digest = demonstrations_hash(demonstrations)
        self.store.save_run(
            config.run_id, config.model_dump(), len(demonstrations), digest, packing.prefix_tokens
        )
        return PreparedRun(
            plan=EpisodePlan(config, task, builder, packing.prefix, bool(demonstrations)),
            client=client,
            demos_used=len(demonstrations),
            demos_hash=digest,
            prefix_tokens=packing.prefix_tokens,
        )

    def run(self, config: ImitationConfig, episodes: int) -> RunResult:
        """Play episodes 0 … episodes-1 of a run, skipping those already finished."""
        if episodes <= 0:
            raise LmactError(f"--episodes must be positive, not {episodes}")
        config.test_seed(episodes - 1)  # every test seed must stay below the demonstration seeds
        prepared = self.plan(config)
        plan, client = prepared.plan, prepared.client
        caller = ModelCaller(client, self.store, self.max_connections)
        run_id = config.run_id
        finished = self.store.finished_episodes(run_id)
        todo = [e for e in range(episodes) if e not in finished]
        concurrency = self.max_connections or client.max_concurrency

        async def play_all() -> None:
            slots = asyncio.Semaphore(concurrency)

            async def play(episode: int, bar: tqdm) -> None:
                async with slots:
                    self.store.start_episode(run_id, episode, config.test_seed(episode))

                    def on_step(step: StepRecord) -> None:
                        self.store.record_step(run_id, step)
                        bar.set_postfix(calls=caller.calls_made, cached=caller.calls_cached)

                    record = await play_episode(plan, caller, episode, on_step)
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
        records = self.store.finished_episodes(run_id)
        return RunResult(
            config=config,
            episodes=[records[e] for e in range(episodes)],
            demos_used=prepared.demos_used,
            demos_hash=prepared.demos_hash,
            prefix_tokens=prepared.prefix_tokens,
            calls_made=caller.calls_made,
            calls_cached=caller.calls_cached,
        )

    def evaluate(self, config: ImitationConfig, episodes: int) -> RunSummary:
        """Run, then run the random and expert baselines on the same test seeds, and score."""
        result = self.run(config, episodes)
        baselines = {
            policy: self.run(config.baseline(policy), episodes) for policy in BASELINE_POLICIES
        }
        return summarize(result, baselines["random"].episodes, baselines["expert"].episodes)
