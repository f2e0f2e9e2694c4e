"""`lmact report`: the table of the store's runs, their plots, the HTML report
(`lmact.report.build` makes them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmact.cli.arguments import add_option, storage_options


def add_parser(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="a table of every run in the store, and plots",
        description="Print a table of every run in the run store, grouped by task; "
        "draw its plots with --plot or --out (see docs/reports.md).",
    )
    report.later(arguments)


def arguments(report: argparse.ArgumentParser) -> None:
    from lmact.report.build import VIEW_EPISODES, VIEW_MAX_MB

    report.add_argument(
        "--format",
        default="markdown",
        help="markdown (default; also md), csv, json (the rows and each run's episodes) "
        "or html (a page with the tables, plots and a viewer page per run; needs --out)",
    )
    for option, noun in (("--task", "task"), ("--model", "model")):
        report.add_argument(
            option,
            action="append",
            metavar="NAME[,NAME…]",
            help=f"only the runs of this {noun}; repeat it or list names with commas",
        )
    report.add_argument(
        "--curves",
        action="store_true",
        help="the learning curves of in-context RL runs (mean return per episode index "
        "across replicates, with its 95%% interval) instead of the table of runs",
    )
    report.add_argument(
        "--sweep", metavar="NAME", help="only the runs of this sweep (see `lmact sweep`)"
    )
    report.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help="also draw every plot the runs support (normalized score and answer rates "
        "against demonstrations, learning curves, bandit measures) as PNG files into DIR "
        "(needs matplotlib: pip install 'lmact[report]')",
    )
    report.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write the table (DIR/report.md, .csv or .json; DIR/curves.* with --curves) "
        "and every plot (DIR/*.png) into DIR instead of printing the table; with --format "
        "html, DIR/index.html and a viewer page per run, DIR/runs/RUN_ID.html",
    )
    add_option(report, VIEW_EPISODES)
    add_option(report, VIEW_MAX_MB)
    storage_options(report)  # the cache: where viewer pages read demonstrations


def command(args: argparse.Namespace) -> None:
    from lmact.report.build import make_report

    report = make_report(
        args.store, format=args.format, tasks=args.task, models=args.model, sweep=args.sweep,
        curves=args.curves, plot=args.plot, out=args.out, view_episodes=args.view_episodes,
        view_max_mb=args.view_max_mb, cache_dir=args.cache_dir, workers=args.workers,
    )  # fmt: skip
    for path in report.written:
        print(f"lmact: wrote {path}", file=sys.stderr)
    if report.viewer_pages and report.index is not None:
        where = report.index.parent / "runs"
        print(f"lmact: wrote {report.viewer_pages} viewer pages under {where}", file=sys.stderr)
    if report.index is not None:
        print(report.index)
    elif report.table is not None:
        print(report.table, end="")
