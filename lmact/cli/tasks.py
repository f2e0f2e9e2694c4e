"""`lmact tasks`: the tasks, their observation formats and defaults."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("tasks", help="list the tasks", description="List the tasks.")


def command(args: argparse.Namespace) -> None:
    from lmact.tasks import task_specs

    for spec in task_specs().values():
        formats = ", ".join(
            f"{o} (default)" if o == spec.default_observation else o for o in spec.observations
        )
        print(
            f"{spec.name}: {spec.description}\n  observations: {formats}; "
            f"{spec.max_steps} steps at most; {spec.episodes} test episodes by default"
        )
