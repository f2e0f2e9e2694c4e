"""In-context imitation (LMAct): demonstrations in the prompt, then a test episode step by step.

Test episode i starts from seed `config.seed + i`; demonstrations come from their own seed
range (`lmact.demos.DEMO_SEED_BASE` and up), so no test episode shares a seed with one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmact.demos import DEMO_SEED_BASE
from lmact.envs import environment_class
from lmact.envs.base import Environment, Observation
from lmact.episode import EpisodeTally, StepRules, play_step
from lmact.errors import LmactError, UnknownNameError
from lmact.models.base import ModelRequest, Part
from lmact.models.caller import ModelCaller
from lmact.prompting import (
    Packing,
    PromptBuilder,
    PromptSettings,
    Step,
    check_templates,
    templates_fingerprint,
)
from lmact.store import STEP_LIMIT, EpisodeRecord, StepRecord
from lmact.tasks import TaskSpec, get_task

BASELINE_POLICIES = ("random", "expert")
DEFAULT_DEMOS = 1
CHAIN_OF_THOUGHT_MAX_TOKENS = 512
# Streams of an episode's seed that the loop itself draws from (the environment uses its own).
_FALLBACK_STREAM = 1
_POLICY_STREAM = 2
_DEMO_DRAW_STREAM = 3
DEMO_DRAWS = ("per-episode", "shared")
# The demonstrations a per-episode draw chooses from, unless --demo-pool says otherwise.
DEFAULT_DEMO_POOL = 100
ANSWER_MATCHES = ("lenient", "exact")
# Fields added after release 0.1, with the value that keeps 0.1's behaviour: at that value
# they stay out of the run id, so that a 0.1 run keeps its id and resumes.
_ADDED_FIELDS = {
    "past_actions": True,
    "answer_match": "lenient",
    "demo_draw": "shared",
    "demo_pool": None,
    "rendering": 1,
}
# Where the templates were read from: their fingerprint (`prompts`) is what identifies a run.
_NOT_IN_ID = frozenset({"prompts_dir"})


class ImitationConfig(BaseModel):
    """Everything that determines a run's episodes; its hash is the run's id.

    The number of episodes is not part of it: asking for more episodes later extends the
    same run, since episode i always starts from seed `seed + i`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    regime: Literal["imitation"] = "imitation"
    task: str
    spec_hash: str
    observation: str
    model: str
    demos: int | None = Field(None, ge=0)
    token_budget: int | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)
    max_steps: int = Field(gt=0)
    show_legal_actions: bool = False
    chain_of_thought: bool = False
    max_tokens: int = Field(gt=0)
    prompts: str  # fingerprint of the prompt templates
    prompts_dir: str | None = None  # the --prompts folder, if not the shipped templates
    # The current episode's past actions in the prompt (False: observations only).
    past_actions: bool = True
    # How an answer must be spelled: "lenient" reads it with the task's parser (any case,
    # SAN without the check sign …); "exact" only as one of the legal actions as listed.
    answer_match: Literal["lenient", "exact"] = "lenient"
    # "per-episode": each test episode draws its demonstrations from the first `demo_pool`
    # (see `drawn_demonstrations`); "shared": every episode gets the first ones.
    demo_draw: Literal["per-episode", "shared"] = "shared"
    demo_pool: int | None = Field(None, gt=0)
    # The environment's rendering version: observations rendered otherwise are another run.
    rendering: int = 1

    @model_validator(mode="after")
    def _one_way_to_choose_demos(self) -> ImitationConfig:
        if self.demos is not None and self.token_budget is not None:
            raise ValueError("give either demos or token_budget, not both")
        return self

    @property
    def run_id(self) -> str:
        values = {
            key: value
            for key, value in self.model_dump().items()
            if key not in _NOT_IN_ID and not (key in _ADDED_FIELDS and value == _ADDED_FIELDS[key])
        }
        payload = json.dumps(values, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

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
            self.task, model=policy, demos=0, seed=self.seed, max_steps=self.max_steps
        )


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
    prompts_dir: str | None = None,
    demo_draw: str = "shared",
    demo_pool: int | None = None,
) -> ImitationConfig:
    """A run configuration with the task's defaults filled in; names are checked here."""
    spec = get_task(task)
    observation = observation or spec.default_observation
    spec.check_observation(observation)
    if demos is not None and token_budget is not None:
        raise LmactError("give either --demos or --token-budget, not both")
    if demos is None and token_budget is None:
        demos = DEFAULT_DEMOS
    check_templates(prompts_dir)
    if answer_match not in ANSWER_MATCHES:
        raise UnknownNameError("--answer-match", answer_match, ANSWER_MATCHES)
    demo_draw, demo_pool = _demo_draw(demo_draw, demo_pool, demos)
    _check_counts(
        at_least_0={"--demos": demos, "--seed": seed},
        positive={
            "--token-budget": token_budget,
            "--max-steps": max_steps,
            "--max-tokens": max_tokens,
        },
    )
    return ImitationConfig(
        task=spec.name,
        spec_hash=spec.spec_hash,
        observation=observation,
        model=model,
        demos=demos,
        token_budget=token_budget,
        seed=seed,
        max_steps=max_steps or spec.max_steps,
        show_legal_actions=show_legal_actions,
        chain_of_thought=chain_of_thought,
        max_tokens=max_tokens
        or (CHAIN_OF_THOUGHT_MAX_TOKENS if chain_of_thought else spec.max_answer_tokens),
        prompts=templates_fingerprint(prompts_dir),
        prompts_dir=str(Path(prompts_dir).resolve()) if prompts_dir is not None else None,
        demo_draw=demo_draw,  # type: ignore[arg-type] - checked in _demo_draw
        demo_pool=demo_pool,
        rendering=environment_class(spec.environment).rendering_version,
        past_actions=past_actions,
        answer_match=answer_match,  # type: ignore[arg-type] - checked above
    )


