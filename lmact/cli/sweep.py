"""`lmact sweep FILE`: every run of a sweep file and the baselines they need."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from lmact.cli.arguments import add_option, storage_options


def add_parser(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="play a grid of runs from a TOML file",
        description="Play every run of a sweep file (a base of run options and axes whose "
        "product is the grid; see tasks/sweeps/) and the baselines they need, each once, "
        "in one event loop with one caller per model. Resumable like a run; the sweep's "
        "name and grid are kept in the store for `lmact report --sweep NAME`.",
    )
    sweep.later(arguments)


def arguments(sweep: argparse.ArgumentParser) -> None:
    from lmact.options import OPTIONS
    from lmact.store import DEFAULT_STORE

    sweep.add_argument("file", type=Path, help="the sweep file (TOML)")
    add_option(sweep, OPTIONS["dry_run"], help="call no model: print the runs, calls, prompt "
               "tokens and estimated cost")  # fmt: skip
    add_option(sweep, OPTIONS["max_connections"], metavar="N",
               help="requests in flight at once per model (default: the sweep file's "
               "max_connections, else each provider's)")  # fmt: skip
    for name in ("max_cost", "max_time", "log_to"):  # unset: the sweep file's [base]'s, if any
        add_option(sweep, OPTIONS[name], default=None)
    sweep.add_argument("--shard", metavar="I/N", type=_shard,
                       help="play shard I of N (0 <= I < N): a deterministic share of every "
                       "run's episodes (a replicate's stay together), into this store; "
                       "`lmact merge` joins the shards, then `lmact report` scores them",
                       )  # fmt: skip
    # Unset on the command line, these come from the sweep file's [base], if it sets them.
    store_help = (
        "the run store, a SQLite file or postgresql://USER@HOST:PORT/DB (default: the sweep "
        f"file's store, else $LMACT_STORE, else {DEFAULT_STORE})"
    )
    storage_options(sweep, default=None, help=store_help)


def _shard(text: str) -> tuple[int, int]:
    """`I/N` as (I, N), 0 <= I < N; argparse makes anything else a one-line error."""
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"give I/N with 0 <= I < N, not {text!r}")
    return int(index), int(count)


def command(args: argparse.Namespace) -> None:
    from lmact.cli.console import print_sweep, print_sweep_estimate, sweep_progress
    from lmact.sweeps import plan_sweep

    plan = plan_sweep(args.file, store=args.store, cache_dir=args.cache_dir,
                      workers=args.workers, max_connections=args.max_connections,
                      max_cost=args.max_cost, max_time=args.max_time,
                      log_to=args.log_to)  # fmt: skip
    plan = dataclasses.replace(plan, shard=args.shard)
    if args.dry_run:
        print_sweep_estimate(plan.sweep, plan.estimate(), plan.process.max_cost)
        return
    print_sweep(plan.sweep, plan.play(sweep_progress))
