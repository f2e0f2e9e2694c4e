"""Sweeps: a grid of runs from one TOML file, played in one event loop.

A sweep file names the sweep, a base of run options, axes whose product is the grid, and
optional explicit extra runs and exclusions:

    name = "tic-tac-toe-demos"
    [base]
    task = "tic_tac_toe"
    episodes = 20
    [axes]
    model = ["local/gemma-3-270m", "random", "expert"]
    demos = [0, 1, 2, 4]
    [[runs]]            # more runs, each the base with these options
    demos = 8
    [[exclude]]         # grid points to leave out: every option given must match
    model = "random"
    demos = 4

Keys are the exact names of the options of a run (`lmact.options`: `token_budget` or
`token-budget`), each used or refused (docs/sweeps.md); the process's options (store,
cache, connections, model client options) go in [base] only; a grid is counted before it is
expanded. Every run of
the grid, and each baseline it needs once however many runs share it, is played in one
event loop, with one caller per model: a provider's connection limit and its pause hold
across the whole sweep, and runs of different models proceed side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import tomllib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lmact.budget import BudgetReached
from lmact.declarations import Scope
from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelOptions
from lmact.options import OPTIONS, ProcessOptions, close_name, names, read_process, read_run
from lmact.policies import SCRIPTED_POLICIES
from lmact.regimes import regime_of
from lmact.regimes.base import RegimeConfig
from lmact.runner import Runner, RunResult, RunSummary, run_returning
from lmact.store import StoreLocation, StoreUrl, open_store, store_location
from lmact.trackers import open_trackers
from lmact.trackers.base import tracked_config

# Run options as a sweep file gives them, to a run's configuration and episode count.
RunMaker = Callable[[dict[str, Any]], tuple[RegimeConfig, int]]
_TOP_LEVEL = frozenset({"name", "base", "axes", "runs", "exclude"})
# Options of the process, not of a run: a sweep may set them in its base only.
PROCESS_OPTIONS = names(Scope.MODEL, Scope.PROCESS)
# Options that `lmact run` reads for itself, not a run: a sweep file would set them to no
# effect, so it may not.
COMMAND_OPTIONS = names(Scope.COMMAND)
# The most runs a sweep file may make (the product of its axes' lengths, before any
# exclusion, plus its [[runs]]): a grid is counted before it is expanded, so a short file
# cannot ask for a billion runs. See docs/sweeps.md.
MAX_GRID_RUNS = 10_000
# The most a sweep file may weigh: read past this (/dev/zero, a wrong file) it is refused.
MAX_FILE_BYTES = 4 * 2**20


class SweepFile(NamedTuple):
    """A sweep file, read once and checked: its name, base options and each run's options."""

    name: str
    base: dict[str, Any]
    runs: list[dict[str, Any]]


@dataclass(frozen=True)
class SweepRun:
    options: dict[str, Any]  # as the sweep file gives them
    config: RegimeConfig
    episodes: int


@dataclass(frozen=True)
class Sweep:
    name: str
    base: dict[str, Any]
    runs: list[SweepRun]

    def run_ids(self) -> list[str]:
        """The runs of the sweep and of the baselines they need."""
        run_ids = []
        for run in self.runs:
            run_ids.append(run.config.run_id)
            baselines = regime_of(run.config).baselines(run.config).values()
            run_ids += [baseline.run_id for baseline in baselines]
        return run_ids

    def configurations(self) -> dict[str, dict[str, Any]]:
        """Its runs' configurations (and episodes) by run id, as trackers are told them."""
        return {run.config.run_id: tracked_config(run.config, run.episodes) for run in self.runs}

    def grid(self) -> dict[str, Any]:
        """What the store keeps of the sweep: its runs' options and ids."""
        return {
            "base": self.base,
            "runs": [{"options": r.options, "run_id": r.config.run_id} for r in self.runs],
        }


