"""The worker processes that play expert demonstrations in parallel for `lmact.demos`: spawned,
each with its task's environment made once, and ended with the process that started them
(even when it dies by SIGKILL)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from lmact.envs.base import Environment
from lmact.errors import LmactError
from lmact.tasks import TaskSpec

if TYPE_CHECKING:  # `lmact.demos` imports this module
    from lmact.demos import Demonstration

# How often a worker checks that the process that started it is still alive.
_PARENT_POLL_S = 0.5
# prctl(2) option: the signal the kernel sends this process when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def pooled_episodes(
    task: TaskSpec, observation: str, seeds: Sequence[int], workers: int
) -> Iterator[Demonstration]:
    """Expert episodes for `seeds`, in order, played by `workers` spawned processes.

    The workers end with this process in every case: on an exception here (an interrupt, a
    SIGTERM turned into one, an error) they are killed at once rather than left to finish
    their games, and each worker ends itself when its parent dies, even by SIGKILL. A
    worker's engine (Stockfish) quits when its worker ends, on the end of its input.
    """
    # Spawned, not forked: the parent may hold threads (engines, a loaded model).
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(task, os.getpid()),
    )
    finished = False
    try:
        yield from pool.map(_worker_episode, [(observation, seed) for seed in seeds])
        finished = True
    except BrokenProcessPool:
        raise LmactError(
            f"a process generating demonstrations of {task.name} ended unexpectedly; "
            "rerun to resume after the stored ones"
        ) from None
    finally:
        with _broken_pool_race_quiet():
            if not finished:
                _kill_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _broken_pool_race_quiet() -> Iterator[None]:
    """Python 3.11's executor thread, failing the futures of a pool whose workers were
    killed, fails one that stopping the map had cancelled already and prints an
    InvalidStateError traceback from that thread, at random. Nothing of ours is lost: that
    one exception is passed over while the pool is stopped; any other is printed as ever."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not InvalidStateError:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to stop busy workers before Python 3.14
    # (kill_workers), and shutdown() would wait for their games to end.
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        process.kill()


# The task and environment of a demonstration worker process, made once per process; or the
# error that making them raised, reported by each job (an initializer's exception would be
# printed as a traceback by the worker and break the pool).
_worker: tuple[TaskSpec, Environment] | Exception | None = None


def _start_worker(task: TaskSpec, parent: int) -> None:
    global _worker
    # Ctrl-C reaches the whole process group; the parent handles it and kills the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_parent(parent)
    try:
        _worker = (task, task.make_environment())
    except Exception as error:
        _worker = error
    # A spawned worker ends by sys.exit, so atexit runs: the environment is released before
    # the interpreter's teardown, where a live emulator would be reported as leaked (ale-py's
    # nanobind prints some 18 lines per worker on the user's terminal).
    atexit.register(_close_worker)


def _close_worker() -> None:
    global _worker
    if isinstance(_worker, tuple):
        _worker[1].close()
    _worker = None


def _worker_episode(job: tuple[str, int]) -> Demonstration:
    assert _worker is not None, "the pool's initializer makes the worker's environment"
    if isinstance(_worker, Exception):
        raise _worker
    from lmact.demos import play_expert_episode  # which imports this module

    task, env = _worker
    observation, seed = job
    return play_expert_episode(task, env, observation, seed)


def _end_with_parent(parent: int) -> None:
    """End this process as soon as `parent`, which started it, has died (even by SIGKILL)."""
    if sys.platform == "linux":
        # The kernel kills this process the moment its parent dies (strictly, the parent's
        # thread that started it: the pool lives within one DemoStore.load call, one thread).
        with contextlib.suppress(OSError, AttributeError):  # the watcher below is enough
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # Elsewhere (and should the parent have died before prctl): an orphan is adopted by
    # another process, so its parent pid changes.
    threading.Thread(
        target=_watch_parent, args=(parent,), name="lmact-parent-watch", daemon=True
    ).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    # No cleanup to wait for: an engine quits on the end of its input, which this exit causes.
    os._exit(1)
