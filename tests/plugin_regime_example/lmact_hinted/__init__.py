"""A third-party regime: test episodes with no demonstrations, a line of text of the user's
(`--hint`) before every prompt. It is one module: its configuration, its one option, how a
run is prepared and how an episode is played (through lmact's one episode loop)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from lmact.declarations import Column, Option
from lmact.envs.base import Environment, Observation
from lmact.episode import (
    EpisodeHooks,
    FollowTheAnswer,
    LiveSituation,
    PlayedStep,
    StepRules,
    play_episode,
)
from lmact.models.base import ModelRequest, Part, TextPart
from lmact.policies import Policy
from lmact.prompting import PromptBuilder, Step
from lmact.records import EpisodeRecord, StepRecord, UnitKey
from lmact.regimes.base import PreparedRun, Regime, RunContext, RunFacts
from lmact.regimes.prompted import (
    MAX_STEPS,
    PromptedConfig,
    check_sees,
    prompt_settings,
    prompted_fields,
)
from lmact.tasks import get_task

HINT = Option(
    "hint",
    default="",
    group="hinted (--regime hinted, a plug-in)",
    help="a line of text put before every prompt",
    column=Column(label="hint"),
)


class HintedConfig(PromptedConfig):
    regime: Literal["hinted"] = "hinted"
    hint: str = ""
    max_steps: int = Field(gt=0)


@dataclass
class _Hinted(EpisodeHooks):
    config: HintedConfig
    builder: PromptBuilder
    prefix: tuple[Part, ...]
    rules: StepRules
    situation: LiveSituation
    execution: FollowTheAnswer
    trajectory: list[Step] = field(default_factory=list)

    def request(self, observation: Observation, legal: Sequence[str]) -> ModelRequest:
        return self.builder.request(
            self.prefix,
            self.trajectory,
            observation,
            legal,
            with_demonstrations=False,
            max_tokens=self.config.max_tokens,
            seed=self.config.seed,
        )

    def after_step(self, played: PlayedStep) -> StepRecord:
        self.trajectory.append(played.step)
        return played.record


class HintedRegime(Regime[HintedConfig, PromptBuilder]):
    name = "hinted"
    config_type = HintedConfig
    help = "no demonstrations, a line of the user's (--hint) before every prompt (a plug-in)"
    options = (HINT, MAX_STEPS)

    def configure(self, task: str, **fields: Any) -> HintedConfig:
        spec = get_task(task)
        hint = fields.pop("hint", None) or ""
        max_steps = fields.pop("max_steps", None) or spec.max_steps
        return HintedConfig(**prompted_fields(spec, **fields), hint=hint, max_steps=max_steps)

    def prepare(
        self, config: HintedConfig, policy: Policy, context: RunContext, units: Sequence[UnitKey]
    ) -> PreparedRun[HintedConfig, PromptBuilder]:
        check_sees(config.task_spec(), config.observation, policy)
        facts = RunFacts(demonstrations=0, stored={"hint": config.hint})
        return PreparedRun(config, policy, facts, PromptBuilder(prompt_settings(config)))

    def unit_seed(self, config: HintedConfig, unit: UnitKey) -> int:
        return config.seed + unit.index

    async def play(
        self,
        prepared: PreparedRun[HintedConfig, PromptBuilder],
        policy: Policy,
        unit: UnitKey,
        on_step: Callable[[StepRecord], None],
    ) -> EpisodeRecord:
        config, builder = prepared.config, prepared.plan
        seed = self.unit_seed(config, unit)
        prefix = (TextPart(config.hint + "\n"), *builder.prefix([]))
        rules = StepRules(config.observation, exact_answers=config.answer_match == "exact")

        def hooks(env: Environment) -> _Hinted:
            situation = LiveSituation(env, np.random.default_rng([seed, 2]))
            execution = FollowTheAnswer(env, np.random.default_rng([seed, 1]))
            return _Hinted(config, builder, prefix, rules, situation, execution)

        return await play_episode(
            config.task_spec().make_environment(),
            policy,
            hooks,
            episode=unit.index,
            seed=seed,
            max_steps=config.max_steps,
            on_step=on_step,
        )

    def baseline(self, config: HintedConfig, policy: str) -> HintedConfig:
        """Scripted policies read no prompt: every hint shares its baselines."""
        return self.configure(
            config.task, model=policy, observation=config.observation, seed=config.seed,
            max_steps=config.max_steps,
        )  # fmt: skip

    def describe(self, facts: RunFacts) -> str:
        return "no demonstrations, a hint"
