"""In-context imitation (LMAct): demonstrations in the prompt, then a test episode step by step.

Test episode i starts from seed `config.seed + i`; demonstrations come from their own seed
range (`lmact.demos.DEMO_SEED_BASE` and up), so no test episode shares a seed with one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from lmact.declarations import Column, Named, Option, OptionError
from lmact.demos import DEMO_SEED_BASE, MAX_DEMONSTRATIONS, Demonstration, demonstrations_hash
from lmact.envs.base import Environment, Observation
from lmact.episode import (
    EpisodeHooks,
    FollowTheAnswer,
    LiveSituation,
    PlayedStep,
    SeedStream,
    StepRules,
    play_episode,
)
from lmact.errors import LmactError
from lmact.models.base import ModelRequest, Part
from lmact.policies import Policy
from lmact.prompting import (
    DemonstrationPacker,
    Packing,
    PromptBuilder,
    RenderedDemonstration,
    Step,
)
from lmact.records import EpisodeRecord, StepRecord, UnitKey
from lmact.regimes.base import PreparedRun, Regime, RunContext, RunFacts
from lmact.regimes.headline import Headline
from lmact.regimes.prompted import (
    INLINE_OBSERVATIONS,
    MAX_STEPS,
    PROMPTED_ADDED_FIELDS,
    TOKEN_BUDGET,
    PromptedConfig,
    check_sees,
    prompt_settings,
    prompted_fields,
    step_rules,
)
from lmact.store import RunRecord
from lmact.tasks import TaskSpec, get_task

DEFAULT_DEMOS = 1
# Streams of an episode's seed that the loop itself draws from (the environment uses its own).
_FALLBACK_STREAM = 1
_POLICY_STREAM = 2
_DEMO_DRAW_STREAM = 3
DEMO_DRAWS = ("per-episode", "shared")
# The demonstrations a per-episode draw chooses from, unless --demo-pool says otherwise.
DEFAULT_DEMO_POOL = 100

# The options imitation takes besides the common ones (with TOKEN_BUDGET and MAX_STEPS).
DEMOS = Option(
    "demos", int, least=0, most=MAX_DEMONSTRATIONS, order=50, exclusive="demonstrations",
    column=Column(place="run", rank=5), help="use exactly N demonstration episodes (default: 1)",
)  # fmt: skip
DEMO_DRAW = Option(
    "demo_draw", choices=DEMO_DRAWS, default="shared", order=140, column=Column(rank=3),
    help="shared (default): every test episode gets the first N demonstrations (one prefix, "
    "cached across episodes); per-episode: each test episode draws its own N from a pool of "
    "--demo-pool, seeded by its test seed, as the reference code does",
)  # fmt: skip
DEMO_POOL = Option(
    "demo_pool", int, least=1, most=MAX_DEMONSTRATIONS, metavar="P", order=150,
    column=Column(rank=4),
    help="how many demonstrations per-episode draws choose from; all are generated "
    f"(default: {DEFAULT_DEMO_POOL})",
)  # fmt: skip
# Fields added after release 0.1, with the value that keeps 0.1's behaviour: at that value
# they stay out of the run id, so that a 0.1 run keeps its id and resumes.
_ADDED_FIELDS = {
    **PROMPTED_ADDED_FIELDS,
    "past_actions": True,
    "answer_match": "lenient",
    "demo_draw": "shared",
    "demo_pool": None,
    "rendering": 1,
}
# Where the templates were read from: their fingerprint (`prompts`) is what identifies a run.
_NOT_IN_ID = frozenset({"prompts_dir"})


class ImitationConfig(PromptedConfig):
    """Everything that determines an imitation run's episodes (see `RegimeConfig`); test
    episode i starts from seed `seed + i`."""

    added_fields: ClassVar[dict[str, Any]] = _ADDED_FIELDS
    not_in_id: ClassVar[frozenset[str]] = _NOT_IN_ID

    regime: Literal["imitation"] = "imitation"
    demos: int | None = Field(None, ge=0)
    token_budget: int | None = Field(None, gt=0)
    max_steps: int = Field(gt=0)
    # "per-episode": each test episode draws its demonstrations from the first `demo_pool`
    # (see `drawn_demonstrations`); "shared": every episode gets the first ones.
    demo_draw: Literal["per-episode", "shared"] = "shared"
    demo_pool: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_way_to_choose_demos(self) -> ImitationConfig:
        if self.demos is not None and self.token_budget is not None:
            raise ValueError("give either demos or token_budget, not both")
        return self

    def drawn_demonstrations(self, episode: int) -> list[int]:
        """The demonstrations (indices into the pool) test episode `episode` draws, in the
        order they are packed: a permutation of the pool from a generator seeded by the
        episode's test seed. `--demos N` takes the first N, so the draws of a smaller N are
        the start of a larger one's, and they do not depend on how many episodes run."""
        if self.demo_draw == "shared" or self.demo_pool is None:
            raise ValueError("only per-episode draws choose demonstrations per episode")
        rng = np.random.default_rng([self.test_seed(episode), _DEMO_DRAW_STREAM])
        return [int(index) for index in rng.permutation(self.demo_pool)]

    def test_seed(self, episode: int) -> int:
        seed = self.seed + episode
        if seed >= DEMO_SEED_BASE:
            raise LmactError(
                f"test seed {seed} is not below {DEMO_SEED_BASE}, where the "
                "demonstration seeds start; use a smaller --seed or fewer --episodes"
            )
        return seed

    def baseline(self, policy: str) -> ImitationConfig:
        """The same test episodes played by a scripted policy: the scorer's reference points.

        Scripted policies read the environment, not the prompt, so every prompt setting takes
        its default: all runs of a task with the same seeds and step limit share baselines.
        """
        return make_config(
            self.task, model=policy, demos=0, seed=self.seed, max_steps=self.max_steps,
            task_options=self.task_options,
        )  # fmt: skip


