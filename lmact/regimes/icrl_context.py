"""What a step of in-context RL shows: the replicate's earlier episodes, which of them the
variant chooses (see `lmact.regimes.icrl`), the request they make, and the hooks with which
the episode loop plays its units.
"""

from __future__ import annotations

import statistics
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lmact.envs.base import DEMO_SEED_BASE, Environment, Observation
from lmact.episode import EpisodeHooks, FollowTheAnswer, LiveSituation, PlayedStep, StepRules
from lmact.models.base import ModelRequest, Part, TextPart, TurnStart, merge_text_parts
from lmact.policies import ArmTally
from lmact.prompting import ACTION_LABEL, OBSERVATION_LABEL, REASONING_LABEL, observation_parts
from lmact.records import EpisodeRecord, StepRecord
from lmact.regimes.icrl_facts import (
    APPROXIMATE,
    NEWEST,
    NEWEST_SUCCESSFUL,
    STOCHASTIC,
    ContextDraw,
    step_facts,
)
from lmact.regimes.icrl_scenario import scenario_request

if TYPE_CHECKING:  # the regime's module imports this one
    from lmact.regimes.icrl import IcrlConfig, IcrlPlan
    from lmact.tasks import TaskSpec

# Environments whose return is a score rather than success: an episode succeeded when its
# return beats the median of the replicate's earlier ones.
SCORE_VALUED = frozenset({"phoenix", "cheetah"})
# Of the run's seed, beside the episodes' own streams: a step's context draws, an approximate
# context's joins, a stochastic context's trimming order.
_CONTEXT_STREAM, _JOIN_STREAM, _TRIM_STREAM = 5, 6, 7


@dataclass(frozen=True)
class PastEpisode:
    index: int  # the episode's place in its replicate
    steps: tuple[tuple[Observation, str, float], ...]  # observation, action, reward
    total: float
    text: tuple[Part, ...]  # as the context shows it (rendered once, kept for every step)
    tokens: int  # of its parts as rendered, counted once


@dataclass
class _Replicate:
    """What one replicate has played so far, kept so that a step's context is found
    without going over every earlier episode again."""

    episodes: list[PastEpisode] = field(default_factory=list)
    successful: list[int] = field(default_factory=list)  # indices into `episodes`
    # Every step of the episodes so far, per action: what bandit baselines read.
    arms: ArmTally = field(default_factory=ArmTally)
    contexts: list[list[int]] = field(default_factory=list)  # indices into `episodes`
    context_tokens: list[int] = field(default_factory=list)  # each approximate context's
    # The tokens of the first i episodes (of all, of the successful ones), at i.
    tokens_before: list[int] = field(default_factory=lambda: [0])
    successful_tokens_before: list[int] = field(default_factory=lambda: [0])
    # Each episode's text, while every episode is text alone (no image): a context is then
    # the preamble and these joined.
    texts: list[str] = field(default_factory=list)
    plain: bool = True
    # The last context prefix built, by what it shows: the steps that show the same
    # context (an episode's steps, an evaluation's examples) send the very same parts.
    prefix: tuple[tuple[object, ...], tuple[Part, ...]] | None = None

    def arm_means(self, chosen: Sequence[int], actions: Sequence[str]
                  ) -> list[tuple[str, int, str]]:  # fmt: skip
        """Per action, how often the chosen episodes played it and its mean reward (two
        decimals, "n/a" never played): from the replicate's tally when they are all of its
        episodes, else summed over them."""
        if len(chosen) == len(self.episodes):  # distinct earlier indices: all of them
            tally = self.arms
        else:
            tally = ArmTally()
            for index in chosen:
                for _, action, reward in self.episodes[index].steps:
                    tally.add(action, reward)
        counts = [(action, tally.pulls.get(action, 0)) for action in actions]
        return [(a, n, f"{tally.wins[a] / n:.2f}" if n else "n/a") for a, n in counts]


@dataclass(frozen=True)
class Drawn:
    """A step's context: the earlier episodes it holds (indices, in time order), and how
    they were drawn, as the step records it."""

    shown: list[int]
    draw: ContextDraw


