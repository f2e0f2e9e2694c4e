"""What an experiment tracker is: the events of a process's runs, episodes and sweeps it
receives (`Tracker`, every method a no-op unless overridden), what each event carries, and
helpers the built-in trackers share.

A tracker hears of what the process it lives in does: a run it starts, each episode it
finishes, the run's end with its summary, and a sweep around them. Processes sharing one
run store (workers of a sweep) each hear of their own episodes only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lmact.errors import LmactError
from lmact.models.redaction import display_url
from lmact.records import EpisodeRecord

if TYPE_CHECKING:
    from lmact.regimes.base import RegimeConfig

# The project (W&B) or experiment (MLflow) runs are logged to unless the tracker's own
# environment variable names another.
DEFAULT_PROJECT = "lmact"

# Keys whose values are never handed to a tracker: a configuration may hold a plug-in's
# field of any name, and a key in a tracker's run page is a leaked key.
_SECRET_KEY = re.compile(
    r"(^|_)(api_?key|secret|password|passwd|token|credentials?|authorization)$", re.IGNORECASE
)


@dataclass(frozen=True)
class TrackedRun:
    """A run as trackers are told of it when it starts."""

    run_id: str
    name: str  # "model task/observation", for a tracker's run list
    config: dict[str, Any]  # its configuration (`safe_config`), episodes and lmact's version
    sweep: str | None = None  # the sweep it is played in, if any


class Tracker:
    """Receives the events of the runs this process plays; a subclass overrides those it
    logs. Built by lmact with no argument (settings come from the tracker's own environment
    variables); an exception from any method disables it for the rest of the process, with
    one line on stderr, and the run goes on."""

    def sweep_started(self, sweep: str, runs: Mapping[str, Mapping[str, Any]]) -> None:
        """A sweep starts: its name and its runs' configurations by run id (not the
        baselines'). Its runs' `run_started` follow."""

    def run_started(self, run: TrackedRun) -> None:
        """A run this process evaluates starts (its baselines are not tracked runs)."""

    def episode_finished(
        self, run_id: str, episode: EpisodeRecord, measures: Mapping[str, float]
    ) -> None:
        """This process finished and stored an episode of a started run. `measures`:
        `episode/return`, and over the episodes of the run this process finished so far
        `running/episodes`, `running/mean_return`, `running/prompt_tokens`,
        `running/completion_tokens`, and `running/cost_usd` when every cost is known,
        `running/normalized_score` when the baselines' same episodes are known."""

    def run_finished(
        self, run_id: str, summary: Mapping[str, Any] | None, error: str | None
    ) -> None:
        """A started run ended: its summary (what `lmact run --json` prints), or None with
        why it did not finish (`error`; None too for a shard's share, scored later)."""

    def sweep_finished(self, sweep: str, errors: Mapping[str, str]) -> None:
        """The sweep's runs all ended; `errors`: those that did not finish, by run id."""

    def close(self) -> None:
        """The process is done with trackers (also after an interruption: runs still open
        did not finish)."""


def needs(module: str, extra: str) -> ModuleType:
    """`module` imported, or a one-line LmactError naming the extra that installs it."""
    try:
        return import_module(module)
    except ImportError:
        raise LmactError(f'--log-to {extra} needs {module}: pip install "lmact[{extra}]"') from None


def safe_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` fit for a tracker: keys that name a secret left out (at any depth), and any
    URL's credentials replaced by `[redacted]`."""
    return {key: _safe(value) for key, value in values.items() if not _SECRET_KEY.search(key)}


def _safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return safe_config(value)
    if isinstance(value, list | tuple):
        return [_safe(one) for one in value]
    return display_url(value) if isinstance(value, str) else value


def tracked_config(config: RegimeConfig, episodes: int) -> dict[str, Any]:
    """A run's configuration as trackers are told it: `safe_config`, with its episodes."""
    return {**safe_config(config.model_dump()), "episodes": episodes}


def summary_numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    """A run summary's numbers, by name (`ci95` as `ci95_low` and `ci95_high`); text,
    switches, lists and values not known (None) left out."""
    numbers: dict[str, float] = {}
    for key, value in summary.items():
        if key == "ci95" and isinstance(value, list | tuple) and len(value) == 2:
            numbers["ci95_low"], numbers["ci95_high"] = float(value[0]), float(value[1])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers[key] = float(value)
    return numbers
