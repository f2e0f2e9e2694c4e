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

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template
from typing import Any, ClassVar, Literal

from pydantic import Field

from lmact.declarations import INT_LIMIT, Column, Measure, Named, Option, OptionError
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
from lmact.policies import ArmTally, Policy, UcbPolicy
from lmact.prompting import AnswerForm, check_templates, template, templates_fingerprint
from lmact.records import EpisodeRecord, StepRecord, UnitKey, UnitKind
from lmact.regimes.base import PreparedRun, Regime, RunContext, RunFacts, StepColumns
from lmact.regimes.headline import Headline
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
    SCENARIO_MAX_TOKENS,
    SCENARIO_OPTIONS,
    answer_form,
    scenario_fields,
)
from lmact.regimes.prompted import (
    MAX_STEPS,
    PROMPTED_ADDED_FIELDS,
    TOKEN_BUDGET,
    PromptedConfig,
    check_sees,
    prompted_fields,
    step_rules,
)
from lmact.resources import data_dir
from lmact.scoring import EpisodeResult
from lmact.store import MAX_EPISODES, RunRecord
from lmact.tasks import TaskSpec, get_task

VARIANTS = ("naive", "naive-positive", "stochastic", "approximate", "supervised")
HISTORIES = ("raw", "summary")
RESETS = ("same", "fresh")
LAYOUTS = ("block", "conversation")
# The templates of each subfolder of the in-context RL templates that a run may read.
ADDED_TEMPLATE_FIELDS: dict[str, dict[str, frozenset[str]]] = {
    "conversation": {
        "preamble": frozenset(), "preamble_cot": frozenset(), "feedback_right": frozenset(),
        "feedback_wrong": frozenset(), "feedback_reward": frozenset({"reward"}),
    },
    "reasoning": {"instruction": frozenset()},
}  # fmt: skip
# Fresh starts (--reset fresh) of replicate r, which starts from `seed + r`, are seeds
# (seed + r) * stride + e: no two replicates share one.
REPLICATE_STRIDE = MAX_EPISODES
# Held-out evaluation k of a replicate draws from the streams of `EVALUATION_OFFSET + k`,
# above every episode's (a replicate holds fewer episodes than that).
EVALUATION_OFFSET = REPLICATE_STRIDE // 2
DEFAULT_EVAL_SIZE = 100
DEFAULT_REPLICATES = 5
# Share of a known context window the context may fill, as in the reference code.
WINDOW_SHARE = 0.95
_FALLBACK_STREAM, _POLICY_STREAM = 1, 2  # of the run's seed (see icrl_context for more)
# The in-context RL templates and the placeholders each is filled with.
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "preamble": frozenset(),
    "past_episode": frozenset({"number"}),
    "past_episode_total": frozenset({"number", "total"}),
    "reward": frozenset({"reward"}),
    "summary": frozenset(),
    "summary_line": frozenset({"action", "count", "mean"}),
    "current_episode": frozenset(),
    "legal_actions": frozenset({"actions"}),
    "instruction": frozenset(),
}

# The seed a unit starts from (`IcrlRegime.unit_seed`), for the functions that play one.
UnitSeed = Callable[["IcrlConfig", UnitKey], int]

# The options in-context RL takes besides the common ones (with TOKEN_BUDGET and MAX_STEPS).
_GROUP = "in-context RL (--regime icrl)"
VARIANT = Option(
    "variant", choices=VARIANTS, default="naive", group=_GROUP, order=200,
    column=Column(rank=5, curves=True),
    help="which earlier episodes the context holds: naive (default): all, the most recent "
    "that fit; naive-positive: successful ones only; stochastic: successful ones, each kept "
    "with probability --p-keep, drawn afresh at every step; approximate: --contexts growing "
    "contexts, one drawn per step; supervised: all, with the expert's actions (gold labels) "
    "instead of those played",
)  # fmt: skip
P_KEEP = Option("p_keep", float, default=0.1, least=0, most=1, positive=True, group=_GROUP,
                order=210, help="keep probability (default: %(default)s)")  # fmt: skip
CONTEXTS = Option("contexts", int, default=8, least=1, most=10_000, group=_GROUP, order=220,
                  help="approximate contexts (default: %(default)s)")  # fmt: skip