def make_config(
    task: str,
    *,
    observation: str | None = None,
    model: str,
    demos: int | None = None,
    token_budget: int | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    show_legal_actions: bool = False,
    chain_of_thought: bool = False,
    max_tokens: int | None = None,
    past_actions: bool = True,
    answer_match: str = "lenient",
    prompts_dir: str | Path | None = None,
    demo_draw: str = DEMO_DRAW.default,
    demo_pool: int | None = None,
    constrained: bool = False,
    task_options: Sequence[str] | Mapping[str, Any] | None = None,
    inline_observations: bool = False,
) -> ImitationConfig:
    """A run configuration with the task's defaults filled in; names, and options that go
    together, are checked here (types and bounds by `lmact.options.read_run`)."""
    spec = get_task(task)
    fields = prompted_fields(
        spec,
        observation=observation,
        model=model,
        seed=seed,
        show_legal_actions=show_legal_actions,
        chain_of_thought=chain_of_thought,
        max_tokens=max_tokens,
        past_actions=past_actions,
        answer_match=answer_match,
        prompts_dir=prompts_dir,
        constrained=constrained,
        task_options=task_options,
        inline_observations=inline_observations,
    )
    if demos is not None and token_budget is not None:
        raise OptionError(
            "give either ", Named("demos"), " or ", Named("token_budget"), ", not both"
        )
    if demos is None and token_budget is None:
        demos = DEFAULT_DEMOS
    demo_draw, demo_pool = _demo_draw(demo_draw, demo_pool, demos)
    return ImitationConfig(
        **fields,
        demos=demos,
        token_budget=token_budget,
        max_steps=max_steps or spec.max_steps,
        demo_draw=demo_draw,  # type: ignore[arg-type] - checked in _demo_draw
        demo_pool=demo_pool,
    )


def _demo_draw(draw: str, pool: int | None, demos: int | None) -> tuple[str, int | None]:
    """The draw and its pool, checked; without demonstrations there is nothing to draw."""
    if demos == 0:
        return "shared", None  # the same prompt as before draws existed: the same run id
    if draw == "shared":
        if pool is not None:
            raise OptionError(Named("demo_pool"), " needs ", Named("demo_draw"), " per-episode")
        return draw, None
    pool = DEFAULT_DEMO_POOL if pool is None else pool
    if demos is not None and demos > pool:
        raise OptionError(
            Named("demos"), f" {demos} cannot be drawn from a pool of {pool}; give ",
            Named("demo_pool"), f" {demos} or more, or ", Named("demo_draw"), " shared",
        )  # fmt: skip
    return draw, pool


@dataclass(frozen=True)
class EpisodePlan:
    """What the episodes of a run share, and the demonstrations each one is shown."""

    config: ImitationConfig
    task: TaskSpec
    builder: PromptBuilder
    # Test episode -> its packed preamble and demonstrations (the same at every step).
    packing_for: Callable[[int], Packing]

    def prefix(self, episode: int) -> tuple[Part, ...]:
        return self.packing_for(episode).prefix

    def with_demonstrations(self, episode: int) -> bool:
        return bool(self.packing_for(episode).demonstrations)


