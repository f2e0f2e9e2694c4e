"""Tables of every run in a run store, as markdown, CSV or JSON, grouped by task."""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import operator
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from lmact.errors import LmactError, UnknownNameError
from lmact.options import column_labels, measure_columns, report_columns
from lmact.records import EpisodeRecord, UnitKey, UnitKind, flat_fields
from lmact.regimes import REGIMES, parse_config, regime_of
from lmact.regimes.base import SCORED_KINDS, Regime, RegimeConfig
from lmact.scoring import (
    EpisodeTotals,
    mean_return,
    normalized_interval,
    score_returns,
    total_cost,
)
from lmact.store import RunRecord, RunStore, UnitResult
from lmact.text import visible

# The options shown as columns (`Option.column`): what names a run, before its scores,
# then how it was played, after them.
OPTION_COLUMNS = [*report_columns("run"), *report_columns("setting")]
COLUMNS = [
    "run_id",
    *column_labels(report_columns("run")),
    "episodes",
    "mean_return",
    "ci95_low",
    "ci95_high",
    "normalized_score",
    "normalized_low",
    "normalized_high",
    "illegal_rate",
    "invalid_rate",
    "empty_rate",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    *column_labels(report_columns("setting")),
    *measure_columns(),  # the regimes' measures shown as columns (`Regime.measures_shown`)
]
# What a report's tables show of a row, so the regimes' measures a table asks for: its
# columns, and what each regime's pivot shows (`Regime.headline`).
TABLE_FIELDS = frozenset(COLUMNS) | {
    name
    for regime in REGIMES.values()
    if (headline := regime.headline) is not None
    for name in (headline.value, *headline.measures)
    + ((f"{headline.interval}_low", f"{headline.interval}_high") if headline.interval else ())
}
FORMATS = ("markdown", "csv", "json")
FORMAT_ALIASES = {"md": "markdown"}
# The file a table is written to under `lmact report --out DIR`, by format.
SUFFIXES = {"markdown": "md", "csv": "csv", "json": "json"}
# What a spreadsheet reads as the start of a formula, at the start of a CSV text cell.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A learning curve's point: the run it is of, then where it is.
CURVE_RUN_COLUMNS = [
    "run_id",
    *column_labels(o for o in OPTION_COLUMNS if o.column is not None and o.column.curves),
]
CURVE_COLUMNS = [*CURVE_RUN_COLUMNS, "curve", "episode", "mean", "low", "high"]
# The curves of a run, by the measure that holds each and the name a curve row gives it,
# with the keys of its points that are the mean and the interval (None: it has none).
CURVES: dict[str, tuple[str, str, str | None, str | None]] = {
    "learning_curve": ("return", "mean", "low", "high"),
    "best_arm_curve": ("best_arm_share", "mean", "low", "high"),
    "regret_curve": ("cumulative_regret", "mean", "low", "high"),
    "reward_curve": ("average_reward", "mean", "low", "high"),
    "held_out_accuracy": ("held_out_accuracy", "accuracy", "low", "high"),
    "context_length": ("context_examples", "examples", None, None),
}


@dataclass
class Scored:
    """A run's finished units that its score counts, as the store reads them (keys, seeds,
    returns, costs), in order, and their totals."""

    units: list[UnitResult]
    totals: EpisodeTotals
    _keys: list[tuple[Any, ...]] | None = None
    _by_key: dict[tuple[Any, ...], UnitResult] | None = None

    def keys(self) -> list[tuple[Any, ...]]:
        """The units' keys (chain, kind, index), in order."""
        if self._keys is None:
            self._keys = list(map(_KEY, self.units))
        return self._keys

    def by_key(self) -> dict[tuple[Any, ...], UnitResult]:
        """The units by key."""
        if self._by_key is None:
            self._by_key = dict(zip(self.keys(), self.units, strict=True))
        return self._by_key


