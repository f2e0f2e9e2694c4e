"""Experiment trackers (`--log-to NAME`): hooks that hear of the runs, episodes and sweeps a
process plays, by name from the entry-point group `lmact.trackers` (lmact's own `wandb` and
`mlflow` are entry points too: docs/trackers.md). A third-party package adds one by
registering its `lmact.trackers.base.Tracker` subclass there, the tracker's name as the
entry point's name.

`Trackers` is what the runner and the sweep talk to: it keeps each run's running measures,
hands every event to each tracker, and disables a tracker that raises (one line on stderr)
so that a tracker never stops a run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from lmact.envs import (
    entry_point_origin,
    load_plugin_class,
    plugin_entry_points,
    refuse_claimed_twice,
)
from lmact.errors import LmactError, UnknownNameError
from lmact.records import EpisodeRecord, UnitKey, UnitKind
from lmact.scoring import normalized_score
from lmact.text import error_line
from lmact.trackers.base import TrackedRun, Tracker

__all__ = ["ENTRY_POINT_GROUP", "TrackedRun", "Tracker", "Trackers", "open_trackers"]

ENTRY_POINT_GROUP = "lmact.trackers"
# The baselines a running normalized score needs.
NORMALIZING = ("random", "expert")


def tracker_names() -> list[str]:
    """The names `--log-to` takes: every installed tracker's, sorted."""
    return sorted({entry_point.name for entry_point in plugin_entry_points(ENTRY_POINT_GROUP)})


def tracker_class(name: str) -> type[Tracker]:
    """The Tracker subclass registered as `name`; a one-line LmactError for a name that is
    unknown, claimed twice, or whose plug-in cannot be loaded."""
    claims = [e for e in plugin_entry_points(ENTRY_POINT_GROUP) if e.name == name]
    if not claims:
        raise UnknownNameError("tracker", name, tracker_names())
    origins = [entry_point_origin(entry_point) for entry_point in claims]
    refuse_claimed_twice("tracker", name, origins, ENTRY_POINT_GROUP)
    return load_plugin_class(claims[0], "tracker", Tracker)


def open_trackers(names: Iterable[str]) -> Trackers:
    """The trackers of these names, made; a tracker that cannot start (its extra missing,
    its store unreachable) is a one-line LmactError before any run starts."""
    made: list[tuple[str, Tracker]] = []
    try:
        for name in names:
            tracker = tracker_class(name)
            try:
                made.append((name, tracker()))
            except LmactError:
                raise
            except Exception as error:
                raise LmactError(f"tracker {name} cannot start: {error_line(error)}") from None
    except BaseException:
        Trackers(made).close()
        raise
    return Trackers(made)


@dataclass
class _Running:
    """A tracked run's measures over the episodes this process finished."""

    baselines: tuple[str, ...]  # the policies of the baselines it is normalized by
    episodes: int = 0
    returns: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None once a cost is unknown
    # Returns by unit, by source ("run" and the baselines'), until all of a unit's are known;
    # then added to `complete` (sums of the run's and each baseline's returns) once.
    known: dict[UnitKey, dict[str, float]] = field(default_factory=dict)
    complete: dict[str, float] = field(default_factory=dict)

    def note(self, source: str, unit: UnitKey, value: float) -> None:
        """A return of `source` on `unit`: once the run's and every baseline's are known,
        it counts towards the running normalized score."""
        if len(self.baselines) < len(NORMALIZING):
            return
        seen = self.known.setdefault(unit, {})
        seen[source] = value
        if len(seen) == len(self.baselines) + 1:
            for name, one in self.known.pop(unit).items():
                self.complete[name] = self.complete.get(name, 0.0) + one

    def add(self, episode: EpisodeRecord) -> dict[str, float]:
        """Count `episode` of the run: its measures, as `Tracker.episode_finished` says."""
        self.episodes += 1
        self.returns += episode.total_return
        self.prompt_tokens += episode.usage.prompt_tokens
        self.completion_tokens += episode.usage.completion_tokens
        if self.cost_usd is not None:
            self.cost_usd = None if episode.cost_usd is None else self.cost_usd + episode.cost_usd
        self.note("run", episode.unit, episode.total_return)
        measures = {
            "episode/return": episode.total_return,
            "running/episodes": float(self.episodes),
            "running/mean_return": self.returns / self.episodes,
            "running/prompt_tokens": float(self.prompt_tokens),
            "running/completion_tokens": float(self.completion_tokens),
        }
        if self.cost_usd is not None:
            measures["running/cost_usd"] = self.cost_usd
        score = self.normalized()
        if score is not None:
            measures["running/normalized_score"] = score
        return measures

    def normalized(self) -> float | None:
        """The normalized score of the units compared so far. Of their sums, not their
        means: the score is a ratio of differences, the same for both."""
        if not self.complete:
            return None
        sums = self.complete
        return normalized_score(sums["run"], sums["random"], sums["expert"])