# Per-episode packings kept: the first episodes' (made while preparing); the others are
# made when their episode starts and kept by it, so that a run of many episodes with
# prefixes of a million tokens does not hold one per episode.
_PACKINGS_KEPT = 4


def _packer(config: ImitationConfig, builder: PromptBuilder, policy: Policy) -> DemonstrationPacker:
    """The run's packer: its tail and preamble counted once, and each demonstration once."""
    return DemonstrationPacker(
        builder,
        policy.count_tokens,
        context_window=policy.context_window,
        answer_tokens=config.max_tokens,
        max_images=policy.max_images,
    )


def _pack(
    config: ImitationConfig,
    packer: DemonstrationPacker,
    candidates: Iterable[RenderedDemonstration],
) -> Packing:
    return packer.pack(candidates, exact=config.demos, budget=config.token_budget)


def _shared_packing(
    config: ImitationConfig, packer: DemonstrationPacker, stream: Iterable[Demonstration]
) -> tuple[Packing, list[Demonstration]]:
    """The packing of the first demonstrations of `stream`, and those it took."""
    consumed: list[Demonstration] = []

    def rendered() -> Iterator[RenderedDemonstration]:
        for demonstration in stream:
            consumed.append(demonstration)
            yield packer.render(demonstration.steps)

    packing = _pack(config, packer, rendered())
    return packing, consumed[: len(packing.demonstrations)]


def _per_episode_packing(
    config: ImitationConfig, packer: DemonstrationPacker, pool: Sequence[Demonstration]
) -> Callable[[int], Packing]:
    """Each test episode's packing of its own draw from `pool`. A pool demonstration is
    rendered and counted when first drawn, once for the run; each episode's prefix is
    assembled from those (and counted whole once, see `DemonstrationPacker`)."""
    rendered: dict[int, RenderedDemonstration] = {}
    kept: dict[int, Packing] = {}

    def render(index: int) -> RenderedDemonstration:
        if index not in rendered:
            rendered[index] = packer.render(pool[index].steps)
        return rendered[index]

    def packing_for(episode: int) -> Packing:
        if episode in kept:
            return kept[episode]
        order = config.drawn_demonstrations(episode)
        packing = _pack(config, packer, (render(index) for index in order))
        if len(kept) < _PACKINGS_KEPT:
            kept[episode] = packing
        return packing

    return packing_for


