"""`lmact demos TASK --episodes N`: a task's first N expert demonstrations, made ahead."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from lmact.cli.arguments import add_option, storage_options

if TYPE_CHECKING:
    from lmact.demos import DemoStore, GenerationForecast
    from lmact.tasks import TaskSpec


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
    add_option(demos, OPTIONS["task_option"], help="set an option of the task's environment, "
               "as `lmact run --task-option` does (a run with them reads these demonstrations)",
               )  # fmt: skip
    storage_options(demos, help="a run store whose workers share this cache folder: the "
                    "generation is claimed through it, so that one worker on any host makes "
                    "the pool and the others read it (default: none; $LMACT_STORE if set)",
                    )  # fmt: skip


def command(args: argparse.Namespace) -> None:
    from lmact.demos import DemoStore
    from lmact.options import checked
    from lmact.tasks import get_task, parse_task_options

    given = checked({"episodes": args.episodes, "workers": args.workers})
    task = get_task(args.task).with_options(parse_task_options(args.task_option or ()))
    observation = args.observation or task.default_observation
    task.check_observation(observation)
    with _claims(args.store) as lock:
        store = DemoStore.in_cache(args.cache_dir, given.get("workers"))
        store.generation_lock = lock
        _generate(store, task, observation, args.episodes)


@contextlib.contextmanager
def _claims(store: object) -> Iterator[Callable[[str], contextlib.AbstractContextManager[None]]]:
    """The generation lock of the run store given (--store or $LMACT_STORE), else none."""
    from lmact.store import STORE_VARIABLE, open_store

    if store is None and not os.environ.get(STORE_VARIABLE, "").strip():
        yield lambda name: contextlib.nullcontext()
        return
    with open_store(store) as run_store:
        yield run_store.exclusive


def _generate(store: DemoStore, task: TaskSpec, observation: str, episodes: int) -> None:
    """Load the first `episodes` demonstrations, generating those missing, with progress;
    say what was made and how long it took."""
    from tqdm import tqdm

    from lmact.report.page import counted
    from lmact.text import visible

    started = time.perf_counter()
    with tqdm(
        total=episodes,
        # Those stored by an earlier, stopped command count as done: it resumes after them.
        initial=store.stored_count(task, observation, episodes),
        desc=f"demonstrations {task.name}",
        unit="demo",
        disable=not sys.stderr.isatty(),
    ) as bar:

        def tell(forecast: GenerationForecast) -> None:
            bar.write(visible(f"lmact: {forecast.describe()}"), file=sys.stderr)

        store = store.watched(tell)
        demonstrations = store.load(task, observation, 0, episodes, bar.update)
    returns = [d.total_return for d in demonstrations]
    print(
        f"{counted(len(demonstrations), 'demonstration')} of {task.name}/{observation} in "
        f"{store.directory(task, observation)} (mean return {sum(returns) / len(returns):.3f})"
    )
    print(_time_taken(store, time.perf_counter() - started))


def _time_taken(store: DemoStore, seconds: float) -> str:
    """How long the command took, and its rate of generation."""
    from lmact.demos import duration

    made = sum(generation.forecast.missing for generation in store.generations)
    if not made:
        return f"all stored already (read in {duration(seconds)})"
    stored = store.generations[0].forecast.stored
    return (
        f"generated {made} in {duration(seconds)}: {_rate(made / seconds)} a second, "
        f"{duration(seconds / made)} each ({stored} were stored already)"
    )


def _rate(per_second: float) -> str:
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.2g}"
