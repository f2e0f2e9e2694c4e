"""Paired comparisons of runs: `lmact compare RUN_A RUN_B`, and the section of `lmact report`
that compares the runs of a table that played the same test seeds.

Runs of one task share test episodes: on seed s, run A and run B started from the same
state. The difference of their returns seed by seed leaves out how much harder one seed is
than another, so its interval is sharper than the two runs' separate intervals suggest.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmact.errors import LmactError
from lmact.regimes.base import BASELINE_POLICIES
from lmact.report.tables import (
    OPTION_COLUMNS,
    Baselines,
    grouped_by_task,
    markdown_table,
    resolve_run,
    run_row,
    scored_episodes,
    table_format,
)
from lmact.scoring import PairedComparison, paired_comparison
from lmact.store import RunRecord, RunStore, UnitResult
from lmact.text import visible

# What must be the same for the report to pair two runs: the same seed is then the same
# episode, played under the same rules and seen in the same form.
PAIRED_BY = ("task", "regime", "observation")
# The options that tell two runs apart besides the model (those declared a setting, in
# column order: `Column.setting`); a comparison names those that differ.
SETTINGS = tuple(
    o.label for o in OPTION_COLUMNS if o.label is not None and o.column and o.column.setting
)
# A sweep's table of k runs per task holds k(k-1)/2 pairs: the report shows the first few,
# those that differ in the fewest options first (they isolate one cause).
MAX_PAIRS_PER_TASK = 12
# The pairs of kinds of runs (`_Kind`) one task's search looks at, at most, and as many
# pairs of sets of seeds to count the pairs left out: that much work bounds the report's,
# whatever the number of runs.
MAX_KIND_PAIRS = 50_000
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
    """The comparisons of a report's rows, and how many pairs were left out past `limit`
    (see `find_comparisons`, which also says whether that count is whole)."""
    found = find_comparisons(store, rows, limit)
    return found.rows, found.left_off


@dataclass(frozen=True)
class Comparisons:
    """A report's comparisons: `rows`, and `left_off` more pairs that share seeds; when not
    `counted`, at least that many (there were too many kinds of runs to count them all).
    `examined`: how many pairs of kinds of runs were looked at, in all tasks."""

    rows: list[dict[str, Any]]
    left_off: int
    counted: bool
    examined: int


def find_comparisons(
    store: RunStore,
    rows: Sequence[dict[str, Any]],
    limit: int = MAX_PAIRS_PER_TASK,
    reads: Baselines | None = None,
) -> Comparisons:
    """Per task, each run that is not a random or expert baseline against each later one of
    the same task, regime and observation that played some of the same test seeds (the
    baselines are already every run's normalized score); pairs that differ in the fewest
    options first, then in the table's order; `limit` pairs a task at most.

    The work grows with the runs, not with their pairs: runs alike in every option and seed
    are one kind, and only pairs of kinds are looked at (`find_pairs`). `reads`: the
    report's reader of runs' units, which may hold them already."""
    runs = {run.run_id: run for run in store.runs()}
    # A run's seeds and its pairs read its units once where they fit the reader's bound
    # (it keeps them): a dict of every run's units held them all at once.
    reads = reads or Baselines(store, keep_runs=True)

    def episodes_of(row: dict[str, Any]) -> list[UnitResult]:
        return list(scored_episodes(store, runs[row["run_id"]], reads).values())

    seed_sets: dict[frozenset[int], frozenset[int]] = {}  # one object per set of seeds
    compared: list[dict[str, Any]] = []
    left_off, counted, examined = 0, True, 0
    for group in grouped_by_task(rows).values():
        played = [row for row in group if row.get("model") not in BASELINE_POLICIES]
        seeds = [frozenset(e.seed for e in episodes_of(row)) for row in played]
        search = find_pairs(played, [seed_sets.setdefault(s, s) for s in seeds], limit)
        for first, second in search.shown:
            row_a, row_b = played[first], played[second]
            comparison = paired_comparison(episodes_of(row_a), episodes_of(row_b))
            compared.append(comparison_row(row_a, row_b, comparison))
        left_off += search.left_off
        counted = counted and search.counted
        examined += search.examined
    return Comparisons(compared, left_off, counted, examined)


@dataclass(frozen=True)
class PairSearch:
    """What `find_pairs` found in one task's runs: the pairs to show (places in its runs),
    how many more pairs share seeds (at least, when not `counted`), and how many pairs of
    kinds of runs it looked at."""

    shown: list[tuple[int, int]]
    left_off: int
    counted: bool
    examined: int


@dataclass
class _Kind:
    """Runs that no comparison tells apart: the same PAIRED_BY values, model and settings
    and the same seeds; `members` are their places in the task's runs, in order."""

    paired_by: tuple[Any, ...]
    settings: tuple[Any, ...]
    seeds: frozenset[int]
    members: list[int] = field(default_factory=list)


def find_pairs(
    played: Sequence[dict[str, Any]],
    seeds: Sequence[frozenset[int]],
    limit: int = MAX_PAIRS_PER_TASK,
    budget: int = MAX_KIND_PAIRS,
) -> PairSearch:
    """Of one task's runs `played` (seeds[i]: the test seeds run i played), the first
    `limit` pairs that agree on PAIRED_BY and share a seed, those that differ in the
    fewest options (the model counted) first, then in table order, as (i, j), i < j.

    A sweep of 10,000 runs has 50 million pairs; this never builds them. Runs of one kind
    (`_Kind`) pair alike, so pairs of kinds are looked at, `budget` at most: past it, the
    pairs shown are the closest among those looked at, and the count is a lower bound."""
    kinds: dict[tuple[Any, ...], _Kind] = {}
    for place, (row, played_seeds) in enumerate(zip(played, seeds, strict=True)):
        paired_by = tuple(_hashable(row.get(name)) for name in PAIRED_BY)
        settings = tuple(_hashable(row.get(name)) for name in ("model", *SETTINGS))
        kind = kinds.setdefault((paired_by, settings, played_seeds),
                                _Kind(paired_by, settings, played_seeds))  # fmt: skip
        kind.members.append(place)
    found, kind_looks = _kind_pairs(list(kinds.values()), budget)
    total, counted, set_looks = _pair_count(list(kinds.values()), budget)
    shown: list[tuple[int, int]] = []
    by_difference = itertools.groupby(sorted(found, key=lambda kp: kp[0]), key=lambda kp: kp[0])
    for _, same in by_difference:
        if len(shown) == limit:
            break
        # Each pair of kinds gives its pairs in table order; merged, the level's are too. A
        # pair of kinds whose first pair is not among the level's `wanted` first pairs has
        # no pair among the level's first `wanted`: only those are merged.
        wanted = limit - len(shown)
        firsts = heapq.nsmallest(wanted, same, key=lambda kp: _first_pair(kp[1], kp[2]))
        pairs = heapq.merge(*(_run_pairs(a, b) for _, a, b in firsts))
        shown += itertools.islice(pairs, wanted)
    return PairSearch(shown, max(total - len(shown), 0), counted, kind_looks + set_looks)


def _kind_pairs(kinds: Sequence[_Kind], budget: int) -> tuple[list[tuple[int, _Kind, _Kind]], int]:
    """The pairs of kinds (a run of each) that agree on PAIRED_BY and share a seed, each
    with its number of differing options; at most `budget` pairs of kinds looked at."""
    found = []
    examined = 0
    for paired in _by_paired_by(kinds):
        for index, a in enumerate(paired):
            for b in paired[index:]:
                if examined == budget:
                    return found, examined
                examined += 1
                if (a is b and len(a.members) > 1 and a.seeds) or (
                    a is not b and not a.seeds.isdisjoint(b.seeds)
                ):
                    differing = sum(x != y for x, y in zip(a.settings, b.settings, strict=True))
                    found.append((differing, a, b))
    return found, examined


def _pair_count(kinds: Sequence[_Kind], budget: int) -> tuple[int, bool, int]:
    """How many pairs of runs agree on PAIRED_BY and share a seed, whether all were counted
    (at most `budget` pairs of sets of seeds looked at), and how many were. Counted by set
    of seeds, not by kind: a sweep's runs mostly play the same seeds."""
    total, examined = 0, 0
    for paired in _by_paired_by(kinds):
        runs_of: dict[frozenset[int], int] = {}
        for kind in paired:
            runs_of[kind.seeds] = runs_of.get(kind.seeds, 0) + len(kind.members)
        sets = [(s, n) for s, n in runs_of.items() if s]
        for index, (a, runs_a) in enumerate(sets):
            total += runs_a * (runs_a - 1) // 2
            for b, runs_b in sets[index + 1 :]:
                if examined == budget:
                    return total, False, examined
                examined += 1
                total += 0 if a.isdisjoint(b) else runs_a * runs_b
    return total, True, examined


def _by_paired_by(kinds: Sequence[_Kind]) -> list[list[_Kind]]:
    """The kinds grouped by their PAIRED_BY values (only those pair), each in order."""
    groups: dict[tuple[Any, ...], list[_Kind]] = {}
    for kind in kinds:
        groups.setdefault(kind.paired_by, []).append(kind)
    return list(groups.values())


def _first_pair(a: _Kind, b: _Kind) -> tuple[int, int]:
    """The first of `_run_pairs(a, b)`."""
    if a is b:
        return a.members[0], a.members[1]
    return min(a.members[0], b.members[0]), max(a.members[0], b.members[0])


def _run_pairs(a: _Kind, b: _Kind) -> Iterator[tuple[int, int]]:
    """The pairs (i, j), i < j, of a run of kind `a` and one of `b`, in order, lazily."""
    if a is b:
        yield from itertools.combinations(a.members, 2)
        return
    tagged = heapq.merge(((i, b.members) for i in a.members), ((j, a.members) for j in b.members))
    for first, others in tagged:
        for later in range(bisect.bisect_right(others, first), len(others)):
            yield first, others[later]


def _hashable(value: Any) -> Any:
    """A row's value as a key: as it is, or its repr when it cannot be one."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def comparison_section(
    compared: Sequence[dict[str, Any]], left_off: int = 0, counted: bool = True
) -> str:
    """The markdown section `lmact report` appends after its tables; empty without a pair.
    `left_off`: how many more pairs share seeds (when not `counted`, at least that many)."""
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
    if left_off or not counted:
        more = f"{left_off} more pairs" if counted else f"More pairs (at least {left_off})"
        lines += ["", f"{more} left out; `lmact compare` gives any of them."]
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