REPLICATES = Option(
    "replicates", int, default=DEFAULT_REPLICATES, least=1, most=10_000, group=_GROUP,
    order=230, help="independent replicates, replicate r from seed SEED+r; --episodes is "
    "each one's horizon (default: %(default)s)",
)  # fmt: skip
HISTORY = Option(
    "history", choices=HISTORIES, default="raw", group=_GROUP, order=240,
    column=Column(rank=6, curves=True), help="raw (default): the earlier rounds as played; "
    "summary (bandits): per-arm counts and mean rewards instead",
)  # fmt: skip
RESET = Option(
    "reset", choices=RESETS, group=_GROUP, order=250, help="same: every episode of a "
    "replicate starts from one initial state (the default); fresh: a new start per episode "
    "(the default for classification, a stream of inputs)",
)  # fmt: skip
TEMPERATURE = Option("temperature", float, default=0.0, least=0, most=2, group=_GROUP,
                     order=260, help="sampling temperature (default: 0)")  # fmt: skip
EVAL_EVERY = Option(
    "eval_every", int, least=1, most=INT_LIMIT, metavar="K", group=_GROUP, order=270,
    help="classification: before episode 0 and every K episodes, label held-out examples "
    "with that episode's context (never added to a context)",
)  # fmt: skip
MAX_EXAMPLES = Option(
    "max_examples", int, least=1, most=INT_LIMIT, metavar="N", group=_GROUP, order=225,
    help="the most earlier episodes a context holds, beside --token-budget (Monea et al.'s "
    "cap; stochastic: a uniform subset of those kept, approximate: contexts of at most N)",
)  # fmt: skip
BUTTONS = Option(
    "buttons", choices=("fixed", "drawn"), default="fixed", group=_GROUP, order=295,
    help="bandits: fixed (default): the buttons Krishnamurthy et al. name (blue, green, red, "
    "yellow, purple), always in that order; drawn: K of 20 colours in a random order per "
    "replicate, as runs made before December 2026 played (they resume with it)",
)  # fmt: skip
LABELS = Option(
    "labels", choices=("listed", "unlisted"), default="listed", group=_GROUP, order=296,
    help="classification: listed (default): the labels beside each input; unlisted: the "
    "input alone, as Monea et al. show it (learned from the context, or held by "
    "--constrained)",
)  # fmt: skip
LAYOUT = Option(
    "layout", choices=LAYOUTS, default="block", group=_GROUP, order=297,
    column=Column(rank=6.5, curves=True),
    help="block (default): the earlier episodes as one user message, each step with its "
    "reward; conversation: as chat turns, as Monea et al. lay them out (each observation a "
    "user turn, each action an assistant turn, how it went a user turn: right or wrong in "
    "classification, else the reward), the instructions a system message",
)  # fmt: skip
UCB_C = Option(
    "ucb_c", float, default=1.0, least=0, most=1_000, metavar="C", group=_GROUP, order=290,
    help="--model ucb: the exploration constant of UCB as Krishnamurthy et al. define it, "
    "mean + sqrt(C / pulls) (default: %(default)s)",
)  # fmt: skip
EVAL_SIZE = Option("eval_size", int, default=DEFAULT_EVAL_SIZE, least=1, most=100_000,
                   group=_GROUP, order=280,
                   help="held-out examples per evaluation (default: %(default)s)")  # fmt: skip


def icrl_prompts(folder: str | None) -> Path:
    """The in-context RL templates: `folder`/icrl (a user's --prompts), else the shipped."""
    return (Path(folder) if folder else data_dir("prompts")) / "icrl"