class Baselines:
    """The random and expert units that normalize runs' scores, each baseline read once
    while it is kept (the last read, up to KEPT_UNITS units in all), and given to the
    baseline's own row: a sweep's runs share a few baselines, and reading them again for
    every run was most of the time of a report of thousands of runs."""

    KEPT_UNITS = 500_000

    def __init__(self, store: RunStore, keep_runs: bool = False) -> None:
        self._store = store
        # Whether each run's own units are kept too (as the baselines are), for a reader
        # that reads them again (a report's comparisons): memory up to KEPT_UNITS then.
        self.keep_runs = keep_runs
        # The last run's baselines, by its id (a configuration may hold a dict, its task
        # options, so it is not a key itself): a reader asks again of the run it just
        # read (an export), never of an earlier one, and every run's held 7 kB a run.
        self._last_baselines: tuple[str, dict[str, RegimeConfig] | None] | None = None
        self._kept: OrderedDict[tuple[str, Any], Scored] = OrderedDict()
        self._kept_units = 0  # their units in all: summed as kept, not at each read

    def _configs(self, config: RegimeConfig) -> dict[str, RegimeConfig] | None:
        run_id = config.run_id  # computed (a hash of its fields): once
        if self._last_baselines is None or self._last_baselines[0] != run_id:
            try:
                configs = regime_of(config).baselines(config)
            except LmactError:  # a task no longer installed, or named like a path now gone
                configs = None
            self._last_baselines = (run_id, configs)
        return self._last_baselines[1]

    def read(self, run_id: str, kinds: tuple[UnitKind, ...] | None, keep: bool = False) -> Scored:
        """A run's finished units of `kinds` (None: all) and their totals; kept with `keep`."""
        if (run_id, kinds) in self._kept:
            self._kept.move_to_end((run_id, kinds))
            return self._kept[run_id, kinds]
        units, sums = self._store.finished_units(run_id, kinds)
        totals = EpisodeTotals(sums.units, sums.steps, sums.illegal, sums.invalid, sums.empty,
                               sums.unreadable, sums.usage, total_cost(units))  # fmt: skip
        scored = Scored(units, totals)
        if keep:
            self._kept[run_id, kinds] = scored
            self._kept_units += len(units)
            while len(self._kept) > 1 and self._kept_units > self.KEPT_UNITS:
                self._kept_units -= len(self._kept.popitem(last=False)[1].units)
        return scored

    def of(self, config: RegimeConfig, scored: Scored) -> dict[str, list[UnitResult] | None]:
        """The stored random and expert episodes over exactly the run's units, in their
        order, where stored: a score is normalized only against baselines of the same
        seeds."""
        configs = self._configs(config)
        if configs is None:
            return {"random": None, "expert": None}
        kinds = _scored_kinds(regime_of(config))  # the kinds of the units to match, if known
        return {
            policy: _same_units(self.read(baseline.run_id, kinds, keep=True), scored)
            for policy, baseline in configs.items()
        }


# A unit's key in a `UnitResult`: chain, kind, index.
_KEY = operator.itemgetter(0, 1, 2)


def _scored_kinds(regime: Regime[Any, Any] | None) -> tuple[UnitKind, ...] | None:
    """The kinds of unit a regime's score counts, where its rule is the default one, by
    kind (`SCORED_KINDS`); None for one that decides unit by unit."""
    return (
        SCORED_KINDS if regime is not None and type(regime).is_scored is Regime.is_scored else None
    )


def _same_units(baseline: Scored, scored: Scored) -> list[UnitResult] | None:
    """The baseline's episodes of exactly the units of `scored` (the same seeds), in their
    order, if all are stored."""
    if baseline is scored or baseline.keys() == scored.keys():
        return baseline.units  # most often: the same units, read in the same order
    try:
        return list(map(baseline.by_key().__getitem__, scored.keys()))
    except KeyError:
        return None


def _scores_row(
    run: RunRecord, scored: Scored, baselines: dict[str, Sequence[UnitResult] | None]
) -> dict[str, Any]:
    random, expert = baselines["random"], baselines["expert"]
    scores = score_returns(
        np.fromiter((unit.total_return for unit in scored.units), float, len(scored.units)),
        scored.totals,
        mean_return(random) if random else None,
        mean_return(expert) if expert else None,
    )
    values = {**vars(scores), **scores.usage.as_dict()}
    normalized = None
    if scores.random_return is not None and scores.expert_return is not None:
        normalized = normalized_interval(scores.ci95, scores.random_return, scores.expert_return)
    return {
        **dict.fromkeys(COLUMNS),
        "run_id": run.run_id,
        "ci95_low": scores.ci95[0],
        "ci95_high": scores.ci95[1],
        "normalized_low": normalized[0] if normalized else None,
        "normalized_high": normalized[1] if normalized else None,
        **{name: values[name] for name in COLUMNS if name in values},
    }