def run_environment(config: IcrlConfig, task: TaskSpec) -> Environment:
    """An environment of the run's task, as the run plays it (its buttons, its labels)."""
    overrides: dict[str, Any] = {}
    if config.buttons == "fixed":
        overrides["buttons"] = "fixed"
    if config.labels == "unlisted":
        overrides["list_labels"] = False
    return task.make_environment(**overrides)


def _step_text(
    plan: IcrlPlan, observation: Observation, action: str | None, reward: float | None
) -> list[Part]:
    """A step as the context shows it: its observation, then the action and its reward; in
    a conversation, the observation a user turn, the action an assistant turn and how it
    went a user turn."""
    if plan.config.layout == "conversation":
        return _step_turns(plan, observation, action, reward)
    parts = observation_parts(observation)
    if action is not None:
        parts.append(TextPart(f"{ACTION_LABEL} {action}\n"))
    if reward is not None:
        parts.append(TextPart(plan.template("reward", reward=f"{reward:g}")))
    return parts


def _step_turns(
    plan: IcrlPlan, observation: Observation, action: str | None, reward: float | None
) -> list[Part]:
    parts: list[Part] = [TurnStart("user"), *observation_parts(observation)]
    if action is not None:
        parts += [TurnStart("assistant"), TextPart(f"{ACTION_LABEL} {action}\n")]
    if reward is not None:
        parts += [TurnStart("user"), TextPart(_feedback(plan, reward) + "\n")]
    return parts


def _feedback(plan: IcrlPlan, reward: float) -> str:
    """How a step went, in a conversation: right or wrong where the reward says which (a
    label), else the reward."""
    if plan.task.environment == "classification":
        name = "feedback_right" if reward > 0 else "feedback_wrong"
        return plan.template(name, "conversation").strip()
    return plan.template("feedback_reward", "conversation", reward=f"{reward:g}").strip()


def past_episode(
    plan: IcrlPlan,
    index: int,
    steps: Sequence[tuple[Observation, str, float]],
    gold: Sequence[str] = (),
) -> PastEpisode:
    """An earlier episode and its text; the supervised variant shows the expert's actions
    (`gold`, one per step) instead of those played, and no rewards. A run whose policy is
    shown no prompt and whose contexts have no budget needs neither text nor tokens."""
    total = sum(reward for _, _, reward in steps)
    if not plan.policy.reads_prompt and plan.budget is None:
        return PastEpisode(index, tuple(steps), total, (), 0)
    supervised = plan.config.variant == "supervised"
    # A conversation shows one-step episodes (an input, a round) as exchanges alone.
    bare = supervised or (plan.config.layout == "conversation" and plan.config.max_steps == 1)
    parts: list[Part] = [TurnStart("user")] if plan.config.layout == "conversation" else []
    parts.append(TextPart("" if bare else plan.template("past_episode", number=index + 1)))
    for step, (observation, action, reward) in enumerate(steps):
        if supervised:
            parts += _step_text(plan, observation, gold[step], None)
        else:
            parts += _step_text(plan, observation, action, reward)
    if not bare:
        parts.append(
            TextPart(plan.template("past_episode_total", number=index + 1, total=f"{total:g}"))
        )
    if not bare or plan.config.layout != "conversation":
        parts.append(TextPart("\n"))
    # Counted as rendered, before its text is joined: the count a budget has always used.
    tokens = plan.policy.count_tokens(parts)
    return PastEpisode(index, tuple(steps), total, merge_text_parts(parts), tokens)


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
    environment = plan.task.environment
    # Only a score-valued task compares with the earlier returns (their median).
    earlier = [e.total for e in state.episodes] if environment in SCORE_VALUED else []
    success = succeeded(environment, earlier, done.total)
    state.episodes.append(done)
    for _, action, reward in done.steps:
        state.arms.add(action, reward)
    state.tokens_before.append(state.tokens_before[-1] + done.tokens)
    if success:
        state.successful.append(len(state.episodes) - 1)
        state.successful_tokens_before.append(state.successful_tokens_before[-1] + done.tokens)
    state.plain = state.plain and all(isinstance(part, TextPart) for part in done.text)
    if state.plain:
        state.texts.append("".join(part.text for part in done.text if isinstance(part, TextPart)))
    config = plan.config
    if config.variant != "approximate":
        return
    if not state.contexts:
        state.contexts = [[] for _ in range(config.contexts)]
        state.context_tokens = [0] * config.contexts
    if not success:
        return
    rng = np.random.default_rng([config.seed, replicate, done.index, _JOIN_STREAM])
    for k, context in enumerate(state.contexts):
        room = (plan.budget is None or state.context_tokens[k] + done.tokens <= plan.budget) and (
            config.max_examples is None or len(context) < config.max_examples
        )
        if rng.random() < config.p_keep and room:  # drawn for every context, with room or not
            context.append(len(state.episodes) - 1)
            state.context_tokens[k] += done.tokens