class IcrlConfig(PromptedConfig):
    """Everything that determines an in-context RL run. The number of replicates, like
    the number of episodes, is not part of it: asking for more extends the run."""

    not_in_id: ClassVar[frozenset[str]] = frozenset({"prompts_dir", "replicates"})
    # Fields added since runs were first stored: at these values, a run keeps its id.
    added_fields: ClassVar[dict[str, Any]] = {
        **PROMPTED_ADDED_FIELDS, "ucb_c": 1.0, "max_examples": None, "buttons": None,
        "labels": None, "layout": None, "scenario": None, "framing": None, "returns": None,
        "reinforced_cot": False, "prompt_horizon": None, "added_prompts": None,
    }  # fmt: skip

    regime: Literal["icrl"] = "icrl"
    variant: Literal["naive", "naive-positive", "stochastic", "approximate", "supervised"] = "naive"
    p_keep: float = Field(0.1, gt=0, le=1)
    contexts: int = Field(8, gt=0)
    token_budget: int | None = Field(None, gt=0)
    history: Literal["raw", "summary"] = "raw"
    reset: Literal["same", "fresh"] = "same"
    temperature: float = Field(0.0, ge=0, le=2)
    max_steps: int = Field(gt=0)
    replicates: int = Field(DEFAULT_REPLICATES, gt=0)
    # Classification: every `eval_every` episodes (and before the first), the model labels
    # the first `eval_size` held-out examples with that episode's context; these answers
    # never enter a context.
    eval_every: int | None = Field(None, gt=0)
    eval_size: int = Field(DEFAULT_EVAL_SIZE, gt=0)
    ucb_c: float = Field(1.0, ge=0)  # the `ucb` policy's exploration constant
    max_examples: int | None = Field(None, gt=0)  # earlier episodes a context holds at most
    # Bandits: "fixed", the paper's button names; None, the colours drawn per replicate (as
    # every run stored before the option: absent, they keep their ids and resume).
    buttons: Literal["fixed"] | None = None
    # Classification: "unlisted", the input alone; None, the labels listed beside it.
    labels: Literal["unlisted"] | None = None
    # "conversation": earlier episodes as chat turns; None, one block (as runs made before).
    layout: Literal["conversation"] | None = None
    # Bandits: Krishnamurthy et al.'s prompt factors (`lmact.regimes.icrl_scenario`); None
    # for lmact's prompt of attempts, neutral framing, one arm as the answer.
    scenario: Literal["buttons", "adverts"] | None = None
    framing: Literal["suggestive"] | None = None
    returns: Literal["distribution"] | None = None
    reinforced_cot: bool = False
    prompt_horizon: int | None = Field(None, gt=0)  # the rounds a scenario prompt states
    # The templates of the subfolders of the in-context RL templates the run reads (its
    # scenario, the conversation layout, reasoning), by their text.
    added_prompts: str | None = None


def make_icrl_config(
    task: str,
    *,
    model: str,
    variant: str = VARIANT.default,
    p_keep: float = P_KEEP.default,
    contexts: int = CONTEXTS.default,
    token_budget: int | None = None,
    history: str = HISTORY.default,
    reset: str | None = None,
    temperature: float = TEMPERATURE.default,
    max_steps: int | None = None,
    replicates: int = DEFAULT_REPLICATES,
    eval_every: int | None = None,
    eval_size: int = DEFAULT_EVAL_SIZE,
    ucb_c: float = UCB_C.default,
    max_examples: int | None = None,
    buttons: str = BUTTONS.default,
    labels: str = LABELS.default,
    layout: str = LAYOUT.default,
    scenario: str = "none",
    framing: str = "neutral",
    returns: str = "arm",
    reinforced_cot: bool = False,
    prompt_horizon: int | None = None,
    **options: Any,
) -> IcrlConfig:
    """An in-context RL configuration; `options` as for `make_replay_config`. Options that
    must suit the task are checked here (types and bounds by `lmact.options.read_run`).
    `reset` defaults to `fresh` for classification (a stream of inputs), else `same`."""
    spec = get_task(task)
    if reset is None:
        reset = "fresh" if spec.environment == "classification" else "same"
    _check_task_options(spec, history, eval_every)
    if labels == "unlisted" and spec.environment != "classification":
        raise OptionError(Named("labels"), " unlisted hides a classification task's labels; "
                          "give a classification task")  # fmt: skip
    if ucb_c != UCB_C.default and model != UcbPolicy.name:
        raise OptionError(
            Named("ucb_c"), f" is the {UcbPolicy.name} policy's; give ", Named("model"), " ucb"
        )
    # The in-context RL templates are DIR/icrl of a --prompts DIR: the imitation ones
    # need not be there.
    folder = options.pop("prompts_dir", None)
    if reinforced_cot:
        options["chain_of_thought"] = True
    if scenario != "none" and not options.get("chain_of_thought") and not options.get("max_tokens"):
        options["max_tokens"] = SCENARIO_MAX_TOKENS
    fields = prompted_fields(spec, model=model, **options)
    fields["prompts"] = _fingerprint(folder)
    fields["prompts_dir"] = str(Path(folder).resolve()) if folder is not None else None
    fields |= scenario_fields(
        scenario, environment=spec.environment, default_horizon=spec.episodes, framing=framing,
        returns=returns, reinforced_cot=reinforced_cot, horizon=prompt_horizon, variant=variant,
        prompts_dir=folder, constrained=bool(options.get("constrained")),
    )  # fmt: skip
    fields |= _layout_fields(fields, layout, folder)
    return IcrlConfig(
        **fields,
        variant=variant,  # type: ignore[arg-type] - checked by its declaration
        p_keep=p_keep,
        contexts=contexts,
        token_budget=token_budget,
        history=history,  # type: ignore[arg-type]
        reset=reset,  # type: ignore[arg-type]
        temperature=temperature,
        max_steps=max_steps or spec.max_steps,
        replicates=replicates,
        eval_every=eval_every,
        eval_size=eval_size,
        ucb_c=ucb_c,
        max_examples=max_examples,
        buttons="fixed" if buttons == "fixed" and spec.environment == "bandit" else None,
        labels="unlisted" if labels == "unlisted" else None,
    )


