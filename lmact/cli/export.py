"""`lmact export [RUN…] --format parquet --out DIR`: runs (or a task's demonstrations) as
tables other tools read."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmact.cli.arguments import add_option, storage_options
from lmact.errors import LmactError

FORMATS = ("parquet",)


def add_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write runs (or demonstrations) as Parquet tables",
        description="Write the runs given (a run id or a prefix of one; none: every run) as "
        "runs.parquet, episodes.parquet and steps.parquet under --out, each step with the "
        "observation the model was shown (text, or PNG bytes), rebuilt as `lmact view` "
        "rebuilds it; or, with --demos TASK, a task's first --episodes demonstrations as "
        "demonstrations.parquet. pandas.read_parquet and datasets.load_dataset('parquet', "
        "...) read them offline (see docs/reports.md).",
    )
    export.later(arguments)


def arguments(export: argparse.ArgumentParser) -> None:
    from lmact.options import OPTIONS

    export.add_argument("runs", nargs="*", metavar="RUN", help="run ids (or prefixes)")
    export.add_argument("--format", default="parquet", help="parquet (the one so far)")
    export.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="the folder the tables are written to")  # fmt: skip
    export.add_argument("--demos", metavar="TASK",
                        help="export this task's demonstrations instead of runs")  # fmt: skip
    add_option(export, OPTIONS["episodes"], metavar="N",
               help="with --demos: how many demonstrations (generated where missing)")  # fmt: skip
    add_option(export, OPTIONS["observation"],
               help="with --demos: their observation format (default: the task's)")  # fmt: skip
    storage_options(export)


def command(args: argparse.Namespace) -> None:
    from lmact.demos import DemoStore
    from lmact.report.export import export_demonstrations, export_runs
    from lmact.store import open_store, store_exists, store_location
    from lmact.tasks import get_task

    if args.format not in FORMATS:
        raise LmactError(f"unknown export format {args.format!r}; accepted: {', '.join(FORMATS)}")
    demo_store = DemoStore.in_cache(args.cache_dir, args.workers)
    if args.demos is not None:
        if args.runs or args.episodes is None:
            raise LmactError("--demos TASK exports demonstrations: give --episodes N, no run")
        task = get_task(args.demos)
        observation = args.observation or task.default_observation
        task.check_observation(observation)
        print(export_demonstrations(task, observation, args.episodes, args.out, demo_store))
        return
    place = store_location(args.store)
    if not store_exists(place):
        raise LmactError(f"no run store at {place}; start with `lmact run`")
    with open_store(place) as store:
        for path in export_runs(store, args.runs, args.out, demo_store):
            print(path)
