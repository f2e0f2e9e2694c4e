"""`lmact merge STORE... --into STORE`: shards of a sweep (or any stores) joined into one."""

from __future__ import annotations

import argparse

from lmact.errors import LmactError
from lmact.store.location import store_location

# A merge that found conflicts: what it could join is joined, the rest left as it was.
EXIT_CONFLICTS = 1


def add_parser(commands: argparse._SubParsersAction) -> None:
    merge = commands.add_parser(
        "merge",
        help="join run stores (a sweep's shards) into one",
        description="Join the runs of run stores (the shards of `lmact sweep --shard`, or "
        "any stores) into one. A finished episode missing from the target is copied with "
        "its steps; one it holds with the same results is left; one it holds with other "
        "results is a conflict: reported and not overwritten (exit status 1). Unfinished "
        "episodes are not copied: resuming the run on the merged store plays them. The "
        "model-call cache and the sweeps' grids are joined too.",
    )
    merge.add_argument("stores", nargs="+", type=store_location, metavar="STORE",
                       help="a run store to merge from")  # fmt: skip
    merge.add_argument("--into", type=store_location, required=True, metavar="STORE",
                       help="the run store merged into (made if missing)")  # fmt: skip


def command(args: argparse.Namespace) -> None:
    from lmact.report.page import counted
    from lmact.store import RunStore, StoreUrl
    from lmact.store.merge import check_sources, describe

    if any(isinstance(place, StoreUrl) for place in (*args.stores, args.into)):
        raise LmactError(
            "lmact merge joins SQLite stores (the shards of lmact sweep --shard); workers that "
            "share a PostgreSQL store need no merge"
        )
    check_sources(args.stores, args.into)
    conflicts = 0
    with RunStore(args.into) as target:
        for source in args.stores:
            merged = target.merge_from(source)
            conflicts += len(merged.conflicts)
            print(describe(source, merged), flush=True)
    if conflicts:
        raise MergeConflicts(f"{counted(conflicts, 'conflict')} left as {args.into} held them")


class MergeConflicts(LmactError):
    """A merge that joined what it could and left conflicts: exit status 1, not 2."""

    exit_code = EXIT_CONFLICTS
