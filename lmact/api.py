"""lmact from Python (a notebook, a script): run one configuration, run a sweep, read the
results back as plain records.

    from lmact import api
    summary = api.run("tic_tac_toe", model="random", demos=2, episodes=5, store="r.sqlite")
    api.run("bandit_hard", regime="icrl", model="ucb1", episodes=50, replicates=4,
            store="r.sqlite")
    results = api.results("r.sqlite")
    results.runs[0]["mean_return"], len(results.episodes), results.steps[0]["completion"]
    runs, episodes, steps = results.frames()  # pandas DataFrames, if pandas is installed

Each function takes the options of `lmact run` (`regime`, `demos`, `variant`, …) as
keyword arguments, checks them the same way, and stores everything in the run store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelOptions
from lmact.records import StepRecord, flat_fields
from lmact.report.tables import episode_records, report_rows, select_rows
from lmact.runner import Runner
from lmact.store import DEFAULT_STORE, RunStore


def _make_run(cache_dir: Path | None) -> Any:
    from lmact.cli import run_maker  # the options and checks of `lmact run`

    return run_maker(cache_dir)


def run(
    task: str,
    *,
    store: Path | str = DEFAULT_STORE,
    cache_dir: Path | str | None = None,
    model_options: ModelOptions | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Play one run and its baselines, as `lmact run --task TASK …` does; its summary as
    `lmact run --json` prints it."""
    cache = Path(cache_dir) if cache_dir is not None else None
    config, episodes = _make_run(cache)({"task": task, **options})
    with RunStore(store) as run_store:
        runner = Runner(run_store, DemoStore.in_cache(cache), model_options, progress=False)
        try:
            return runner.evaluate(config, episodes).to_dict()
        finally:
            runner.close()


def sweep(
    path: Path | str,
    *,
    store: Path | str | None = None,
    cache_dir: Path | str | None = None,
    model_options: ModelOptions | None = None,
) -> list[dict[str, Any]]:
    """Play a sweep file as `lmact sweep` does; per run, its options and its summary (or
    the error that stopped it). What the file's [base] sets for the process (its store,
    cache, connections, base URLs …) applies unless given here."""
    from lmact.cli import model_options_from, sweep_settings
    from lmact.sweeps import load_sweep, play_sweep, read_sweep_file

    read = read_sweep_file(Path(path))  # once: the file may be a pipe
    settings = sweep_settings(read)
    store = store or settings.store or DEFAULT_STORE
    cache = Path(cache_dir) if cache_dir is not None else settings.cache_dir
    plan = load_sweep(read, _make_run(cache))
    with RunStore(store) as run_store:
        runner = Runner(
            run_store,
            DemoStore.in_cache(cache, settings.workers),
            model_options or model_options_from(settings),
            settings.max_connections,
            progress=False,
        )
        try:
            run_store.save_sweep(plan.name, plan.grid(), plan.run_ids())
            outcomes = asyncio.run(play_sweep(runner, plan, lambda outcome: None))
        finally:
            runner.close()
    return [
        {
            "options": o.run.options,
            "summary": o.summary.to_dict() if o.summary else None,
            "error": o.error,
        }
        for o in outcomes
    ]


@dataclass(frozen=True)
class Results:
    """A store's results as plain records: a dict per run, per episode and per step."""

    runs: list[dict[str, Any]]
    episodes: list[dict[str, Any]]
    steps: list[dict[str, Any]]

    def frames(self) -> tuple[Any, Any, Any]:
        """The three lists as pandas DataFrames (pandas must be installed)."""
        try:
            import pandas
        except ImportError:
            raise LmactError("frames() needs pandas: pip install pandas") from None
        return tuple(pandas.DataFrame(rows) for rows in (self.runs, self.episodes, self.steps))


def _step_dict(run_id: str, step: StepRecord) -> dict[str, Any]:
    """A step as a plain record: its columns (its unit as `chain`, `unit_kind` and
    `episode`), its regime's `facts`, and each fact also beside the columns, as records
    held them before facts were kept apart (in-context RL's `context`)."""
    columns = {"run_id": run_id, **flat_fields(step)}
    return {**columns, **{k: v for k, v in step.facts.items() if k not in columns}}


def results(store: Path | str = DEFAULT_STORE, sweep: str | None = None) -> Results:
    """Every run of a store (or of one sweep) with its scores, episodes and steps."""
    if not Path(store).exists():
        raise LmactError(f"no run store at {store}")
    with RunStore(store) as run_store:
        rows = report_rows(run_store)
        if sweep is not None:
            rows = select_rows(rows, run_ids=run_store.sweep_runs(sweep))
        episodes, steps = [], []
        for row in rows:
            run_id = row["run_id"]
            episodes += episode_records(run_store, run_id)
            steps += [_step_dict(run_id, s) for s in run_store.steps(run_id)]
    runs = [{k: v for k, v in row.items() if not isinstance(v, list)} for row in rows]
    return Results(runs, episodes, steps)
