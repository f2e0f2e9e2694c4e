"""What a step of in-context RL shows: the replicate's earlier episodes, which of them the
variant chooses (see `lmact.regimes.icrl`), the request they make, and the hooks with which
the episode loop plays its units.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from lmact.envs.base import DEMO_SEED_BASE, Environment, Observation
from lmact.episode import EpisodeHooks, FollowTheAnswer, LiveSituation, PlayedStep, StepRules
from lmact.models.base import ModelRequest, Part, TextPart, merge_text_parts
from lmact.prompting import ACTION_LABEL, observation_parts
from lmact.records import EpisodeRecord, StepRecord
from lmact.regimes.icrl_facts import step_facts

if TYPE_CHECKING:  # the regime's module imports this one
    from lmact.regimes.icrl import IcrlPlan

# Environments whose return is a score rather than success: an episode succeeded when its
# return beats the median of the replicate's earlier ones.
SCORE_VALUED = frozenset({"phoenix", "cheetah"})
_CONTEXT_STREAM, _JOIN_STREAM = 5, 6  # of the run's seed, beside the episodes' own streams


@dataclass(frozen=True)
class PastEpisode:
    index: int  # the episode's place in its replicate
    steps: tuple[tuple[Observation, str, float], ...]  # observation, action, reward
    total: float
    text: tuple[Part, ...]  # as the context shows it
    tokens: int


@dataclass
class _Replicate:
    """What one replicate has played so far, and its approximate contexts."""

    episodes: list[PastEpisode] = field(default_factory=list)
    successful: list[int] = field(default_factory=list)  # indices into `episodes`
    # Every step of the episodes so far, as (action, reward): what bandit baselines read.
    outcomes: list[tuple[str, float]] = field(default_factory=list)
    contexts: list[list[int]] = field(default_factory=list)  # indices into `episodes`
    # The last context prefix built, by what it shows: the steps that show the same
    # context (an episode's steps, an evaluation's examples) send the very same parts.
    prefix: tuple[tuple[object, ...], tuple[Part, ...]] | None = None


def _step_text(
    plan: IcrlPlan, observation: Observation, action: str | None, reward: float | None
) -> list[Part]:
    """A step as the context shows it: its observation, then the action and its reward."""
    parts = observation_parts(observation)
    if action is not None:
        parts.append(TextPart(f"{ACTION_LABEL} {action}\n"))
    if reward is not None:
        parts.append(TextPart(plan.template("reward", reward=f"{reward:g}")))
    return parts


def past_episode(
    plan: IcrlPlan,
    index: int,
    steps: Sequence[tuple[Observation, str, float]],
    gold: Sequence[str] = (),
) -> PastEpisode:
    """An earlier episode and its text; the supervised variant shows the expert's actions
    (`gold`, one per step) instead of those played, and no rewards."""
    total = sum(reward for _, _, reward in steps)
    supervised = plan.config.variant == "supervised"
    parts: list[Part] = [
        TextPart("" if supervised else plan.template("past_episode", number=index + 1))
    ]
    for step, (observation, action, reward) in enumerate(steps):
        if supervised:
            parts += _step_text(plan, observation, gold[step], None)
        else:
            parts += _step_text(plan, observation, action, reward)
    if not supervised:
        parts.append(
            TextPart(plan.template("past_episode_total", number=index + 1, total=f"{total:g}"))
        )
    parts.append(TextPart("\n"))
    return PastEpisode(index, tuple(steps), total, tuple(parts), plan.policy.count_tokens(parts))


def succeeded(environment: str, earlier: Sequence[float], total: float) -> bool:
    """Whether an episode counts as positive for the positive-only variants."""
    if environment in SCORE_VALUED:
        return bool(earlier) and total > statistics.median(earlier)
    return total > 0


def _gold(plan: IcrlPlan, env: Environment) -> str:
    """The expert's action now, if the supervised variant shows it (else not asked for)."""
    return env.expert_action() if plan.config.variant == "supervised" else ""


def _remember(plan: IcrlPlan, state: _Replicate, replicate: int, done: PastEpisode) -> None:
    """Add a finished episode, judged successful or not once, against the episodes before
    it; in approximate contexts, a successful one joins those with room."""
    earlier = [e.total for e in state.episodes]
    state.episodes.append(done)
    state.outcomes += [(action, reward) for _, action, reward in done.steps]
    success = succeeded(plan.task.environment, earlier, done.total)
    if success:
        state.successful.append(len(state.episodes) - 1)
    config = plan.config
    if config.variant != "approximate":
        return
    if not state.contexts:
        state.contexts = [[] for _ in range(config.contexts)]
    if not success:
        return
    rng = np.random.default_rng([config.seed, replicate, done.index, _JOIN_STREAM])
    for context in state.contexts:
        used = sum(state.episodes[i].tokens for i in context)
        room = plan.budget is None or used + done.tokens <= plan.budget
        if rng.random() < config.p_keep and room:
            context.append(len(state.episodes) - 1)


