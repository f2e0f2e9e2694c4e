"""In-context reinforcement learning: no expert in the prompt; the model plays episode after
episode, and its own earlier episodes, with their rewards, are what the context holds.

A run is R replicates (replicate r starts from seed `seed + r`), each a chain of E episodes
played in order; replicates run concurrently. Replicate r is chain r of the run's units:
its episode e is unit (r, e), its held-out evaluation k unit (r, k, evaluation). Which
earlier episodes a step's context holds is the variant's choice (after Monea et al.),
recorded with the step (`lmact.regimes.icrl_facts`):

- `naive`: every earlier episode, the most recent that fit the budget;
- `naive-positive`: only earlier episodes that succeeded, the most recent that fit;
- `stochastic`: successful episodes, each kept with probability `p_keep`, drawn afresh at
  every step from a seeded generator, in time order, cut to the budget;
- `approximate`: `contexts` contexts that only grow: each new successful episode joins each
  context that has room with probability `p_keep`; each step draws one context uniformly;
- `supervised` (the upper bound): every earlier episode as naive, but showing the expert's
  action at each step (the gold label, in classification) instead of the one played.

An episode succeeded when its return is above zero (a win, a solved puzzle, a paying
button); for tasks whose return is a score (Phoenix, cheetah) when it is above the median of
the replicate's earlier returns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from string import Template
from typing import Any, ClassVar

from lmact.declarations import Measure
from lmact.demos import DEMO_SEED_BASE
from lmact.envs.bandit import ROUND_STRIDE
from lmact.envs.base import Environment
from lmact.episode import (
    FollowTheAnswer,
    LiveSituation,
    SeedStream,
    StepRules,
    follow_actions,
    play_episode,
)
from lmact.errors import LmactError
from lmact.policies import ArmTally, Policy
from lmact.prompting import AnswerForm, template
from lmact.records import EpisodeRecord, StepRecord, UnitKey, UnitKind
from lmact.regimes.base import PreparedRun, Regime, RunContext, RunFacts, StepColumns
from lmact.regimes.headline import Headline
from lmact.regimes.icrl_config import (
    _FALLBACK_STREAM,
    _POLICY_STREAM,
    BUTTONS,
    CONTEXTS,
    EVAL_EVERY,
    EVAL_SIZE,
    EVALUATION_OFFSET,
    HISTORY,
    LABELS,
    LAYOUT,
    MAX_EXAMPLES,
    P_KEEP,
    REPLICATE_STRIDE,
    REPLICATES,
    RESET,
    TEMPERATURE,
    UCB_C,
    VARIANT,
    WINDOW_SHARE,
    IcrlConfig,
    UnitSeed,
    _check_inputs_last,
    icrl_prompts,
    make_icrl_config,
)
from lmact.regimes.icrl_config import (
    ADDED_TEMPLATE_FIELDS as ADDED_TEMPLATE_FIELDS,  # defined here before
)
from lmact.regimes.icrl_config import DEFAULT_EVAL_SIZE as DEFAULT_EVAL_SIZE  # defined here before
from lmact.regimes.icrl_config import (
    DEFAULT_REPLICATES as DEFAULT_REPLICATES,  # defined here before
)
from lmact.regimes.icrl_config import HISTORIES as HISTORIES  # defined here before
from lmact.regimes.icrl_config import LAYOUTS as LAYOUTS  # defined here before
from lmact.regimes.icrl_config import RESETS as RESETS  # defined here before
from lmact.regimes.icrl_config import TEMPLATE_FIELDS as TEMPLATE_FIELDS  # defined here before
from lmact.regimes.icrl_config import VARIANTS as VARIANTS  # defined here before
from lmact.regimes.icrl_context import (
    HeldOutEvaluation,
    ReplicateEpisode,
    _gold,
    _remember,
    _Replicate,
    draw_context,
    past_episode,
    run_environment,
)
from lmact.regimes.icrl_context import PastEpisode as PastEpisode  # where it was defined before
from lmact.regimes.icrl_context import select_context as select_context
from lmact.regimes.icrl_facts import describe_context
from lmact.regimes.icrl_measures import by_replicate as by_replicate  # defined here before
from lmact.regimes.icrl_measures import context_lengths as context_lengths
from lmact.regimes.icrl_measures import icrl_measures
from lmact.regimes.icrl_scenario import (
    SCENARIO_OPTIONS,
    answer_form,
)
from lmact.regimes.prompted import (
    MAX_STEPS,
    TOKEN_BUDGET,
    check_sees,
    step_rules,
)
from lmact.scoring import EpisodeResult
from lmact.store import RunRecord
from lmact.tasks import TaskSpec


@dataclass
class IcrlPlan:
    config: IcrlConfig
    task: TaskSpec
    policy: Policy
    budget: int | None
    stored_steps: Callable[[UnitKey], list[StepRecord]]
    # The replicates being played, each dropped after its last unit (`last`) is played.
    replicates: dict[int, _Replicate] = field(default_factory=dict)
    last: dict[int, UnitKey] = field(default_factory=dict)
    templates: dict[str, Template] = field(default_factory=dict)  # each read once a run

    def template(self, name: str, folder: str = "", **values: object) -> str:
        """The in-context RL template `name`, of the subfolder `folder` if given, filled."""
        key = f"{folder}/{name}"
        if key not in self.templates:
            path = icrl_prompts(self.config.prompts_dir) / folder
            self.templates[key] = template(name, path)
        return self.templates[key].substitute(values)

    def scenario_template(self, name: str, **values: object) -> str:
        assert self.config.scenario is not None
        return self.template(name, self.config.scenario, **values)

    def played(self, unit: UnitKey) -> None:
        """`unit` is over: its replicate's state goes once nothing after it is to be played."""
        if self.last.get(unit.chain) == unit:
            self.replicates.pop(unit.chain, None)


