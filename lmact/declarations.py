"""What an option is: its declaration (name, type, default, bounds, help, where it shows),
and the check of one value against it.

Each option is declared once: the common run options in `lmact.options`, the options that
only some regimes take next to their configuration (`Regime.options`). Whatever takes an
option is made from these declarations: the reader of run options (`lmact.options`), the
arguments and help of `lmact run`, a sweep file's keys, the columns of `lmact report` and
the settings its paired comparisons name. An error names options by name (`OptionError`);
the command line says them as its flags.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmact.errors import LmactError

# The largest integer an option takes where nothing else bounds it: what SQLite stores.
INT_LIMIT = 2**31 - 1


class Scope(enum.Enum):
    """What an option is an option of."""

    RUN = "run"  # what a run plays: its configuration, its task, its episodes
    MODEL = "model"  # how the process makes and calls model clients (`ModelOptions`)
    PROCESS = "process"  # the process's store, cache, workers and connections
    COMMAND = "command"  # what `lmact run` does with the run: a dry run, JSON, a restart


@dataclass(frozen=True)
class Named:
    """An option named in an error message."""

    name: str


class OptionError(LmactError):
    """A value an option does not take, or options that do not go together. The message
    names options by name (`episodes must be positive, not 0`); `say` names them another
    way (the command line, by flag: `--episodes must be positive, not 0`)."""

    def __init__(self, *parts: str | Named) -> None:
        self.parts = parts
        super().__init__(self.say(lambda name: name))

    def say(self, name_of: Callable[[str], str]) -> str:
        return "".join(p if isinstance(p, str) else name_of(p.name) for p in self.parts)


@dataclass(frozen=True)
class Column:
    """An option as a column of `lmact report`'s tables. Its value is the configuration's
    field (`Option.target`), unless the regime's `report_fields` says otherwise (imitation's
    `demos`: the count packed, also for a run chosen by token budget)."""

    label: str | None = None  # the column's name; default: the option's target
    # "run": among what names the run, before the scores; "setting": after them.
    place: Literal["run", "setting"] = "setting"
    rank: float = math.inf  # where it stands within its place (ties: declaration order)
    # Paired comparisons tell runs apart by it (and name it when two runs differ in it).
    setting: bool = True
    curves: bool = False  # a learning curve's rows name their run by it


@dataclass(frozen=True)
class Measure:
    """A regime's measure of a run, shown by name: with its words in `lmact run`'s summary
    (`summary`), as a column of the report's tables (`column`), or both."""

    name: str
    summary: str | None = None
    column: bool = True


@dataclass(frozen=True)
class Option:
    """One option, as `lmact.api.run` and a sweep file name it (`name`) and `lmact run`
    takes it (as `--` and the name with dashes, unless `flag` says otherwise)."""

    name: str
    type: type = str  # bool, int, float, str or Path
    default: Any = None  # None: not given (a regime's or the task's default applies)
    help: str | Callable[[], str] | None = None  # `lmact run --help`; %(default)s works
    scope: Scope = Scope.RUN
    least: float | None = None  # 1 for an integer: "must be positive"
    most: float | None = None
    positive: bool = False  # strictly above 0 (and `least` then names no message)
    choices: tuple[str, ...] | None = None
    # The keyword its value is passed as: the regime configuration's field (run options) or
    # the `ModelOptions` field (model options); default: its name.
    target: str | None = None
    configures: bool = True  # a run option passed to the regime's `configure`
    negated: bool = False  # a switch that turns its target off (`no_past_actions`)
    multiple: bool = False  # takes one value or several (`base_url`: servers in turn)
    required: bool = False
    metavar: str | None = None
    # How a Path option's text becomes its value, where not `Path` (the store: a path or a
    # database URL); also the command line's converter.
    convert: Callable[[Any], Any] | None = None
    flag: str | None = None  # on the command line, if not the name with dashes
    group: str | None = None  # the `--help` section's title; None: the main list
    order: float = math.inf  # where it stands in `--help` (ties: declaration order)
    exclusive: str | None = None  # options of one label may not be given together
    column: Column | None = None

    @property
    def keyword(self) -> str:
        """What its value is passed as."""
        return self.target or self.name

    @property
    def label(self) -> str | None:
        """Its report column's name, if it has one."""
        return None if self.column is None else self.column.label or self.keyword

    def help_text(self) -> str | None:
        return self.help() if callable(self.help) else self.help

    def given(self, value: Any) -> bool:
        """Whether `value` is one a user gave: neither nothing nor the default."""
        return value is not None and value != self.default

    def check(self, value: Any) -> Any:
        """`value` as the option takes it (an int as a float, a str as a Path), checked
        against its type, choices and bounds; an OptionError naming the option if not.
        None is no value: the option is not given."""
        if value is None:
            return None
        if self.multiple:
            values = [value] if isinstance(value, str | os.PathLike) else value
            if not isinstance(values, list | tuple):
                raise OptionError(Named(self.name), f" takes {self._kind()}, not {value!r}")
            return tuple(self._one(one) for one in values) or None
        return self._one(value)

    def _kind(self) -> str:
        kinds = {bool: "true or false", int: "an integer", float: "a number", Path: "a path"}
        return kinds.get(self.type, "text")

    def _one(self, value: Any) -> Any:
        kind = self.type
        fits = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            # A converter reads what it takes (the store: a path, text or a StoreUrl).
            Path: isinstance(value, str | os.PathLike) or self.convert is not None,
        }.get(kind, isinstance(value, str))
        if not fits:
            raise OptionError(Named(self.name), f" takes {self._kind()}, not {value!r}")
        if kind is Path:
            return Path(value) if self.convert is None else self.convert(value)
        if kind is float and isinstance(value, int) and abs(value) >= 2**1023:
            value = math.inf if value > 0 else -math.inf  # too large for a float: not finite
        elif kind is float:
            value = float(value)
        if kind in (int, float):
            self._check_bounds(value)
        if self.choices is not None and value not in self.choices:
            raise OptionError(
                "unknown ", Named(self.name), f" {value!r}; accepted: {', '.join(self.choices)}"
            )
        return value

    def _check_bounds(self, value: float) -> None:
        if self.least is None and self.most is None and not self.positive:
            return
        name = Named(self.name)
        if not math.isfinite(value):
            raise OptionError(name, f" must be a finite number, not {value}")
        if (self.positive and value <= 0) or (self.least == 1 and value < 1):
            raise OptionError(name, f" must be positive, not {value:g}")
        if self.least is not None and value < self.least:
            raise OptionError(name, f" must be at least {self.least:g}, not {value:g}")
        if self.most is not None and value > self.most:
            raise OptionError(name, f" must be at most {self.most:g}, not {value:g}")


def in_help_order(options: tuple[Option, ...] | list[Option]) -> list[Option]:
    """The options as `--help` lists them: by `order`, ties in declaration order."""
    return sorted(options, key=lambda option: option.order)
