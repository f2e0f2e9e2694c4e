"""Paired comparisons: the pure function on records made here, and `lmact compare` and the
report's section on runs of a store, checked against differences computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import StubModel

from lmact.cli import main
from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelRequest, ModelResponse
from lmact.records import EpisodeRecord
from lmact.regimes.icrl import REPLICATE_STRIDE, make_icrl_config
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.scoring import bootstrap_ci, pair_by_seed, paired_comparison
from lmact.store import RunStore

MOVES = ["a1", "b2", "c3", "a3", "c1", "b1", "a2", "c2", "b3"]


def _record(episode: int, seed: int, total_return: float) -> EpisodeRecord:
    return EpisodeRecord(episode=episode, seed=seed, total_return=total_return, steps=1,
                         terminated=True, valid=1, illegal=0, invalid=0, empty=0)  # fmt: skip


def _records(seeds: range, returns: list[float], first_episode: int = 0) -> list[EpisodeRecord]:
    return [
        _record(first_episode + index, seed, value)
        for index, (seed, value) in enumerate(zip(seeds, returns, strict=True))
    ]


def test_episodes_pair_by_seed_and_the_unshared_are_left_out() -> None:
    a = _records(range(0, 5), [1.0, 0.0, 1.0, -1.0, 0.5])
    b = _records(range(2, 7), [0.0, 0.0, 0.5, 1.0, 1.0], first_episode=40)
    comparison = paired_comparison(a, b)
    # Seeds 2, 3, 4: A 1.0, -1.0, 0.5 against B 0.0, 0.0, 0.5.
    assert (comparison.paired, comparison.only_a, comparison.only_b) == (3, 2, 2)
    assert comparison.mean_difference == pytest.approx((1.0 - 1.0 + 0.0) / 3)
    assert comparison.mean_a == pytest.approx(0.5 / 3)
    assert comparison.mean_b == pytest.approx(0.5 / 3)
    shares = (comparison.a_ahead, comparison.b_ahead, comparison.tied)
    assert shares == pytest.approx((1 / 3, 1 / 3, 1 / 3))


def test_the_paired_interval_holds_the_mean_and_beats_the_unpaired_when_seeds_matter() -> None:
    rng = np.random.default_rng(7)
    difficulty = rng.normal(0, 5, size=40)  # some seeds are hard for every model
    a = _records(range(40), list(difficulty + 1.0 + rng.normal(0, 0.3, size=40)))
    b = _records(range(40), list(difficulty + rng.normal(0, 0.3, size=40)))
    comparison = paired_comparison(a, b)
    low, high = comparison.ci95
    assert low <= comparison.mean_difference <= high and low > 0  # A is ahead, and it shows
    unpaired_low, unpaired_high = comparison.unpaired_ci95
    assert unpaired_low <= comparison.mean_difference <= unpaired_high
    assert high - low <= (unpaired_high - unpaired_low) / 5
    differences = [x.total_return - y.total_return for x, y in zip(a, b, strict=True)]
    assert comparison.ci95 == bootstrap_ci(differences)  # the table's bootstrap conventions


def test_a_seed_played_in_every_episode_pairs_episode_k_with_episode_k() -> None:
    """In-context RL resetting to the same start: replicate r plays seed `seed + r` in every
    episode, so the k-th episode of a seed pairs with the other run's k-th of that seed."""
    a = [_record(r * REPLICATE_STRIDE + e, r, float(e)) for r in range(2) for e in range(3)]
    b = [_record(r * REPLICATE_STRIDE + e, r + 1, 10.0 * e) for r in range(2) for e in range(4)]
    pairs = pair_by_seed(a, b)  # A's replicate 1 and B's replicate 0 both start from seed 1
    assert [(x.episode, y.episode) for x, y in pairs] == [
        (REPLICATE_STRIDE + e, e) for e in range(3)
    ]
    assert paired_comparison(a, b).mean_difference == pytest.approx(
        np.mean([-9.0 * e for e in range(3)])
    )


def test_runs_sharing_no_seed_are_a_one_line_error_naming_both() -> None:
    with pytest.raises(LmactError) as raised:
        paired_comparison(_records(range(3), [1.0] * 3), _records(range(5, 7), [0.0] * 2),
                          ("run-one", "run-two"))  # fmt: skip
    message = str(raised.value)
    assert "run-one" in message and "run-two" in message and "\n" not in message
    assert "seeds 0 to 2" in message and "5 to 6" in message


class Mover(StubModel):
    """Answers the tic-tac-toe moves in a fixed order, from its own starting point: two
    movers play differently, on the same seeds."""

    def __init__(self, name: str, start: int) -> None:
        super().__init__(name)
        self.start = start

    async def complete(self, request: ModelRequest) -> ModelResponse:
        index = self.start + len(request.parts[-1].text)
        return ModelResponse(text=MOVES[index % len(MOVES)], prompt_tokens=5, completion_tokens=1)


