"""Environment families, by the name a task spec's `environment` field uses."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from lmact.envs.base import Environment
from lmact.errors import UnknownNameError

# Imported lazily so that a task's heavy dependencies load only when the task is used.
ENVIRONMENT_CLASSES: dict[str, str] = {
    "tic_tac_toe": "lmact.envs.tic_tac_toe:TicTacToe",
    "grid_world": "lmact.envs.grid_world:GridWorld",
    "chess": "lmact.envs.chess:Chess",
    "crossword": "lmact.envs.crossword:Crossword",
    "phoenix": "lmact.envs.phoenix:Phoenix",
    "cheetah": "lmact.envs.cheetah:Cheetah",
    "bandit": "lmact.envs.bandit:Bandit",
    "classification": "lmact.envs.classification:Classification",
}


def environment_class(name: str) -> type[Environment]:
    try:
        module_name, class_name = ENVIRONMENT_CLASSES[name].split(":")
    except KeyError:
        raise UnknownNameError("environment", name, sorted(ENVIRONMENT_CLASSES)) from None
    return getattr(import_module(module_name), class_name)


def make_environment(name: str, options: dict[str, Any] | None = None) -> Environment:
    return environment_class(name)(**(options or {}))