def select_context(plan: IcrlPlan, state: _Replicate, replicate: int, episode: int, step: int
                   ) -> list[int]:  # fmt: skip
    """The earlier episodes (indices, in time order) this step's context holds."""
    config, episodes = plan.config, state.episodes
    if config.variant == "approximate":
        if not state.contexts:
            return []
        rng = np.random.default_rng([config.seed, replicate, episode, step, _CONTEXT_STREAM])
        return list(state.contexts[int(rng.integers(len(state.contexts)))])
    positive_only = config.variant in ("naive-positive", "stochastic")
    candidates = state.successful if positive_only else range(len(episodes))
    if config.variant == "stochastic":
        rng = np.random.default_rng([config.seed, replicate, episode, step, _CONTEXT_STREAM])
        candidates = [i for i in candidates if rng.random() < config.p_keep]
    chosen: list[int] = []
    used = 0
    for index in reversed(candidates):  # the most recent that fit
        if plan.budget is not None and used + episodes[index].tokens > plan.budget:
            break
        chosen.append(index)
        used += episodes[index].tokens
    return sorted(chosen)


def _summary(plan: IcrlPlan, episodes: Sequence[PastEpisode], actions: Sequence[str]) -> str:
    lines = [plan.template("summary")]
    for action in actions:
        rewards = [r for e in episodes for _, a, r in e.steps if a == action]
        mean = f"{sum(rewards) / len(rewards):.2f}" if rewards else "n/a"
        lines.append(plan.template("summary_line", action=action, count=len(rewards), mean=mean))
    return "".join(lines) + "\n"


def context_prefix(
    plan: IcrlPlan, state: _Replicate, chosen: Sequence[int], legal: Sequence[str]
) -> tuple[Part, ...]:
    """The stable prefix of a step's prompt: the preamble and the chosen earlier episodes
    (or their summary), built once for as long as the context stays the same."""
    summary = plan.config.history == "summary"
    key = (tuple(chosen), tuple(legal) if summary else ())
    if state.prefix is not None and state.prefix[0] == key:
        return state.prefix[1]
    shown = [state.episodes[i] for i in chosen]
    prefix: list[Part] = [TextPart(plan.template("preamble"))]
    if summary:
        prefix.append(TextPart(_summary(plan, shown, legal)))
    else:
        prefix += [part for e in shown for part in e.text]
    state.prefix = (key, merge_text_parts(prefix))
    return state.prefix[1]


def icrl_request(
    plan: IcrlPlan,
    stable: tuple[Part, ...],
    current: Sequence[tuple[Observation, str, float]],
    observation: Observation,
    legal: Sequence[str],
    seed: int,
) -> ModelRequest:
    """A step's request: the context's stable prefix (see `context_prefix`), then the
    current episode so far with its rewards."""
    config = plan.config
    now: list[Part] = [TextPart(plan.template("current_episode"))]
    for seen, action, reward in current:
        now += _step_text(plan, seen, action, reward)
    now += _step_text(plan, observation, None, None)
    if config.show_legal_actions:
        now.append(TextPart(plan.template("legal_actions", actions=", ".join(legal))))
    now.append(TextPart(plan.template("instruction")))
    return ModelRequest(
        parts=stable + merge_text_parts(now),
        stable_prefix_parts=len(stable),
        answer_prefix=ACTION_LABEL,
        stop=("\n",),
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        seed=seed,
    )


@dataclass
class HeldOutEvaluation(EpisodeHooks):
    """A held-out evaluation: step k labels held-out example k, a one-step episode of its
    own (seed DEMO_SEED_BASE + k), with the context fixed for the evaluation."""

    plan: IcrlPlan
    state: _Replicate
    chosen: list[int]
    size: int
    rules: StepRules
    situation: LiveSituation
    execution: FollowTheAnswer
    example: int = 0

    def request(self, observation: Observation, legal: Sequence[str]) -> ModelRequest:
        stable = context_prefix(self.plan, self.state, self.chosen, legal)
        seed = DEMO_SEED_BASE + self.example
        return icrl_request(self.plan, stable, (), observation, legal, seed)

    def after_step(self, played: PlayedStep) -> StepRecord:
        self.example += 1
        if self.example < self.size:  # the next example: a new episode, in the same unit
            self.situation.env.reset(DEMO_SEED_BASE + self.example)
        return replace(played.record, facts=step_facts(self.chosen))

    def finish(self, record: EpisodeRecord) -> EpisodeRecord:
        return replace(record, terminated=True, end_reason="evaluated")


@dataclass
class ReplicateEpisode(EpisodeHooks):
    """An episode of a replicate: at every step a context chosen from the replicate's
    earlier episodes, then the current episode so far with its rewards."""

    plan: IcrlPlan
    state: _Replicate
    replicate: int
    index: int  # the episode's place in its replicate
    seed: int
    rules: StepRules
    situation: LiveSituation
    execution: FollowTheAnswer
    chosen: list[int] = field(default_factory=list)
    current: list[tuple[Observation, str, float]] = field(default_factory=list)
    gold: list[str] = field(default_factory=list)

    def request(self, observation: Observation, legal: Sequence[str]) -> ModelRequest:
        stable = context_prefix(self.plan, self.state, self.chosen, legal)
        return icrl_request(self.plan, stable, self.current, observation, legal, self.seed)

    def before_step(self, step: int) -> None:
        self.chosen = select_context(self.plan, self.state, self.replicate, self.index, step)
        self.gold.append(_gold(self.plan, self.situation.env))

    def after_step(self, played: PlayedStep) -> StepRecord:
        record = replace(played.record, facts=step_facts(self.chosen))
        observation, action = played.step
        self.current.append((observation, action, record.reward))
        return record

    def finish(self, record: EpisodeRecord) -> EpisodeRecord:
        done = past_episode(self.plan, self.index, self.current, self.gold)
        _remember(self.plan, self.state, self.replicate, done)
        return record