def _table(value: object, where: str, path: Path) -> dict[str, Any]:
    """A table's options by name, `token-budget` as `token_budget`; one given twice is refused."""
    if not isinstance(value, dict):
        raise LmactError(f"sweep file {path}: {where} must be a table")
    table: dict[str, Any] = {}
    for key, option in value.items():
        name = key.replace("-", "_")
        if name in table:
            raise LmactError(f"sweep file {path}: {where} {key} is given twice")
        table[name] = option
    return table


def _list(value: object, where: str, path: Path) -> list[Any]:
    if not isinstance(value, list):
        raise LmactError(f"sweep file {path}: {where} must be an array of tables")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML, its bytes read once: /dev/stdin or a pipe can be read only once."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise LmactError(f"sweep file {path} is larger than {MAX_FILE_BYTES:,} bytes")
        return tomllib.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise LmactError(f"sweep file {path} cannot be read ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise LmactError(f"sweep file {path} is not valid TOML: {error}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise LmactError(f"sweep file {path} is nested too deeply") from None


def read_sweep_file(path: Path, options: Collection[str] | None = None) -> SweepFile:
    """The sweep's name, base options and the options of each of its runs, checked: every
    key names an option (of `options`, by default every option of a run) that is used,
    and the grid holds at most MAX_GRID_RUNS runs, counted before it is expanded."""
    data = _read_toml(path)
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise LmactError(f"sweep file {path}: unknown key {unknown[0]!r}; accepted: "
                         f"{', '.join(sorted(_TOP_LEVEL))}")  # fmt: skip
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise LmactError(f'sweep file {path}: give the sweep a name (name = "...")')
    base = _table(data.get("base", {}), "[base]", path)
    axes = _table(data.get("axes", {}), "[axes]", path)
    extra = [_table(r, "[[runs]]", path) for r in _list(data.get("runs", []), "[[runs]]", path)]
    excluded = [
        _table(e, "[[exclude]]", path) for e in _list(data.get("exclude", []), "[[exclude]]", path)
    ]
    _check_options(path, base, axes, extra, names() if options is None else options)
    _check_exclusions(path, axes, excluded)
    count = math.prod(len(values) for values in axes.values()) + len(extra)
    if count > MAX_GRID_RUNS:
        raise LmactError(f"sweep file {path} makes {count:,} runs (its axes' product plus "
                         f"its [[runs]]); a sweep may make at most {MAX_GRID_RUNS:,}")  # fmt: skip
    points = _grid_points(axes)
    kept = [p for p in points if not any(_matches(p, e) for e in excluded)] + extra
    return SweepFile(name.strip(), base, [{**base, **point} for point in kept])


def _grid_points(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of the grid: one value of each axis."""
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def _matches(point: dict[str, Any], exclusion: dict[str, Any]) -> bool:
    return all(point.get(key) == value for key, value in exclusion.items())


def _check_key(path: Path, where: str, key: str, known: Collection[str]) -> None:
    """`key` names an option a run takes from `where`, or is refused in one line."""
    if key in PROCESS_OPTIONS and where != "[base]":
        raise LmactError(f"sweep file {path}: {where} {key} is an option of the process: "
                         "set it in [base]")  # fmt: skip
    if key in COMMAND_OPTIONS:
        hint = " (give `lmact sweep --dry-run`)" if key == "dry_run" else ""
        raise LmactError(f"sweep file {path}: {where} {key} is an option of the command, "
                         f"not of a run: a sweep file does not take it{hint}")  # fmt: skip
    if key not in known:
        raise LmactError(f"sweep file {path}: {where} {key}: unrecognized option (not one "
                         f"of a run){close_name(key, set(known) - COMMAND_OPTIONS)}")  # fmt: skip


def _check_value(path: Path, where: str, key: str, value: object) -> None:
    several = key in OPTIONS and OPTIONS[key].multiple  # base_url: servers of one model
    if isinstance(value, list) and (where != "[base]" or not several):
        several = " (several go in [axes])" if where != "[axes]" else ""
        raise LmactError(f"sweep file {path}: {where} {key} takes one value{several}")
    for one in value if isinstance(value, list) else [value]:
        if not isinstance(one, str | int | float):  # bool is an int
            raise LmactError(f"sweep file {path}: {where} {key} takes text, a number or "
                             f"true/false, not {one!r}")  # fmt: skip


def _check_options(
    path: Path,
    base: dict[str, Any],
    axes: dict[str, Any],
    extra: list[dict[str, Any]],
    known: Collection[str],
) -> None:
    """Every option of [base], [axes] and [[runs]] known, in its place, of a kind of value
    a run takes, and used by some run (a [base] value every run sets otherwise is not)."""
    for where, table in [("[base]", base), ("[axes]", axes)] + [("[[runs]]", r) for r in extra]:
        for key, value in table.items():
            _check_key(path, where, key, known)
            if where != "[axes]":
                _check_value(path, where, key, value)
            elif not isinstance(value, list) or not value:
                raise LmactError(f"sweep file {path}: [axes] {key} must be a non-empty list "
                                 "of values")  # fmt: skip
            else:
                for one in value:
                    _check_value(path, where, key, one)
    for key in base.keys() & axes.keys():
        if all(key in run for run in extra):
            raise LmactError(f"sweep file {path}: [base] {key} is used by no run (every run "
                             f"takes it from [axes] or [[runs]]): set it in one place")  # fmt: skip


def _check_exclusions(path: Path, axes: dict[str, Any], excluded: list[dict[str, Any]]) -> None:
    """Every [[exclude]] names axes and values on them: one that matched nothing would
    leave in the runs it was written to leave out."""
    for exclusion in excluded:
        if not exclusion:
            raise LmactError(f"sweep file {path}: an [[exclude]] with no option would exclude "
                             "every grid point")  # fmt: skip
        for key, value in exclusion.items():
            if key not in axes:
                named = ", ".join(axes) or "none"
                raise LmactError(f"sweep file {path}: [[exclude]] {key} is not an axis "
                                 f"(axes: {named}){close_name(key, axes)}")  # fmt: skip
            if value not in axes[key]:
                raise LmactError(f"sweep file {path}: [[exclude]] {key} = {value!r} is not a "
                                 f"value of [axes] {key} {axes[key]!r}")  # fmt: skip


def read_options(options: dict[str, Any]) -> tuple[RegimeConfig, int]:
    """A run of a sweep, from its options (`lmact.options.read_run`)."""
    read = read_run(options)
    return read.config, read.episodes


def load_sweep(source: Path | SweepFile, make_run: RunMaker = read_options) -> Sweep:
    """A sweep file's runs (the file, or what `read_sweep_file` read of it), each made into
    a configuration (errors name the run)."""
    name, base, options = source if isinstance(source, SweepFile) else read_sweep_file(source)
    runs, seen = [], set()
    for number, run_options in enumerate(options, 1):
        try:
            config, episodes = make_run(run_options)
        except LmactError as error:
            shown = json.dumps({k: v for k, v in run_options.items() if k not in base})
            raise LmactError(f"sweep {name}, run {number} {shown}: {error}") from None
        if config.run_id not in seen:  # two points that make the same run: played once
            seen.add(config.run_id)
            runs.append(SweepRun(run_options, config, episodes))
    if not runs:
        raise LmactError(f"sweep {name} holds no run (every grid point is excluded)")
    return Sweep(name, base, runs)


def process_settings(source: Path | SweepFile) -> ProcessOptions:
    """The options of the process (store, cache, connections, base URLs, timeouts …) that a
    sweep file's [base] sets, checked; None where it sets none of store, cache_dir, workers,
    max_connections. `source` is the file, or what `read_sweep_file` read of it (a pipe can
    be read only once)."""
    name, base, _ = source if isinstance(source, SweepFile) else read_sweep_file(source)
    try:
        return read_process({key: value for key, value in base.items() if key in PROCESS_OPTIONS})
    except LmactError as error:
        raise LmactError(f"sweep {name}: [base] {error}") from None


@dataclass(frozen=True)
class SweepPlan:
    """A sweep ready to play or estimate: its runs, and the process's options."""

    sweep: Sweep
    process: ProcessOptions
    shard: tuple[int, int] | None = None  # (I, N): only shard I of N (`--shard I/N`)

    @property
    def store(self) -> StoreLocation:
        return store_location(self.process.store)

    @contextlib.contextmanager
    def runner(self, tracked: bool = False) -> Iterator[Runner]:
        """One runner for every run of the sweep (one caller per model); `tracked`: with
        the experiment trackers of `log_to`."""
        process = self.process
        demo_store = DemoStore.in_cache(process.cache_dir, process.workers)
        trackers = open_trackers(process.log_to if tracked else ())
        with trackers, open_store(self.store) as store:
            runner = Runner(store, demo_store, process.model, process.max_connections,
                            progress=False, budget=process.budget(),
                            trackers=trackers)  # fmt: skip
            runner.shard = self.shard
            try:
                yield runner
            finally:
                runner.close()

    def estimate(self) -> SweepEstimate:
        """What the sweep would do, without a model call (`estimate_sweep`)."""
        with self.runner() as runner:
            return estimate_sweep(runner, self.sweep)

    def play(self, progress: SweepProgress | None = None) -> list[SweepOutcome]:
        """Play the sweep (kept in the store for `lmact report --sweep NAME`); `progress`,
        given the sweep and its runner, makes the listeners of what `play_sweep` does."""
        with self.runner(tracked=True) as runner:
            runner.store.save_sweep(self.sweep.name, self.sweep.grid(), self.sweep.run_ids())
            on_done, on_tick, close = (
                progress(self.sweep, runner) if progress else (lambda _: None, None, lambda: None)
            )
            runner.trackers.sweep_started(self.sweep.name, self.sweep.configurations())
            try:
                outcomes = run_returning(play_sweep(runner, self.sweep, on_done, on_tick))
            finally:
                close()
            errors = {o.run.config.run_id: o.error for o in outcomes if o.error is not None}
            runner.trackers.sweep_finished(self.sweep.name, errors)
            return outcomes


def plan_sweep(
    path: Path | str,
    *,
    store: Path | str | StoreUrl | None = None,
    cache_dir: Path | str | None = None,
    workers: int | None = None,
    max_connections: int | None = None,
    model_options: ModelOptions | None = None,
    max_cost: float | None = None,
    max_time: float | None = None,
    log_to: Collection[str] | None = None,
) -> SweepPlan:
    """A sweep file's runs, read once (it may be a pipe) and made, with the options of the
    process: those given here, else those its [base] sets, else the defaults."""
    read = read_sweep_file(Path(path))
    settings = process_settings(read)
    given = read_process({"store": store, "cache_dir": cache_dir, "workers": workers,
                          "max_connections": max_connections, "max_cost": max_cost,
                          "max_time": max_time, "log_to": log_to})  # fmt: skip
    process = ProcessOptions(
        store=given.store or settings.store,
        cache_dir=given.cache_dir or settings.cache_dir,
        workers=given.workers or settings.workers,
        max_connections=given.max_connections or settings.max_connections,
        max_cost=given.max_cost or settings.max_cost,
        max_time=given.max_time or settings.max_time,
        log_to=given.log_to or settings.log_to,
        model=model_options or settings.model,
    )
    return SweepPlan(load_sweep(read), process)


@dataclass(frozen=True)
class SweepOutcome:
    run: SweepRun
    summary: RunSummary | None
    error: str | None  # why the run (or a baseline it needs) did not finish
    played: int | None = None  # a shard's: the run's units it holds finished (no score)
    capped: bool = False  # stopped at --max-cost or --max-time, not by a failure


# The listeners of a sweep as it plays, made for it and its runner: one hears of each run
# as it ends, one is called every half second while it plays (or None), one closes them.
SweepProgress = Callable[
    [Sweep, Runner],
    tuple[Callable[["SweepOutcome"], None], Callable[[], None] | None, Callable[[], None]],
]


async def play_sweep(
    runner: Runner,
    sweep: Sweep,
    on_done: Callable[[SweepOutcome], None],
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 0.5,
) -> list[SweepOutcome]:
    """Play every run of the sweep and each baseline it needs (once) in this event loop;
    a run that fails leaves the others going. `on_done` hears of each run as it ends;
    `on_tick`, if given, is called every `tick_s` while the sweep plays (a live display)."""
    results: dict[str, asyncio.Task[RunResult]] = {}

    def started(config: RegimeConfig, episodes: int) -> asyncio.Task[RunResult]:
        key = f"{config.run_id}:{episodes}"
        if key not in results:
            results[key] = asyncio.ensure_future(runner.run_async(config, episodes))
        return results[key]

    async def one(run: SweepRun) -> SweepOutcome:
        runner.track(run.config, run.episodes)
        own = started(run.config, run.episodes)
        needed = {
            policy: started(config, run.episodes)
            for policy, config in regime_of(run.config).baselines(run.config).items()
        }
        try:
            result = await own
            baselines = {policy: await task for policy, task in needed.items()}
            if runner.shard is not None:  # a share of the units: scored once merged
                outcome = SweepOutcome(run, None, None, len(result.episodes))
            else:
                outcome = SweepOutcome(run, runner.summarize(result, baselines), None)
        except LmactError as error:
            outcome = SweepOutcome(run, None, str(error), capped=isinstance(error, BudgetReached))
        summary = outcome.summary.to_dict() if outcome.summary else None
        runner.trackers.run_finished(run.config.run_id, summary, outcome.error)
        on_done(outcome)
        return outcome

    async def ticking() -> None:
        while on_tick is not None:
            on_tick()
            await asyncio.sleep(tick_s)

    ticker = asyncio.ensure_future(ticking())
    try:
        return list(await asyncio.gather(*(one(run) for run in sweep.runs)))
    finally:
        ticker.cancel()


@dataclass
class ModelEstimate:
    """One model's share of a sweep's dry run."""

    runs: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    prefix_tokens: int = 0  # the cacheable part of `prompt_tokens`
    cost_usd: float | None = 0.0  # None when any of its runs' prices is unknown


@dataclass(frozen=True)
class SweepEstimate:
    models: dict[str, ModelEstimate]
    demonstrations: int  # to load or generate, each task and format's once


def estimate_sweep(runner: Runner, sweep: Sweep) -> SweepEstimate:
    """What the sweep would do, without a model call: each run played by the expert in the
    model's place (`Runner.estimate`); scripted runs call nothing."""
    models: dict[str, ModelEstimate] = {}
    # Runs of one task and format share its demonstrations: the most any of them needs.
    demonstrations: dict[tuple[str, str], int] = {}
    for run in sweep.runs:
        row = models.setdefault(run.config.model, ModelEstimate())
        row.runs += 1
        if run.config.model in SCRIPTED_POLICIES:
            continue  # plays from the environment: no call, no token
        estimate = runner.estimate(run.config, run.episodes)
        shared = (run.config.task, run.config.observation)
        demonstrations[shared] = max(demonstrations.get(shared, 0), estimate.demonstrations_needed)
        row.calls += estimate.calls
        row.prompt_tokens += estimate.prompt_tokens
        row.prefix_tokens += estimate.prefix_tokens
        if row.cost_usd is not None:
            row.cost_usd = None if estimate.cost_usd is None else row.cost_usd + estimate.cost_usd
    return SweepEstimate(models, sum(demonstrations.values()))