def _layout_fields(fields: dict[str, Any], layout: str, folder: str | None) -> dict[str, Any]:
    """The layout, and the fingerprint of every template subfolder the run reads; a
    conversation is not a scenario's (it has its own two messages), nor constrained
    reasoning."""
    scenario = fields.get("scenario")
    if layout == "conversation" and scenario is not None:
        raise OptionError(Named("layout"), " conversation lays out lmact's prompt of attempts; "
                          "a scenario prompt has its own: leave out one of them")  # fmt: skip
    used = [scenario] if scenario is not None else []
    if layout == "conversation":
        used.append("conversation")
    elif fields["chain_of_thought"] and scenario is None:
        used.append("reasoning")
    digest = []
    for name in used:
        path = icrl_prompts(folder) / name
        if name in ADDED_TEMPLATE_FIELDS:
            check_templates(path, ADDED_TEMPLATE_FIELDS[name])
        digest.append(f"{name}:{templates_fingerprint(path)}")
    return {
        "layout": "conversation" if layout == "conversation" else None,
        "added_prompts": ",".join(digest) or None,
    }


def _check_inputs_last(config: IcrlConfig, episodes: int) -> None:
    """A replicate of fresh starts never repeats an input, as in Monea et al.'s streams: a
    run that would (more episodes than the stream's examples, more held-out examples than
    the held-out file's) is refused before any call."""
    env = run_environment(config, config.task_spec())
    try:
        stream, held_out = env.distinct_starts(), env.distinct_starts(demonstrations=True)
    finally:
        env.close()
    if config.reset == "fresh" and stream is not None and episodes > stream:
        raise OptionError(
            f"task {config.task}'s stream holds {stream} inputs: ", Named("episodes"),
            f" {episodes} would repeat some in a replicate; give {stream} or fewer",
        )  # fmt: skip
    stated = config.prompt_horizon
    if stated is not None and episodes > stated:
        raise OptionError(
            f"the prompt states {stated} rounds (", Named("prompt_horizon"), "): ",
            Named("episodes"), f" {episodes} would play more; give {stated} or fewer",
        )  # fmt: skip
    if config.eval_every is not None and held_out is not None and config.eval_size > held_out:
        raise OptionError(
            f"task {config.task}'s held-out file holds {held_out} inputs: ", Named("eval_size"),
            f" {config.eval_size} would repeat some; give {held_out} or fewer",
        )  # fmt: skip


def _check_task_options(spec: TaskSpec, history: str, eval_every: int | None) -> None:
    """The options that only some tasks take, given for one of those."""
    if history == "summary" and spec.environment != "bandit":
        raise OptionError(Named("history"), " summary summarizes bandit rounds; give a bandit task")
    if eval_every is not None and spec.environment != "classification":
        raise OptionError(
            Named("eval_every"), " labels held-out examples; give a classification task"
        )


def _fingerprint(folder: str | None) -> str:
    path = icrl_prompts(folder)
    check_templates(path, TEMPLATE_FIELDS)  # each present and well formed, or one line
    return templates_fingerprint(path)


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

    def chains(self, config: IcrlConfig, episodes: int) -> list[list[UnitKey]]:
        """One chain per replicate: its episodes in order, each held-out evaluation just
        before the episode whose context it uses."""
        indices = [unit.index for unit in self.units(config, episodes)]
        every = config.eval_every
        chains = []
        for replicate in range(config.replicates):
            chain = []
            for episode in indices:
                if every is not None and episode % every == 0:
                    chain.append(UnitKey(replicate, episode // every, UnitKind.EVALUATION))
                chain.append(UnitKey(replicate, episode))
            chains.append(chain)
        return chains

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
        seed=seed,
        max_steps=config.max_steps,
        on_step=on_step,
    )
