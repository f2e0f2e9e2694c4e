"""Runs: set up a run (task, model, packed demonstrations), play its episodes concurrently,
record everything in the run store, resume whatever an earlier attempt left unfinished.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from tqdm import tqdm

from lmact.demos import MAX_DEMONSTRATIONS, Demonstration, DemoStore, demonstrations_hash
from lmact.errors import LmactError
from lmact.models.base import ModelAuthError, ModelClient, ModelOptions, ModelResponse
from lmact.models.caller import ModelCaller, TokenCountingCaller
from lmact.models.registry import resolve_model
from lmact.prompting import Packing, PromptBuilder, Step, pack_demonstrations
from lmact.regimes.imitation import (
    BASELINE_POLICIES,
    EpisodePlan,
    ImitationConfig,
    play_episode,
    prompt_settings,
)
from lmact.scoring import EpisodeScores, score_episodes
from lmact.store import (
    MAX_EPISODES,
    Claim,
    ClaimLostError,
    EpisodeRecord,
    RunStore,
    StepRecord,
)
from lmact.tasks import TaskSpec, get_task

# A server's pause at least this long is announced on stderr when there is no progress bar.
PAUSE_NOTICE_S = 5.0


def check_episodes(episodes: int) -> None:
    if episodes <= 0:
        raise LmactError(f"--episodes must be positive, not {episodes}")
    if episodes > MAX_EPISODES:
        raise LmactError(f"--episodes must be at most {MAX_EPISODES}, not {episodes}")


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
    demonstrations_needed: int  # all of a per-episode pool; the dry run generates them


Packer = Callable[[Iterable[Demonstration]], tuple[Packing, list[Demonstration]]]


def _packer(config: ImitationConfig, builder: PromptBuilder, client: ModelClient) -> Packer:
    """Packs candidate demonstrations for `config`; returns the packing and those it took."""

    def pack(candidates: Iterable[Demonstration]) -> tuple[Packing, list[Demonstration]]:
        consumed: list[Demonstration] = []

        def steps_of() -> Iterator[tuple[Step, ...]]:
            for demonstration in candidates:
                consumed.append(demonstration)
                yield demonstration.steps

        packing = pack_demonstrations(
            builder,
            steps_of(),
            client.count_tokens,
            exact=config.demos,
            budget=config.token_budget,
            context_window=client.context_window,
            answer_tokens=config.max_tokens,
            max_images=client.max_images,
        )
        return packing, consumed[: len(packing.demonstrations)]

    return pack


def _check_sees(task: TaskSpec, observation: str, client: ModelClient) -> None:
    if task.is_image_observation(observation) and not client.accepts_images:
        texts = [o for o in task.observations if not task.is_image_observation(o)]
        remedy = (
            f"choose a text observation ({', '.join(texts)})"
            if texts
            else f"task {task.name} has only image observations: choose a model that sees them"
        )
        raise LmactError(f"model {client.name} accepts no images; {remedy}")


def _per_episode_packing(
    config: ImitationConfig,
    pool: Sequence[Demonstration],
    pack: Packer,
) -> Callable[[int], Packing]:
    """Each test episode's packing of its own draw from `pool`, made when first asked for."""
    packings: dict[int, Packing] = {}

    def packing_for(episode: int) -> Packing:
        if episode not in packings:
            order = config.drawn_demonstrations(episode)
            packings[episode] = pack(pool[index] for index in order)[0]
        return packings[episode]

    return packing_for


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
        poll_s: float = 0.5,
    ) -> None:
        self.store = store
        self.demo_store = demo_store
        self.model_options = model_options or ModelOptions()
        self.max_connections = max_connections
        self.progress = progress
        self.retry_backoff_s = retry_backoff_s
        self.poll_s = poll_s  # how often episodes another process plays are looked at
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

    def plan(
        self, config: ImitationConfig, record: bool = True, first_episode: int = 0
    ) -> PreparedRun:
        """Resolve the model and pack the demonstrations; fails before any model call.
        `record`: save the run (its configuration and packing) in the store. With per-episode
        draws, `first_episode`'s packing is checked now and the others as they are played."""
        task = self._task(config)
        client = self.client(config.model)
        _check_sees(task, config.observation, client)
        builder = PromptBuilder(prompt_settings(config))

        pack = _packer(config, builder, client)
        wanted = config.demo_pool if config.demo_draw == "per-episode" else config.demos
        with self._bar(wanted or 0, f"demonstrations {task.name}", "demo") as bar:
            if config.demo_draw == "per-episode":
                assert config.demo_pool is not None
                pool = self.demo_store.load(
                    task, config.observation, 0, config.demo_pool, bar.update
                )
                packing_for = _per_episode_packing(config, pool, pack)
                packing_for(first_episode)  # the first to play fits, or fails now
                # What the run reports: episode 0's packing, whichever episodes are left.
                packing, chosen = packing_for(0), pool
            else:
                limit = config.demos if config.demos is not None else MAX_DEMONSTRATIONS
                packing, chosen = pack(
                    self.demo_store.stream(
                        task, config.observation, bar.update, limit=limit, growing=True
                    )
                )
                shared = packing

                def packing_for(episode: int) -> Packing:
                    return shared

        # Shared: the demonstrations shown; per episode: the pool they are drawn from.
        digest = demonstrations_hash(chosen)
        demos_used = len(packing.demonstrations)
        if record:
            self.store.save_run(
                config.run_id, config.model_dump(), demos_used, digest, packing.prefix_tokens
            )
        return PreparedRun(
            plan=EpisodePlan(config, task, builder, packing_for),
            client=client,
            demos_used=demos_used,
            demos_hash=digest,
            prefix_tokens=packing.prefix_tokens,
            stopped_by=packing.stopped_by,
        )

    def _todo(self, config: ImitationConfig, episodes: int) -> list[int]:
        check_episodes(episodes)
        config.test_seed(episodes - 1)  # every test seed must stay below the demonstration seeds
        finished = self.store.finished_episodes(config.run_id)
        return [e for e in range(episodes) if e not in finished]

    def run(self, config: ImitationConfig, episodes: int, restart: bool = False) -> RunResult:
        """Play episodes 0 … episodes-1 of a run, skipping those already finished.

        Episodes run concurrently. One that fails (retries exhausted, an invalid request)
        stops alone: the others finish and are stored, and the run then raises, to be resumed
        by running it again. A refused key stops the whole run at once. Episodes that another
        process is playing in the same store are left to it, and waited for. `restart`
        discards the run's stored episodes first.
        """
        if restart:
            self.store.discard_run(config.run_id)
        todo = self._todo(config, episodes)
        if todo:  # a finished run is read back from the store: no key or engine needed
            # Made once up front so that what the task itself needs (Stockfish, its data
            # files) is missing with one clear error before any model work.
            self._task(config).make_environment().close()
            self.client(config.model).check_ready()
        prepared = self.plan(config, first_episode=todo[0] if todo else 0)
        caller = ModelCaller(
            prepared.client,
            self.store,
            self.max_connections,
            backoff_s=self.retry_backoff_s,
        )
        failures = _EpisodeFailures()
        if todo:
            try:
                asyncio.run(self._play_all(prepared, caller, episodes, todo, failures))
            except* LmactError as group:
                raise group.exceptions[0] from None
            finally:
                self.store.release_claims()
        failures.raise_if_any(len(todo))
        records = self.store.finished_episodes(config.run_id)
        return RunResult(
            config=config,
            prepared=prepared,
            episodes=[records[e] for e in range(episodes)],
            calls_made=caller.calls_made,
            calls_cached=caller.calls_cached,
            retries=caller.retries,
        )

    async def _play_all(
        self,
        prepared: PreparedRun,
        caller: ModelCaller,
        episodes: int,
        todo: list[int],
        failures: _EpisodeFailures,
    ) -> None:
        """Play `todo` with at most `concurrency` episodes at once. An episode that another
        process is playing is set aside and polled until it is finished there, or its
        process ends (then it is played here)."""
        config, plan = prepared.plan.config, prepared.plan
        run_id = config.run_id
        pending = deque(todo)
        elsewhere: set[int] = set()  # episodes another process is playing

        async def play(episode: int, bar: tqdm) -> None:
            def on_step(step: StepRecord) -> None:
                self.store.record_step(run_id, step)
                self._show(bar, caller, elsewhere)

            try:
                record = await play_episode(plan, caller, episode, on_step)
                self.store.finish_episode(run_id, record)
            except ModelAuthError:
                raise  # every other call would be refused too
            except ClaimLostError:
                elsewhere.add(episode)
                return
            except Exception as error:
                failures.errors[episode] = error
                return
            bar.update(1)

        async def worker(bar: tqdm) -> None:
            while pending or elsewhere:
                if not pending:
                    await asyncio.sleep(self.poll_s)
                    pending.extend(sorted(elsewhere))
                    elsewhere.clear()
                    continue
                episode = pending.popleft()
                claim, _ = self.store.claim_episode(run_id, episode, config.test_seed(episode))
                if claim is Claim.DONE:
                    bar.update(1)
                elif claim is Claim.BUSY:
                    elsewhere.add(episode)
                    self._show(bar, caller, elsewhere)
                else:
                    await play(episode, bar)

        concurrency = self.max_connections or prepared.client.max_concurrency
        description = f"{config.model} {config.task}/{config.observation}"
        with self._bar(episodes, description, "episode") as bar:
            caller.on_pause = self._pause_listener(bar, caller, elsewhere)
            bar.update(episodes - len(todo))
            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(todo))):
                    group.create_task(worker(bar))

    def _pause_listener(
        self, bar: tqdm, caller: ModelCaller, elsewhere: set[int]
    ) -> Callable[[float, str], None]:
        """Says when a server pauses the run: on the progress line, else (from 5 s) on stderr."""

        def on_pause(until: float, reason: str) -> None:
            self._show(bar, caller, elsewhere)
            if not self.progress and until - time.time() >= PAUSE_NOTICE_S:
                when = time.strftime("%H:%M:%S", time.localtime(until))
                print(
                    f"lmact: {caller.client.name}: {reason}: paused until {when}", file=sys.stderr
                )

        return on_pause

    def _show(self, bar: tqdm, caller: ModelCaller, elsewhere: set[int]) -> None:
        status: dict[str, object] = {
            "calls": caller.calls_made,
            "cached": caller.calls_cached,
            "retries": caller.retries,
        }
        if elsewhere:
            status["elsewhere"] = len(elsewhere)  # played by another process: waited for
        paused = caller.paused_until_wall()
        if paused is not None:
            status["paused"] = time.strftime("until %H:%M:%S", time.localtime(paused))
        bar.set_postfix(status)

    def estimate(self, config: ImitationConfig, episodes: int) -> RunEstimate:
        """A dry run: the calls, tokens and cost of a run's unfinished episodes, with no model
        call and nothing stored. The expert plays, and each step's real prompt is counted."""
        todo = self._todo(config, episodes)
        prepared = self.plan(config, record=False, first_episode=todo[0] if todo else 0)
        client = prepared.client
        counter = TokenCountingCaller(client)
        prefix_tokens = 0  # the cacheable part of every call's prompt
        prefixes: set[int] = set()  # the distinct prefixes (each written to a cache once)
        written = 0

        async def play_all() -> None:
            nonlocal prefix_tokens, written
            for episode in todo:
                calls = counter.calls
                await play_episode(prepared.plan, counter, episode, lambda step: None)
                packing = prepared.plan.packing_for(episode)
                prefix_tokens += packing.prefix_tokens * (counter.calls - calls)
                if id(packing) not in prefixes and counter.calls > calls:
                    prefixes.add(id(packing))
                    written += packing.prefix_tokens

        asyncio.run(play_all())
        as_billed = ModelResponse(
            "", prompt_tokens=counter.prompt_tokens, completion_tokens=counter.completion_tokens
        )
        with_cache = replace(
            as_billed, cached_tokens=prefix_tokens - written, cache_write_tokens=written
        )
        return RunEstimate(
            config=config,
            prepared=prepared,
            episodes_todo=len(todo),
            episodes_done=episodes - len(todo),
            calls=counter.calls,
            prompt_tokens=counter.prompt_tokens,
            prefix_tokens=prefix_tokens,
            completion_tokens=counter.completion_tokens,
            cost_usd=client.cost_usd(as_billed),
            cost_cached_usd=client.cost_usd(with_cache),
            demonstrations_needed=(
                config.demo_pool or 0 if config.demo_draw == "per-episode" else prepared.demos_used
            ),
        )

    def evaluate(self, config: ImitationConfig, episodes: int, restart: bool = False) -> RunSummary:
        """Run, then run the random and expert baselines on the same test seeds, and score.
        `restart` discards the model's stored episodes (not the baselines') first."""
        result = self.run(config, episodes, restart)
        baselines = {
            policy: self.run(config.baseline(policy), episodes) for policy in BASELINE_POLICIES
        }
        return summarize(result, baselines["random"].episodes, baselines["expert"].episodes)


