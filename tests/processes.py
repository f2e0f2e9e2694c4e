"""Helpers for tests that watch processes, from a scan of /proc (Linux)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    parent: int


def process_table() -> dict[int, ProcessInfo]:
    """Every running process by pid; a zombie (ended, not yet reaped) counts as ended."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
        if state != "Z":
            table[int(entry.name)] = ProcessInfo(name, int(parent))
    return table


def descendants(root: int) -> dict[int, ProcessInfo]:
    """The running children of `root`, their children, and so on."""
    table = process_table()
    found: dict[int, ProcessInfo] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, info in table.items():
            if info.parent == parent and pid not in found:
                found[pid] = info
                frontier.append(pid)
    return found


def running(pids: Iterable[int]) -> set[int]:
    """Those of `pids` still running."""
    table = process_table()
    return {pid for pid in pids if pid in table}


def stockfish_processes(parent: int | None = None) -> set[int]:
    """Pids of the running Stockfish processes (only the children of `parent`, if given)."""
    return {
        pid
        for pid, info in process_table().items()
        if info.name == "stockfish" and parent in (None, info.parent)
    }


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def command_line(pid: int) -> str:
    """The command line of a running process, its arguments joined by spaces ("" if ended)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
