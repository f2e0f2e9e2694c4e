"""The command line's arguments, made from the options' declarations (`lmact.declarations`):
an option `name` is the flag `--name` with dashes (or its declared `flag`), with its type,
default, choices, metavar and help; `--help` lists them in their declared order and groups.
The one place that says an option as a flag (`flag_for`).

A command's arguments are added when that command is parsed (`Parser.later`): the options
of a run are the regimes' declarations, and `lmact tasks` need not import the regimes."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

from lmact.declarations import Option

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other lmact error, and arguments
    that may be added when they are needed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._later: list[Callable[[argparse.ArgumentParser], None]] = []

    def later(self, add: Callable[[argparse.ArgumentParser], None]) -> None:
        """Add arguments with `add` once this parser parses or shows its help."""
        self._later.append(add)

    def _added(self) -> None:
        while self._later:
            self._later.pop(0)(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._added()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._added()
        return super().format_help()

    def format_usage(self) -> str:
        self._added()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def flag_of(option: Option) -> str:
    return option.flag or "--" + option.name.replace("_", "-")


def flag_for(name: str) -> str:
    """The flag of the option `name` (of a run, or of a command: `--` and the name)."""
    from lmact.options import OPTIONS

    option = OPTIONS.get(name)
    return flag_of(option) if option is not None else "--" + name.replace("_", "-")


# Where a namespace keeps the options given on the command line (not left at their default).
_STATED = "_stated_options"


def _stating(action: type[argparse.Action]) -> type[argparse.Action]:
    """`action`, noting in the namespace that its option was given (a preset gives those
    that were not)."""

    class Stated(action):  # type: ignore[valid-type, misc]
        def __call__(self, parser: Any, namespace: Any, *args: Any, **kwargs: Any) -> None:
            stated = getattr(namespace, _STATED, set())
            stated.add(self.dest)
            setattr(namespace, _STATED, stated)
            super().__call__(parser, namespace, *args, **kwargs)

    return Stated


def add_option(container: Any, option: Option, **overrides: Any) -> None:
    """`option` as an argument of a parser (or of one of its groups); `overrides` replace
    what the declaration says (a command's own help, default, metavar)."""
    kwargs: dict[str, Any] = {"dest": option.name, "default": option.default}
    kwargs["action"] = _stating(argparse._StoreAction)
    if option.type is bool:
        kwargs["action"] = _stating(argparse._StoreTrueAction)
    else:
        if option.type is not str:
            kwargs["type"] = option.convert or option.type
        if option.multiple:
            kwargs["action"] = _stating(argparse._AppendAction)
        if option.choices is not None:
            kwargs["choices"] = option.choices
        if option.metavar is not None:
            kwargs["metavar"] = option.metavar
        if option.required:
            kwargs["required"] = True
    kwargs["help"] = option.help_text()
    container.add_argument(flag_of(option), **{**kwargs, **overrides})


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """The options as arguments, in their order: each in its help group (made when first
    needed: groups are listed in that order), those of one `exclusive` label in one mutually
    exclusive group."""
    groups: dict[str | None, Any] = {None: parser}
    exclusive: dict[str, Any] = {}
    for option in options:
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        container = groups[option.group]
        if option.exclusive is not None:
            if option.exclusive not in exclusive:
                exclusive[option.exclusive] = container.add_mutually_exclusive_group()
            container = exclusive[option.exclusive]
        # A required option may come from a preset: `read_run` says when none gave it.
        add_option(container, option, required=False)


def storage_options(
    parser: argparse.ArgumentParser, store: bool = True, **store_overrides: Any
) -> None:
    """--store (unless not `store`), --cache-dir and --workers, as `lmact run` has them."""
    from lmact.options import OPTIONS

    names = ("store", "cache_dir", "workers") if store else ("cache_dir", "workers")
    for name in names:
        add_option(parser, OPTIONS[name], **(store_overrides if name == "store" else {}))


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a command's arguments, by name (the command's own name left out)."""
    return {name: value for name, value in vars(args).items() if name not in ("command", _STATED)}


def stated(args: argparse.Namespace) -> set[str]:
    """The options given on the command line, not left at their defaults."""
    return set(getattr(args, _STATED, set()))