@dataclass(frozen=True)
class RunSummary(EpisodeScores):
    """What `lmact run` prints (and `--json` emits): a run's scores and what identifies it.
    Assembled here, above the scorer, which knows episode records only."""

    run_id: str
    task: str
    observation: str
    model: str
    demos: int
    demos_hash: str
    prefix_tokens: int
    seed: int
    max_steps: int
    calls_made: int
    calls_cached: int
    retries: int
    stopped_by: str | None  # what limited the packing of demonstrations, if not --demos
    past_actions: bool
    answer_match: str
    demo_draw: str
    demo_pool: int | None

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["ci95"] = list(self.ci95)
        return values


def summarize(
    result: RunResult,
    random_episodes: Sequence[EpisodeRecord],
    expert_episodes: Sequence[EpisodeRecord],
) -> RunSummary:
    config = result.config
    scores = score_episodes(result.episodes, random_episodes, expert_episodes)
    return RunSummary(
        **asdict(scores),
        run_id=config.run_id,
        task=config.task,
        observation=config.observation,
        model=config.model,
        demos=result.prepared.demos_used,
        demos_hash=result.prepared.demos_hash,
        prefix_tokens=result.prepared.prefix_tokens,
        seed=config.seed,
        max_steps=config.max_steps,
        calls_made=result.calls_made,
        calls_cached=result.calls_cached,
        retries=result.retries,
        stopped_by=result.prepared.stopped_by,
        past_actions=config.past_actions,
        answer_match=config.answer_match,
        demo_draw=config.demo_draw,
        demo_pool=config.demo_pool,
    )
