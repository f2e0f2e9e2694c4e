"""What the regimes that prompt with the shipped templates share: the prompt options of a
configuration, their checks and defaults, and the `PromptSettings` they make."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from lmact.declarations import INT_LIMIT, Column, Named, Option, OptionError
from lmact.envs import environment_class
from lmact.episode import StepRules
from lmact.errors import LmactError
from lmact.policies import Policy
from lmact.prompting import (
    BLOCK,
    INLINE_NEXT_LINE,
    INLINE_SAME_LINE,
    PLAIN_ANSWER,
    STRICT_ANSWER,
    PromptSettings,
    check_templates,
    templates_fingerprint,
)
from lmact.regimes.base import RegimeConfig
from lmact.tasks import TaskSpec, parse_task_options

CHAIN_OF_THOUGHT_MAX_TOKENS = 512
ANSWER_MATCHES = ("lenient", "exact")

# Options that some prompted regimes take (each lists those it takes in `Regime.options`).
TOKEN_BUDGET = Option(
    "token_budget", int, least=1, most=INT_LIMIT, metavar="T", order=60,
    exclusive="demonstrations", column=Column(place="run", rank=6),
    help="pack as many whole demonstrations as fit T prompt tokens (preamble and "
    "demonstrations, counted by the model's tokenizer)",
)  # fmt: skip
INLINE_OBSERVATIONS = Option(
    "inline_observations", bool, default=False, order=135, column=Column(rank=2.5),
    help="write one-line observations inline, as the LMAct reference code does "
    "(`Observation: X Action: a` for FEN, coordinates and images; other one-line texts with "
    "the action on the next line); multi-line observations stay blocks",
)  # fmt: skip
MAX_STEPS = Option(
    "max_steps", int, least=1, most=INT_LIMIT, order=90,
    help="step limit per episode (default: the task's)",
)  # fmt: skip


class PromptedConfig(RegimeConfig):
    """A configuration whose prompts the templates under `prompts/` (or --prompts) make."""

    added_fields: ClassVar[dict[str, Any]] = {
        "constrained": False, "task_options": None, "inline_observations": False,
    }  # fmt: skip

    show_legal_actions: bool = False
    chain_of_thought: bool = False
    max_tokens: int = Field(gt=0)
    prompts: str  # fingerprint of the prompt templates
    prompts_dir: str | None = None  # the --prompts folder, if not the shipped templates
    # The current episode's past actions in the prompt (False: observations only).
    past_actions: bool = True
    # How an answer must be spelled: "lenient" reads it with the task's parser (any case,
    # SAN without the check sign …); "exact" only as one of the legal actions as listed.
    answer_match: Literal["lenient", "exact"] = "lenient"
    # The environment's rendering version: observations rendered otherwise are another run.
    rendering: int = 1
    # Answers decoded under a constraint onto the legal actions (`--constrained`).
    constrained: bool = False
    # Options of the task's environment set by the run (`--task-option`), over its spec's.
    task_options: dict[str, Any] | None = None
    # One-line observations written inline (`--inline-observations`).
    inline_observations: bool = False

    def task_spec(self) -> TaskSpec:
        return super().task_spec().with_options(self.task_options)


# The formats whose one-line observations the reference code writes with the action on the
# same line (images too); other one-line texts (the cheetah's state) have it on the next.
SAME_LINE_FORMATS = frozenset({"fen", "coords"})


def prompt_settings(config: PromptedConfig) -> PromptSettings:
    layout = BLOCK
    if config.inline_observations:
        same_line = config.observation in SAME_LINE_FORMATS or config.task_spec(
        ).is_image_observation(config.observation)  # fmt: skip
        layout = INLINE_SAME_LINE if same_line else INLINE_NEXT_LINE
    return PromptSettings(
        config.show_legal_actions,
        config.chain_of_thought,
        config.past_actions,
        Path(config.prompts_dir) if config.prompts_dir is not None else None,
        layout,
    )


def check_sees(task: TaskSpec, observation: str, policy: Policy) -> None:
    """A one-line error when the policy cannot see the observation format's images."""
    if task.is_image_observation(observation) and not policy.accepts_images:
        texts = [o for o in task.observations if not task.is_image_observation(o)]
        remedy = (
            f"choose a text observation ({', '.join(texts)})"
            if texts
            else f"task {task.name} has only image observations: choose a model that sees them"
        )
        raise LmactError(f"model {policy.name} accepts no images; {remedy}")


def prompted_fields(
    spec: TaskSpec,
    *,
    model: str,
    observation: str | None = None,
    seed: int = 0,
    show_legal_actions: bool = False,
    chain_of_thought: bool = False,
    max_tokens: int | None = None,
    past_actions: bool = True,
    answer_match: str = "lenient",
    prompts_dir: str | Path | None = None,
    constrained: bool = False,
    task_options: Sequence[str] | Mapping[str, Any] | None = None,
    inline_observations: bool = False,
) -> dict[str, Any]:
    """The fields of a `PromptedConfig`, with the task's defaults filled in; the names are
    checked here (the values' types and bounds by `lmact.options.read_run`)."""
    observation = observation or spec.default_observation
    spec.check_observation(observation)
    if constrained and chain_of_thought:
        raise OptionError("give either ", Named("cot"), " or ", Named("constrained"), ", not "
                          "both: a constrained answer is the action alone")  # fmt: skip
    check_templates(prompts_dir)
    options = (
        dict(task_options)
        if isinstance(task_options, Mapping)
        else parse_task_options(task_options or ())
    )
    spec.with_options(options)  # names the environment does not take: one line
    return {
        "task": spec.name,
        "spec_hash": spec.spec_hash,
        "observation": observation,
        "model": model,
        "seed": seed,
        "show_legal_actions": show_legal_actions,
        "chain_of_thought": chain_of_thought,
        "max_tokens": max_tokens
        or (CHAIN_OF_THOUGHT_MAX_TOKENS if chain_of_thought else spec.max_answer_tokens),
        "prompts": templates_fingerprint(prompts_dir),
        "prompts_dir": str(Path(prompts_dir).resolve()) if prompts_dir is not None else None,
        "rendering": environment_class(spec.environment).rendering_version,
        "past_actions": past_actions,
        "answer_match": answer_match,
        "constrained": constrained,
        "task_options": dict(sorted(options.items())) or None,
        "inline_observations": inline_observations,
    }


# Fields every prompted configuration gained after runs were first stored: at these values
# a run keeps the id it had (each regime's `added_fields` holds them).
PROMPTED_ADDED_FIELDS: dict[str, Any] = {
    "constrained": False, "task_options": None, "inline_observations": False,
}  # fmt: skip


def step_rules(config: PromptedConfig) -> StepRules:
    """How a prompted run's steps read and constrain answers."""
    exact = config.answer_match == "exact"
    form = STRICT_ANSWER if exact else PLAIN_ANSWER
    return StepRules(config.observation, exact, config.constrained, form)
