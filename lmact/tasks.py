"""Task specs: the declarative TOML files under `tasks/`, one per benchmark task or variant."""

from __future__ import annotations

import hashlib
import json
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmact.envs import ENVIRONMENT_CLASSES, environment_class
from lmact.envs.base import Environment
from lmact.errors import LmactError, UnknownNameError
from lmact.resources import data_dir


class TaskSpec(BaseModel):
    """One task: which environment, with which options, evaluated how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    environment: str
    description: str = ""
    observations: list[str]
    default_observation: str
    max_steps: int = Field(100, gt=0)
    episodes: int = Field(10, gt=0, description="test episodes when --episodes is not given")
    max_answer_tokens: int = Field(16, gt=0, description="completion budget without reasoning")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_names(self) -> TaskSpec:
        if self.environment not in ENVIRONMENT_CLASSES:
            raise ValueError(
                f"unknown environment {self.environment!r}; "
                f"accepted: {', '.join(sorted(ENVIRONMENT_CLASSES))}"
            )
        if self.default_observation not in self.observations:
            raise ValueError(
                f"default_observation {self.default_observation!r} not in observations"
            )
        return self

    @property
    def spec_hash(self) -> str:
        """A short hash of everything that changes episodes: recorded with every result."""
        payload = json.dumps(self.model_dump(exclude={"description"}), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def check_observation(self, observation: str) -> None:
        if observation not in self.observations:
            raise UnknownNameError(
                f"observation format for task {self.name}", observation, self.observations
            )

    def is_image_observation(self, observation: str) -> bool:
        return observation in environment_class(self.environment).image_formats

    def make_environment(self) -> Environment:
        try:
            return environment_class(self.environment)(**self.options)
        except (TypeError, ValueError) as error:
            raise LmactError(f"task {self.name}: bad [options]: {error}") from None


def _load_spec(path: Path) -> TaskSpec:
    try:
        return TaskSpec(**tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as error:
        raise LmactError(f"task spec {path}: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in error.errors()
        )
        raise LmactError(f"task spec {path}: {problems}") from None


@cache
def task_specs() -> dict[str, TaskSpec]:
    """Every shipped task spec, by name."""
    specs = {}
    for path in sorted(data_dir("tasks").glob("*.toml")):
        spec = _load_spec(path)
        if spec.name != path.stem:
            raise LmactError(f"task spec {path}: name {spec.name!r} differs from the file name")
        specs[spec.name] = spec
    return specs


def get_task(name: str) -> TaskSpec:
    specs = task_specs()
    if name not in specs:
        raise UnknownNameError("task", name, sorted(specs))
    return specs[name]
