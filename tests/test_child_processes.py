"""Every child of lmact ends with it: demonstration workers, their engines, the resource tracker.

`lmact demos` of chess with two workers plays the first expert game itself, then starts a
pool of two spawned workers, each with its own Stockfish, and multiprocessing's resource
tracker. Whether lmact is stopped by SIGTERM or killed by SIGKILL, none of them may outlive it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from processes import ProcessInfo, command_line, descendants, running, wait_until

from lmact.resources import data_dir

# Seconds the recorded children may take to end after their parent.
CHILDREN_END_WITHIN_S = 10.0
TESTS = Path(__file__).parent


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    output: Path  # stdout and stderr, and those of every child
    recorded: set[int] = field(default_factory=set)  # descendants, killed after the test

    def text(self) -> str:
        return self.output.read_text()


@contextmanager
def started(args: list[str], tmp_path: Path) -> Iterator[Started]:
    """A Python process running `args`, its output in a file (a pipe would be held open by
    any child left behind); it and whatever the test recorded are killed after."""
    output = tmp_path / "output.txt"
    environment = {**os.environ, "LMACT_CACHE_DIR": str(tmp_path / "cache")}
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, *args], stdout=sink, stderr=sink, env=environment, cwd=TESTS
        )
    run = Started(process, output)
    try:
        yield run
    finally:
        process.kill()
        process.wait()
        for pid in running(run.recorded):
            os.kill(pid, signal.SIGKILL)


def pool_tree(run: Started) -> dict[int, ProcessInfo]:
    """The parent's whole tree of descendants once two workers run with their engines."""
    parent = run.process

    def workers_have_engines() -> bool:
        tree = descendants(parent.pid)
        engines = [p for p, info in tree.items() if info.name == "stockfish"]
        return sum(tree[p].parent != parent.pid for p in engines) >= 2 or parent.poll() is not None

    assert wait_until(workers_have_engines, timeout=90), descendants(parent.pid)
    assert parent.poll() is None, f"ended early: {run.text()}"
    tree = descendants(parent.pid)
    run.recorded |= set(tree)
    commands = [command_line(pid) for pid in tree]
    assert sum("multiprocessing.spawn" in command for command in commands) == 2
    assert any("resource_tracker" in command for command in commands)
    return tree


def left_running(tree: dict[int, ProcessInfo]) -> set[int]:
    """Those of `tree` still running CHILDREN_END_WITHIN_S from now (or once none is)."""
    wait_until(lambda: not running(tree), timeout=CHILDREN_END_WITHIN_S)
    return running(tree)


def stop(run: Started, signal_number: int) -> tuple[int, float]:
    """Send the signal; the exit code and the seconds the process took to end."""
    signalled = time.monotonic()
    run.process.send_signal(signal_number)
    code = run.process.wait(timeout=60)
    return code, time.monotonic() - signalled


def slow_chess(folder: Path) -> Path:
    """A chess variant whose expert thinks 250 ms a move: its first game surely takes the
    second that starts the pool (a quick mate at 50 ms a move did not, in two CI runs)."""
    spec = (data_dir("tasks") / "chess.toml").read_text()
    spec = spec.replace('name = "chess"', 'name = "chess_slow"')
    spec = spec.replace("expert_time_ms = 50", "expert_time_ms = 250")
    path = folder / "chess_slow.toml"
    path.write_text(spec)
    return path


def demos_command(tmp_path: Path) -> list[str]:
    """`lmact demos` with enough games that the pool is still playing when it is stopped."""
    task = str(slow_chess(tmp_path))
    return ["-m", "lmact.cli", "demos", task, "--episodes", "40", "--workers", "2"]


@pytest.mark.slow
def test_sigterm_stops_lmact_demos_and_every_child_at_once(tmp_path: Path) -> None:
    with started(demos_command(tmp_path), tmp_path) as run:
        tree = pool_tree(run)
        code, took = stop(run, signal.SIGTERM)
        assert left_running(tree) == set()
    assert code != 0
    # Waiting for the workers' games (50 ms a move) would take several seconds.
    assert took < 3, f"lmact took {took:.1f} s to stop"
    lines = run.text().splitlines()
    # What it was about to generate (said before the pool started), then one line for the
    # stop, and no traceback.
    assert len(lines) == 2 and "not stored yet" in lines[0], lines
    assert all(line.startswith("lmact: ") for line in lines), lines


