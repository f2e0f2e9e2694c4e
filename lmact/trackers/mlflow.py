"""`--log-to mlflow`: each run an MLflow run (a sweep's nested under a parent run named
after the sweep), its configuration as parameters, each episode's measures as metrics at
the step of its count, and its summary's numbers as metrics.

The tracking store is MLflow's own setting, MLFLOW_TRACKING_URI (a server `http://…`, or a
database; the `file:` store needs MLFLOW_ALLOW_FILE_STORE=true since MLflow 3); the
experiment is MLFLOW_EXPERIMENT_NAME, else "lmact", made if missing. The client calls the
store from the run's own thread: metrics are sent together, at most about once a second
per run, rather than a request an episode.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from lmact.records import EpisodeRecord
from lmact.trackers.base import DEFAULT_PROJECT, TrackedRun, Tracker, needs, summary_numbers

# A run's buffered metrics are sent when this old, or this many (MLflow takes 1,000 a call).
SEND_EVERY_S = 1.0
SEND_AT_METRICS = 700
# The longest parameter value MLflow keeps (its MAX_PARAM_VAL_LENGTH).
PARAM_CHARS = 6000


class MlflowTracker(Tracker):
    """MLflow, through `MlflowClient` (no active-run state: a sweep's runs are open at once)."""

    def __init__(self) -> None:
        needs("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI, else MLflow's default
        # Found (or made) now, so that a store that cannot be used is said before any run.
        self.experiment_id = self._experiment(
            os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        )
        self.parent: str | None = None  # the sweep's MLflow run
        self.runs: dict[str, str] = {}  # lmact run id -> MLflow run id
        self.buffered: dict[str, list[Any]] = {}  # MLflow run id -> metrics not sent yet
        self.sent_at: dict[str, float] = {}

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another worker made it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def sweep_started(self, sweep: str, runs: Mapping[str, Mapping[str, Any]]) -> None:
        tags = {"lmact.sweep": sweep, "lmact.runs": str(len(runs))}
        parent = self.client.create_run(self.experiment_id, run_name=sweep, tags=tags)
        self.parent = parent.info.run_id

    def run_started(self, run: TrackedRun) -> None:
        from mlflow.entities import Param

        tags = {"lmact.run_id": run.run_id}
        if run.sweep is not None:
            tags["lmact.sweep"] = run.sweep
        if self.parent is not None:
            tags["mlflow.parentRunId"] = self.parent  # nested under the sweep's run
        created = self.client.create_run(self.experiment_id, run_name=run.name, tags=tags)
        mlflow_id = self.runs[run.run_id] = created.info.run_id
        params = [Param(key, str(value)[:PARAM_CHARS]) for key, value in run.config.items()]
        self.client.log_batch(mlflow_id, params=params)
        self.buffered[mlflow_id], self.sent_at[mlflow_id] = [], time.monotonic()

    def episode_finished(
        self, run_id: str, episode: EpisodeRecord, measures: Mapping[str, float]
    ) -> None:
        from mlflow.entities import Metric

        mlflow_id = self.runs[run_id]
        step, now = int(measures["running/episodes"]), int(time.time() * 1000)
        buffer = self.buffered[mlflow_id]
        buffer += [Metric(key, value, now, step) for key, value in measures.items()]
        waited = time.monotonic() - self.sent_at[mlflow_id]
        if len(buffer) >= SEND_AT_METRICS or waited >= SEND_EVERY_S:
            self._send(mlflow_id)

    def _send(self, mlflow_id: str) -> None:
        buffer = self.buffered[mlflow_id]
        if buffer:
            self.client.log_batch(mlflow_id, metrics=buffer)
        self.buffered[mlflow_id], self.sent_at[mlflow_id] = [], time.monotonic()

    def run_finished(
        self, run_id: str, summary: Mapping[str, Any] | None, error: str | None
    ) -> None:
        from mlflow.entities import Metric

        mlflow_id = self.runs.pop(run_id)
        self._send(mlflow_id)
        del self.buffered[mlflow_id], self.sent_at[mlflow_id]
        if summary is not None:
            now = int(time.time() * 1000)
            numbers = summary_numbers(summary).items()
            self.client.log_batch(mlflow_id, metrics=[Metric(k, v, now, 0) for k, v in numbers])
        if error is not None:
            self.client.set_tag(mlflow_id, "lmact.error", error[:PARAM_CHARS])
        self.client.set_terminated(mlflow_id, "FINISHED" if error is None else "FAILED")

    def sweep_finished(self, sweep: str, errors: Mapping[str, str]) -> None:
        if self.parent is not None:
            self.client.set_terminated(self.parent, "FAILED" if errors else "FINISHED")
            self.parent = None

    def close(self) -> None:
        """Runs left open were interrupted: sent what is buffered, and ended as killed."""
        for mlflow_id in [*self.runs.values(), *([self.parent] if self.parent else [])]:
            if self.buffered.get(mlflow_id):
                self._send(mlflow_id)
            self.client.set_terminated(mlflow_id, "KILLED")
        self.runs.clear()
        self.parent = None