def run_row(
    store: RunStore,
    run: RunRecord,
    baselines_of: Baselines | None = None,
    wanted: Collection[str] | None = None,
) -> dict[str, Any] | None:
    """One table row; None for a run without a finished episode. A regime's rows fill the
    columns that mean something for it and leave the others empty. `baselines_of`: the
    baselines read so far, when rows of many runs are made; `wanted`: the names of the
    regime's measures to compute (None: all; a table needs only its columns).

    What a row needs of the run's episodes the store sums, or reads as a few columns a unit
    (`RunStore.finished_units`), and its regime's measures read its steps as streams of the
    columns they need: no step record is made, and what is read goes with the row."""
    config = readable_config(run)
    baselines_of = baselines_of or Baselines(store)
    scored = scored_units(store, run, config, baselines_of)
    if not scored.units:
        return None
    if config is None:
        return _foreign_row(run, scored)  # an unknown regime's run, or a newer release's
    regime = regime_of(config)
    baselines = baselines_of.of(config, scored)
    row = _scores_row(run, scored, baselines)
    # Each option column's field (None where the regime's configuration has none); the
    # regime's own report fields may say otherwise (imitation's demos: the count packed).
    described = {o.label: getattr(config, o.keyword, None) for o in OPTION_COLUMNS}
    try:
        measures = regime.measures(
            config,
            scored.units,
            store.finished_steps(run.run_id),
            {policy: episodes or [] for policy, episodes in baselines.items()},
            wanted,
        )
    except LmactError:  # a task given by path in another process, or uninstalled, or changed
        measures = {}
    return {**row, **described, **regime.report_fields(config, run), **measures}


def scored_units(
    store: RunStore, run: RunRecord, config: RegimeConfig | None, reads: Baselines | None = None
) -> Scored:
    """The run's units its score counts (every finished one of a run whose configuration
    this release cannot read), read from `reads` where it holds them: summed by the store
    where its regime counts units by kind (`SCORED_KINDS`, the default rule); else unit by
    unit from their records."""
    regime = regime_of(config) if config is not None else None
    if regime is None or (kinds := _scored_kinds(regime)) is not None:
        reads = reads or Baselines(store)
        scored_kinds = None if regime is None else kinds
        return reads.read(run.run_id, scored_kinds, keep=reads.keep_runs)
    records = [
        record
        for unit, record in store.finished_episodes(run.run_id).items()
        if regime.is_scored(config, unit)
    ]
    units = [
        UnitResult(r.chain, r.unit_kind, r.episode, r.seed, r.total_return, r.cost_usd)
        for r in records
    ]
    return Scored(units, EpisodeTotals.of(records))


def _foreign_row(run: RunRecord, scored: Scored) -> dict[str, Any]:
    """A row for a run whose configuration this release cannot read: its scores, and what
    of its configuration reads as plain text."""
    config = run.config if isinstance(run.config, dict) else {}
    described = {
        key: str(config[key])
        for key in ("regime", "task", "observation", "model")
        if isinstance(config.get(key), str | int)
    }
    budget = config.get("token_budget")
    demos = run.facts.get("demos")  # stored by its regime, if it stored them (imitation's)
    return {
        **_scores_row(run, scored, {"random": None, "expert": None}),
        **described,
        "demos": demos if isinstance(demos, int) else None,
        "token_budget": budget if isinstance(budget, int) else None,
    }


def curve_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The curves of the runs that have some (`CURVES`): a row per run, curve and episode
    index, the learning curve's (`return`) first."""
    found = []
    for row in rows:
        run = {name: row.get(name) for name in CURVE_RUN_COLUMNS}  # once a run, not a point
        for measure, (curve, mean, low, high) in CURVES.items():
            found += [
                {
                    **run,
                    "curve": curve,
                    "episode": point["episode"],
                    "mean": point[mean],
                    "low": point[low] if low else None,
                    "high": point[high] if high else None,
                }
                for point in row.get(measure) or []
            ]
    return found


