"""Paired comparisons of runs: `lmact compare RUN_A RUN_B`, and the section of `lmact report`
that compares the runs of a table that played the same test seeds.

Runs of one task share test episodes: on seed s, run A and run B started from the same
state. The difference of their returns seed by seed leaves out how much harder one seed is
than another, so its interval is sharper than the two runs' separate intervals suggest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from lmact.errors import LmactError
from lmact.records import EpisodeRecord
from lmact.regimes.base import BASELINE_POLICIES
from lmact.report.tables import (
    grouped_by_task,
    markdown_table,
    resolve_run,
    run_row,
    scored_episodes,
    table_format,
)
from lmact.scoring import PairedComparison, pair_by_seed, paired_comparison
from lmact.store import RunRecord, RunStore
from lmact.text import visible

# What must be the same for the report to pair two runs: the same seed is then the same
# episode, played under the same rules and seen in the same form.
PAIRED_BY = ("task", "regime", "observation")
# The options that tell two runs apart besides the model; a comparison names those that differ.
SETTINGS = ("regime", "observation", "demos", "token_budget", "answer_match", "past_actions",
            "demo_draw", "demo_pool", "variant", "history")  # fmt: skip
# A sweep's table of k runs per task holds k(k-1)/2 pairs: the report shows the first few,
# those that differ in the fewest options first (they isolate one cause).
MAX_PAIRS_PER_TASK = 12
COMPARISON_COLUMNS = [
    "task", "regime", "observation", "run_a", "model_a", "setting_a", "run_b", "model_b",
    "setting_b", "paired", "mean_difference", "ci95_low", "ci95_high", "a_ahead", "b_ahead",
    "tied",
]  # fmt: skip
FORMATS = ("markdown", "json")


def compare_runs(store: RunStore, first: str, second: str) -> dict[str, Any]:
    """The comparison of two runs given by id or id prefix, A = `first`: a plain row."""
    run_a, run_b = resolve_run(store, first), resolve_run(store, second)
    if run_a.run_id == run_b.run_id:
        raise LmactError(f"{first!r} and {second!r} are the same run {run_a.run_id}")
    row_a, row_b = _table_row(store, run_a), _table_row(store, run_b)
    task_a, task_b = row_a.get("task"), row_b.get("task")
    if task_a is not None and task_b is not None and task_a != task_b:
        raise LmactError(visible(
            f"runs {run_a.run_id} and {run_b.run_id} are of different tasks ({task_a}, "
            f"{task_b}): the same seed is not the same episode there"
        ))  # fmt: skip
    comparison = paired_comparison(
        list(scored_episodes(store, run_a).values()),
        list(scored_episodes(store, run_b).values()),
        (run_a.run_id, run_b.run_id),
    )
    return comparison_row(row_a, row_b, comparison)


def _table_row(store: RunStore, run: RunRecord) -> dict[str, Any]:
    row = run_row(store, run)
    if row is None:
        raise LmactError(f"run {run.run_id} has no finished test episode yet")
    return row


def comparison_row(
    row_a: dict[str, Any], row_b: dict[str, Any], comparison: PairedComparison
) -> dict[str, Any]:
    """A plain row of one comparison: the runs (by their report rows) and A - B."""
    differing = [name for name in SETTINGS if row_a.get(name) != row_b.get(name)]
    return {
        **{name: row_a.get(name) if name not in differing else None for name in PAIRED_BY},
        "run_a": row_a["run_id"],
        "model_a": row_a.get("model"),
        "setting_a": _setting(row_a, differing),
        "run_b": row_b["run_id"],
        "model_b": row_b.get("model"),
        "setting_b": _setting(row_b, differing),
        "paired": comparison.paired,
        "only_a": comparison.only_a,
        "only_b": comparison.only_b,
        "mean_a": comparison.mean_a,
        "mean_b": comparison.mean_b,
        "mean_difference": comparison.mean_difference,
        "ci95_low": comparison.ci95[0],
        "ci95_high": comparison.ci95[1],
        "unpaired_low": comparison.unpaired_ci95[0],
        "unpaired_high": comparison.unpaired_ci95[1],
        "a_ahead": comparison.a_ahead,
        "b_ahead": comparison.b_ahead,
        "tied": comparison.tied,
    }


def _setting(row: dict[str, Any], names: Sequence[str]) -> str:
    """The run's values of the options in `names`, e.g. `demos=2, history=summary`."""
    return ", ".join(f"{name}={'none' if row.get(name) is None else row[name]}" for name in names)


