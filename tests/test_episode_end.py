"""How an episode ended is stored with it: the task's own reason, or the step limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmact.demos import DemoStore
from lmact.records import STEP_LIMIT
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore


def end_reasons(tmp_path: Path, task: str, model: str, episodes: int, **options: int) -> list:
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        config = make_config(task, model=model, demos=0, **options)
        runner.run(config, episodes)
        finished = store.finished_episodes(config.run_id).values()
        return [(episode.terminated, episode.end_reason) for episode in finished]


@pytest.mark.parametrize(
    ("task", "model", "expected"),
    [
        ("tic_tac_toe", "expert", {"win", "draw"}),
        ("tic_tac_toe", "random", {"win", "draw", "loss"}),
        ("grid_world", "expert", {"target reached"}),
        ("crossword", "expert", {"solved"}),
    ],
)
def test_the_task_says_why_an_episode_ended(
    tmp_path: Path, task: str, model: str, expected: set[str]
) -> None:
    reasons = end_reasons(tmp_path, task, model, 30 if model == "random" else 6)
    assert all(terminated for terminated, _ in reasons)
    assert {reason for _, reason in reasons} == expected


def test_an_episode_cut_by_the_step_limit_says_so(tmp_path: Path) -> None:
    reasons = end_reasons(tmp_path, "grid_world", "random", 4, max_steps=1)
    assert reasons == [(False, STEP_LIMIT)] * 4


@pytest.mark.slow
def test_a_won_chess_game_ends_in_checkmate(tmp_path: Path) -> None:
    reasons = end_reasons(tmp_path, "chess", "expert", 2)
    assert all(terminated for terminated, _ in reasons)
    assert {reason for _, reason in reasons} <= {
        "checkmate", "stalemate", "insufficient material", "threefold repetition",
        "fifty moves", "fivefold repetition", "seventyfive moves",
    }  # fmt: skip
    assert "checkmate" in {reason for _, reason in reasons}