def report_rows(
    store: RunStore, wanted: Collection[str] | None = None, reads: Baselines | None = None
) -> list[dict[str, Any]]:
    """A row per run that has a finished episode (`run_row`), in the order they were made;
    `wanted`: the regimes' measures to compute (None: all; `TABLE_FIELDS`: a table's);
    `reads`: the reader of runs' units to read them through (it keeps the last read)."""
    baselines = reads or Baselines(store)
    with collector_paused():
        rows = [run_row(store, run, baselines, wanted) for run in store.runs()]
    return [row for row in rows if row is not None]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector paused: the hundreds of thousands of small values a long
    run's row reads (its units, its steps' columns) hold no cycle, and each collection
    walked them all (a fifth of a report's time)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def select_rows(
    rows: Iterable[dict[str, Any]],
    *,
    tasks: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    run_ids: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of the given tasks, models and runs (None: any), in their order."""
    wanted = {
        column: set(values)
        for column, values in (("task", tasks), ("model", models), ("run_id", run_ids))
        if values is not None
    }
    return [row for row in rows if all(row.get(c) in v for c, v in wanted.items())]


def grouped_by(rows: Iterable[dict[str, Any]], column: str) -> dict[str, list[dict[str, Any]]]:
    """The rows per value of `column`, values in order of first appearance, rows in their
    order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get(column) or ""), []).append(row)
    return groups


def grouped_by_task(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows per task, tasks in order of first appearance, rows in their order."""
    return grouped_by(rows, "task")


def episode_records(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    """A run's finished episodes as plain dicts: the store's columns, the run's id, and
    `scored`: False for the episodes its score leaves out (in-context RL's held-out
    evaluations)."""
    run = store.run(run_id)
    finished = store.finished_episodes(run_id)
    scored = _scored_by(readable_config(run), finished) if run is not None else finished
    return [
        {"run_id": run_id, **flat_fields(record), "scored": unit in scored}
        for unit, record in finished.items()
    ]


def scored_episodes(
    store: RunStore, run: RunRecord, reads: Baselines | None = None
) -> Mapping[UnitKey, UnitResult]:
    """The run's finished episodes that its score counts, by unit (their keys, seeds,
    returns and costs, not their records): by its regime's rule (in-context RL's held-out
    evaluations are not scored); every finished episode of a run whose configuration this
    release cannot read, as its table row counts them."""
    return UnitsByKey(scored_units(store, run, readable_config(run), reads).units)


class UnitsByKey(Mapping[UnitKey, UnitResult]):
    """Units by their key, in order, each key made when first asked for: a reader of the
    values alone (a comparison reads seeds and returns) makes none."""

    def __init__(self, units: list[UnitResult]) -> None:
        self._units = units
        self._index: dict[UnitKey, UnitResult] | None = None

    def __getitem__(self, key: UnitKey) -> UnitResult:
        if self._index is None:
            self._index = {unit.unit: unit for unit in self._units}
        return self._index[key]

    def __iter__(self) -> Iterator[UnitKey]:
        return (unit.unit for unit in self._units)

    def __len__(self) -> int:
        return len(self._units)

    def values(self) -> ValuesView[UnitResult]:
        return _InOrder(self)


class _InOrder(ValuesView[UnitResult]):
    """The values of a `UnitsByKey`, read from its list."""

    _mapping: UnitsByKey

    def __iter__(self) -> Iterator[UnitResult]:
        return iter(self._mapping._units)


def readable_config(run: RunRecord) -> RegimeConfig | None:
    """The run's configuration; None for one this release cannot read (an unknown regime,
    a newer release's)."""
    try:
        return parse_config(run.config)
    except (TypeError, ValidationError):
        return None


def _scored_by(
    config: RegimeConfig | None, finished: dict[int, EpisodeRecord]
) -> dict[int, EpisodeRecord]:
    """Of `finished`, the episodes the run's score counts (all, if unreadable)."""
    if config is None:
        return finished
    regime = regime_of(config)
    return {unit: e for unit, e in finished.items() if regime.is_scored(config, unit)}


