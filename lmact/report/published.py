"""Values the papers lmact reproduces publish, kept as data (`published/*.toml`, one file per
paper, each value with where it was published), and which runs they correspond to.

A published result names the regime, task and model (lmact's name for the paper's policy),
the settings a run must have (`ucb_c`, …), the horizon and the replicates it was measured
over, and its measures with how far a reproduction may fall from them. `lmact report` shows
them beside the runs they correspond to; tests/test_published.py reproduces them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmact.resources import data_dir, read_toml, validated

Row = Mapping[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paper(_Strict):
    cite: str
    short: str  # how a table names it


class PublishedResult(_Strict):
    where: str  # the figure or table, and the paper's name for the policy
    regime: str
    task: str
    model: str  # lmact's policy
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)
    horizon: int | None = Field(None, gt=0)  # episodes per replicate (in-context RL)
    replicates: int | None = Field(None, gt=0)
    measures: dict[str, float]
    paper: Paper | None = None  # filled from the file's [paper]
    # The file's [tolerance], and what this result gives of its own (it wins).
    tolerance: dict[str, float] = Field(default_factory=dict)
    # Set when the value is of the paper's own agent (its expert, whose data is not
    # public), shown beside lmact's policy of that name for reference: not one a run of
    # lmact reproduces, so it has no tolerance.
    paper_agent: str | None = None

    def matches(self, row: Row) -> bool:
        """Whether a report row (one run) is a run of this result's protocol: its regime,
        task, model, settings and horizon (not its replicates: fewer give a noisier value)."""
        if (row.get("regime"), row.get("task"), row.get("model")) != (
            self.regime,
            self.task,
            self.model,
        ):
            return False
        if any(not _same(row.get(name), value) for name, value in self.settings.items()):
            return False
        return self.horizon is None or row.get("horizon") == self.horizon


class PublishedFile(_Strict):
    paper: Paper
    tolerance: dict[str, float] = Field(default_factory=dict)
    result: list[PublishedResult]

    @model_validator(mode="after")
    def _tolerances_known(self) -> PublishedFile:
        for result in self.result:
            if result.paper_agent is not None:
                continue
            unknown = set(result.measures) - set(self.tolerance) - set(result.tolerance)
            if unknown:
                raise ValueError(f"{result.where}: no tolerance for {', '.join(sorted(unknown))}")
        return self


def _same(stored: object, published: object) -> bool:
    if isinstance(published, float) and isinstance(stored, int | float):
        return math.isclose(stored, published)
    return stored == published


# A published value beside a run's, as a report's table shows it: `within` says whether the
# run reproduces it (within the tolerance the paper's file gives; none for a paper's agent).
PUBLISHED_COLUMNS = (
    "source", "model", "run_id", "replicates", "measure", "published", "tolerance", "this_run",
    "within",
)  # fmt: skip


def read_published(path: Path) -> list[PublishedResult]:
    """The results of one file, each with its paper and tolerances; a file that is not
    one is a one-line error naming it."""
    what = "published values"
    parsed = validated(PublishedFile, read_toml(path, what), path, what)
    return [
        result.model_copy(
            update={"paper": parsed.paper, "tolerance": {**parsed.tolerance, **result.tolerance}}
        )
        for result in parsed.result
    ]


@functools.cache
def published_results() -> tuple[PublishedResult, ...]:
    """Every shipped published result."""
    files = sorted(data_dir("published").glob("*.toml"))
    return tuple(result for path in files for result in read_published(path))


def published_for(row: Row) -> list[PublishedResult]:
    """The published results a report row's run corresponds to."""
    return [result for result in published_results() if result.matches(row)]


def comparison(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One line per run and published measure it corresponds to: the paper's value, the
    run's, their difference and whether it is within the paper's tolerance."""
    lines = []
    for row in rows:
        for result in published_for(row):
            for measure, value in result.measures.items():
                got = row.get(measure)
                if not isinstance(got, int | float):
                    continue
                lines.append(_line(result, row, measure, value, float(got)))
    return lines


def _line(result: PublishedResult, row: Row, measure: str, value: float, got: float
          ) -> dict[str, Any]:  # fmt: skip
    assert result.paper is not None  # set by read_published
    source = f"{result.paper.short}, {result.where}"
    if result.paper_agent is not None:  # for reference: no tolerance, no verdict
        source += f" (the paper's agent: {result.paper_agent}; not lmact's {result.model})"
    tolerance = result.tolerance.get(measure)
    return {
        "task": result.task,
        "source": source,
        "run_id": row.get("run_id"),
        "model": result.model,
        "replicates": row.get("replicates"),
        "measure": measure,
        "published": value,
        "tolerance": tolerance,
        "this_run": got,
        "within": None if tolerance is None else abs(got - value) <= tolerance + 1e-9,
    }
