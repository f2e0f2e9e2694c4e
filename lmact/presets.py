"""Presets: a paper's protocol as the options of a run, kept as data (`presets/NAME.toml`,
each option with where its value comes from).

A preset is shorthand. `apply_preset` puts its options under those given (given options
win), and what is read then is an ordinary run: a run made through a preset and one made by
hand with the same options are the same run, with the same id.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from lmact.errors import LmactError, UnknownNameError
from lmact.resources import data_dir, read_toml, validated

PRESET = "preset"  # the option that names one


class Sourced(BaseModel):
    """Options, each with where its value comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    options: dict[str, Any] = {}
    source: dict[str, str] = {}  # per option: where its value comes from

    @model_validator(mode="after")
    def _every_option_has_a_source(self) -> Sourced:
        unsourced = sorted(set(self.options) - set(self.source))
        if unsourced:
            raise ValueError(f"no source for {', '.join(unsourced)}")
        stray = sorted(set(self.source) - set(self.options))
        if stray:
            raise ValueError(f"a source for {', '.join(stray)}, which it does not set")
        if PRESET in self.options:
            raise ValueError("a preset cannot name another")
        return self


class Preset(Sourced):
    """A paper's protocol: its `options`, and, where it differs per task, each task's own
    (`tasks`, over the common ones; a preset with tasks takes no other task)."""

    name: str
    description: str
    paper: str
    tasks: dict[str, Sourced] = {}

    def options_for(self, task: object) -> dict[str, Any]:
        """The options of a run of `task` (None: the preset's own task, if it names one)."""
        if not self.tasks:
            return dict(self.options)
        task = task if task is not None else self.options.get("task")
        if not isinstance(task, str) or task not in self.tasks:
            raise LmactError(
                f"preset {self.name} sets options per task: give --task, one of "
                + ", ".join(sorted(self.tasks))
            )
        return {**self.options, **self.tasks[task].options}

    def sources_for(self, task: str | None) -> dict[str, str]:
        extra = self.tasks[task].source if task in self.tasks else {}
        return {**self.source, **extra}


def read_preset(path: Path) -> Preset:
    """One preset file (its name is the file's); a file that is not one is a one-line error
    naming it. Its options are checked when a run reads them (`lmact.options.read_run`)."""
    return validated(Preset, {"name": path.stem, **read_toml(path, "preset")}, path, "preset")


@functools.cache
def presets() -> dict[str, Preset]:
    """Every shipped preset, by name."""
    files = sorted(data_dir("presets").glob("*.toml"), key=lambda path: path.stem)
    return {preset.name: preset for preset in map(read_preset, files)}


def get_preset(name: str) -> Preset:
    known = presets()
    if name not in known:
        raise UnknownNameError("preset", name, sorted(known))
    return known[name]


def apply_preset(values: Mapping[str, Any], given: Collection[str] | None = None) -> dict[str, Any]:
    """`values` with the options of the preset they name (if any) beneath them: an option
    of the preset is used unless `given` holds its name (None: every option in `values`
    that is not None was given, as from the API or a sweep file). The preset's name goes."""
    name = values.get(PRESET)
    result = {key: value for key, value in values.items() if key != PRESET}
    if name is None:
        return result
    if not isinstance(name, str):
        raise LmactError(f"option preset takes a preset's name, not {name!r}")
    chosen = get_preset(name)
    for option, value in chosen.options_for(result.get("task")).items():
        stated = option in given if given is not None else result.get(option) is not None
        if not stated:
            result[option] = value
    return result
