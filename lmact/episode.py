"""One step, and the one episode loop, shared by every regime.

A step: render the observation, build the request (the regime says how), ask the policy,
extract the answer, classify it, decide the action to execute (the regime says how: in
imitation, a valid answer, or else a random legal action), step the environment, record.
Nothing a model writes is evaluated: the environment's parser decides what an answer is.

An episode (`play_episode`): reset(seed), steps until the episode ends or the step limit
cuts it, the tally of its steps into its record, and the environment closed, whatever
happens. The environment is played through an `EpisodeGuard`, which enforces the order of
reset and steps and the step limit. What differs between regimes are the `EpisodeHooks`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol, TypeVar

import numpy as np

from lmact.envs.base import (
    AnswerKind,
    Environment,
    EpisodeGuard,
    Observation,
    ParsedAnswer,
    StepOutcome,
    classify_answer,
)
from lmact.models.base import UNREADABLE, ModelRequest
from lmact.policies import ArmTally, Policy, Situation
from lmact.prompting import PLAIN_ANSWER, AnswerForm, Step
from lmact.records import (
    NO_PROMPT,
    STEP_LIMIT,
    EpisodeRecord,
    StepRecord,
    StopReason,
    UnitKey,
    UnitKind,
    Usage,
)

# Builds a step's request from its observation and what stands for the legal actions.
RequestBuilder = Callable[[Observation, Sequence[str]], ModelRequest]
# What a policy that reads no prompt (a scripted one) is handed: none is built.
UNSHOWN = ModelRequest(parts=())
Seen = TypeVar("Seen")


@dataclass(frozen=True)
class StepRules:
    observation: str  # the format the environment renders
    exact_answers: bool = False  # only the legal actions as listed are valid (--answer-match)
    constrained: bool = False  # the answer decoded under a constraint onto the legal actions
    answer_form: AnswerForm = PLAIN_ANSWER  # where in a completion the answer is


class StepExecution(Protocol):
    """What a step executes and how it is scored, given the classified answer."""

    def action(self, parsed: ParsedAnswer) -> str: ...

    def reward(self, parsed: ParsedAnswer, outcome: StepOutcome) -> float: ...


class SeedStream:
    """A random stream given by its seed, made into a generator only when first drawn
    from: most units never draw from their fallback or policy streams, and making a seeded
    generator costs more than a scripted policy's whole step."""

    def __init__(self, *entropy: int) -> None:
        self.entropy = entropy

    @cached_property
    def generator(self) -> np.random.Generator:
        return np.random.default_rng(list(self.entropy))


# A stream as a regime gives it: a generator, or the seed of one.
RandomSource = np.random.Generator | SeedStream


def generator_of(source: RandomSource) -> np.random.Generator:
    return source.generator if isinstance(source, SeedStream) else source


@dataclass(frozen=True)
class FollowTheAnswer:
    """Execute a valid answer; replace anything else by a uniformly random legal action
    (from the episode's fallback stream). The environment's reward is the step's."""

    env: Environment
    fallback: RandomSource

    def action(self, parsed: ParsedAnswer) -> str:
        return parsed.action or self.env.random_action(generator_of(self.fallback))

    def reward(self, parsed: ParsedAnswer, outcome: StepOutcome) -> float:
        return outcome.reward


@dataclass
class LiveSituation:
    """What scripted policies see in a live episode: its environment and policy stream,
    and (in-context RL) the replicate's earlier steps, tallied per action as they end."""

    env: Environment
    source: RandomSource  # the policy stream
    arms: ArmTally = field(default_factory=ArmTally)

    @property
    def rng(self) -> np.random.Generator:
        return generator_of(self.source)

    def legal_actions(self) -> list[str]:
        return self.env.legal_actions()

    def expert_action(self) -> str:
        return self.env.expert_action()

    def random_action(self) -> str:
        return self.env.random_action(self.rng)

    def arm_tally(self) -> ArmTally:
        return self.arms


@dataclass(frozen=True)
class PlayedStep:
    record: StepRecord
    step: Step  # what the model saw, and the action executed
    outcome: StepOutcome


async def play_step(
    env: Environment,
    policy: Policy,
    build_request: RequestBuilder,
    rules: StepRules,
    *,
    situation: Situation,
    execution: StepExecution,
    episode: int,
    step: int,
    unit: UnitKey | None = None,
    facts: dict[str, Any] | None = None,
) -> PlayedStep:
    """Play one step of `env` with `policy`; `situation` is what a scripted policy sees.
    Its record is of `unit` (None: episode `episode` of chain 0), with the regime's `facts`."""
    observation = env.render(rules.observation)
    request = UNSHOWN
    if policy.reads_prompt:
        description = env.legal_actions_description()
        legal = [description] if description else env.legal_actions()
        request = build_request(observation, legal)
        if rules.constrained and not description:  # a finite set of actions to choose from
            request = replace(request, choices=tuple(env.legal_actions()))
    response = await policy.act(request, situation)
    answer = rules.answer_form.read(
        response.text, env.legal_actions, lambda: situation.rng, rules.constrained
    )
    parsed = classify_answer(env, answer, exact=rules.exact_answers)
    action = execution.action(parsed)
    outcome = env.step(action)
    record = StepRecord(
        episode=episode,
        chain=unit.chain if unit is not None else 0,
        unit_kind=unit.kind if unit is not None else UnitKind.EPISODE,
        facts=facts if facts is not None else {},
        step=step,
        prompt_hash=request.prompt_hash if policy.reads_prompt else NO_PROMPT,
        completion=response.text,
        answer=answer,
        kind=parsed.kind,
        action=action,
        reward=execution.reward(parsed, outcome),
        stop_reason=StopReason(response.stop_reason),
        usage=Usage.of(response),
        latency_s=response.latency_s,
        from_cache=response.from_cache,
        cost_usd=policy.cost_usd(response),
    )
    return PlayedStep(record, (observation, action), outcome)


