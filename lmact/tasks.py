"""Task specs: the declarative TOML files under `tasks/`, one per benchmark task or variant."""

from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import os
import tomllib
from collections.abc import Collection, Iterable, Mapping
from functools import cache
from importlib import import_module
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmact.declarations import Named, OptionError
from lmact.envs import (
    entry_point_origin,
    environment_class,
    environment_families,
    plugin_entry_points,
)
from lmact.envs.base import Environment
from lmact.envs.check import Property, check_environment
from lmact.errors import LmactError, UnknownNameError
from lmact.resources import data_dir, read_toml


class TaskSpec(BaseModel):
    """One task: which environment, with which options, evaluated how."""

    # Strict: `episodes = true` or `max_steps = "100"` in a spec is a mistake, not a value.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

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
        families = environment_families()
        if self.environment not in families:
            raise ValueError(
                f"unknown environment {self.environment!r}; accepted: {', '.join(families)}"
            )
        if self.default_observation not in self.observations:
            raise ValueError(
                f"default_observation {self.default_observation!r} not in observations"
            )
        try:
            formats = environment_class(self.environment).observation_formats
        except LmactError as error:  # a broken plug-in: reported with the spec's path
            raise ValueError(str(error)) from None
        unknown = [o for o in self.observations if o not in formats]
        if unknown:
            raise ValueError(
                f"unknown observation format {unknown[0]!r} for environment "
                f"{self.environment}; accepted: {', '.join(formats)}"
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

    def with_options(self, options: Mapping[str, Any] | None) -> TaskSpec:
        """The task with some of its environment's options set (`--task-option`): the
        same name, another spec hash (so other demonstrations). An option the environment
        does not take is a one-line error naming those it does."""
        if not options:
            return self
        accepted = environment_options(self.environment)
        for key in options:
            if accepted is not None and key not in accepted:
                raise LmactError(
                    f"task {self.name}: its environment takes no option {key!r}; it takes "
                    + (", ".join(sorted(accepted)) or "none")
                )
        return self.model_copy(update={"options": {**self.options, **options}})

    def make_environment(self, **overrides: Any) -> Environment:
        """The task's environment, from its options (some replaced by a run's `overrides`)."""
        try:
            return environment_class(self.environment)(**{**self.options, **overrides})
        except (TypeError, ValueError) as error:
            raise LmactError(f"task {self.name}: bad [options]: {error}") from None


def environment_options(environment: str) -> frozenset[str] | None:
    """The keyword options an environment's constructor takes (None: any, by **options)."""
    parameters = inspect.signature(environment_class(environment)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(p.name for p in parameters if p.kind in kinds)


def parse_task_options(items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` texts as task options, each VALUE read as a TOML value (true, 3, 0.5,
    "text", [1, 2]) and else taken as the text itself (`boxed`). One-line errors."""
    options: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier():
            raise OptionError(Named("task_option"), f" takes KEY=VALUE, not {item!r}")
        try:
            value = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        if isinstance(value, dict | datetime.date | datetime.time):
            value = text.strip()  # an inline table or a date: the text, as written
        options[key] = value
    return dict(sorted(options.items()))


# Folders of task specs beside the shipped ones, separated like PATH.
TASKS_PATH_VARIABLE = "LMACT_TASKS_PATH"
# Each entry point of this group names a package whose folder holds task specs (`*.toml`).
TASKS_ENTRY_POINT_GROUP = "lmact.tasks"
# Specs given by path (`--task path/to/variant.toml`) in this process, by task name.
_specs_from_files: dict[str, TaskSpec] = {}


def _read_toml(path: Path) -> dict[str, Any]:
    return read_toml(path, "task spec")


def _include_path(path: Path, include: object) -> Path:
    """The spec file that `include = ...` in `path` names: a path ending in .toml, relative to
    `path`'s folder, or else the name of a task in the task folders (shipped ones included)."""
    if not isinstance(include, str) or not include.strip():
        raise LmactError(
            f"task spec {path}: include must be a spec file (x.toml) or a task name, "
            f"got {include!r}"
        )
    if _is_path(include):
        target = path.parent / include
        if not target.is_file():
            raise LmactError(f"task spec {path}: include {include!r}: no such file {target}")
        return target
    for folder in task_folders():
        if (folder / f"{include}.toml").is_file():
            return folder / f"{include}.toml"
    raise LmactError(
        f"task spec {path}: include {include!r}: no task of that name in the task folders"
    )


def _resolved_fields(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A spec file's fields with its `include` resolved (recursively): the included spec's
    fields overridden by the file's own, the `[options]` tables merged key by key."""
    chain = (*chain, path.resolve())
    fields = _read_toml(path)
    if "include" not in fields:
        return fields
    base_path = _include_path(path, fields.pop("include"))
    if base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise LmactError(f"task spec {path}: include cycle {cycle}")
    base = _resolved_fields(base_path, chain)
    merged = {**base, **fields}
    if isinstance(base.get("options"), dict) and isinstance(fields.get("options"), dict):
        merged["options"] = {**base["options"], **fields["options"]}
    return merged


def _load_spec(path: Path) -> TaskSpec:
    fields = _resolved_fields(path)
    try:
        spec = TaskSpec(**fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in error.errors()
        )
        raise LmactError(f"task spec {path}: {problems}") from None
    if spec.name != path.stem:
        hint = "; a variant names itself (name = ...)" if "include" in _read_toml(path) else ""
        raise LmactError(f"task spec {path}: name {spec.name!r} differs from the file name{hint}")
    return spec


def _plugin_task_folders() -> list[Path]:
    """The folders of the packages that the `lmact.tasks` entry points name, by entry name."""
    folders: list[Path] = []
    for entry_point in sorted(plugin_entry_points(TASKS_ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"task plug-in {entry_point_origin(entry_point)}"
        if entry_point.attr:
            raise LmactError(f"{where} must name a package (its folder holds the specs)")
        try:
            package = import_module(entry_point.module)
        except Exception as error:  # any failure of third-party code is one line
            message = f"{where} cannot be loaded: {type(error).__name__}: {error}"
            raise LmactError(message.splitlines()[0]) from None
        # A namespace package may have several folders; a module has none.
        paths = [Path(p) for p in getattr(package, "__path__", [])]
        if not paths or not all(p.is_dir() for p in paths):
            raise LmactError(f"{where} is not a package in a folder on disk")
        folders.extend(paths)
    return folders


def task_folders() -> list[Path]:
    """Where task specs are looked for: the shipped folder, the plug-ins' folders (entry-point
    group `lmact.tasks`), then $LMACT_TASKS_PATH's."""
    extra = os.environ.get(TASKS_PATH_VARIABLE, "")
    return [
        data_dir("tasks"),
        *_plugin_task_folders(),
        *(Path(p) for p in extra.split(os.pathsep) if p.strip()),
    ]


def task_specs() -> dict[str, TaskSpec]:
    """Every task spec, by name: shipped, from plug-ins, on $LMACT_TASKS_PATH, and given by
    path."""
    return {**_specs_in(tuple(task_folders())), **_specs_from_files}


@cache
def _specs_in(folders: tuple[Path, ...]) -> dict[str, TaskSpec]:
    specs: dict[str, TaskSpec] = {}
    where: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise LmactError(f"{TASKS_PATH_VARIABLE}: {folder} is not a folder")
        for path in sorted(folder.glob("*.toml")):
            spec = _load_spec(path)
            if spec.name in specs:
                raise LmactError(
                    f"task {spec.name} is defined twice, in {where[spec.name]} and {path}; "
                    "rename one"
                )
            specs[spec.name], where[spec.name] = spec, path
    return specs


def _is_path(name: str) -> bool:
    return name.endswith(".toml") or "/" in name or os.sep in name


def load_task_file(path: Path) -> TaskSpec:
    """A task spec given by its path; afterwards its name resolves in this process too."""
    if not path.is_file():
        raise LmactError(f"task spec {path} not found")
    spec = _load_spec(path)
    known = _specs_in(tuple(task_folders())).get(spec.name) or _specs_from_files.get(spec.name)
    if known is not None and known != spec:
        raise LmactError(
            f"task spec {path} names task {spec.name!r}, which is another task already; "
            "give the variant a name of its own"
        )
    _specs_from_files[spec.name] = spec
    return spec


def check_task(spec: TaskSpec, skip: Collection[Property] = ()) -> None:
    """`check_environment` over a task's environment family, `[options]` and step limit."""
    check_environment(spec.environment, spec.options, max_steps=spec.max_steps, skip=skip)


def unsemantic_task(base: TaskSpec) -> TaskSpec:
    """A classification task with its labels replaced by meaningless ids, registered in
    this process as `<task>-unsemantic`."""
    if base.environment != "classification":
        raise LmactError(f"--unsemantic-labels applies to classification tasks, not {base.name}")
    options = {**base.options, "unsemantic_labels": True}
    return _register(
        base.model_copy(update={"name": f"{base.name}-unsemantic", "options": options})
    )


def _register(spec: TaskSpec) -> TaskSpec:
    spec.make_environment()  # its files read, or a one-line error naming the problem
    _specs_from_files[spec.name] = spec
    return spec


def dataset_task(
    base: TaskSpec,
    dataset: Path,
    held_out: Path | None = None,
    text_field: str = "text",
    label_field: str = "label",
) -> TaskSpec:
    """A classification task over a user's JSONL or CSV file, registered in this process.
    Its name holds a hash of the files' content and the fields, so another file (or an
    edited one) is another task, and the same command resumes the same runs."""
    if base.environment != "classification":
        raise LmactError(f"--dataset applies to classification tasks, not {base.name}")
    files = [dataset, held_out or dataset]
    digest = hashlib.sha256(f"{text_field}\0{label_field}".encode())
    for path in files:
        if not path.is_file():
            raise LmactError(f"--dataset: no such file {path}")
        digest.update(path.read_bytes())
    options = {
        **base.options,
        "stream": str(files[0].resolve()),
        "held_out": str(files[1].resolve()),
        "text_field": text_field,
        "label_field": label_field,
    }
    name = f"{base.name}-{dataset.stem}-{digest.hexdigest()[:8]}"
    room = max(base.max_answer_tokens, _label_room(files, text_field, label_field))
    update = {"name": name, "options": options, "max_answer_tokens": room}
    return _register(base.model_copy(update=update))


def _label_room(files: list[Path], text_field: str, label_field: str) -> int:
    """Answer tokens enough for the dataset's longest label (Banking77's run to some 40
    characters): half a token a character, and a few more, as no tokenizer is at hand."""
    from lmact.envs.classification import load_examples

    try:
        labels = {
            label for path in files for _, label in load_examples(path, text_field, label_field)
        }
    except ValueError:  # a bad file: the environment says what is wrong, in one line
        return 0
    return max(map(len, labels), default=0) // 2 + 4


def get_task(name: str) -> TaskSpec:
    """A task by name, or by the path of its spec file (`variants/my_task.toml`)."""
    if _is_path(name):
        return load_task_file(Path(name))
    specs = task_specs()
    if name not in specs:
        raise UnknownNameError("task", name, sorted(specs))
    return specs[name]