class IcrlRegime(Regime[IcrlConfig, IcrlPlan]):
    name = "icrl"
    config_type = IcrlConfig
    # Whether a task is a bandit, by (name, spec hash): shared, as a spec hash names one spec.
    _bandit_tasks: ClassVar[dict[tuple[str, str], bool]] = {}
    help = (
        "no demonstrations, the model plays episode after episode with its own earlier "
        "episodes and rewards in context (see --variant)"
    )
    options = (VARIANT, P_KEEP, CONTEXTS, REPLICATES, HISTORY, RESET, TEMPERATURE, EVAL_EVERY,
               EVAL_SIZE, UCB_C, MAX_EXAMPLES, BUTTONS, LABELS, LAYOUT, *SCENARIO_OPTIONS,
               TOKEN_BUDGET, MAX_STEPS)  # fmt: skip
    measures_shown = (
        Measure("final_return", "return, last 10% of episodes"),
        Measure("final_normalized", "normalized, last 10%"),
        Measure("regret", "regret (gap x pulls of worse arms)"),
        Measure("suffix_failure", "suffix failures (never the best arm in the second half)"),
        Measure("k_min_frac", "K x least-pulled arm's share", column=False),
    )
    headline = Headline(
        "final measures",
        "final_normalized",
        measures=(
            "final_return", "final_normalized", "regret", "suffix_failure", "k_min_frac",
            "greedy_frac", "median_reward", "held_out_accuracy",
        ),
    )  # fmt: skip

    def configure(self, task: str, **fields: Any) -> IcrlConfig:
        return make_icrl_config(task, **fields)

    def prepare(
        self, config: IcrlConfig, policy: Policy, context: RunContext, units: Sequence[UnitKey]
    ) -> PreparedRun[IcrlConfig, IcrlPlan]:
        task = config.task_spec()
        check_sees(task, config.observation, policy)
        budget = config.token_budget
        if budget is None and policy.context_window is not None:
            budget = int(policy.context_window * WINDOW_SHARE) - config.max_tokens
        plan = IcrlPlan(config, task, policy, budget, context.stored_steps)
        plan.last = {unit.chain: unit for unit in units}  # units come in the order played
        return PreparedRun(config, policy, RunFacts(details={"budget": budget}), plan)

    def units(self, config: IcrlConfig, episodes: int) -> list[UnitKey]:
        if episodes > EVALUATION_OFFSET:
            raise LmactError(f"--episodes must be at most {EVALUATION_OFFSET} in --regime icrl")
        _check_inputs_last(config, episodes)
        return super().units(config, episodes)

    def chains(self, config: IcrlConfig, episodes: int) -> Iterator[list[UnitKey]]:
        """One chain per replicate: its episodes in order, each held-out evaluation just
        before the episode whose context it uses."""
        indices = [unit.index for unit in self.units(config, episodes)]
        every = config.eval_every
        for replicate in range(config.replicates):
            chain = []
            for episode in indices:
                if every is not None and episode % every == 0:
                    chain.append(UnitKey(replicate, episode // every, UnitKind.EVALUATION))
                chain.append(UnitKey(replicate, episode))
            yield chain

    def run_length(self, config: IcrlConfig, unit: UnitKey) -> int:
        if unit.kind is UnitKind.EVALUATION:  # played before the episode whose context it uses
            return unit.index * (config.eval_every or 1) + 1
        return unit.index + 1

    def unit_label(self, config: IcrlConfig, unit: UnitKey) -> str:
        if unit.kind is UnitKind.EVALUATION:
            return f"replicate {unit.chain} · held-out evaluation {unit.index}"
        return f"replicate {unit.chain} · episode {unit.index}"

    def _is_bandit(self, config: IcrlConfig) -> bool:
        """Whether the run's task is a bandit: looked up once per task spec, not per unit."""
        key = (config.task, config.spec_hash)
        if key not in self._bandit_tasks:
            self._bandit_tasks[key] = config.task_spec().environment == "bandit"
        return self._bandit_tasks[key]

    def unit_seed(self, config: IcrlConfig, unit: UnitKey) -> int:
        """An episode's start; for an evaluation, the first held-out example's seed."""
        replicate, episode = unit.chain, unit.index
        if unit.kind is UnitKind.EVALUATION:
            return DEMO_SEED_BASE
        start = config.seed + replicate
        if self._is_bandit(config):
            # One instance per replicate (or per episode, fresh); the round draws its reward.
            instance = start * REPLICATE_STRIDE + episode if config.reset == "fresh" else start
            return instance * ROUND_STRIDE + episode % ROUND_STRIDE
        seed = start * REPLICATE_STRIDE + episode if config.reset == "fresh" else start
        if seed >= DEMO_SEED_BASE:
            raise LmactError(
                f"test seed {seed} is not below {DEMO_SEED_BASE}, where the demonstration "
                "seeds start; use a smaller --seed, fewer --replicates or --reset same"
            )
        return seed

    async def play(
        self,
        prepared: PreparedRun[IcrlConfig, IcrlPlan],
        policy: Policy,
        unit: UnitKey,
        on_step: Callable[[StepRecord], None],
    ) -> EpisodeRecord:
        try:
            if unit.kind is UnitKind.EVALUATION:
                return await evaluate_held_out(prepared.plan, policy, unit, on_step, self.unit_seed)
            return await play_icrl_episode(prepared.plan, policy, unit, on_step, self.unit_seed)
        finally:  # played or failed, nothing after it in its chain builds on the state here
            prepared.plan.played(unit)

    def baseline(self, config: IcrlConfig, policy: str) -> IcrlConfig:
        """Scripted policies read the situation, not the prompt: prompt settings take their
        defaults, so runs of one task, seeds and reset rule share their baselines."""
        return make_icrl_config(
            config.task, model=policy, reset=config.reset, max_steps=config.max_steps,
            replicates=config.replicates, seed=config.seed, observation=config.observation,
            buttons=config.buttons or "drawn", task_options=config.task_options,
        )  # fmt: skip

    def summary_fields(self, config: IcrlConfig, facts: RunFacts) -> dict[str, Any]:
        return {
            "variant": config.variant,
            "history": config.history,
            "reset": config.reset,
            "p_keep": config.p_keep,
            "contexts": config.contexts,
            "temperature": config.temperature,
            "replicates": config.replicates,
            "token_budget": facts.details.get("budget"),
            "ucb_c": config.ucb_c,
        }

    def measures(
        self,
        config: IcrlConfig,
        episodes: Sequence[EpisodeResult],
        steps: StepColumns,
        baselines: dict[str, Sequence[EpisodeResult]],
        wanted: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """The learning curve across replicates, the final 10% mean (normalized like an
        imitation score), regret against the expert, and for bandits Krishnamurthy et
        al.'s measures; what the contexts held, per episode index (`icrl_measures`)."""
        return icrl_measures(config, episodes, steps, baselines, wanted)

    def report_fields(self, config: IcrlConfig, run: RunRecord) -> dict[str, Any]:
        return {
            "past_actions": config.past_actions,
            "answer_match": config.answer_match,
            "history": config.history,
            "token_budget": config.token_budget,
            "ucb_c": config.ucb_c,
        }

    def answer_form(self, config: IcrlConfig) -> AnswerForm:
        if config.scenario is None:
            return super().answer_form(config)
        return answer_form(config.scenario, config.returns)

    def describe(self, facts: RunFacts) -> str:
        return "its own earlier episodes in context"

    def context_label(self, config: IcrlConfig, step: StepRecord) -> str | None:
        described = describe_context(step)
        return None if described is None else f"context of step {step.step}: {described}"


def _history(plan: IcrlPlan, replicate: int, episode: int, seed_of: UnitSeed) -> _Replicate:
    """The replicate's episodes before `episode`: played here, or read back from the store
    (observations rendered again by replaying the stored actions from the episode's seed)."""
    state = plan.replicates.get(replicate)
    if state is None:  # a new replicate, or one resumed: its earlier episodes read back below
        state = plan.replicates[replicate] = _Replicate()
    for index in range(len(state.episodes), episode):
        unit = UnitKey(replicate, index)
        steps, seed = plan.stored_steps(unit), seed_of(plan.config, unit)
        seen = follow_actions(
            run_environment(plan.config, plan.task),
            seed,
            [step.action for step in steps],
            lambda env: (env.render(plan.config.observation), _gold(plan, env)),
        )
        replayed = [(shown, s.action, s.reward) for (shown, _), s in zip(seen, steps, strict=True)]
        gold = [expert for _, expert in seen]
        _remember(plan, state, replicate, past_episode(plan, index, replayed, gold))
    return state


def _live(
    plan: IcrlPlan, env: Environment, replicate: int, index: int, arms: ArmTally
) -> tuple[LiveSituation, FollowTheAnswer]:
    """What a unit's scripted policies see and how its steps are executed, each drawing from
    its stream of the unit's seed (the scripted policies', the fallback for answers that are
    not valid)."""
    streams = (plan.config.seed, replicate, index)
    execution = FollowTheAnswer(env, SeedStream(*streams, _FALLBACK_STREAM))
    situation = LiveSituation(env, SeedStream(*streams, _POLICY_STREAM), arms)
    return situation, execution


def _rules(config: IcrlConfig) -> StepRules:
    rules = step_rules(config)
    if config.scenario is None:
        return rules
    return replace(rules, answer_form=answer_form(config.scenario, config.returns))


async def evaluate_held_out(
    plan: IcrlPlan,
    policy: Policy,
    unit: UnitKey,
    on_step: Callable[[StepRecord], None],
    seed_of: UnitSeed,
) -> EpisodeRecord:
    """Label the first `eval_size` held-out examples, each with the context that the
    evaluation's episode has at its first step; nothing of it enters a context."""
    config = plan.config
    replicate, offset = unit.chain, EVALUATION_OFFSET + unit.index
    episode = unit.index * (config.eval_every or 1)
    state = _history(plan, replicate, episode, seed_of)
    chosen = draw_context(plan, state, replicate, episode, 0)

    def hooks(env: Environment) -> HeldOutEvaluation:
        situation, execution = _live(plan, env, replicate, offset, ArmTally())
        return HeldOutEvaluation(
            plan, state, chosen, config.eval_size, _rules(config), situation, execution
        )

    return await play_episode(
        run_environment(plan.config, plan.task),
        policy,
        hooks,
        episode=unit.index,
        unit=unit,
        seed=DEMO_SEED_BASE,
        max_steps=1,  # per example: each is an episode of its own
        on_step=on_step,
    )


async def play_icrl_episode(
    plan: IcrlPlan,
    policy: Policy,
    unit: UnitKey,
    on_step: Callable[[StepRecord], None],
    seed_of: UnitSeed,
) -> EpisodeRecord:
    """Play one episode of a replicate, its context built from the replicate's earlier ones."""
    config = plan.config
    replicate, episode = unit.chain, unit.index
    state = _history(plan, replicate, episode, seed_of)
    seed = seed_of(config, unit)

    def hooks(env: Environment) -> ReplicateEpisode:
        # The replicate's own tally: it grows only once this episode is over and remembered.
        situation, execution = _live(plan, env, replicate, episode, state.arms)
        return ReplicateEpisode(
            plan, state, replicate, episode, seed, _rules(config), situation, execution
        )

    return await play_episode(
        run_environment(plan.config, plan.task),
        policy,
        hooks,
        episode=unit.index,
        unit=unit,
        seed=seed,
        max_steps=config.max_steps,
        on_step=on_step,
    )