@dataclass
class EpisodeTally:
    """Sums an episode's steps into its record."""

    steps: int = 0
    total_return: float = 0.0
    kinds: Counter[AnswerKind] = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)
    unreadable: int = 0
    cost_usd: float | None = 0.0  # None once any step's cost is unknown

    def add(self, record: StepRecord) -> None:
        self.steps += 1
        self.total_return += record.reward
        self.kinds[record.kind] += 1
        self.unreadable += record.stop_reason == UNREADABLE
        self.usage += record.usage
        if self.cost_usd is not None and record.cost_usd is not None:
            self.cost_usd += record.cost_usd
        else:
            self.cost_usd = None

    def record(
        self,
        episode: int,
        seed: int,
        terminated: bool,
        end_reason: str,
        unit: UnitKey | None = None,
    ) -> EpisodeRecord:
        return EpisodeRecord(
            episode=episode,
            chain=unit.chain if unit is not None else 0,
            unit_kind=unit.kind if unit is not None else UnitKind.EPISODE,
            seed=seed,
            total_return=self.total_return,
            steps=self.steps,
            terminated=terminated,
            valid=self.kinds[AnswerKind.VALID],
            illegal=self.kinds[AnswerKind.ILLEGAL],
            invalid=self.kinds[AnswerKind.INVALID],
            empty=self.kinds[AnswerKind.EMPTY],
            usage=self.usage,
            cost_usd=self.cost_usd if self.steps else None,
            unreadable=self.unreadable,
            end_reason=end_reason,
        )


class EpisodeHooks(ABC):
    """What a regime says about one episode; `play_episode` does the rest.

    `situation` (what scripted policies see) and `execution` (what a step executes and how
    it scores) are read at every step, so a hook may change them between steps.
    """

    rules: StepRules
    situation: Situation
    execution: StepExecution

    @abstractmethod
    def request(self, observation: Observation, legal: Sequence[str]) -> ModelRequest:
        """The step's request, from its observation and what stands for the legal actions."""

    def before_step(self, step: int) -> None:  # noqa: B027 - most regimes need nothing
        """Called before step `step` is asked for (in-context RL chooses its context here)."""

    def step_facts(self) -> dict[str, Any] | None:
        """The regime's facts of the step about to be played (after `before_step`), kept
        with its record; None: none."""
        return None

    def after_step(self, played: PlayedStep) -> StepRecord:
        """The step's record as stored and reported; the regime's bookkeeping goes here."""
        return played.record

    def finish(self, record: EpisodeRecord) -> EpisodeRecord:
        """The episode's record once its environment is closed."""
        return record


async def play_episode(
    env: Environment,
    policy: Policy,
    make_hooks: Callable[[Environment], EpisodeHooks],
    *,
    episode: int,
    seed: int,
    max_steps: int | None,
    on_step: Callable[[StepRecord], None],
    unit: UnitKey | None = None,
) -> EpisodeRecord:
    """Play `env` from `seed` with `policy` until the episode ends or `max_steps` steps
    (None: no limit) cut it, reporting every step; `env` is closed at the end, whatever
    happens. The hooks are made for the guarded environment, which is what they (and the
    scripted policies) must read. Records are of `unit` (None: episode `episode` of chain
    0), made so from the start rather than copied after."""
    guarded = EpisodeGuard(env, max_steps)
    try:
        hooks = make_hooks(guarded)
        tally = EpisodeTally()
        guarded.reset(seed)
        step = 0
        while not guarded.over:
            hooks.before_step(step)
            played = await play_step(
                guarded,
                policy,
                hooks.request,
                hooks.rules,
                situation=hooks.situation,
                execution=hooks.execution,
                episode=episode,
                step=step,
                unit=unit,
                facts=hooks.step_facts(),
            )
            record = hooks.after_step(played)
            tally.add(record)
            on_step(record)
            step += 1
        terminated = not guarded.truncated
        end_reason = (guarded.end_reason() or "ended") if terminated else STEP_LIMIT
    finally:
        guarded.close()
    return hooks.finish(tally.record(episode, seed, terminated, end_reason, unit))


def follow_actions(
    env: Environment, seed: int, actions: Sequence[str], read: Callable[[Environment], Seen]
) -> list[Seen]:
    """What `read` finds before each of `actions`, played again from `seed` (an earlier
    episode rebuilt from its stored actions, no policy asked); `env` is closed at the end."""
    guarded = EpisodeGuard(env)
    seen: list[Seen] = []
    try:
        guarded.reset(seed)
        for action in actions:
            seen.append(read(guarded))
            guarded.step(action)
    finally:
        guarded.close()
    return seen