MOVERS = {"test/mover-a": 0, "test/mover-b": 4}
EPISODES = 8


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMACT_CACHE_DIR", str(folder / "cache"))
        with RunStore(folder / "runs.sqlite") as store:
            runner = Runner(store, DemoStore(folder / "demos"), progress=False)
            for name, start in MOVERS.items():
                runner.policies.register(Mover(name, start))
            try:
                for name in MOVERS:
                    runner.evaluate(make_config("tic_tac_toe", model=name, demos=0), EPISODES)
                far = make_config("tic_tac_toe", model="test/mover-a", demos=0, seed=500)
                runner.run(far, 3)  # seeds 500-502: none shared
                runner.run(make_config("grid_world", model="random", max_steps=4), 2)
                for policy in ("random", "expert"):
                    runner.run(make_icrl_config("tic_tac_toe", model=policy, replicates=2), 3)
            finally:
                runner.close()
    return folder / "runs.sqlite"


def _run_id(store_path: Path, model: str, **config: object) -> str:
    wanted = {"model": model, **config}
    with RunStore(store_path) as store:
        runs = store.runs()
    (run_id,) = [r.run_id for r in runs if all(r.config.get(k) == v for k, v in wanted.items())]
    return run_id


def _lmact(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_gives_the_paired_difference_computed_by_hand(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _run_id(store_path, "test/mover-a", seed=0, regime="imitation")
    second = _run_id(store_path, "test/mover-b", regime="imitation")
    with RunStore(store_path) as store:
        by_seed = [
            {e.seed: e.total_return for e in store.finished_episodes(run_id).values()}
            for run_id in (first, second)
        ]
    differences = [by_seed[0][seed] - by_seed[1][seed] for seed in sorted(by_seed[0])]
    assert len(differences) == EPISODES and any(differences)  # the movers play differently
    code, out, err = _lmact(capsys, "compare", first, second, "--store", str(store_path),
                            "--format", "json")  # fmt: skip
    assert code == 0, err
    row = json.loads(out)
    assert (row["run_a"], row["run_b"], row["paired"]) == (first, second, EPISODES)
    assert row["mean_difference"] == pytest.approx(sum(differences) / EPISODES)
    assert row["a_ahead"] == pytest.approx(sum(d > 0 for d in differences) / EPISODES)
    assert row["b_ahead"] == pytest.approx(sum(d < 0 for d in differences) / EPISODES)
    assert row["tied"] == pytest.approx(sum(d == 0 for d in differences) / EPISODES)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx(bootstrap_ci(differences))
    code, markdown, _ = _lmact(capsys, "compare", first[:5], second[:6], "--store", str(store_path))
    assert code == 0 and markdown.startswith(f"A: {first} · test/mover-a · tic_tac_toe")
    assert f"| mean difference A - B | {sum(differences) / EPISODES:.3f} |" in markdown


def test_runs_that_cannot_be_paired_are_one_line_errors(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    near = _run_id(store_path, "test/mover-a", seed=0, regime="imitation")
    far = _run_id(store_path, "test/mover-a", seed=500)
    grid = _run_id(store_path, "random", task="grid_world")
    store = ["--store", str(store_path)]
    for other, message in ((far, "share no test seed"), (grid, "are of different tasks"),
                           (near[:7], "are the same run"), ("zzz", "no run id")):  # fmt: skip
        code, out, err = _lmact(capsys, "compare", near, other, *store)
        assert code == 2 and out == "" and message in err
        assert len(err.strip().splitlines()) == 1 and err.startswith("lmact: error: ")
        if other == far:
            assert near in err and far in err  # both runs named, by their full ids


def test_in_context_rl_runs_resetting_to_one_start_pair_episode_by_episode(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _run_id(store_path, "expert", regime="icrl")
    second = _run_id(store_path, "random", regime="icrl")
    code, out, err = _lmact(capsys, "compare", first, second, "--store", str(store_path),
                            "--format", "json")  # fmt: skip
    assert code == 0, err
    with RunStore(store_path) as store:
        returns = [
            {e.unit: e.total_return for e in store.finished_episodes(run_id).values()}
            for run_id in (first, second)
        ]
    assert returns[0].keys() == returns[1].keys()  # the same seed at the same episode
    expected = np.mean([returns[0][unit] - returns[1][unit] for unit in returns[0]])
    assert json.loads(out)["paired"] == 6
    assert json.loads(out)["mean_difference"] == pytest.approx(expected)


def test_the_report_appends_the_paired_comparisons_of_runs_sharing_seeds(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _lmact(capsys, "report", "--store", str(store_path))
    assert code == 0, err
    tables, section = out.split("\n## Paired comparisons\n")
    assert tables.rstrip().endswith("|")  # the section comes after every table
    body = [line for line in section.splitlines() if line.startswith("| ")]
    assert body[0].startswith("| task | regime | observation | run_a |")
    first = _run_id(store_path, "test/mover-a", seed=0, regime="imitation")
    second = _run_id(store_path, "test/mover-b", regime="imitation")
    assert len(body) == 2 and f"| {first} | test/mover-a |" in body[1]
    assert f"| {second} | test/mover-b |" in body[1]  # the far run shares no seed: not paired
    # Baselines are not compared with each other; CSV and JSON hold the runs only.
    csv_out = _lmact(capsys, "report", "--store", str(store_path), "--format", "csv")[1]
    assert "Paired comparisons" not in csv_out
    alone = _lmact(capsys, "report", "--store", str(store_path), "--task", "grid_world")[1]
    assert "Paired comparisons" not in alone
