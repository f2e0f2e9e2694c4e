"""A report reads each run's episodes as sums and a few columns, and its steps as streams of
the columns its measures need: it makes no step record (nor, for a table, any episode
record), its rows are those the records give, and its memory follows the runs it shows, not
their steps; the bootstraps and learning curves behind them are the seeded ones, bit for
bit, in bounded memory."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import CYCLER, Cycler, copy_run

from lmact.cli import main
from lmact.demos import DemoStore
from lmact.records import EpisodeRecord, StepRecord, UnitKind
from lmact.regimes import regime_of
from lmact.regimes.icrl import by_replicate, make_icrl_config
from lmact.regimes.icrl_context import run_environment
from lmact.regimes.imitation import make_config
from lmact.report.plots import PLOTTED_FIELDS
from lmact.report.tables import TABLE_FIELDS, report_rows
from lmact.runner import Runner
from lmact.scoring import bootstrap_ci, final_share_mean, learning_curve
from lmact.store import RunStore
from lmact.tasks import get_task

REPLICATES, ROUNDS = 5, 24
BANDIT = make_icrl_config("bandit_hard", model="ucb1", replicates=REPLICATES)
IMITATION = make_config("tic_tac_toe", model=CYCLER, demos=0)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bandit run of a few replicates and an imitation run of several steps an episode
    (a model with tokens, costs and answers of every kind), each with its random and expert
    baselines."""
    folder = tmp_path_factory.mktemp("scale")
    with RunStore(folder / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(folder / "demos"), progress=False)
        runner.policies.register(Cycler())
        try:
            runner.evaluate(BANDIT, ROUNDS)
            runner.evaluate(IMITATION, 6)
        finally:
            runner.close()
    return folder / "runs.sqlite"


def reference_ci(values: list[float]) -> tuple[float, float]:
    """The interval as defined: np.percentile of the means of 10,000 resamples drawn at once
    from seed 0 (its tails as the confidence gives them: 2.5000000000000022 …)."""
    data = np.asarray(values, dtype=float)
    indices = np.random.default_rng(0).integers(0, data.size, size=(10_000, data.size))
    tail = (1 - 0.95) / 2 * 100
    low, high = np.percentile(data[indices].mean(axis=1), [tail, 100 - tail])
    return float(low), float(high)


def reference_curve(returns: list[list[float]]) -> list[dict[str, float]]:
    """A learning curve point by point, each its values' mean and `reference_ci`."""
    points = []
    for episode in range(max(len(r) for r in returns)):
        values = [r[episode] for r in returns if len(r) > episode]
        low, high = reference_ci(values)
        points.append({"episode": episode, "mean": float(np.mean(values)), "low": low,
                       "high": high})  # fmt: skip
    return points


def greedy_share(chosen: list[str], earned: list[float]) -> float:
    """GreedyFrac (Krishnamurthy et al.): the share of all rounds that pulled an arm not
    pulled before or one of the best mean so far."""
    totals: dict[str, list[float]] = {}
    greedy = 0
    for arm, reward in zip(chosen, earned, strict=True):
        means = {a: sum(v) / len(v) for a, v in totals.items()}
        greedy += arm not in means or means[arm] >= max(means.values())
        totals.setdefault(arm, []).append(reward)
    return greedy / len(chosen)


def scored_records(store: RunStore, run_id: str) -> list[EpisodeRecord]:
    return [r for u, r in store.finished_episodes(run_id).items() if u.kind is UnitKind.EPISODE]


def expected_scores(store: RunStore, run_id: str, baselines: dict[str, str]) -> dict[str, Any]:
    """A row's scores computed from the run's episode records, as reports computed them."""
    records = scored_records(store, run_id)
    returns = [r.total_return for r in records]
    means = {
        policy: float(np.mean([store.finished_episodes(b)[r.unit].total_return for r in records]))
        for policy, b in baselines.items()
    }
    steps = sum(r.steps for r in records)
    bad = [sum(getattr(r, kind) for r in records) for kind in ("empty", "invalid", "illegal")]
    low, high = reference_ci(returns)
    span = means["expert"] - means["random"]
    return {
        "episodes": len(records),
        "mean_return": float(np.mean(returns)),
        "ci95_low": low,
        "ci95_high": high,
        "normalized_score": (float(np.mean(returns)) - means["random"]) / span,
        "normalized_low": (low - means["random"]) / span,
        "normalized_high": (high - means["random"]) / span,
        "empty_rate": bad[0] / steps,
        "invalid_rate": (bad[0] + bad[1]) / steps,
        "illegal_rate": sum(bad) / steps,
        "prompt_tokens": sum(r.usage.prompt_tokens for r in records),
        "cost_usd": summed_cost(records),
    }


def summed_cost(records: list[EpisodeRecord]) -> float | None:
    """The episodes' costs added in order; None if any is unknown."""
    total = 0.0
    for record in records:
        if record.cost_usd is None:
            return None
        total += record.cost_usd
    return total


