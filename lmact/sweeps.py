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

Keys are the long options of `lmact run` (`token_budget` or `token-budget`). Every run of
the grid, and each baseline it needs once however many runs share it, is played in one
event loop, with one caller per model: a provider's connection limit and its pause hold
across the whole sweep, and runs of different models proceed side by side.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmact.errors import LmactError
from lmact.policies import SCRIPTED_POLICIES
from lmact.regimes import regime_of
from lmact.regimes.base import RegimeConfig
from lmact.runner import Runner, RunResult, RunSummary

# Run options as a sweep file gives them, to a run's configuration and episode count.
RunMaker = Callable[[dict[str, Any]], tuple[RegimeConfig, int]]
_TOP_LEVEL = frozenset({"name", "base", "axes", "runs", "exclude"})
# Options of the process, not of a run: a sweep may set them in its base only.
PROCESS_OPTIONS = frozenset(
    {
        "store", "cache_dir", "workers", "max_connections", "context_window", "threads",
        "max_images", "base_url", "completions", "timeout", "max_retries", "max_wait",
        "reasoning_budget", "input_price", "output_price",
    }
)  # fmt: skip


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

    def grid(self) -> dict[str, Any]:
        """What the store keeps of the sweep: its runs' options and ids."""
        return {
            "base": self.base,
            "runs": [{"options": r.options, "run_id": r.config.run_id} for r in self.runs],
        }


def _key(name: object, where: str) -> str:
    if not isinstance(name, str):
        raise LmactError(f"sweep {where}: option names are text, not {name!r}")
    return name.replace("-", "_")


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LmactError(f"sweep {where} must be a table")
    return {_key(k, where): v for k, v in value.items()}


def read_sweep_file(path: Path) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The sweep's name, base options and the options of each of its runs, checked."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise LmactError(f"sweep file {path} cannot be read ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise LmactError(f"sweep file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(data) - _TOP_LEVEL)
    if unknown:
        raise LmactError(f"sweep file {path}: unknown key {unknown[0]!r}; accepted: "
                         f"{', '.join(sorted(_TOP_LEVEL))}")  # fmt: skip
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise LmactError(f'sweep file {path}: give the sweep a name (name = "...")')
    base = _table(data.get("base", {}), "[base]")
    axes = _table(data.get("axes", {}), "[axes]")
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise LmactError(f"sweep [axes] {axis} must be a non-empty list of values")
        if axis in PROCESS_OPTIONS:
            raise LmactError(f"sweep [axes] {axis} is an option of the process: set it in [base]")
    points = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    extra = [_table(run, "[[runs]]") for run in _list(data.get("runs", []), "[[runs]]")]
    excluded = [_table(run, "[[exclude]]") for run in _list(data.get("exclude", []), "[[exclude]]")]
    for options in extra:
        if set(options) & PROCESS_OPTIONS:
            raise LmactError("sweep [[runs]] may not set options of the process; use [base]")
    kept = [p for p in points if not any(_matches(p, e) for e in excluded)] + extra
    return name.strip(), base, [{**base, **point} for point in kept]


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise LmactError(f"sweep {where} must be an array of tables")
    return value


def _matches(point: dict[str, Any], exclusion: dict[str, Any]) -> bool:
    return all(point.get(key) == value for key, value in exclusion.items())


def load_sweep(path: Path, make_run: RunMaker) -> Sweep:
    """A sweep file's runs, each made into a configuration (errors name the run)."""
    name, base, options = read_sweep_file(path)
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


@dataclass(frozen=True)
class SweepOutcome:
    run: SweepRun
    summary: RunSummary | None
    error: str | None  # why the run (or a baseline it needs) did not finish


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
        own = started(run.config, run.episodes)
        needed = {
            policy: started(config, run.episodes)
            for policy, config in regime_of(run.config).baselines(run.config).items()
        }
        try:
            result = await own
            baselines = {policy: await task for policy, task in needed.items()}
            outcome = SweepOutcome(run, runner.summarize(result, baselines), None)
        except LmactError as error:
            outcome = SweepOutcome(run, None, str(error))
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
