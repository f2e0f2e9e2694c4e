"""Replay (LMAct's replay variant): can a model copy from its context?

The prompt holds one demonstration; then the model is shown that same demonstration step
by step (its observations, and the demonstrated actions before the current step) and
answers each step. A step scores when the answer, read by the task's parser, is exactly the
demonstrated action; the environment always executes the demonstrated action, so the
episode stays the demonstration. An episode's return is the fraction of its steps matched.

Episode i replays demonstration `seed + i` (the demonstration seeds, disjoint from test
seeds). The expert here is the demonstrator and scores exactly 1; random scores chance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NoReturn

import numpy as np

from lmact.demos import DEMO_SEED_BASE, MAX_DEMONSTRATIONS, Demonstration
from lmact.envs.base import Environment, Observation, ParsedAnswer, StepOutcome
from lmact.episode import EpisodeHooks, LiveSituation, PlayedStep, StepRules, play_episode
from lmact.errors import LmactError
from lmact.models.base import ModelRequest, Part
from lmact.policies import Policy
from lmact.prompting import PromptBuilder, Step
from lmact.records import EpisodeRecord, StepRecord, UnitKey
from lmact.regimes.base import PreparedRun, Regime, RunContext, RunFacts
from lmact.regimes.headline import Headline
from lmact.regimes.prompted import (
    INLINE_OBSERVATIONS,
    PromptedConfig,
    check_sees,
    prompt_settings,
    prompted_fields,
    step_rules,
)
from lmact.tasks import get_task

_POLICY_STREAM = 2  # of the demonstration's seed: what the random policy draws from


class ReplayConfig(PromptedConfig):
    """Everything that determines a replay run; episode i replays demonstration seed + i."""

    regime: Literal["replay"] = "replay"


def make_replay_config(task: str, *, model: str, **options: Any) -> ReplayConfig:
    """A replay configuration with the task's defaults filled in; names are checked here.
    `options`: `observation`, `seed` and the prompt options of `make_config`
    (`show_legal_actions`, `chain_of_thought`, `max_tokens`, `past_actions`,
    `answer_match`, `prompts_dir`)."""
    return ReplayConfig(**prompted_fields(get_task(task), model=model, **options))


@dataclass(frozen=True)
class ReplayPlan:
    builder: PromptBuilder
    demonstrations: dict[int, Demonstration]  # by episode


@dataclass
class _Demonstrated(LiveSituation):
    """One step's demonstrated action: what the expert answers, what is executed, and what
    an answer must match to score (1 / the episode's length, so the return is a fraction)."""

    action_shown: str = ""
    weight: float = 0.0

    def expert_action(self) -> str:
        return self.action_shown

    def action(self, parsed: ParsedAnswer) -> str:
        return self.action_shown

    def reward(self, parsed: ParsedAnswer, outcome: StepOutcome) -> float:
        return self.weight if parsed.action == self.action_shown else 0.0


class ReplayRegime(Regime[ReplayConfig, ReplayPlan]):
    name = "replay"
    config_type = ReplayConfig
    options = (INLINE_OBSERVATIONS,)
    help = (
        "the prompt shows one demonstration, then the model is asked for each of its actions "
        "in turn (scored by the share it matches; expert 1.0)"
    )
    headline = Headline(
        "share of demonstrated actions matched [95% CI]", "mean_return", interval="ci95"
    )

    def configure(self, task: str, **fields: Any) -> ReplayConfig:
        return make_replay_config(task, **fields)

    def prepare(
        self, config: ReplayConfig, policy: Policy, context: RunContext, units: Sequence[UnitKey]
    ) -> PreparedRun[ReplayConfig, ReplayPlan]:
        task = config.task_spec()
        check_sees(task, config.observation, policy)
        demonstrations: dict[int, Demonstration] = {}
        indices = {unit.index for unit in units}
        if indices:
            first, last = min(indices), max(indices)
            with context.progress_bar(
                last - first + 1, f"demonstrations {task.name}", "demo"
            ) as bar:
                loaded = context.demo_store.load(
                    task, config.observation, config.seed + first, last - first + 1, bar.update
                )
            demonstrations = {first + k: d for k, d in enumerate(loaded) if first + k in indices}
        plan = ReplayPlan(PromptBuilder(prompt_settings(config)), demonstrations)
        # The episodes' seeds name the demonstrations they replay: no hash of a set.
        facts = RunFacts(
            demonstrations=1, demonstrations_loaded=len(demonstrations), stored={"demos": 1}
        )
        return PreparedRun(config, policy, facts, plan)

    def unit_seed(self, config: ReplayConfig, unit: UnitKey) -> int:
        index = config.seed + unit.index
        if index >= MAX_DEMONSTRATIONS:
            raise LmactError(
                f"demonstration {index} is past the last one ({MAX_DEMONSTRATIONS - 1}); "
                "use a smaller --seed or fewer --episodes"
            )
        return DEMO_SEED_BASE + index

    async def play(
        self,
        prepared: PreparedRun[ReplayConfig, ReplayPlan],
        policy: Policy,
        unit: UnitKey,
        on_step: Callable[[StepRecord], None],
    ) -> EpisodeRecord:
        return await replay_episode(prepared, policy, unit.index, on_step)

    def baseline(self, config: ReplayConfig, policy: str) -> ReplayConfig:
        """Scripted policies read the demonstration, not the prompt: prompt settings take
        their defaults, so every replay run of a task and seed shares its baselines."""
        return make_replay_config(
            config.task, observation=config.observation, model=policy, seed=config.seed,
            task_options=config.task_options,
        )  # fmt: skip

    def summary_fields(self, config: ReplayConfig, facts: RunFacts) -> dict[str, Any]:
        return {
            "demos": 1,
            "past_actions": config.past_actions,
            "answer_match": config.answer_match,
        }

    def report_fields(self, config: ReplayConfig, run: Any) -> dict[str, Any]:
        return self.summary_fields(config, RunFacts())

    def describe(self, facts: RunFacts) -> str:
        return "replays the demonstration it shows"


@dataclass
class _Replayed(EpisodeHooks):
    """A demonstration replayed: the policy answers each of its steps, which are executed
    whatever the answer; the episode's return is the fraction of steps matched."""

    config: ReplayConfig
    builder: PromptBuilder
    demonstration: Demonstration
    prefix: tuple[Part, ...]
    rules: StepRules
    situation: _Demonstrated
    execution: _Demonstrated  # the same object: it executes the demonstrated action
    trajectory: list[Step] = field(default_factory=list)
    matched: int = 0

    def request(self, observation: Observation, legal: Sequence[str]) -> ModelRequest:
        return self.builder.request(
            self.prefix,
            self.trajectory,
            observation,
            legal,
            with_demonstrations=True,
            max_tokens=self.config.max_tokens,
            seed=self.config.seed,
        )

    def before_step(self, step: int) -> None:
        self.situation.action_shown = self.demonstration.steps[step][1]

    def after_step(self, played: PlayedStep) -> StepRecord:
        step, steps = played.record.step, self.demonstration.steps
        if played.step[0] != steps[step][0]:
            self._no_longer_replays(f"step {step} renders otherwise")
        if played.outcome.done and step + 1 < len(steps):
            self._no_longer_replays(f"it ends at step {step}")
        self.matched += played.record.reward > 0
        self.trajectory.append(played.step)
        return played.record

    def _no_longer_replays(self, how: str) -> NoReturn:
        raise LmactError(
            f"demonstration {self.demonstration.seed - DEMO_SEED_BASE} of {self.config.task} "
            f"no longer replays: {how} (the environment changed since it was recorded)"
        )

    def finish(self, record: EpisodeRecord) -> EpisodeRecord:
        # The exact fraction, not a sum of 1/length: the demonstrator scores exactly 1.0.
        length = len(self.demonstration.steps)
        return replace(record, total_return=self.matched / length if length else 0.0)


async def replay_episode(
    prepared: PreparedRun[ReplayConfig, ReplayPlan],
    policy: Policy,
    episode: int,
    on_step: Callable[[StepRecord], None],
) -> EpisodeRecord:
    """Replay the demonstration of `episode`, asking the policy at every step; its length
    is the episode's step limit."""
    config, plan = prepared.config, prepared.plan
    demonstration = plan.demonstrations[episode]
    prefix = plan.builder.prefix([demonstration.steps])
    rules = step_rules(config)
    rng = np.random.default_rng([demonstration.seed, _POLICY_STREAM])
    length = len(demonstration.steps)

    def hooks(env: Environment) -> _Replayed:
        shown = _Demonstrated(env, rng, weight=1.0 / length if length else 0.0)
        return _Replayed(config, plan.builder, demonstration, prefix, rules, shown, shown)

    return await play_episode(
        config.task_spec().make_environment(),
        policy,
        hooks,
        episode=episode,
        seed=demonstration.seed,
        max_steps=length,
        on_step=on_step,
    )
