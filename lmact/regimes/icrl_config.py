"""In-context RL's options and configuration: what a run of `lmact.regimes.icrl` is made
of, checked against its task, and the templates it reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from lmact.declarations import INT_LIMIT, Column, Named, Option, OptionError
from lmact.policies import UcbPolicy
from lmact.prompting import check_templates, templates_fingerprint
from lmact.records import UnitKey
from lmact.regimes.icrl_context import PastEpisode as PastEpisode  # where it was defined before
from lmact.regimes.icrl_context import run_environment
from lmact.regimes.icrl_context import select_context as select_context
from lmact.regimes.icrl_measures import by_replicate as by_replicate  # defined here before
from lmact.regimes.icrl_measures import context_lengths as context_lengths
from lmact.regimes.icrl_scenario import (
    SCENARIO_MAX_TOKENS,
    scenario_fields,
)
from lmact.regimes.prompted import (
    PROMPTED_ADDED_FIELDS,
    PromptedConfig,
    prompted_fields,
)
from lmact.resources import data_dir
from lmact.store import MAX_EPISODES
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
    _check_task_options(spec, history, eval_every, labels)
    if ucb_c != UCB_C.default and model != UcbPolicy.name:
        raise OptionError(
            Named("ucb_c"), f" is the {UcbPolicy.name} policy's; give ", Named("model"), " ucb"
        )
    scenario_options = {"scenario": scenario, "framing": framing, "returns": returns,
                        "reinforced_cot": reinforced_cot, "horizon": prompt_horizon}  # fmt: skip
    fields = _prompt_fields(spec, model, variant, layout, scenario_options, options)
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


def _prompt_fields(
    spec: TaskSpec,
    model: str,
    variant: str,
    layout: str,
    scenario_options: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The prompt's fields: the common ones (`prompted_fields`), the templates, the
    scenario's (`scenario_fields`) and the layout's."""
    # The in-context RL templates are DIR/icrl of a --prompts DIR: the imitation ones
    # need not be there.
    folder = options.pop("prompts_dir", None)
    if scenario_options["reinforced_cot"]:
        options["chain_of_thought"] = True
    scenario = scenario_options.pop("scenario")
    if scenario != "none" and not options.get("chain_of_thought") and not options.get("max_tokens"):
        options["max_tokens"] = SCENARIO_MAX_TOKENS
    fields = prompted_fields(spec, model=model, **options)
    fields["prompts"] = _fingerprint(folder)
    fields["prompts_dir"] = str(Path(folder).resolve()) if folder is not None else None
    fields |= scenario_fields(
        scenario, environment=spec.environment, default_horizon=spec.episodes,
        variant=variant, prompts_dir=folder, constrained=bool(options.get("constrained")),
        **scenario_options,
    )  # fmt: skip
    return fields | _layout_fields(fields, layout, folder)


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


def _check_task_options(spec: TaskSpec, history: str, eval_every: int | None, labels: str) -> None:
    """The options that only some tasks take, given for one of those."""
    if labels == "unlisted" and spec.environment != "classification":
        raise OptionError(Named("labels"), " unlisted hides a classification task's labels; "
                          "give a classification task")  # fmt: skip
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