def draw_context(plan: IcrlPlan, state: _Replicate, replicate: int, episode: int, step: int
                 ) -> Drawn:  # fmt: skip
    """The earlier episodes this step's context holds, and how they were drawn: the newest
    that fit the budget, walked back from the newest, so that a step costs what its
    context holds whatever the replicate's length."""
    config, before = plan.config, len(state.episodes)
    words = [config.seed, replicate, episode, step, _CONTEXT_STREAM]
    if config.variant == "approximate":
        if not state.contexts:
            return Drawn([], ContextDraw(APPROXIMATE, 0, before))
        drawn = int(np.random.default_rng(words).integers(len(state.contexts)))
        shown = list(state.contexts[drawn])
        return Drawn(shown, ContextDraw(APPROXIMATE, len(shown), before, drawn))
    cap = config.max_examples
    if config.variant == "stochastic":
        kept = _kept(state.successful, config.p_keep, words)
        rule, shown = STOCHASTIC, _uniform_that_fit(state.episodes, plan.budget, cap, kept, words)
    elif config.variant == "naive-positive":
        rule = NEWEST_SUCCESSFUL
        shown = _newest_run(state.successful, state.successful_tokens_before, plan.budget, cap)
    else:
        shown = _newest_run(range(before), state.tokens_before, plan.budget, cap)
        rule = NEWEST
    return Drawn(shown, ContextDraw(rule, len(shown), before))


def select_context(plan: IcrlPlan, state: _Replicate, replicate: int, episode: int, step: int
                   ) -> list[int]:  # fmt: skip
    """The earlier episodes (indices, in time order) this step's context holds."""
    return draw_context(plan, state, replicate, episode, step).shown


def _uniform_that_fit(
    episodes: Sequence[PastEpisode],
    budget: int | None,
    cap: int | None,
    kept: list[int],
    words: list[int],
) -> list[int]:
    """The kept episodes, in time order, when they all fit the budget (tokens) and the cap
    (episodes); else a uniformly random subset of them that does, as Monea et al.'s
    stochastic variant trims: taken in a random order (drawn from the step's stream after
    its keep draws) until the next one would not fit."""
    tokens = [episodes[index].tokens for index in kept]
    fits = (budget is None or sum(tokens) <= budget) and (cap is None or len(kept) <= cap)
    if fits:
        return kept
    order = np.random.default_rng([*words, _TRIM_STREAM]).permutation(len(kept))
    chosen: list[int] = []
    used = 0
    for position in order:
        cost = tokens[int(position)]
        if (budget is not None and used + cost > budget) or len(chosen) == cap:
            break
        chosen.append(kept[int(position)])
        used += cost
    return sorted(chosen)


def _newest_run(
    candidates: Sequence[int], tokens_before: list[int], budget: int | None, cap: int | None
) -> list[int]:
    """The newest candidates that fit the budget and the cap (episodes), in time order,
    found by bisecting their running token counts (`tokens_before[i]`: of the first i
    candidates): what walking back from the newest until one does not fit takes, as no
    count is negative."""
    count = len(candidates)
    start = 0
    if budget is not None:
        start = min(bisect_left(tokens_before, tokens_before[count] - budget), count)
    if cap is not None:
        start = max(start, count - cap)
    return list(candidates[start:])


def _kept(successful: Sequence[int], p_keep: float, words: list[int]) -> list[int]:
    """The successful episodes each kept with probability `p_keep`, in time order: draw i
    of the generator seeded with `words` decides the i-th successful episode."""
    draws = np.random.default_rng(words).random(len(successful))
    return [successful[int(i)] for i in np.flatnonzero(draws < p_keep)]


