"""Krishnamurthy et al.'s bandit prompts: the factors their prompts vary, as lmact's options,
in lmact's own words (templates under `prompts/icrl/<scenario>/`).

A scenario prompt is a system message and a user message. The system message tells the
scenario (buttons in a room, or advertisements shown to a website's visitors) with the arms
and the horizon T, the framing (neutral, or suggestive: it names the problem a bandit and
asks for exploration), what the answer is (one arm, or a distribution over the arms that the
arm is drawn from), in <Answer> tags, and, with chain of thought, to reason first. The user
message holds the history (every round so far, or per arm its count and average reward),
the question, and a reminder of the tags; reinforced chain of thought repeats the request to
reason there, at every round.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmact.declarations import INT_LIMIT, Column, Named, Option, OptionError
from lmact.models.base import ModelRequest, TextPart
from lmact.prompting import AnswerForm, check_templates

if TYPE_CHECKING:  # the regime's module imports this one
    from lmact.regimes.icrl import IcrlPlan
    from lmact.regimes.icrl_context import _Replicate

SCENARIOS = ("none", "buttons", "adverts")
FRAMINGS = ("neutral", "suggestive")
ANSWER_FORMS = ("arm", "distribution")
# Room for an answer in tags, or a distribution over up to 20 arms, without reasoning.
SCENARIO_MAX_TOKENS = 128
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "system": frozenset({"count", "names", "horizon"}),
    "suggestive": frozenset(),
    "answer_arm": frozenset({"example"}),
    "answer_distribution": frozenset({"example"}),
    "cot": frozenset(),
    "history_empty": frozenset(),
    "history_raw": frozenset({"count"}),
    "raw_line": frozenset({"number", "action", "reward"}),
    "history_summary": frozenset({"count"}),
    "summary_line": frozenset({"action", "pulls", "mean"}),
    "question": frozenset({"number", "horizon"}),
    "reminder": frozenset(),
    "reinforce": frozenset(),
}

_GROUP = "in-context RL (--regime icrl)"
SCENARIO = Option(
    "scenario", choices=SCENARIOS, default="none", group=_GROUP, order=300,
    column=Column(rank=7, curves=True),
    help="bandits: the prompt of Krishnamurthy et al.'s factors, a system and a user "
    "message, the answer in <Answer> tags: buttons (pressed in a room) "
    "or adverts (shown to a website's visitors); none (default): lmact's prompt of attempts",
)  # fmt: skip
FRAMING = Option(
    "framing", choices=FRAMINGS, default="neutral", group=_GROUP, order=301,
    column=Column(rank=7.1, curves=True),
    help="with --scenario: neutral (default), or suggestive: the prompt calls the problem "
    "a bandit and asks to balance exploration and exploitation",
)  # fmt: skip
ANSWER_FORM = Option(
    "returns", choices=ANSWER_FORMS, default="arm", group=_GROUP, order=302,
    column=Column(rank=7.2, curves=True),
    help="with --scenario: arm (default): the model names one arm; distribution: it gives "
    "a probability per arm, and the arm is drawn from them",
)  # fmt: skip
REINFORCED_COT = Option(
    "reinforced_cot", bool, default=False, group=_GROUP, order=303,
    help="with --scenario: chain of thought (as --cot), the request to reason repeated in "
    "every round's user message",
)  # fmt: skip
HORIZON = Option(
    "prompt_horizon", int, least=1, most=INT_LIMIT, metavar="T", group=_GROUP, order=304,
    help="with --scenario: the number of rounds the prompt states (default: the task's "
    "episodes); a run of more episodes is refused",
)  # fmt: skip
SCENARIO_OPTIONS = (SCENARIO, FRAMING, ANSWER_FORM, REINFORCED_COT, HORIZON)


def scenario_folder(prompts_dir: str | None, scenario: str) -> Path:
    from lmact.regimes.icrl_config import icrl_prompts  # which imports this module

    return icrl_prompts(prompts_dir) / scenario


def scenario_fields(
    scenario: str,
    *,
    environment: str,
    default_horizon: int,
    framing: str,
    returns: str,
    reinforced_cot: bool,
    horizon: int | None,
    variant: str,
    prompts_dir: str | None,
    constrained: bool = False,
) -> dict[str, object]:
    """The configuration's scenario fields, or a one-line OptionError for options that do
    not go together; defaults (neutral, arm) are absent, so runs made before keep their ids."""
    if scenario == "none":
        given = (
            (FRAMING, framing != "neutral"),
            (ANSWER_FORM, returns != "arm"),
            (REINFORCED_COT, reinforced_cot),
            (HORIZON, horizon is not None),
        )
        for option, differs in given:
            if differs:
                raise OptionError(Named(option.name), " shapes a scenario prompt: give ",
                                  Named("scenario"), " buttons or adverts")  # fmt: skip
        return {}
    if environment != "bandit":
        raise OptionError(Named("scenario"), " is a bandit prompt; give a bandit task")
    if variant != "naive":
        raise OptionError(Named("scenario"), " shows every round, as the naive variant: give ",
                          Named("variant"), " naive")  # fmt: skip
    if returns == "distribution" and constrained:
        raise OptionError(
            Named("returns"), " distribution asks for probabilities; ", Named("constrained"),
            " holds the answer to one arm: give one of them",
        )  # fmt: skip
    folder = scenario_folder(prompts_dir, scenario)
    check_templates(folder, TEMPLATE_FIELDS)
    return {
        "scenario": scenario,
        "framing": "suggestive" if framing == "suggestive" else None,
        "returns": "distribution" if returns == "distribution" else None,
        "reinforced_cot": reinforced_cot,
        "prompt_horizon": horizon or default_horizon,
    }


def answer_form(scenario: str | None, returns: str | None) -> AnswerForm:
    return AnswerForm(tagged=scenario is not None, distribution=returns == "distribution")


def _example_distribution(arms: Sequence[str]) -> str:
    """Equal probabilities, rounded to two places, adding up to exactly 1."""
    share = round(1 / len(arms), 2)
    last = round(1 - share * (len(arms) - 1), 2)
    return ", ".join(
        f"{arm}: {share if i < len(arms) - 1 else last:.2f}" for i, arm in enumerate(arms)
    )


def system_message(plan: IcrlPlan, arms: Sequence[str]) -> str:
    config = plan.config
    assert config.scenario is not None and config.prompt_horizon is not None
    say = plan.scenario_template
    lines = [say("system", count=len(arms), names=", ".join(arms), horizon=config.prompt_horizon)]
    if config.framing == "suggestive":
        lines.append(say("suggestive"))
    if config.returns == "distribution":
        lines.append(say("answer_distribution", example=_example_distribution(arms)))
    else:
        lines.append(say("answer_arm", example=arms[0]))
    if config.chain_of_thought:
        lines.append(say("cot"))
    return "\n".join(line.strip() for line in lines)


def history_text(plan: IcrlPlan, state: _Replicate, shown: Sequence[int], arms: Sequence[str]
                 ) -> str:  # fmt: skip
    """The rounds so far: each as played, or per arm its count and average reward."""
    say = plan.scenario_template
    if not shown:
        return say("history_empty").strip()
    rounds = [step for index in shown for step in state.episodes[index].steps]
    if plan.config.history == "summary":
        lines = [say("history_summary", count=len(rounds))]
        for arm, pulls, mean in state.arm_means(shown, arms):
            lines.append(say("summary_line", action=arm, pulls=pulls, mean=mean))
    else:
        lines = [say("history_raw", count=len(rounds))]
        for index in shown:
            for _, action, reward in state.episodes[index].steps:
                lines.append(say("raw_line", number=index + 1, action=action, reward=f"{reward:g}"))
    return "\n".join(line.rstrip("\n") for line in lines)


def scenario_request(
    plan: IcrlPlan,
    state: _Replicate,
    shown: Sequence[int],
    arms: Sequence[str],
    number: int,
    seed: int,
) -> ModelRequest:
    """Round `number`'s request (counted from 1): the system message, then the history and
    the question as the user message."""
    config = plan.config
    say = plan.scenario_template
    user = [history_text(plan, state, shown, arms), "",
            say("question", number=number, horizon=config.prompt_horizon).strip(),
            say("reminder").strip()]  # fmt: skip
    if config.reinforced_cot:
        user.append(say("reinforce").strip())
    return ModelRequest(
        parts=(TextPart("\n".join(user) + "\n"),),
        system=system_message(plan, arms) + "\n",
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        seed=seed,
    )
