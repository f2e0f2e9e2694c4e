"""`lmact demos TASK --episodes N`: a task's first N expert demonstrations, made ahead."""

from __future__ import annotations

import argparse
import sys

from lmact.cli.arguments import add_option, storage_options


def add_parser(commands: argparse._SubParsersAction) -> None:
    demos = commands.add_parser(
        "demos",
        help="generate demonstrations ahead of a run",
        description="Generate (or check) the first N expert demonstrations of a task.",
    )
    demos.later(arguments)


def arguments(demos: argparse.ArgumentParser) -> None:
    from lmact.options import OPTIONS

    demos.add_argument("task", help="a task name (see `lmact tasks`)")
    add_option(demos, OPTIONS["episodes"], required=True, metavar="N", help=None)
    add_option(demos, OPTIONS["observation"], help="observation format (default: the task's)")
    storage_options(demos, store=False)


def command(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from lmact.demos import DemoStore
    from lmact.options import checked
    from lmact.report.page import counted
    from lmact.tasks import get_task

    given = checked({"episodes": args.episodes, "workers": args.workers})
    task = get_task(args.task)
    observation = args.observation or task.default_observation
    task.check_observation(observation)
    store = DemoStore.in_cache(args.cache_dir, given.get("workers"))
    with tqdm(
        total=args.episodes,
        desc=f"demonstrations {task.name}",
        unit="demo",
        disable=not sys.stderr.isatty(),
    ) as bar:
        demonstrations = store.load(task, observation, 0, args.episodes, bar.update)
    returns = [d.total_return for d in demonstrations]
    print(
        f"{counted(len(demonstrations), 'demonstration')} of {task.name}/{observation} in "
        f"{store.directory(task, observation)} (mean return {sum(returns) / len(returns):.3f})"
    )