class ImitationRegime(Regime[ImitationConfig, EpisodePlan]):
    """LMAct: expert demonstrations packed into the prompt, then a test episode step by
    step; its units are the test episodes, played concurrently."""

    name = "imitation"
    config_type = ImitationConfig
    help = "demonstrations in the prompt, then new test episodes"
    options = (DEMOS, TOKEN_BUDGET, MAX_STEPS, DEMO_DRAW, DEMO_POOL, INLINE_OBSERVATIONS)
    headline = Headline(
        "normalized score [95% CI] by demonstrations",
        "normalized_score",
        interval="normalized",
        across="demos",
        across_label="demos",
    )

    def configure(self, task: str, **fields: Any) -> ImitationConfig:
        return make_config(task, **fields)

    def prepare(
        self,
        config: ImitationConfig,
        policy: Policy,
        context: RunContext,
        units: Sequence[UnitKey],
    ) -> PreparedRun[ImitationConfig, EpisodePlan]:
        task = config.task_spec()
        check_sees(task, config.observation, policy)
        builder = PromptBuilder(prompt_settings(config))
        packer = _packer(config, builder, policy)
        per_episode = config.demo_draw == "per-episode"
        wanted = config.demo_pool if per_episode else config.demos
        with context.progress_bar(wanted or 0, f"demonstrations {task.name}", "demo") as bar:
            if per_episode:
                assert config.demo_pool is not None
                pool = context.demo_store.load(
                    task, config.observation, 0, config.demo_pool, bar.update
                )
                packing_for = _per_episode_packing(config, packer, pool)
                packing_for(units[0].index if units else 0)  # the first to play fits, or fails
                # What the run reports: episode 0's packing, whichever episodes are left.
                packing, chosen = packing_for(0), pool
            else:
                limit = config.demos if config.demos is not None else MAX_DEMONSTRATIONS
                stream = context.demo_store.stream(
                    task, config.observation, bar.update, limit=limit, growing=True
                )
                packing, chosen = _shared_packing(config, packer, stream)
                shared = packing

                def packing_for(episode: int) -> Packing:
                    return shared

        # Shared: the demonstrations shown; per episode: the pool they are drawn from.
        digest = demonstrations_hash(chosen)
        facts = RunFacts(
            demonstrations=len(packing.demonstrations),
            demonstrations_hash=digest,
            prefix_tokens=packing.prefix_tokens,
            demonstrations_loaded=len(chosen),
            details={"stopped_by": packing.stopped_by},
            # As `lmact report` and the viewer read them back; a changed hash is refused.
            stored={
                "demos": len(packing.demonstrations),
                "demos_hash": digest,
                "prefix_tokens": packing.prefix_tokens,
            },
            pinned={"demos_hash": "demonstrations (the demonstration cache changed)"},
        )
        plan = EpisodePlan(config, task, builder, packing_for)
        return PreparedRun(config, policy, facts, plan)

    def unit_seed(self, config: ImitationConfig, unit: UnitKey) -> int:
        return config.test_seed(unit.index)

    async def play(
        self,
        prepared: PreparedRun[ImitationConfig, EpisodePlan],
        policy: Policy,
        unit: UnitKey,
        on_step: Callable[[StepRecord], None],
    ) -> EpisodeRecord:
        return await play_test_episode(prepared.plan, policy, unit.index, on_step)

    def baseline(self, config: ImitationConfig, policy: str) -> ImitationConfig:
        return config.baseline(policy)

    def summary_fields(self, config: ImitationConfig, facts: RunFacts) -> dict[str, Any]:
        return {
            "demos": facts.demonstrations,
            "demos_hash": facts.demonstrations_hash,
            "prefix_tokens": facts.prefix_tokens,
            "max_steps": config.max_steps,
            "stopped_by": facts.details.get("stopped_by"),
            **self.option_fields(config),
        }

    def option_fields(self, config: ImitationConfig) -> dict[str, Any]:
        """The reference protocol's options, as a summary and a report show them."""
        return {
            "past_actions": config.past_actions,
            "answer_match": config.answer_match,
            "demo_draw": config.demo_draw,
            "demo_pool": config.demo_pool,
            "max_tokens": config.max_tokens,
            "inline_observations": config.inline_observations,
            "task_options": config.task_options,
        }

    def report_fields(self, config: ImitationConfig, run: RunRecord) -> dict[str, Any]:
        # `demos` is what was packed, also for a run chosen by token budget.
        return {
            "demos": run.facts.get("demos"),
            "token_budget": config.token_budget,
            **self.option_fields(config),
        }

    def describe(self, facts: RunFacts) -> str:
        count = facts.demonstrations or 0
        noun = "demonstration" if count == 1 else "demonstrations"
        return f"{count} {noun} ({facts.prefix_tokens} prompt tokens)"


@dataclass
class _TestEpisode(EpisodeHooks):
    """A test episode: its demonstrations and its trajectory so far in every prompt."""

    plan: EpisodePlan
    episode: int
    # Its preamble and demonstrations, fetched once: a per-episode draw's is made for it.
    packing: Packing
    rules: StepRules
    situation: LiveSituation
    execution: FollowTheAnswer
    trajectory: list[Step] = field(default_factory=list)

    def request(self, observation: Observation, legal: Sequence[str]) -> ModelRequest:
        plan, config = self.plan, self.plan.config
        return plan.builder.request(
            self.packing.prefix,
            self.trajectory,
            observation,
            legal,
            with_demonstrations=bool(self.packing.demonstrations),
            max_tokens=config.max_tokens,
            seed=config.seed,
        )

    def after_step(self, played: PlayedStep) -> StepRecord:
        self.trajectory.append(played.step)
        return played.record


async def play_test_episode(
    plan: EpisodePlan,
    policy: Policy,
    episode: int,
    on_step: Callable[[StepRecord], None],
) -> EpisodeRecord:
    """Play test episode `episode` to its end or the step limit, reporting every step."""
    config = plan.config
    seed = config.test_seed(episode)
    rules = step_rules(config)
    packing = plan.packing_for(episode)

    def hooks(env: Environment) -> _TestEpisode:
        situation = LiveSituation(env, SeedStream(seed, _POLICY_STREAM))
        execution = FollowTheAnswer(env, SeedStream(seed, _FALLBACK_STREAM))
        return _TestEpisode(plan, episode, packing, rules, situation, execution)

    return await play_episode(
        plan.task.make_environment(),
        policy,
        hooks,
        episode=episode,
        seed=seed,
        max_steps=config.max_steps,
        on_step=on_step,
    )
