"""`lmact view [RUN_ID]`: a step-by-step page of a run's episodes (`lmact.report.viewer`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmact.cli.arguments import add_option, storage_options
from lmact.declarations import INT_LIMIT, Option

EPISODE = Option(
    "episode", int, least=0, most=INT_LIMIT, metavar="N",
    help="the episode shown first: episode N (in-context RL: of replicate 0; the page links "
    "every other; default: the first)",
)  # fmt: skip
PORT = Option("port", int, default=0, least=0, most=65535,
              help="the port of --serve (default: any free one)")  # fmt: skip


def add_parser(commands: argparse._SubParsersAction) -> None:
    view = commands.add_parser(
        "view",
        help="a step-by-step page of a run's episodes",
        description="Write a self-contained HTML page of a run's finished episodes, step by "
        "step: each observation as the model saw it, the completion, the answer and its kind, "
        "the action executed (marked when it replaced the answer), reward, tokens, latency, "
        "and the demonstrations or in-context RL context. The episodes are replayed offline "
        "to rebuild each prompt, which is checked against the stored prompt hash.",
    )
    view.later(arguments)


def arguments(view: argparse.ArgumentParser) -> None:
    view.add_argument(
        "run_id",
        nargs="?",
        metavar="RUN_ID",
        help="a run id, or its first characters (default: the latest run that is not a "
        "baseline; `lmact report` lists them)",
    )
    add_option(view, EPISODE)
    view.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the page, - for stdout (default: view-RUN_ID.html beside the "
        "run store); the path written is printed",
    )
    view.add_argument(
        "--serve",
        action="store_true",
        help="also serve the page on http://127.0.0.1:PORT/ until Ctrl-C",
    )
    add_option(view, PORT)
    storage_options(view)


def command(args: argparse.Namespace) -> None:
    from lmact.demos import DemoStore
    from lmact.errors import LmactError
    from lmact.options import checked
    from lmact.report.tables import resolve_run
    from lmact.report.viewer import render_viewer, serve_page, view_path
    from lmact.store import open_played_store, store_location
    from lmact.text import visible

    episode, port = EPISODE.check(args.episode), PORT.check(args.port)
    workers = checked({"workers": args.workers}).get("workers")
    place = store_location(args.store)
    with open_played_store(place) as store:
        run = resolve_run(store, args.run_id)
        demo_store = DemoStore.in_cache(args.cache_dir, workers)
        page = render_viewer(store, run.run_id, episode, demo_store=demo_store)
    if args.out == "-":
        # The page's text is a model's: raw, its escape sequences would reach a terminal
        # (a browser shows the written escapes alike; the page's script holds only JSON).
        print(visible(page, keep="\n\t"), end="")
    else:
        out = Path(args.out) if args.out else view_path(place, run.run_id)
        try:
            out.write_text(page, encoding="utf-8")
        except OSError as error:
            raise LmactError(f"cannot write {out}: {error.strerror or error}") from None
        print(out)
    if args.serve:  # stdout is written when the command ends: the address goes to stderr
        serve_page(page, port, lambda url: print(f"lmact: serving {url} (Ctrl-C stops)",
                                                  file=sys.stderr, flush=True))  # fmt: skip
