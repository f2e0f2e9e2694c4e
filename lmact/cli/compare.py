"""`lmact compare RUN_A RUN_B`: the paired difference of two runs on the seeds both played."""

from __future__ import annotations

import argparse

from lmact.cli.arguments import add_option


def add_parser(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help="the paired difference of two runs on the test seeds both played",
        description="Compare two runs of one task on the test seeds both played: the mean "
        "of A - B of their returns, its 95% paired bootstrap interval (and, for contrast, "
        "the interval without pairing), and the share of seeds where each is ahead "
        "(see docs/reports.md).",
    )
    compare.later(arguments)


def arguments(compare: argparse.ArgumentParser) -> None:
    from lmact.options import OPTIONS

    for name in ("RUN_A", "RUN_B"):
        compare.add_argument(
            name.lower(), metavar=name, help="a run id, or its first characters "
            "(`lmact report` lists them)",
        )  # fmt: skip
    compare.add_argument("--format", default="markdown", help="markdown (default; also md) or json")
    add_option(compare, OPTIONS["store"])


def command(args: argparse.Namespace) -> None:
    from lmact.report.compare import compare_runs, comparison_format, format_comparison
    from lmact.store import open_played_store

    fmt = comparison_format(args.format)
    with open_played_store(args.store) as store:
        row = compare_runs(store, args.run_a, args.run_b)
    print(format_comparison(row, fmt), end="")
