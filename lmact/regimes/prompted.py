"""What the regimes that prompt with the shipped templates share: the prompt options of a
configuration, their checks and defaults, and the `PromptSettings` they make."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lmact.envs import environment_class
from lmact.errors import LmactError, UnknownNameError
from lmact.policies import Policy
from lmact.prompting import PromptSettings, check_templates, templates_fingerprint
from lmact.regimes.base import RegimeConfig
from lmact.tasks import TaskSpec

CHAIN_OF_THOUGHT_MAX_TOKENS = 512
ANSWER_MATCHES = ("lenient", "exact")


class PromptedConfig(RegimeConfig):
    """A configuration whose prompts the templates under `prompts/` (or --prompts) make."""

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


def prompt_settings(config: PromptedConfig) -> PromptSettings:
    return PromptSettings(
        config.show_legal_actions,
        config.chain_of_thought,
        config.past_actions,
        Path(config.prompts_dir) if config.prompts_dir is not None else None,
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
    prompts_dir: str | None = None,
) -> dict[str, Any]:
    """The fields of a `PromptedConfig`, checked, with the task's defaults filled in."""
    observation = observation or spec.default_observation
    spec.check_observation(observation)
    check_templates(prompts_dir)
    if answer_match not in ANSWER_MATCHES:
        raise UnknownNameError("--answer-match", answer_match, ANSWER_MATCHES)
    check_counts(at_least_0={"--seed": seed}, positive={"--max-tokens": max_tokens})
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
    }


def check_counts(at_least_0: dict[str, int | None], positive: dict[str, int | None]) -> None:
    """The counts of a configuration made through the Python API (the CLI checks them too)."""
    for name, value in at_least_0.items():
        if value is not None and value < 0:
            raise LmactError(f"{name} must be at least 0, not {value}")
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise LmactError(f"{name} must be positive, not {value}")
