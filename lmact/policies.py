"""Policies: what chooses the action at each step, behind one interface.

A model-backed policy asks its model, through the one caller this process keeps for that
model. A scripted policy (random, expert) reads the live situation of the episode and never
the prompt; model clients, for their part, never see an environment. Both answer with a
`ModelResponse`, so every regime plays them through the same step (`lmact.episode`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from numpy.random import Generator

from lmact.budget import Budget
from lmact.errors import LmactError
from lmact.models.base import (
    ModelClient,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    estimate_tokens,
)
from lmact.models.caller import CallCache, CallTally, ModelCaller
from lmact.models.registry import resolve_model


@dataclass
class ArmTally:
    """Per action (a bandit's arm): how often it was played and its summed reward, updated
    one outcome at a time, so that a step reads them without going over every earlier one.
    A reward is added to its arm's sum in the order played (the same float as summing the
    outcomes in order)."""

    pulls: dict[str, int] = field(default_factory=dict)
    wins: dict[str, float] = field(default_factory=dict)

    def add(self, action: str, reward: float) -> None:
        self.pulls[action] = self.pulls.get(action, 0) + 1
        self.wins[action] = self.wins.get(action, 0.0) + reward


class Situation(Protocol):
    """What a scripted policy may look at in the episode it plays."""

    rng: Generator  # the episode's policy stream

    def legal_actions(self) -> list[str]: ...

    # In-context RL: per action, the earlier steps of the replicate; else empty.
    def arm_tally(self) -> ArmTally: ...

    # The action the regime holds as right: the environment's expert's, or the
    # demonstrated one when a demonstration is replayed.
    def expert_action(self) -> str: ...

    def random_action(self) -> str: ...


class Policy(ABC):
    """Chooses actions for the episodes of one run; `tally` counts its model calls.
    `options` limit the prompts it is given (--context-window, --max-images) as a model's
    would, so that a scripted run packs what a model's run packs."""

    name: str
    accepts_images: bool = True
    max_concurrency: int = 64  # episodes worth playing at once
    caller: ModelCaller | None = None  # the model's, for a model-backed policy
    # Whether it is shown the prompt: a scripted policy reads the situation instead, so its
    # steps build no prompt (their cost would grow with an in-context RL context) and record
    # none (an empty prompt hash).
    reads_prompt: bool = True

    @property
    def unconstrained_because(self) -> str | None:
        """Why its answers cannot be held to the legal actions (`--constrained`); None when
        they can (a scripted policy answers a legal action anyway)."""
        return None

    def __init__(self, options: ModelOptions | None = None) -> None:
        self.options = options or ModelOptions()
        self.tally = CallTally()

    @property
    def context_window(self) -> int | None:
        return self.options.context_window

    @property
    def max_images(self) -> int | None:
        return self.options.max_images

    def count_tokens(self, parts: Sequence[Part]) -> int:
        return estimate_tokens(parts)

    def check_ready(self) -> None:  # noqa: B027 - scripted policies need nothing
        """A one-line LmactError if the policy cannot play (e.g. no API key)."""

    def cost_usd(self, response: ModelResponse) -> float | None:
        return 0.0

    @classmethod
    def for_config(cls, options: ModelOptions, config: object) -> Policy:
        """The scripted policy of a run of `config` (whose settings some policies read)."""
        return cls(options)

    @abstractmethod
    async def act(self, request: ModelRequest, situation: Situation) -> ModelResponse:
        """The answer at one step: `request` is what a model is shown."""


class ModelPolicy(Policy):
    """A model, asked through its caller (cache, retries, the connection limit)."""

    def __init__(self, caller: ModelCaller) -> None:
        super().__init__(caller.client.options)
        self.caller = caller
        self.client = caller.client
        self.name = caller.client.name
        self.accepts_images = caller.client.accepts_images
        self.max_concurrency = caller.max_connections

    @property
    def context_window(self) -> int | None:
        return self.client.context_window

    @property
    def max_images(self) -> int | None:
        return self.client.max_images

    def count_tokens(self, parts: Sequence[Part]) -> int:
        return self.client.count_tokens(parts)

    def check_ready(self) -> None:
        self.client.check_ready()

    @property
    def unconstrained_because(self) -> str | None:
        return None if self.client.constrains else self.client.unconstrained_because

    def cost_usd(self, response: ModelResponse) -> float | None:
        return self.client.cost_usd(response)

    async def act(self, request: ModelRequest, situation: Situation) -> ModelResponse:
        return await self.caller.call(request, self.tally)