def comparison_rows(
    store: RunStore, rows: Sequence[dict[str, Any]], limit: int = MAX_PAIRS_PER_TASK
) -> tuple[list[dict[str, Any]], int]:
    """The comparisons of a report's rows, and how many pairs were left out past `limit`.

    Per task, each run that is not a random or expert baseline against each later one of the
    same task, regime and observation that played some of the same test seeds (the baselines
    are already every run's normalized score); pairs that differ in the fewest options first,
    then in the table's order."""
    runs = {run.run_id: run for run in store.runs()}
    episodes: dict[str, list[EpisodeRecord]] = {}

    def episodes_of(row: dict[str, Any]) -> list[EpisodeRecord]:
        run_id = row["run_id"]
        if run_id not in episodes:
            episodes[run_id] = list(scored_episodes(store, runs[run_id]).values())
        return episodes[run_id]

    compared: list[dict[str, Any]] = []
    left_off = 0
    for group in grouped_by_task(rows).values():
        kept = 0
        for row_a, row_b in _candidate_pairs(group):
            first, second = episodes_of(row_a), episodes_of(row_b)
            if not pair_by_seed(first, second):
                continue
            if kept == limit:
                left_off += 1
                continue
            compared.append(comparison_row(row_a, row_b, paired_comparison(first, second)))
            kept += 1
    return compared, left_off


def _candidate_pairs(
    group: Sequence[dict[str, Any]],
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The pairs of one task's non-baseline rows that agree on PAIRED_BY, those that differ
    in the fewest options (the model counted) first; the sort is stable, so table order
    breaks ties."""
    played = [row for row in group if row.get("model") not in BASELINE_POLICIES]
    pairs = [
        (a, b)
        for a, b in combinations(played, 2)
        if all(a.get(name) == b.get(name) for name in PAIRED_BY)
    ]

    def differences(pair: tuple[dict[str, Any], dict[str, Any]]) -> int:
        return sum(pair[0].get(name) != pair[1].get(name) for name in ("model", *SETTINGS))

    return sorted(pairs, key=differences)


def comparison_section(compared: Sequence[dict[str, Any]], left_off: int = 0) -> str:
    """The markdown section `lmact report` appends after its tables; empty without a pair."""
    if not compared:
        return ""
    lines = [
        "## Paired comparisons",
        "",
        "Runs of one task, regime and observation on the test seeds both played: the mean "
        "of A - B of their returns, its 95% paired bootstrap interval, and the share of "
        "seeds where each is ahead (`lmact compare RUN_A RUN_B` for any two runs).",
        "",
        markdown_table(compared, COMPARISON_COLUMNS).rstrip("\n"),
    ]
    if left_off:
        lines += ["", f"{left_off} more pairs left out; `lmact compare` gives any of them."]
    return "\n".join(lines) + "\n"


def comparison_format(fmt: str) -> str:
    """The format's canonical name (`md` is `markdown`); an unknown one is an error."""
    return table_format(fmt, FORMATS, "compare")


def format_comparison(row: dict[str, Any], fmt: str = "markdown") -> str:
    """One comparison as `lmact compare` prints it: markdown, or JSON (the row's fields)."""
    if comparison_format(fmt) == "json":
        return json.dumps(row, indent=1) + "\n"
    lines = [f"A: {_run_line(row, 'a')}", f"B: {_run_line(row, 'b')}", ""]
    lines += ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in _measures(row)]
    for side, count in (("A", row["only_a"]), ("B", row["only_b"])):
        if count:
            other = "B" if side == "A" else "A"
            lines.append(f"\n{side} played {count} more episodes, of seeds {other} did not "
                         "play: they are left out.")  # fmt: skip
    return "\n".join(lines) + "\n"


def _run_line(row: dict[str, Any], side: str) -> str:
    shared = [str(row[name]) for name in PAIRED_BY if row.get(name) is not None]
    parts = [row[f"run_{side}"], str(row[f"model_{side}"]), *shared, row[f"setting_{side}"]]
    return visible(" · ".join(part for part in parts if part))  # names reach the terminal


def _measures(row: dict[str, Any]) -> list[tuple[str, str]]:
    def interval(low: str, high: str) -> str:
        return f"[{row[low]:.3f}, {row[high]:.3f}]"

    return [
        ("paired episodes (same seed)", str(row["paired"])),
        ("mean return A", f"{row['mean_a']:.3f}"),
        ("mean return B", f"{row['mean_b']:.3f}"),
        ("mean difference A - B", f"{row['mean_difference']:.3f}"),
        ("95% paired interval", interval("ci95_low", "ci95_high")),
        ("95% interval, unpaired", interval("unpaired_low", "unpaired_high")),
        ("A ahead", f"{row['a_ahead']:.0%}"),
        ("B ahead", f"{row['b_ahead']:.0%}"),
        ("tied", f"{row['tied']:.0%}"),
    ]
