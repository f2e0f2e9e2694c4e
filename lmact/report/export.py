"""Runs and demonstrations as Parquet tables, for the tools that read them offline (pandas,
pyarrow, Hugging Face `datasets`): `lmact export RUN… --format parquet --out DIR` and
`lmact export --demos TASK --episodes N --out DIR`.

A run's steps are replayed as the viewer replays them (`lmact.report.viewer.view_run`), so
each step carries the observation the model was shown (text, or the PNG's bytes) beside
what the store keeps (completion, answer, its kind, action, reward, usage), and whether the
rebuilt prompt is the one sent (its hash against the stored one)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmact import __version__
from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import TOKEN_FIELDS
from lmact.records import EpisodeRecord, StepRecord
from lmact.report.tables import resolve_runs
from lmact.report.viewer import view_run
from lmact.report.viewer_page import ViewedStep
from lmact.store import RunRecord, RunStore
from lmact.tasks import TaskSpec

INSTALL_HINT = 'Parquet export needs pyarrow: pip install "lmact[parquet]"'
_KEY = [("run_id", "string"), ("chain", "int64"), ("unit_kind", "string"), ("episode", "int64")]
_TOKENS = [(name, "int64") for name in TOKEN_FIELDS]
_OBSERVATION = [("observation_text", "string"), ("observation_png", "binary")]
# Each table's columns and their Arrow types, in order.
RUN_COLUMNS = [
    ("run_id", "string"), ("regime", "string"), ("task", "string"), ("observation", "string"),
    ("model", "string"), ("created", "float64"), ("config", "string"), ("facts", "string"),
    ("lmact_version", "string"),
]  # fmt: skip
EPISODE_COLUMNS = [
    *_KEY, ("seed", "int64"), ("total_return", "float64"), ("steps", "int64"),
    ("terminated", "bool_"), ("valid", "int64"), ("illegal", "int64"), ("invalid", "int64"),
    ("empty", "int64"), ("unreadable", "int64"), *_TOKENS, ("cost_usd", "float64"),
    ("end_reason", "string"), ("facts", "string"),
]  # fmt: skip
STEP_COLUMNS = [
    *_KEY, ("step", "int64"), *_OBSERVATION, ("prompt_hash", "string"),
    ("prompt_verified", "bool_"), ("completion", "string"), ("answer", "string"),
    ("kind", "string"), ("action", "string"), ("reward", "float64"), ("stop_reason", "string"),
    *_TOKENS, ("cost_usd", "float64"), ("latency_s", "float64"), ("from_cache", "bool_"),
]  # fmt: skip
DEMO_COLUMNS = [
    ("task", "string"), ("observation_format", "string"), ("demonstration", "int64"),
    ("seed", "int64"), ("step", "int64"), *_OBSERVATION, ("action", "string"),
    ("episode_return", "float64"),
]  # fmt: skip


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise LmactError(INSTALL_HINT) from None
    return pyarrow, pyarrow.parquet


@contextmanager
def _table(out: Path, name: str, columns: list[tuple[str, str]]) -> Iterator[Any]:
    """A Parquet file `out/name.parquet` of `columns`, written a batch of rows at a time
    (a run's, say): a store's runs are never all held at once."""
    pa, pq = _pyarrow()
    schema = pa.schema([(column, getattr(pa, kind)()) for column, kind in columns])
    out.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(out / f"{name}.parquet", schema) as writer:

        def write(rows: list[dict[str, Any]]) -> None:
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))

        yield write


def export_runs(
    store: RunStore, run_ids: Sequence[str], out: Path, demo_store: DemoStore
) -> list[Path]:
    """The runs `run_ids` (each may be a prefix; none: every run) as runs.parquet,
    episodes.parquet and steps.parquet under `out`; the paths written."""
    runs = resolve_runs(store, run_ids)
    with _table(out, "runs", RUN_COLUMNS) as runs_table, \
            _table(out, "episodes", EPISODE_COLUMNS) as episodes_table, \
            _table(out, "steps", STEP_COLUMNS) as steps_table:  # fmt: skip
        for run in runs:
            runs_table([_run_row(run)])
            view = view_run(store, run, demo_store)
            episodes_table([_episode_row(run.run_id, e.record) for e in view.episodes])
            steps_table([_step_row(run.run_id, s) for e in view.episodes for s in e.steps])
    return [out / f"{name}.parquet" for name in ("runs", "episodes", "steps")]


def _run_row(run: RunRecord) -> dict[str, Any]:
    config = run.config
    return {
        "run_id": run.run_id, **{k: config.get(k) for k in ("regime", "task", "observation",
                                                            "model")},
        "created": run.created, "config": json.dumps(config, sort_keys=True),
        "facts": json.dumps(run.facts, sort_keys=True), "lmact_version": __version__,
    }  # fmt: skip


def unit_fields(record: EpisodeRecord | StepRecord) -> dict[str, Any]:
    """The unit a record is of, as both exports (Parquet, Inspect) name its fields."""
    unit = record.unit
    return {"chain": unit.chain, "unit_kind": unit.kind.value, "episode": unit.index}


def episode_counts(record: EpisodeRecord) -> dict[str, Any]:
    """An episode's ending and counts, as both exports give them."""
    counts = ("seed", "steps", "valid", "illegal", "invalid", "empty", "unreadable",
              "cost_usd", "end_reason")  # fmt: skip
    return {"terminated": bool(record.terminated), **{n: getattr(record, n) for n in counts}}


def step_fields(step: ViewedStep) -> dict[str, Any]:
    """A replayed step's stored values as both exports give them (enums as their values),
    and whether its rebuilt prompt is the one sent; not its completion or observation,
    which an Inspect log holds as messages."""
    stored = step.stored
    return {
        "step": stored.step, "answer": stored.answer, "kind": stored.kind.value,
        "action": stored.action, "reward": stored.reward, "prompt_hash": stored.prompt_hash,
        "prompt_verified": step.prompt_verified, "stop_reason": stored.stop_reason.value,
        **stored.usage.as_dict(), "cost_usd": stored.cost_usd,
    }  # fmt: skip


def _episode_row(run_id: str, record: EpisodeRecord) -> dict[str, Any]:
    return {
        "run_id": run_id, **unit_fields(record), **episode_counts(record),
        "total_return": record.total_return, **record.usage.as_dict(),
        "facts": json.dumps(record.facts, sort_keys=True),
    }  # fmt: skip


def _step_row(run_id: str, step: ViewedStep) -> dict[str, Any]:
    stored = step.stored
    observation = step.asked.observation if step.asked is not None else None
    return {
        "run_id": run_id, **unit_fields(stored), **step_fields(step),
        "completion": stored.completion, "latency_s": stored.latency_s,
        "observation_text": observation.text if observation is not None else None,
        "observation_png": observation.image_png if observation is not None else None,
        "from_cache": bool(stored.from_cache),
    }  # fmt: skip


def export_demonstrations(
    task: TaskSpec, observation: str, count: int, out: Path, demo_store: DemoStore
) -> Path:
    """The first `count` demonstrations of `task` in `observation` (generated where
    missing) as demonstrations.parquet under `out`: a row per step."""
    demonstrations = demo_store.load(task, observation, 0, count)
    with _table(out, "demonstrations", DEMO_COLUMNS) as write:
        for index, demonstration in enumerate(demonstrations):
            write([
                {
                    "task": task.name, "observation_format": observation,
                    "demonstration": index, "seed": demonstration.seed, "step": number,
                    "observation_text": shown.text, "observation_png": shown.image_png,
                    "action": action, "episode_return": demonstration.total_return,
                }
                for number, (shown, action) in enumerate(demonstration.steps)
            ])  # fmt: skip
    return out / "demonstrations.parquet"