def _check_counts(at_least_0: dict[str, int | None], positive: dict[str, int | None]) -> None:
    """The counts of a configuration made through the Python API (the CLI checks them too)."""
    for name, value in at_least_0.items():
        if value is not None and value < 0:
            raise LmactError(f"{name} must be at least 0, not {value}")
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise LmactError(f"{name} must be positive, not {value}")


def _demo_draw(draw: str, pool: int | None, demos: int | None) -> tuple[str, int | None]:
    """The draw and its pool, checked; without demonstrations there is nothing to draw."""
    if draw not in DEMO_DRAWS:
        raise UnknownNameError("--demo-draw", draw, DEMO_DRAWS)
    if demos == 0:
        return "shared", None  # the same prompt as before draws existed: the same run id
    if draw == "shared":
        if pool is not None:
            raise LmactError("--demo-pool needs --demo-draw per-episode")
        return draw, None
    pool = DEFAULT_DEMO_POOL if pool is None else pool
    if demos is not None and demos > pool:
        raise LmactError(
            f"--demos {demos} cannot be drawn from a pool of {pool}; give --demo-pool {demos} "
            "or more, or --demo-draw shared"
        )
    return draw, pool


@dataclass
class _Oracle:
    """What scripted policies see: the live environment and the episode's policy stream."""

    env: Environment
    rng: np.random.Generator

    def legal_actions(self) -> list[str]:
        return self.env.legal_actions()

    def expert_action(self) -> str:
        return self.env.expert_action()

    def random_action(self) -> str:
        return self.env.random_action(self.rng)


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


def prompt_settings(config: ImitationConfig) -> PromptSettings:
    return PromptSettings(
        config.show_legal_actions,
        config.chain_of_thought,
        config.past_actions,
        Path(config.prompts_dir) if config.prompts_dir is not None else None,
    )


async def play_episode(
    plan: EpisodePlan,
    caller: ModelCaller,
    episode: int,
    on_step: Callable[[StepRecord], None],
) -> EpisodeRecord:
    """Play test episode `episode` to its end or the step limit, reporting every step."""
    config = plan.config
    seed = config.test_seed(episode)
    env = plan.task.make_environment()
    fallback_rng = np.random.default_rng([seed, _FALLBACK_STREAM])
    oracle = _Oracle(env, np.random.default_rng([seed, _POLICY_STREAM]))
    rules = StepRules(config.observation, exact_answers=config.answer_match == "exact")
    trajectory: list[Step] = []
    tally = EpisodeTally()
    end_reason, terminated = STEP_LIMIT, False

    def build_request(observation: Observation, legal: Sequence[str]) -> ModelRequest:
        return plan.builder.request(
            plan.prefix(episode),
            trajectory,
            observation,
            legal,
            with_demonstrations=plan.with_demonstrations(episode),
            max_tokens=config.max_tokens,
            seed=config.seed,
        )

    try:
        env.reset(seed)
        for step in range(config.max_steps):
            played = await play_step(
                env,
                caller,
                build_request,
                rules,
                oracle=oracle,
                fallback_rng=fallback_rng,
                episode=episode,
                step=step,
            )
            tally.add(played.record)
            on_step(played.record)
            trajectory.append(played.step)
            if played.outcome.done:
                terminated, end_reason = True, env.end_reason() or "ended"
                break
    finally:
        env.close()
    return tally.record(episode, seed, terminated, end_reason)