@pytest.mark.slow
def test_sigkill_of_lmact_demos_leaves_no_child(tmp_path: Path) -> None:
    with started(demos_command(tmp_path), tmp_path) as run:
        tree = pool_tree(run)
        stop(run, signal.SIGKILL)
        assert left_running(tree) == set()
    # The resource tracker may say it removed the dead pool's semaphores; nothing else.
    assert "Traceback" not in run.text()


# The pool alone, without the command line's SIGTERM handler: the script turns SIGTERM into an
# exception as `lmact` does. Its own first episode is a stand-in, so that the pool starts at
# once; the workers' expert thinks 1 s a move, so waiting for their games would take minutes.
POOL_SCRIPT = """
import signal, sys, tempfile
from pathlib import Path
from lmact import demos
from lmact.envs.base import Observation
from lmact.tasks import get_task

def stop(signum, frame):
    raise {exception}("stop")

def stand_in(task, env, observation, seed):
    return demos.Demonstration(seed, ((Observation(text="x"), "e4"),), 0.0)

signal.signal(signal.SIGTERM, stop)
demos.play_expert_episode = stand_in  # here only: the spawned workers play for real
task = get_task("chess")
task = task.model_copy(update={{"options": {{**task.options, "expert_time_ms": 1000}}}})
store = demos.DemoStore(Path(tempfile.mkdtemp()), workers=2, pool_after_s=0.0)
try:
    store.load(task, "fen", 0, 5)
except {exception} as error:
    print("stopped:", error, flush=True)
    sys.exit(3)
"""


@pytest.mark.slow
@pytest.mark.parametrize("exception", ["KeyboardInterrupt", "RuntimeError"])
def test_an_exception_while_the_pool_plays_kills_its_workers_at_once(
    tmp_path: Path, exception: str
) -> None:
    with started(["-c", POOL_SCRIPT.format(exception=exception)], tmp_path) as run:
        tree = pool_tree(run)
        code, took = stop(run, signal.SIGTERM)
        assert left_running(tree) == set()
    assert (code, run.text()) == (3, "stopped: stop\n")
    assert took < 3, f"the pool took {took:.1f} s to stop"


@pytest.mark.slow
def test_a_worker_that_dies_fails_the_pool_in_one_line_and_stops_the_others(
    tmp_path: Path,
) -> None:
    script = POOL_SCRIPT.format(exception="demos.LmactError")
    with started(["-c", script], tmp_path) as run:
        tree = pool_tree(run)
        worker = next(pid for pid in tree if "multiprocessing.spawn" in command_line(pid))
        os.kill(worker, signal.SIGKILL)  # as the OOM killer would
        assert run.process.wait(timeout=30) == 3
        assert left_running(tree) == set()
    assert run.text() == (
        "stopped: a process generating demonstrations of chess ended unexpectedly; "
        "rerun to resume after the stored ones\n"
    )


WATCHED_SCRIPT = """
import sys, threading, time
from lmact.demo_workers import _watch_parent
threading.Thread(target=_watch_parent, args=(int(sys.argv[1]),), daemon=True).start()
print("watching", flush=True)
time.sleep(60)
"""


def test_a_worker_whose_parent_died_ends_itself(tmp_path: Path) -> None:
    # The parent watch alone (on Linux the kernel also kills a worker with its parent): a
    # process that watches its parent and would otherwise sleep, whose parent is SIGKILLed.
    parent_script = (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {WATCHED_SCRIPT!r}, str(os.getpid())])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with started(["-c", parent_script], tmp_path) as run:
        assert wait_until(lambda: "watching" in run.text(), timeout=30), run.text()
        child = int(run.text().split()[0])
        run.recorded.add(child)
        stop(run, signal.SIGKILL)
        assert wait_until(lambda: not running([child]), timeout=3)


def test_stopping_a_pool_passes_over_only_pythons_cancelled_future_race(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.11's executor thread may fail a future already cancelled when a pool whose
    workers were killed is stopped (InvalidStateError, at random): passed over then; any
    other exception of a thread reaches the hook as ever."""
    from concurrent.futures import InvalidStateError

    from lmact.demo_workers import _broken_pool_race_quiet

    reached: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reached.append(str(args.exc_value)))

    def raising(error: Exception) -> None:
        thread = threading.Thread(target=lambda: (_ for _ in ()).throw(error))
        thread.start()
        thread.join()

    with _broken_pool_race_quiet():
        raising(InvalidStateError("CANCELLED: <Future>"))
        raising(RuntimeError("a bug of ours"))
    raising(InvalidStateError("outside the stop"))
    assert reached == ["a bug of ours", "outside the stop"]