class RandomPolicy(Policy):
    """A uniformly random legal action from the episode's seeded generator (a continuous
    space draws from the space)."""

    reads_prompt = False
    name = "random"

    async def act(self, request: ModelRequest, situation: Situation) -> ModelResponse:
        return ModelResponse(text=situation.random_action())


class ExpertPolicy(Policy):
    """The expert of the regime: the environment's (minimax, shortest path, …), or the
    demonstrator when a demonstration is replayed."""

    reads_prompt = False
    name = "expert"

    async def act(self, request: ModelRequest, situation: Situation) -> ModelResponse:
        return ModelResponse(text=situation.expert_action())


class BanditPolicy(Policy):
    """A classic bandit algorithm over the legal actions as arms, from the replicate's past
    outcomes (the in-context RL regime's baselines; with no history it tries each arm)."""

    reads_prompt = False
    tries_each_first = True  # each arm once, the first listed first, before `choose`

    async def act(self, request: ModelRequest, situation: Situation) -> ModelResponse:
        arms = situation.legal_actions()
        tally = situation.arm_tally()
        pulls = {arm: tally.pulls.get(arm, 0) for arm in arms}
        if self.tries_each_first:
            untried = [arm for arm in arms if pulls[arm] == 0]
            if untried:
                return ModelResponse(text=untried[0])
        wins = {arm: tally.wins.get(arm, 0.0) for arm in arms}
        # The policy stream is made only for the algorithms that draw (`situation.rng`).
        return ModelResponse(text=self.choose(arms, pulls, wins, lambda: situation.rng))

    @abstractmethod
    def choose(
        self,
        arms: list[str],
        pulls: dict[str, int],
        wins: dict[str, float],
        rng: Callable[[], Generator],
    ) -> str:
        """The arm to pull, from each arm's pulls and summed rewards so far."""


def _best(arms: list[str], value: Callable[[str], float]) -> str:
    """The arm of the highest value, the first listed among equals."""
    return max(arms, key=value)


class GreedyPolicy(BanditPolicy):
    """Each arm once, then always the arm of the best mean reward so far."""

    name = "greedy"
    epsilon = 0.0

    def choose(
        self,
        arms: list[str],
        pulls: dict[str, int],
        wins: dict[str, float],
        rng: Callable[[], Generator],
    ) -> str:
        if self.epsilon and (stream := rng()).random() < self.epsilon:
            return arms[int(stream.integers(len(arms)))]
        return _best(arms, lambda arm: wins[arm] / pulls[arm])


class EpsilonGreedyPolicy(GreedyPolicy):
    """Greedy, but a uniformly random arm with probability 0.1."""

    name = "epsilon-greedy"
    epsilon = 0.1


class Ucb1Policy(BanditPolicy):
    """UCB1 (Auer et al. 2002): the best mean plus sqrt(2 ln t / pulls)."""

    name = "ucb1"

    def choose(
        self,
        arms: list[str],
        pulls: dict[str, int],
        wins: dict[str, float],
        rng: Callable[[], Generator],
    ) -> str:
        total = sum(pulls.values())
        return _best(
            arms, lambda arm: wins[arm] / pulls[arm] + math.sqrt(2 * math.log(total) / pulls[arm])
        )


class UcbPolicy(BanditPolicy):
    """UCB as Krishnamurthy et al. define it (appendix A.1): each arm once, then the best
    mean plus sqrt(C / pulls), C the run's `ucb_c` (default 1). Not `ucb1`'s bonus."""

    name = "ucb"

    def __init__(self, options: ModelOptions | None = None, c: float = 1.0) -> None:
        super().__init__(options)
        self.c = c

    @classmethod
    def for_config(cls, options: ModelOptions, config: object) -> Policy:
        return cls(options, getattr(config, "ucb_c", 1.0))

    def choose(
        self,
        arms: list[str],
        pulls: dict[str, int],
        wins: dict[str, float],
        rng: Callable[[], Generator],
    ) -> str:
        return _best(arms, lambda arm: wins[arm] / pulls[arm] + math.sqrt(self.c / pulls[arm]))


