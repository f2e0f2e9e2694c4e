"""`--log-to wandb`: each run a Weights & Biases run (a sweep's grouped by the sweep's name),
its configuration as the run's config, each episode's measures as a history step, and its
summary's numbers as the run's summary.

wandb reads its own settings from the environment: WANDB_PROJECT (default here: "lmact"),
WANDB_ENTITY, WANDB_MODE (`offline` writes the runs under WANDB_DIR, to sync later),
WANDB_API_KEY. It is imported when the tracker is made, so that `import lmact` does not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lmact.records import EpisodeRecord
from lmact.trackers.base import DEFAULT_PROJECT, TrackedRun, Tracker, needs, summary_numbers


class WandbTracker(Tracker):
    """Weights & Biases: one W&B run per lmact run, several open at once in a sweep."""

    def __init__(self) -> None:
        self.wandb = needs("wandb", "wandb")
        self.runs: dict[str, Any] = {}  # lmact run id -> its open W&B run

    def run_started(self, run: TrackedRun) -> None:
        wandb = self.wandb
        self.runs[run.run_id] = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=run.name,
            group=run.sweep,
            job_type="sweep" if run.sweep else "run",
            config=run.config,
            # A sweep plays its runs side by side: each its own W&B run, open at once.
            reinit="create_new",
            # lmact's output is on stdout (`--json`): wandb must not wrap it.
            settings=wandb.Settings(console="off"),
        )

    def episode_finished(
        self, run_id: str, episode: EpisodeRecord, measures: Mapping[str, float]
    ) -> None:
        self.runs[run_id].log(dict(measures), step=int(measures["running/episodes"]))

    def run_finished(
        self, run_id: str, summary: Mapping[str, Any] | None, error: str | None
    ) -> None:
        run = self.runs.pop(run_id)
        if summary is not None:
            run.summary.update(summary_numbers(summary))
        if error is not None:
            run.summary["error"] = error
        run.finish(exit_code=0 if error is None else 1)

    def close(self) -> None:
        while self.runs:  # runs the process did not finish (interrupted)
            _, run = self.runs.popitem()
            run.finish(exit_code=1)