def with_episodes(store: RunStore, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its run's episode records under `episode_records` (what JSON reports
    hold; `episodes` is already the row's count of scored episodes)."""
    return [{**row, "episode_records": episode_records(store, row["run_id"])} for row in rows]


def table_format(fmt: str, formats: Sequence[str] = FORMATS, what: str = "report") -> str:
    """The format's canonical name (`md` is `markdown`) among `formats`; an unknown one is
    an error naming `what` it is the format of."""
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in formats:
        raise UnknownNameError(f"{what} format", fmt, (*formats, *FORMAT_ALIASES))
    return fmt


def format_value(column: str, value: Any) -> str:
    """A value as every table shows it: empty for None, costs to 4 decimals, other floats
    to 3, text on one line (a line break in a model name would split a row) and its
    control characters visible (an escape sequence in a name would reach the terminal)."""
    if value is None:
        return ""
    if column == "cost_usd":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return visible(" ".join(str(value).split()))


def _cell(column: str, value: Any) -> str:
    # A model name is the user's text: a | would end the markdown cell.
    return format_value(column, value).replace("|", "\\|")


def format_table(
    rows: Sequence[dict[str, Any]], fmt: str = "markdown", columns: Sequence[str] = COLUMNS
) -> str:
    """The rows grouped by task: in markdown a table per task under a heading (no heading
    when there is one task), in CSV the `columns`, in JSON every field of every row."""
    fmt = table_format(fmt)
    groups = grouped_by_task(rows)
    ordered = [row for group in groups.values() for row in group]
    if fmt == "json":
        first = [c for c in columns if any(c in row for row in ordered)]
        # A row at a time, as json.dumps(rows, indent=1) writes them: the whole list at once
        # held each of its many small pieces of text, ten times the report's size.
        records = (
            " " + json.dumps({**{c: row.get(c) for c in first}, **row}, indent=1, default=str)
            .replace("\n", "\n ")
            for row in ordered
        )  # fmt: skip
        return "[\n" + ",\n".join(records) + "\n]\n" if ordered else "[]\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows({c: csv_cell(row.get(c)) for c in columns} for row in ordered)
        return buffer.getvalue()
    if not rows:
        raise LmactError("the run store holds no finished episode yet; start with `lmact run`")
    if len(groups) == 1:
        return markdown_table(ordered, columns)
    return "\n".join(
        f"### {_cell('task', task)}\n\n{markdown_table(group, columns)}"
        for task, group in groups.items()
    )


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: text that begins as a formula does
    (`=`, `+`, `-`, `@`, a tab, a carriage return) gets a leading `'`, as OWASP advises;
    numbers stay numbers. A carriage return in text is written `\\x0d`: the csv module
    leaves it unquoted, and readers end the row there."""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_STARTS):
        value = "'" + value
    return value.replace("\r", visible("\r"))


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """One markdown table of the rows' `columns`, cells as the report writes them."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- Which run ----------------------------------------------------------------------------


def resolve_run(store: RunStore, prefix: str | None = None) -> RunRecord:
    """The run whose id is `prefix` or starts with it; with none, the latest run that is not
    another stored run's baseline. A one-line LmactError when none or several match."""
    if prefix is not None and (exact := store.run(prefix.strip().lower())) is not None:
        return exact  # a whole id: one row read, not every run
    runs = store.runs()
    if not runs:
        raise LmactError(f"the run store {store.path} holds no run yet; start with `lmact run`")
    if prefix is None:
        return _latest(runs)
    wanted = prefix.strip().lower()
    matching = [run for run in runs if run.run_id.startswith(wanted)]
    if not matching:
        raise LmactError(
            f"no run id in {store.path} starts with {prefix!r} (`lmact report` lists the runs)"
        )
    if len(matching) > 1:
        shown = ", ".join(run.run_id for run in matching[:4]) + (", …" if len(matching) > 4 else "")
        raise LmactError(
            f"run id prefix {prefix!r} is ambiguous: {len(matching)} runs in {store.path} "
            f"start with it ({shown}); give more characters"
        )
    return matching[0]


def resolve_runs(store: RunStore, prefixes: Sequence[str]) -> list[RunRecord]:
    """The runs that `prefixes` name (each as `resolve_run` reads it); none: every run."""
    return [resolve_run(store, prefix) for prefix in prefixes] or store.runs()


def _latest(runs: Sequence[RunRecord]) -> RunRecord:
    """The last created run that is no other run's baseline: `lmact run` stores the random
    and expert baselines after the run they score, and that run is the one to look at."""
    baselines: set[str] = set()
    for run in runs:
        try:
            config = parse_config(run.config)
            ids = {baseline.run_id for baseline in regime_of(config).baselines(config).values()}
        except (ValidationError, LmactError):
            continue  # another release's run, or a task that is gone: no baselines known
        baselines |= ids - {run.run_id}
    candidates = [run for run in runs if run.run_id not in baselines]
    return (candidates or list(runs))[-1]


def carrying_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> list[str]:
    """The columns with a value in some row (and the run id, which names each row): one
    regime's runs leave the others' columns empty, and a table of 31 columns, half of them
    blank, reads badly."""
    return [c for c in columns if c == "run_id" or any(row.get(c) is not None for row in rows)]
