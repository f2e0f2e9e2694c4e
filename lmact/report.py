"""Tables of every run in a run store, as markdown or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from lmact.errors import LmactError, UnknownNameError
from lmact.regimes.imitation import BASELINE_POLICIES, ImitationConfig
from lmact.scoring import score_episodes
from lmact.store import EpisodeRecord, RunRecord, RunStore

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
]
FORMATS = ("markdown", "csv")


def _baseline_episodes(
    store: RunStore, config: ImitationConfig, policy: str, episodes: int
) -> list[EpisodeRecord] | None:
    """The baseline's first `episodes` test episodes (the same seeds), if all are stored."""
    try:
        baseline = config.baseline(policy)
    except UnknownNameError:  # a task no longer installed
        return None
    finished = store.finished_episodes(baseline.run_id)
    if not all(e in finished for e in range(episodes)):
        return None
    return [finished[e] for e in range(episodes)]


def run_row(store: RunStore, run: RunRecord) -> dict[str, Any] | None:
    """One table row; None for a run without a finished episode."""
    finished = store.finished_episodes(run.run_id)
    if not finished:
        return None
    try:
        config = ImitationConfig(**run.config)
    except (TypeError, ValidationError):
        return _foreign_row(run, finished)  # another regime's run, or a newer release's
    # Normalize only against baselines over exactly the same test seeds.
    contiguous = sorted(finished) == list(range(len(finished)))
    baselines = {
        policy: _baseline_episodes(store, config, policy, len(finished)) if contiguous else None
        for policy in BASELINE_POLICIES
    }
    scores = score_episodes(list(finished.values()), baselines["random"], baselines["expert"])
    return {
        "run_id": run.run_id,
        "regime": config.regime,
        "task": config.task,
        "observation": config.observation,
        "model": config.model,
        "demos": run.demos_used,
        "answer_match": config.answer_match,
        "past_actions": config.past_actions,
        "demo_draw": config.demo_draw,
        "demo_pool": config.demo_pool,
        "ci95_low": scores.ci95[0],
        "ci95_high": scores.ci95[1],
        **{name: getattr(scores, name) for name in COLUMNS if hasattr(scores, name)},
    }


def _foreign_row(run: RunRecord, finished: dict[int, EpisodeRecord]) -> dict[str, Any]:
    """A row for a run whose configuration this release cannot read: its scores, and what
    of its configuration reads as plain text."""
    scores = score_episodes(list(finished.values()))
    config = run.config if isinstance(run.config, dict) else {}
    described = {
        key: str(config[key])
        for key in ("regime", "task", "observation", "model")
        if isinstance(config.get(key), str | int)
    }
    return {
        **dict.fromkeys(COLUMNS),
        "run_id": run.run_id,
        **described,
        "demos": run.demos_used,
        "ci95_low": scores.ci95[0],
        "ci95_high": scores.ci95[1],
        **{name: getattr(scores, name) for name in COLUMNS if hasattr(scores, name)},
    }


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


def format_table(rows: Sequence[dict[str, Any]], fmt: str = "markdown") -> str:
    if fmt not in FORMATS:
        raise UnknownNameError("report format", fmt, FORMATS)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if not rows:
        raise LmactError("the run store holds no finished episode yet; start with `lmact run`")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c, row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"
