"""`lmact run`: one run and its baselines, from the options of a run (`lmact.options`)."""

from __future__ import annotations

import argparse
import json
import sys

from lmact.cli.arguments import add_options, given, stated


def add_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="evaluate a model on a task",
        description="Evaluate a model on test episodes of a task, with expert demonstrations "
        "in the prompt; also runs the random and expert baselines on the same "
        "test seeds and prints the normalized score. Everything is stored: rerunning "
        "the same command makes no model call, and a killed run resumes.",
    )
    run.later(arguments)


def arguments(run: argparse.ArgumentParser) -> None:
    """Every option of a run (`lmact.options.OPTIONS`), by its declaration."""
    from lmact.options import OPTIONS

    add_options(run, OPTIONS.values())


def command(args: argparse.Namespace) -> None:
    from lmact.api import play
    from lmact.cli.console import print_estimate, print_summary
    from lmact.options import read_run
    from lmact.runner import RunEstimate
    from lmact.store import store_location

    read = read_run(given(args), stated(args))
    played = play(read, progress=sys.stderr.isatty())
    if isinstance(played, RunEstimate):
        print_estimate(played, args.json, read.process.max_cost)
    elif args.json:
        print(json.dumps(played.to_dict()))
    else:
        print_summary(played, store_location(read.process.store))