class ThompsonPolicy(BanditPolicy):
    """Thompson sampling with a Beta(1, 1) prior per arm, drawn from the episode's stream."""

    name = "thompson"
    tries_each_first = False  # the prior draws for untried arms too

    def choose(
        self,
        arms: list[str],
        pulls: dict[str, int],
        wins: dict[str, float],
        rng: Callable[[], Generator],
    ) -> str:
        stream = rng()
        draws = {arm: stream.beta(1 + wins[arm], 1 + pulls[arm] - wins[arm]) for arm in arms}
        return _best(arms, draws.__getitem__)


SCRIPTED_POLICIES: dict[str, type[Policy]] = {
    policy.name: policy
    for policy in (
        RandomPolicy,
        ExpertPolicy,
        GreedyPolicy,
        EpsilonGreedyPolicy,
        Ucb1Policy,
        UcbPolicy,
        ThompsonPolicy,
    )
}


class DryRunPolicy(Policy):
    """Stands in for `policy` in a dry run: counts each request's prompt tokens with the
    policy's own counter and answers the expert's action, so that the episode goes on as a
    competent policy's would. Completion tokens are counted at the answer limit; the
    request's stable prefix is counted as cacheable, and each distinct prefix as written
    to a cache once."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy.options)
        self.policy = policy
        self.name = policy.name
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.prefix_tokens = 0
        self.prefix_written_tokens = 0
        # Prefix parts are the same objects at every step of an episode: known by identity
        # (each kept, so that no other part takes its id).
        self._prefixes: dict[tuple[int, ...], tuple[tuple[Part, ...], int]] = {}

    def _prefix_tokens(self, parts: tuple[Part, ...]) -> int:
        key = tuple(id(part) for part in parts)
        if key not in self._prefixes:
            tokens = self.policy.count_tokens(parts) if parts else 0
            self._prefixes[key] = (parts, tokens)
            self.prefix_written_tokens += tokens
        return self._prefixes[key][1]

    async def act(self, request: ModelRequest, situation: Situation) -> ModelResponse:
        prompt_tokens = self.policy.count_tokens(request.parts)
        if request.system:
            prompt_tokens += self.policy.count_tokens([TextPart(request.system)])
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += request.max_tokens
        self.prefix_tokens += self._prefix_tokens(request.parts[: request.stable_prefix_parts])
        return ModelResponse(
            text=situation.expert_action(),
            prompt_tokens=prompt_tokens,
            completion_tokens=request.max_tokens,
        )


class Policies:
    """The policies of one process: one client and one caller per model name, shared by
    every run the process plays; each run gets a policy of its own to count its calls."""

    def __init__(
        self,
        cache: CallCache | None,
        options: ModelOptions | None = None,
        max_connections: int | None = None,
        backoff_s: float = 1.0,
        budget: Budget | None = None,
    ) -> None:
        self.cache = cache
        self.options = options or ModelOptions()
        self.budget = budget or Budget()  # one cap for every model's calls
        self.max_connections = max_connections
        self.backoff_s = backoff_s
        self._callers: dict[str, ModelCaller] = {}

    def register(self, client: ModelClient) -> None:
        """Play `client` for runs of its name (a client made in Python, or a test double)."""
        self._callers[client.name] = ModelCaller(
            client, self.cache, self.max_connections, backoff_s=self.backoff_s,
            budget=self.budget,
        )  # fmt: skip

    def caller(self, name: str) -> ModelCaller:
        if name in SCRIPTED_POLICIES:
            raise LmactError(f"{name!r} is a scripted policy: it calls no model")
        if name not in self._callers:
            self.register(resolve_model(name, self.options))
        return self._callers[name]

    def callers(self) -> list[ModelCaller]:
        """The callers made so far, one per model."""
        return list(self._callers.values())

    def for_run(self, name: str, config: object = None) -> Policy:
        """A policy for one run (of `config`, whose settings a scripted policy may read);
        a name that does not resolve is a one-line error."""
        if name in SCRIPTED_POLICIES:
            return SCRIPTED_POLICIES[name].for_config(self.options, config)
        return ModelPolicy(self.caller(name))

    def close(self) -> None:
        for caller in self._callers.values():
            caller.client.close()
        self._callers.clear()