def expected_bandit(store: RunStore, run_id: str, baselines: dict[str, str]) -> dict[str, Any]:
    """The in-context RL measures computed from the run's step records."""
    records = scored_records(store, run_id)
    steps = {step.unit: step for step in store.steps(run_id)}
    task = get_task(BANDIT.task)
    env, gap = run_environment(BANDIT, task), float(task.options["gap"])
    regret, failed, min_share, greedy, mean_reward = [], [], [], [], []
    for replicate in range(REPLICATES):
        rounds = [r for r in records if r.chain == replicate]
        chosen = [steps[r.unit].action for r in rounds]
        earned = [steps[r.unit].reward for r in rounds]
        env.reset(rounds[0].seed)
        best, arms = env.expert_action(), env.legal_actions()
        regret.append(gap * sum(arm != best for arm in chosen))
        failed.append(float(best not in chosen[len(chosen) // 2 - 1 :]))  # rounds T/2 … T
        min_share.append(len(arms) * min(chosen.count(arm) for arm in arms) / len(chosen))
        greedy.append(greedy_share(chosen, earned))
        mean_reward.append((float(np.mean(earned)) - (0.5 - gap / 2)) / gap)  # rescaled
    returns = by_replicate(records)
    final = final_share_mean(returns)
    reference = {
        policy: final_share_mean(by_replicate(scored_records(store, b)))
        for policy, b in baselines.items()
    }
    regret_low, regret_high = reference_ci(regret)
    failed_low, failed_high = reference_ci(failed)
    return {
        "final_return": final,
        "final_normalized": (final - reference["random"])
        / (reference["expert"] - reference["random"]),
        "regret": float(np.mean(regret)),
        "regret_low": regret_low,
        "regret_high": regret_high,
        "suffix_failure": float(np.mean(failed)),
        "suffix_failure_low": failed_low,
        "suffix_failure_high": failed_high,
        "k_min_frac": float(np.mean(min_share)),
        "greedy_frac": float(np.mean(greedy)),
        "median_reward": float(np.median(mean_reward)),
        "learning_curve": reference_curve(returns),
    }


@contextlib.contextmanager
def no_records(monkeypatch: pytest.MonkeyPatch, *kinds: type) -> Any:
    """Making a record of `kinds` fails the test."""

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a {type(self).__name__} was made")

    with monkeypatch.context() as patched:
        for kind in kinds:
            patched.setattr(kind, "__init__", refuse)
        yield


def baselines_of(config: Any) -> dict[str, str]:
    return {p: c.run_id for p, c in regime_of(config).baselines(config).items()}


def test_a_reports_rows_read_no_record_and_are_what_the_records_give(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RunStore(store_path) as store:
        expected = {
            config.run_id: expected_scores(store, config.run_id, baselines_of(config))
            for config in (BANDIT, IMITATION)
        }
        expected[BANDIT.run_id] |= expected_bandit(store, BANDIT.run_id, baselines_of(BANDIT))
        with no_records(monkeypatch, StepRecord, EpisodeRecord):
            wanted = TABLE_FIELDS | PLOTTED_FIELDS | {"learning_curve"}
            rows = {row["run_id"]: row for row in report_rows(store, wanted)}
    assert len(rows) == 2 + 4  # the runs and their baselines
    for run_id, values in expected.items():
        got = {name: rows[run_id][name] for name in values}
        assert got.pop("learning_curve", None) == values.pop("learning_curve", None)
        assert got == values, run_id
    # A table asks for no curve; a plot for those its figure draws: of a bandit, not the
    # learning curve (nor the context's length), but the best-arm share, regret and reward.
    with RunStore(store_path) as store:
        assert "learning_curve" not in report_rows(store, TABLE_FIELDS)[0]
        plotted = {row["run_id"]: row for row in report_rows(store, TABLE_FIELDS | PLOTTED_FIELDS)}
    bandit = plotted[BANDIT.run_id]
    assert "learning_curve" not in bandit and "context_length" not in bandit
    assert all(bandit[curve] for curve in ("best_arm_curve", "regret_curve", "reward_curve"))


@pytest.mark.parametrize("fmt", ["md", "csv"])
def test_the_table_reports_make_no_record(
    store_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with no_records(monkeypatch, StepRecord, EpisodeRecord):
        assert main(["report", "--store", str(store_path), "--format", fmt]) == 0
    assert BANDIT.run_id in capsys.readouterr().out


def test_learning_curves_are_the_seeded_bootstrap_of_each_point() -> None:
    rng = np.random.default_rng(5)
    cases = [
        [list(rng.random(12) * 3.7) for _ in range(130)],  # fractions: each point alone
        [list(rng.random(n) * 2) for n in (12, 40, 3, 40, 17, 9, 9, 9, 9, 9, 40)],  # ragged
        [list(rng.integers(0, 2, 30).astype(float)) for _ in range(4)],  # few: ways counted
        [list(rng.integers(-3, 4, n).astype(float)) for n in (20, 35, 35, 1, 35, 20) * 3],
        [list(rng.integers(0, 2, 8).astype(float)) for _ in range(300)],  # many: counted
        [list(rng.integers(0, 2, 50).astype(float))],  # one replicate: the value itself
    ]
    for returns in cases:
        assert [vars(point) for point in learning_curve(returns)] == reference_curve(returns)


def test_bootstraps_of_many_values_hold_a_few_million_entries() -> None:
    values = list(np.random.default_rng(1).random(700))  # 7M resampled values: in chunks
    tracemalloc.start()
    try:
        interval = bootstrap_ci(values)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert interval == reference_ci(values)
    assert peak < 40e6  # the matrix at once: 7M indices and 7M values, 112 MB
    # 200,000 wins and losses: resampled by counts, the same law (their normal interval).
    wins = np.random.default_rng(2).integers(0, 2, 200_000).astype(float)
    tracemalloc.start()
    try:
        low, high = bootstrap_ci(wins)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    half = 1.96 * wins.std() / math.sqrt(wins.size)
    assert peak < 10e6  # index by index: 2 billion indices
    assert low < wins.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.05)


def widen(path: Path, run_ids: list[str], times: int, replicates: int) -> None:
    """Each run's `replicates` chains copied `times` - 1 times by SQL, under chain numbers
    after them: a store of many long replicates in a second."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for table in ("episodes", "steps"):
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            chosen = ", ".join("t.chain + n.k * ?" if c == "chain" else f"t.{c}" for c in columns)
            db.execute(
                "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < ?) "
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT {chosen} FROM {table} AS t, n "
                f"WHERE t.run_id IN ({', '.join('?' * len(run_ids))})",
                (times - 1, replicates, *run_ids),
            )


def test_a_reports_memory_follows_its_largest_run_not_the_stores_steps(tmp_path: Path) -> None:
    """Runs of 30,000 rounds each (300 replicates of 100): a row holds its run's units and
    the steps' columns its measures read, and lets them go; reading every step's record, as
    reports did, held 60 MB a run, and the bootstrap of its returns 5 GB."""
    config = make_icrl_config("bandit_hard", model="ucb1", replicates=3)
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        try:
            runner.evaluate(config, 100)
        finally:
            runner.close()
    widen(path, [config.run_id, *baselines_of(config).values()], 100, 3)

    def peak_of(store_path: Path, runs: int) -> float:
        with RunStore(store_path) as store:
            tracemalloc.start()
            try:
                rows = report_rows(store, TABLE_FIELDS)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        assert len(rows) == runs and {row["episodes"] for row in rows} == {30_000}
        return peak

    three = peak_of(path, 3)
    assert three < 50e6  # 35 MB
    copy_run(path, config.run_id, 5, model="ucb1-{}")  # five more such runs, alike
    assert peak_of(path, 8) < three * 1.2


def test_the_bandit_curves_are_the_papers_computed_from_the_records(store_path: Path) -> None:
    """Per round, across replicates: the share that pressed the best button, gap x worse
    presses so far, the mean reward so far; each with the seeded bootstrap of its values."""
    with RunStore(store_path) as store:
        records = scored_records(store, BANDIT.run_id)
        steps = {step.unit: step for step in store.steps(BANDIT.run_id)}
        (row,) = [r for r in report_rows(store) if r["run_id"] == BANDIT.run_id]
    task = get_task(BANDIT.task)
    env, gap = run_environment(BANDIT, task), float(task.options["gap"])
    best_share, regret, average = [], [], []
    for replicate in range(REPLICATES):
        rounds = [r for r in records if r.chain == replicate]
        env.reset(rounds[0].seed)
        best = env.expert_action()
        chosen = [steps[r.unit].action == best for r in rounds]
        earned = [steps[r.unit].reward for r in rounds]
        best_share.append([float(hit) for hit in chosen])
        regret.append([gap * sum(not hit for hit in chosen[: t + 1]) for t in range(len(chosen))])
        average.append([sum(earned[: t + 1]) / (t + 1) for t in range(len(earned))])
    for measure, values in (("best_arm_curve", best_share), ("regret_curve", regret),
                            ("reward_curve", average)):  # fmt: skip
        expected = reference_curve(values)
        assert [p["episode"] for p in row[measure]] == list(range(ROUNDS))
        assert [p["mean"] for p in row[measure]] == pytest.approx([p["mean"] for p in expected])
        for bound in ("low", "high"):
            got = [p[bound] for p in row[measure]]
            assert got == pytest.approx([p[bound] for p in expected]), (measure, bound)


def test_the_curves_computed_for_a_figure_are_those_its_panels_draw() -> None:
    """`drawn_curves` (what the measures compute for a report's figures) and the figures'
    panels name the same curves, for each kind of task: none is computed and not drawn,
    none drawn and not computed."""
    from lmact.regimes.icrl_measures import drawn_curves
    from lmact.report.plots import BANDIT_PANELS, CLASSIFICATION_PANELS, LEARNING_PANELS
    from lmact.report.tables import CURVES

    measure_of = {curve: measure for measure, (curve, *_) in CURVES.items()}
    for environment, panels in (
        ("bandit", BANDIT_PANELS), ("classification", CLASSIFICATION_PANELS),
        ("tic_tac_toe", LEARNING_PANELS),
    ):  # fmt: skip
        assert {measure_of[panel.curve] for panel in panels} == drawn_curves(environment)