class Trackers:
    """The trackers of a process, told of its runs, episodes and sweeps; none: every event
    is a no-op. A tracker that raises is disabled (said in one line) and the others go on."""

    def __init__(self, trackers: Sequence[tuple[str, Tracker]] = ()) -> None:
        self.active = list(trackers)  # (name, tracker)
        self.sweep: str | None = None
        self.running: dict[str, _Running] = {}  # the started runs, by run id
        # A baseline's run id -> the started runs it normalizes, each with its policy.
        self.normalizes: dict[str, list[tuple[str, str]]] = {}

    def __bool__(self) -> bool:
        return bool(self.active)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _emit(self, event: str, *args: Any) -> None:
        for name, tracker in list(self.active):
            try:
                getattr(tracker, event)(*args)
            except Exception as error:  # a tracker never stops a run: it stops logging
                self.active.remove((name, tracker))
                _say(f"lmact: tracker {name} failed ({error_line(error)}) and is disabled; "
                     "the run goes on")  # fmt: skip
                _quietly_close(tracker)

    def sweep_started(self, sweep: str, runs: Mapping[str, Mapping[str, Any]]) -> None:
        self.sweep = sweep
        self._emit("sweep_started", sweep, runs)

    def run_started(
        self,
        run: TrackedRun,
        baselines: Mapping[str, tuple[str, Mapping[UnitKey, float]]],
    ) -> None:
        """`run` starts; `baselines`: by policy, each baseline's run id and the returns it
        has stored (its units played later here are noted as they finish)."""
        if not self.active:
            return
        normalizing = tuple(p for p in NORMALIZING if p in baselines)
        running = self.running[run.run_id] = _Running(normalizing)
        for policy in normalizing:
            baseline_id, stored = baselines[policy]
            self.normalizes.setdefault(baseline_id, []).append((run.run_id, policy))
            for unit, value in stored.items():
                running.note(policy, unit, value)
        self._emit("run_started", TrackedRun(run.run_id, run.name, run.config, self.sweep))

    def episode_finished(self, run_id: str, episode: EpisodeRecord) -> None:
        """An episode this process finished and stored, of any run (a baseline's counts
        towards the running normalized score of the runs it normalizes)."""
        if not self.active or episode.unit_kind is not UnitKind.EPISODE:
            return
        for tracked_id, policy in self.normalizes.get(run_id, ()):
            if tracked_id in self.running:
                self.running[tracked_id].note(policy, episode.unit, episode.total_return)
        running = self.running.get(run_id)
        if running is not None:
            self._emit("episode_finished", run_id, episode, running.add(episode))

    def run_finished(
        self, run_id: str, summary: Mapping[str, Any] | None, error: str | None = None
    ) -> None:
        if self.running.pop(run_id, None) is not None:
            self._emit("run_finished", run_id, summary, error)

    def sweep_finished(self, sweep: str, errors: Mapping[str, str]) -> None:
        self._emit("sweep_finished", sweep, errors)
        self.sweep = None

    def close(self) -> None:
        """Close every tracker (runs still open did not finish: an interruption)."""
        self._emit("close")
        self.active.clear()
        self.running.clear()


def _say(line: str) -> None:
    tqdm.write(line, file=sys.stderr)  # above a progress bar, if one is shown


def _quietly_close(tracker: Tracker) -> None:
    with contextlib.suppress(Exception):  # already reported as failed: one line is enough
        tracker.close()
