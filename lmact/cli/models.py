"""`lmact models`: the model names lmact accepts."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "models", help="list the model names", description="List the model names lmact accepts."
    )


def command(args: argparse.Namespace) -> None:
    from lmact.models.registry import DEFAULT_MODEL, accepted_model_names

    for name in accepted_model_names():
        suffix = "  (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{suffix}")
