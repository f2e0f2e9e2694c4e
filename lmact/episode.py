"""One step of any episode, and the tally of an episode's steps, shared by every regime.

A step: render the observation, build the request (the regime says how), call the model,
extract the answer, classify it, replace what is not a valid action with a random legal one,
step the environment, record. Nothing a model writes is evaluated: the environment's parser
decides what an answer is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lmact.envs.base import AnswerKind, Environment, Observation, StepOutcome, classify_answer
from lmact.models.base import UNREADABLE, ModelRequest, PolicyOracle
from lmact.models.caller import ModelCaller
from lmact.prompting import Step, extract_answer
from lmact.store import EpisodeRecord, StepRecord

# Builds a step's request from its observation and what stands for the legal actions.
RequestBuilder = Callable[[Observation, Sequence[str]], ModelRequest]


@dataclass(frozen=True)
class StepRules:
    observation: str  # the format the environment renders
    exact_answers: bool = False  # only the legal actions as listed are valid (--answer-match)


@dataclass(frozen=True)
class PlayedStep:
    record: StepRecord
    step: Step  # what the model saw, and the action executed
    outcome: StepOutcome


async def play_step(
    env: Environment,
    caller: ModelCaller,
    build_request: RequestBuilder,
    rules: StepRules,
    *,
    oracle: PolicyOracle,
    fallback_rng: np.random.Generator,
    episode: int,
    step: int,
) -> PlayedStep:
    """Play one step of `env` with the model behind `caller`."""
    observation = env.render(rules.observation)
    description = env.legal_actions_description()
    request = build_request(observation, [description] if description else env.legal_actions())
    response = await caller.call(request, oracle)
    answer = extract_answer(response.text)
    parsed = classify_answer(env, answer, exact=rules.exact_answers)
    # Anything but a valid action (which alone has one) is replaced by a uniformly random
    # legal action.
    action = parsed.action or env.random_action(fallback_rng)
    outcome = env.step(action)
    record = StepRecord(
        episode=episode,
        step=step,
        prompt_hash=request.prompt_hash,
        completion=response.text,
        answer=answer,
        kind=parsed.kind.value,
        action=action,
        reward=outcome.reward,
        stop_reason=response.stop_reason,
        prompt_tokens=response.prompt_tokens,
        completion_tokens=response.completion_tokens,
        cached_tokens=response.cached_tokens,
        latency_s=response.latency_s,
        from_cache=response.from_cache,
        cache_write_tokens=response.cache_write_tokens,
        reasoning_tokens=response.reasoning_tokens,
        cost_usd=caller.client.cost_usd(response),
    )
    return PlayedStep(record, (observation, action), outcome)


# The token counts of a step, summed over its episode.
_USAGE = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


@dataclass
class EpisodeTally:
    """Sums an episode's steps into its record."""

    steps: int = 0
    total_return: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    cost_usd: float | None = 0.0  # None once any step's cost is unknown

    def add(self, record: StepRecord) -> None:
        self.steps += 1
        self.total_return += record.reward
        self.kinds[record.kind] += 1
        self.unreadable += record.stop_reason == UNREADABLE
        for name in _USAGE:
            self.tokens[name] += getattr(record, name)
        if self.cost_usd is not None and record.cost_usd is not None:
            self.cost_usd += record.cost_usd
        else:
            self.cost_usd = None

    def record(self, episode: int, seed: int, terminated: bool, end_reason: str) -> EpisodeRecord:
        return EpisodeRecord(
            episode=episode,
            seed=seed,
            total_return=self.total_return,
            steps=self.steps,
            terminated=terminated,
            valid=self.kinds[AnswerKind.VALID.value],
            illegal=self.kinds[AnswerKind.ILLEGAL.value],
            invalid=self.kinds[AnswerKind.INVALID.value],
            empty=self.kinds[AnswerKind.EMPTY.value],
            prompt_tokens=self.tokens["prompt_tokens"],
            completion_tokens=self.tokens["completion_tokens"],
            cached_tokens=self.tokens["cached_tokens"],
            cache_write_tokens=self.tokens["cache_write_tokens"],
            reasoning_tokens=self.tokens["reasoning_tokens"],
            cost_usd=self.cost_usd if self.steps else None,
            unreadable=self.unreadable,
            end_reason=end_reason,
        )