def _summary(plan: IcrlPlan, state: _Replicate, chosen: Sequence[int], actions: Sequence[str]
             ) -> str:  # fmt: skip
    """Per action, how often the chosen episodes played it and its mean reward: from the
    replicate's tally when they are all of its episodes, else summed over them in order."""
    lines = [plan.template("summary")]
    for action, count, mean in state.arm_means(chosen, actions):
        lines.append(plan.template("summary_line", action=action, count=count, mean=mean))
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
    # A conversation's preamble is its system message (`icrl_request`).
    conversation = plan.config.layout == "conversation"
    prefix: list[Part] = [TextPart("" if conversation else plan.template("preamble"))]
    if summary:
        prefix.append(TextPart(_summary(plan, state, chosen, legal)))
    elif state.plain:  # one string join, however many episodes the context holds
        prefix.append(TextPart("".join(map(state.texts.__getitem__, chosen))))
    else:
        prefix += [part for i in chosen for part in state.episodes[i].text]
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
    current episode so far with its rewards; in a conversation, the instructions are the
    system message."""
    config = plan.config
    conversation = config.layout == "conversation"
    now: list[Part] = [TurnStart("user")] if conversation else []
    if not (conversation and config.max_steps == 1):
        now.append(TextPart(plan.template("current_episode")))
    for seen, action, reward in current:
        now += _step_text(plan, seen, action, reward)
    now += _step_text(plan, observation, None, None)
    if config.show_legal_actions:
        now.append(TextPart(plan.template("legal_actions", actions=", ".join(legal))))
    cot = config.chain_of_thought
    system = ""
    if conversation:
        system = plan.template("preamble_cot" if cot else "preamble", "conversation")
    else:
        now.append(TextPart(plan.template("instruction", "reasoning" if cot else "")))
    return ModelRequest(
        parts=stable + merge_text_parts(now),
        system=system,
        stable_prefix_parts=len(stable),
        answer_prefix=REASONING_LABEL if cot else ACTION_LABEL,
        # Reasoning stops before a completion model would invent the next observation.
        stop=(f"\n{OBSERVATION_LABEL}", "\n\n") if cot else ("\n",),
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
    chosen: Drawn
    size: int
    rules: StepRules
    situation: LiveSituation
    execution: FollowTheAnswer
    example: int = 0

    def request(self, observation: Observation, legal: Sequence[str]) -> ModelRequest:
        stable = context_prefix(self.plan, self.state, self.chosen.shown, legal)
        seed = DEMO_SEED_BASE + self.example
        return icrl_request(self.plan, stable, (), observation, legal, seed)

    def step_facts(self) -> dict[str, Any]:
        return step_facts(self.chosen.draw)

    def after_step(self, played: PlayedStep) -> StepRecord:
        self.example += 1
        if self.example < self.size:  # the next example: a new episode, in the same unit
            self.situation.env.reset(DEMO_SEED_BASE + self.example)
        return played.record

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
    chosen: Drawn = field(default_factory=lambda: Drawn([], ContextDraw(NEWEST, 0, 0)))
    current: list[tuple[Observation, str, float]] = field(default_factory=list)
    gold: list[str] = field(default_factory=list)

    def request(self, observation: Observation, legal: Sequence[str]) -> ModelRequest:
        if self.plan.config.scenario is not None:
            shown, number = self.chosen.shown, self.index + 1
            return scenario_request(self.plan, self.state, shown, legal, number, self.seed)
        stable = context_prefix(self.plan, self.state, self.chosen.shown, legal)
        return icrl_request(self.plan, stable, self.current, observation, legal, self.seed)

    def before_step(self, step: int) -> None:
        self.chosen = draw_context(self.plan, self.state, self.replicate, self.index, step)
        self.gold.append(_gold(self.plan, self.situation.env))

    def step_facts(self) -> dict[str, Any]:
        return step_facts(self.chosen.draw)

    def after_step(self, played: PlayedStep) -> StepRecord:
        observation, action = played.step
        self.current.append((observation, action, played.record.reward))
        return played.record

    def finish(self, record: EpisodeRecord) -> EpisodeRecord:
        done = past_episode(self.plan, self.index, self.current, self.gold)
        _remember(self.plan, self.state, self.replicate, done)
        return record
