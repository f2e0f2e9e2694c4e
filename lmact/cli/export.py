"""`lmact export [RUN…] --format parquet|inspect --out DIR`: runs (or a task's
demonstrations) as files other tools read: Parquet tables, Inspect eval logs."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmact.cli.arguments import add_option, storage_options
from lmact.errors import LmactError

FORMATS = ("parquet", "inspect")


def add_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write runs (or demonstrations) as Parquet tables or Inspect logs",
        description="Write the runs given (a run id or a prefix of one; none: every run) "
        "under --out. --format parquet (the default): runs.parquet, episodes.parquet and "
        "steps.parquet, each step with the observation the model was shown (text, or PNG "
        "bytes), rebuilt as `lmact view` rebuilds it; pandas.read_parquet and "
        "datasets.load_dataset('parquet', ...) read them offline. With --demos TASK, a "
        "task's first --episodes demonstrations as demonstrations.parquet. --format "
        "inspect: one Inspect eval log a run (an episode a sample, its steps as messages, "
        "the return and normalized score as scores), which `inspect view --log-dir DIR` "
        "opens; needs lmact[inspect]. See docs/reports.md.",
    )
    export.later(arguments)


def arguments(export: argparse.ArgumentParser) -> None:
    from lmact.options import OPTIONS

    export.add_argument("runs", nargs="*", metavar="RUN", help="run ids (or prefixes)")
    export.add_argument("--format", default="parquet",
                        help="parquet tables (default) or inspect eval logs")  # fmt: skip
    export.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="the folder the tables or logs are written to")  # fmt: skip
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
    from lmact.report.inspect_log import export_inspect
    from lmact.store import open_played_store
    from lmact.tasks import get_task

    if args.format not in FORMATS:
        raise LmactError(f"unknown export format {args.format!r}; accepted: {', '.join(FORMATS)}")
    demo_store = DemoStore.in_cache(args.cache_dir, args.workers)
    if args.demos is not None:
        if args.format != "parquet":
            raise LmactError("--demos TASK exports demonstrations as Parquet only")
        if args.runs or args.episodes is None:
            raise LmactError("--demos TASK exports demonstrations: give --episodes N, no run")
        task = get_task(args.demos)
        observation = args.observation or task.default_observation
        task.check_observation(observation)
        print(export_demonstrations(task, observation, args.episodes, args.out, demo_store))
        return
    with open_played_store(args.store) as store:
        export = export_inspect if args.format == "inspect" else export_runs
        for path in export(store, args.runs, args.out, demo_store):
            print(path)
