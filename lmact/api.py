"""lmact from Python (a notebook, a script): run one configuration, run a sweep, read the
results back as plain records, make the report.

    from lmact import api
    summary = api.run("tic_tac_toe", model="random", demos=2, episodes=5, store="r.sqlite")
    api.run("bandit_hard", regime="icrl", model="ucb1", episodes=50, replicates=4,
            store="r.sqlite")
    results = api.results("r.sqlite")
    results.runs[0]["mean_return"], len(results.episodes), results.steps[0]["completion"]
    runs, episodes, steps = results.frames()  # pandas DataFrames, if pandas is installed

`run` takes every option of `lmact run`, by the same names (`regime`, `demos`, `variant`,
`timeout`, `dry_run` …: `lmact.options`), and reads them the same way, with the same
checks; everything is stored in the run store. The `lmact` command is a layer over these
functions; this module never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmact.declarations import Named, OptionError
from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelOptions
from lmact.options import RunOptions, model_options_given, read_run
from lmact.records import StepRecord, flat_fields
from lmact.report.build import Report, make_report
from lmact.report.tables import episode_records, report_rows, select_rows
from lmact.runner import RunEstimate, Runner, RunSummary
from lmact.store import StoreUrl, open_played_store, open_store
from lmact.sweeps import plan_sweep
from lmact.trackers import open_trackers

# What a dry run's JSON holds besides the run id, as `lmact run --dry-run --json` prints it.
_ESTIMATE_KEYS = (
    "episodes_todo", "episodes_done", "calls", "prompt_tokens", "prefix_tokens",
    "completion_tokens", "cost_usd", "cost_cached_usd", "demonstrations_needed",
    "demonstrations_generated", "demonstration_workers",
)  # fmt: skip
# Times, in seconds to the millisecond.
_ESTIMATE_SECONDS = ("demonstrations_generation_s", "demonstrations_forecast_s")


def run(
    task: str | None = None, *, model_options: ModelOptions | None = None, **options: Any
) -> dict[str, Any]:
    """Play one run and its baselines, as `lmact run --task TASK …` does, from the same
    options by the same names: its summary as `lmact run --json` prints it; with
    `dry_run=True`, its estimate as `lmact run --dry-run --json` prints it (`json` changes
    nothing: these are what it prints). `model_options` may stand for the model client
    options (`timeout`, `base_url` …), which are then not given by name."""
    read = read_run(options if task is None else {"task": task, **options})
    if model_options is not None and (named := model_options_given(options)):
        raise OptionError("give model_options or ", Named(named[0]), ", not both")
    played = play(read, model_options=model_options)
    return estimate_dict(played) if isinstance(played, RunEstimate) else played.to_dict()


def play(
    read: RunOptions, *, model_options: ModelOptions | None = None, progress: bool = False
) -> RunSummary | RunEstimate:
    """Play a run read by `lmact.options.read_run` (with its baselines), or estimate it
    (`dry_run`); `progress`: show progress bars on stderr. A run played is logged to the
    experiment trackers of its `log_to`."""
    process = read.process
    trackers = open_trackers(() if read.dry_run else process.log_to)
    with trackers, open_store(process.store) as store:
        demo_store = DemoStore.in_cache(process.cache_dir, process.workers)
        runner = Runner(store, demo_store, model_options or process.model,
                        process.max_connections, progress=progress,
                        budget=process.budget(), trackers=trackers)  # fmt: skip
        try:
            if read.dry_run:
                return runner.estimate(read.config, read.episodes)
            return runner.evaluate(read.config, read.episodes, restart=read.restart)
        finally:
            runner.close()


def estimate_dict(estimate: RunEstimate) -> dict[str, Any]:
    """A dry run's estimate as one JSON object."""
    values = {key: getattr(estimate, key) for key in _ESTIMATE_KEYS}
    values |= {key: round(float(getattr(estimate, key)), 3) for key in _ESTIMATE_SECONDS}
    return {"run_id": estimate.config.run_id, "dry_run": True, **values}


def sweep(
    path: Path | str,
    *,
    store: Path | str | None = None,
    cache_dir: Path | str | None = None,
    workers: int | None = None,
    max_connections: int | None = None,
    model_options: ModelOptions | None = None,
    log_to: str | list[str] | None = None,
) -> list[dict[str, Any]]:
    """Play a sweep file as `lmact sweep` does; per run, its options and its summary (or
    the error that stopped it). What the file's [base] sets for the process (its store,
    cache, connections, base URLs, experiment trackers …) applies unless given here."""
    plan = plan_sweep(path, store=store, cache_dir=cache_dir, workers=workers,
                      max_connections=max_connections, model_options=model_options,
                      log_to=[log_to] if isinstance(log_to, str) else log_to)  # fmt: skip
    return [
        {
            "options": o.run.options,
            "summary": o.summary.to_dict() if o.summary else None,
            "error": o.error,
        }
        for o in plan.play()
    ]


def report(store: Path | str | StoreUrl | None = None, **options: Any) -> Report:
    """What `lmact report` makes, with its options by the same names (`format`, `tasks`,
    `models`, `sweep`, `curves`, `plot`, `out`, `view_episodes`, `view_max_mb`,
    `cache_dir`, `workers`): the table to print, the files written, the HTML report's index
    (`lmact.report.build.make_report`)."""
    return make_report(store, **options)


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


def results(store: Path | str | StoreUrl | None = None, sweep: str | None = None) -> Results:
    """Every run of a store (a path, or a postgresql:// URL; or of one sweep) with its
    scores, episodes and steps."""
    with open_played_store(store) as run_store:
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
