"""Tables of every run in a run store, as markdown or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from lmact.errors import LmactError, UnknownNameError
from lmact.records import EpisodeRecord
from lmact.regimes import parse_config, regime_of
from lmact.regimes.base import RegimeConfig
from lmact.scoring import score_episodes
from lmact.store import RunRecord, RunStore

COLUMNS = [
    "run_id",
    "task",
    "regime",
    "observation",
    "model",
    "demos",
    "episodes",
    "mean_return",
    "ci95_low",
    "ci95_high",
    "normalized_score",
    "illegal_rate",
    "invalid_rate",
    "empty_rate",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "answer_match",
    "past_actions",
    "demo_draw",
    "demo_pool",
    "variant",
    "final_return",
    "final_normalized",
    "regret",
    "suffix_failure",
]
FORMATS = ("markdown", "csv")
CURVE_COLUMNS = ["run_id", "task", "model", "variant", "episode", "mean", "low", "high"]


def _baseline_episodes(
    store: RunStore, baseline: RegimeConfig, units: Sequence[int]
) -> list[EpisodeRecord] | None:
    """The baseline's episodes of exactly `units` (the same seeds), if all are stored."""
    finished = store.finished_episodes(baseline.run_id)
    if not all(unit in finished for unit in units):
        return None
    return [finished[unit] for unit in units]


def _baselines(
    store: RunStore, config: RegimeConfig, finished: dict[int, EpisodeRecord]
) -> dict[str, list[EpisodeRecord] | None]:
    """The stored random and expert episodes over exactly the run's units, where stored:
    a score is normalized only against baselines of the same seeds."""
    try:
        configs = regime_of(config).baselines(config)
    except UnknownNameError:  # a task no longer installed
        return {"random": None, "expert": None}
    return {
        policy: _baseline_episodes(store, baseline, list(finished))
        for policy, baseline in configs.items()
    }


def _scores_row(
    run: RunRecord, finished: dict[int, EpisodeRecord], baselines: dict[str, Any]
) -> dict[str, Any]:
    scores = score_episodes(list(finished.values()), baselines["random"], baselines["expert"])
    values = {**vars(scores), **scores.usage.as_dict()}
    return {
        **dict.fromkeys(COLUMNS),
        "run_id": run.run_id,
        "ci95_low": scores.ci95[0],
        "ci95_high": scores.ci95[1],
        **{name: values[name] for name in COLUMNS if name in values},
    }


def run_row(store: RunStore, run: RunRecord) -> dict[str, Any] | None:
    """One table row; None for a run without a finished episode. A regime's rows fill the
    columns that mean something for it and leave the others empty."""
    finished = store.finished_episodes(run.run_id)
    if not finished:
        return None
    try:
        config = parse_config(run.config)
    except (TypeError, ValidationError):
        return _foreign_row(run, finished)  # an unknown regime's run, or a newer release's
    regime = regime_of(config)
    finished = {unit: e for unit, e in finished.items() if regime.is_scored(config, unit)}
    if not finished:
        return None
    baselines = _baselines(store, config, finished)
    row = _scores_row(run, finished, baselines)
    described = {name: getattr(config, name) for name in ("regime", "task", "observation", "model")}
    try:
        measures = regime.measures(
            config,
            list(finished.values()),
            store.finished_steps(run.run_id),
            {policy: episodes or [] for policy, episodes in baselines.items()},
        )
    except UnknownNameError:  # a task given by path in another process, or uninstalled
        measures = {}
    return {**row, **described, **regime.report_fields(config, run), **measures}


def _foreign_row(run: RunRecord, finished: dict[int, EpisodeRecord]) -> dict[str, Any]:
    """A row for a run whose configuration this release cannot read: its scores, and what
    of its configuration reads as plain text."""
    config = run.config if isinstance(run.config, dict) else {}
    described = {
        key: str(config[key])
        for key in ("regime", "task", "observation", "model")
        if isinstance(config.get(key), str | int)
    }
    baselines: dict[str, Any] = {"random": None, "expert": None}
    return {**_scores_row(run, finished, baselines), **described, "demos": run.demos_used}


def curve_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The learning curves of the runs that have one: a row per run and episode index."""
    return [
        {**{name: row.get(name) for name in CURVE_COLUMNS[:4]}, **point}
        for row in rows
        for point in row.get("learning_curve") or []
    ]


def report_rows(store: RunStore) -> list[dict[str, Any]]:
    rows = (run_row(store, run) for run in store.runs())
    return [row for row in rows if row is not None]


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "cost_usd":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    # A model name is the user's text: a | or a line break would split the row.
    return " ".join(str(value).split()).replace("|", "\\|")


def format_table(
    rows: Sequence[dict[str, Any]], fmt: str = "markdown", columns: Sequence[str] = COLUMNS
) -> str:
    if fmt not in FORMATS:
        raise UnknownNameError("report format", fmt, FORMATS)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if not rows:
        raise LmactError("the run store holds no finished episode yet; start with `lmact run`")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
