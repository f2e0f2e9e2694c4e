"""The `lmact` command: one module per command, each parsing its arguments, calling the
API (`lmact.api`, or the layer it wraps) and printing; here, the commands joined, and the
one place where an error becomes the command's one line (options said as flags) and its
exit code."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType

from lmact.cli import (
    compare,
    demos,
    export,
    merge,
    models,
    presets,
    report,
    run,
    sweep,
    tasks,
    view,
)
from lmact.cli.arguments import EXIT_USAGE, Parser, flag_for
from lmact.declarations import OptionError
from lmact.errors import LmactError
from lmact.text import visible

# The commands, in the order `lmact --help` lists them.
_MODULES: tuple[ModuleType, ...] = (
    run, sweep, merge, demos, report, compare, view, export, tasks, presets, models,
)  # fmt: skip
COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    module.__name__.rsplit(".", 1)[1]: module.command for module in _MODULES
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lmact",
        description="Evaluate language models as policies in interactive tasks, "
        "from demonstrations in context (LMAct).",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in _MODULES:
        module.add_parser(commands)
    return parser


def say(error: LmactError) -> str:
    """An error as the command line says it: the options it names, by their flags."""
    return error.say(flag_for) if isinstance(error, OptionError) else str(error)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: claims released, children ended


def _write_output(text: str) -> str | None:
    """Write a command's output to stdout; the reason if it cannot be written (a full
    disk, a closed pipe: `| head` is no error, so its reason is empty)."""
    if sys.stdout.isatty():  # what no command made visible yet (a CSV cell, say) stays harmless
        text = visible(text, keep="\n\t")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as error:
        # Point stdout at nothing, so that the interpreter's own flush at exit is quiet.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return "" if error.errno == errno.EPIPE else error.strerror or str(error)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        return _dispatch(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    """Run a command; its output is written at the end, in one place that can fail."""
    output = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(output):
            COMMANDS[args.command](args)
    except LmactError as error:
        # A command that did part of its work (a merge with conflicts) says so by its code.
        code = getattr(error, "exit_code", EXIT_USAGE)
        message = f"lmact: error: {say(error)}"
    except KeyboardInterrupt:
        code, message = 130, "lmact: interrupted; rerun the same command to resume"
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise  # not a full disk: a bug, keep its traceback
        where = f" ({error.filename})" if error.filename else ""
        code, message = EXIT_USAGE, f"lmact: error: no space left on the device{where}"
    problem = _write_output(output.getvalue())
    if code:
        print(message, file=sys.stderr)
    elif problem:
        print(f"lmact: error: cannot write the output: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return code
