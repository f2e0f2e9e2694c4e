"""Environment families, by the name a task spec's `environment` field uses.

Built-in families are listed below. A third-party package adds one by registering its
Environment subclass under the entry-point group `lmact.envs`, with the family name as the
entry-point name. A name claimed twice (a plug-in using a built-in's name, or two plug-ins
the same name) is refused when it is used, naming both, rather than one of them winning
silently; every other name still works.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import import_module
from importlib.metadata import EntryPoint, distributions
from typing import Any, TypeVar

from lmact.envs.base import Environment
from lmact.errors import LmactError, UnknownNameError
from lmact.text import error_line

ENTRY_POINT_GROUP = "lmact.envs"
T = TypeVar("T")

# Imported lazily so that a task's heavy dependencies load only when the task is used.
BUILTIN_ENVIRONMENTS: dict[str, str] = {
    "tic_tac_toe": "lmact.envs.tic_tac_toe:TicTacToe",
    "grid_world": "lmact.envs.grid_world:GridWorld",
    "chess": "lmact.envs.chess:Chess",
    "crossword": "lmact.envs.crossword:Crossword",
    "phoenix": "lmact.envs.phoenix:Phoenix",
    "cheetah": "lmact.envs.cheetah:Cheetah",
    "bandit": "lmact.envs.bandit:Bandit",
    "classification": "lmact.envs.classification:Classification",
}


@cache
def installed_entry_points() -> dict[str, tuple[EntryPoint, ...]]:
    """Every installed distribution's entry points, by group, read once a process:
    a scan reads each distribution's metadata (a tenth of a second here), and the
    environments, tasks, regimes and providers each look for their own group.

    Unlike `importlib.metadata.entry_points`, which keeps one entry point of a name, this keeps
    every distribution's, so that a name two packages claim is seen (a distribution found twice
    on the path counts once, as there).
    """
    found: dict[str, list[EntryPoint]] = {}
    seen: set[str] = set()
    for dist in distributions():
        name = re.sub(r"[-_.]+", "-", dist.name or "").lower()
        if name and name in seen:
            continue
        seen.add(name)
        for entry_point in dist.entry_points:
            found.setdefault(entry_point.group, []).append(entry_point)
    return {group: tuple(entry_points) for group, entry_points in found.items()}


def plugin_entry_points(group: str) -> tuple[EntryPoint, ...]:
    """The installed entry points of `group` (`installed_entry_points`): the same tuple at
    every call, which callers cache their reading of."""
    return installed_entry_points().get(group, ())


def entry_point_origin(entry_point: EntryPoint) -> str:
    """`name = "module:Class"` and the distribution that declares it, for error messages."""
    package = f" (package {entry_point.dist.name})" if entry_point.dist is not None else ""
    return f"{entry_point.name} = {entry_point.value!r}{package}"


def _claims() -> dict[str, list[str]]:
    """Family name -> who claims it (the built-in first), as error messages name them."""
    return _claims_of(plugin_entry_points(ENTRY_POINT_GROUP))


@cache  # made once per set of entry points: every unit of a run makes an environment
def _claims_of(entry_points: tuple[EntryPoint, ...]) -> dict[str, list[str]]:
    claims = {name: [f"built-in {target!r}"] for name, target in BUILTIN_ENVIRONMENTS.items()}
    for entry_point in entry_points:
        claims.setdefault(entry_point.name, []).append(entry_point_origin(entry_point))
    return claims


def environment_families() -> list[str]:
    """Every environment family name, built-in and plug-in, sorted."""
    return sorted(_claims())


def environment_class(name: str) -> type[Environment]:
    """The Environment subclass of family `name`; a one-line LmactError for a name that is
    unknown, claimed twice, or whose plug-in cannot be loaded."""
    claims = _claims()
    if name not in claims:
        raise UnknownNameError("environment", name, sorted(claims))
    refuse_claimed_twice("environment", name, claims[name], ENTRY_POINT_GROUP)
    if name in BUILTIN_ENVIRONMENTS:
        module_name, class_name = BUILTIN_ENVIRONMENTS[name].split(":")
        return getattr(import_module(module_name), class_name)
    (entry_point,) = (e for e in plugin_entry_points(ENTRY_POINT_GROUP) if e.name == name)
    return _load_plugin(entry_point)


def _load_plugin(entry_point: EntryPoint) -> type[Environment]:
    loaded = load_plugin_class(entry_point, "environment", Environment)
    formats = getattr(loaded, "observation_formats", None)
    if not isinstance(formats, tuple) or not formats:
        where = f"environment plug-in {entry_point_origin(entry_point)}"
        raise LmactError(f"{where} declares no observation_formats (a tuple of format names)")
    return loaded


def load_plugin_class(entry_point: EntryPoint, kind: str, base: type[T]) -> type[T]:
    """The class a plug-in's entry point names, checked to subclass `base`; a one-line
    LmactError naming the plug-in (as a `kind` plug-in) when it cannot be loaded or is not
    one."""
    where = f"{kind} plug-in {entry_point_origin(entry_point)}"
    try:
        loaded = entry_point.load()
    except Exception as error:  # any failure of third-party code is one line
        raise LmactError(f"{where} cannot be loaded: {error_line(error)}") from None
    if not (isinstance(loaded, type) and issubclass(loaded, base)):
        raise LmactError(f"{where} is not a subclass of {base.__module__}.{base.__qualname__}")
    return loaded


def refuse_claimed_twice(kind: str, name: str, claims: list[str], group: str) -> None:
    """A name two plug-ins (or a plug-in and a built-in) claim is refused, naming both,
    rather than one of them winning silently."""
    if len(claims) > 1:
        raise LmactError(
            f"{kind} {name!r} is claimed more than once: {'; '.join(claims)}; "
            f"rename or uninstall the plug-in's `{group}` entry point"
        )


def make_environment(name: str, options: dict[str, Any] | None = None) -> Environment:
    return environment_class(name)(**(options or {}))
