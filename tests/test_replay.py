"""The replay regime: the prompt shows one demonstration, and the model is asked for each of
its actions in turn; an episode's return is the share of steps it matched."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import StubModel, lmact

from lmact import api
from lmact.demos import DEMO_SEED_BASE, DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelRequest, ModelResponse, TextPart
from lmact.prompting import ACTION_LABEL
from lmact.records import UnitKey
from lmact.regimes.imitation import make_config
from lmact.regimes.replay import make_replay_config
from lmact.report.tables import format_table, report_rows
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task

_ACTION_LINE = re.compile(rf"^{re.escape(ACTION_LABEL)} *(.*)$", re.MULTILINE)


class CopiesTheDemonstration(StubModel):
    """Answers step k of the current episode with the k-th action of the demonstration in
    its prompt: a perfect copier, if the prompt holds the demonstration replayed."""

    def __init__(self, off_by: int = 0) -> None:
        super().__init__("test/copier")
        self.off_by = off_by  # answer another step's action: a copier that misreads
        self.prompts: list[ModelRequest] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.prompts.append(request)
        texts = [p.text for p in request.parts if isinstance(p, TextPart)]
        prefix = "".join(texts[: request.stable_prefix_parts])
        shown = _ACTION_LINE.findall(prefix)
        now = len(_ACTION_LINE.findall(texts[-1]))  # the current episode's past actions
        return ModelResponse(text=shown[(now + self.off_by) % len(shown)], prompt_tokens=5)


def replay_runner(store: RunStore, demo_store: DemoStore, client: StubModel) -> Runner:
    runner = Runner(store, demo_store, progress=False)
    runner.policies.register(client)
    return runner


@pytest.mark.parametrize("task", ["tic_tac_toe", "grid_world", "crossword"])
def test_the_demonstrator_scores_exactly_one_and_random_far_less(runner: Runner, task: str) -> None:
    expert = runner.evaluate(make_replay_config(task, model="expert"), 6)
    assert expert.mean_return == 1.0 and expert.ci95 == (1.0, 1.0)
    assert expert.normalized_score == 1.0
    random = runner.evaluate(make_replay_config(task, model="random"), 6)
    assert random.expert_return == 1.0
    assert random.mean_return < 0.5
    assert random.normalized_score == pytest.approx(0.0)  # random is its own baseline


def test_a_model_that_copies_its_context_scores_one_and_a_misreader_less(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    config = make_replay_config("grid_world", model="test/copier")
    with RunStore(tmp_path / "runs.sqlite") as store:
        copier = CopiesTheDemonstration()
        summary = replay_runner(store, demo_store, copier).evaluate(config, 4)
        assert summary.mean_return == 1.0 and summary.illegal_rate == 0.0
        # Each episode replays its own demonstration: episode i's is demonstration i.
        episodes = store.finished_episodes(config.run_id)
        assert [episodes[UnitKey(0, e)].seed for e in range(4)] == [
            DEMO_SEED_BASE + e for e in range(4)
        ]
        prefixes = {request.parts[0] for request in copier.prompts}
        assert len(prefixes) == 4
        misreader = CopiesTheDemonstration(off_by=1)
        misread = make_replay_config("grid_world", model="test/copier", max_tokens=9)
        worse = replay_runner(store, demo_store, misreader).evaluate(misread, 4)
        assert worse.mean_return < 1.0


def test_every_step_is_the_demonstration_whatever_the_answer(
    runner: Runner, demo_store: DemoStore
) -> None:
    config = make_replay_config("tic_tac_toe", model="random", seed=3)
    runner.run(config, 3)
    shown = demo_store.load(get_task("tic_tac_toe"), "txt", 3, 3)
    for episode, demonstration in enumerate(shown):
        steps = runner.store.steps(config.run_id, UnitKey(0, episode))
        assert [s.action for s in steps] == [a for _, a in demonstration.steps]
        matched = sum(s.answer == s.action for s in steps)
        record = runner.store.finished_episodes(config.run_id)[UnitKey(0, episode)]
        assert record.total_return == matched / len(steps)


def test_a_rerun_calls_nothing_and_the_report_holds_both_regimes(
    tmp_path: Path, demo_store: DemoStore
) -> None:
    replay = make_replay_config("grid_world", model="test/copier")
    imitation = make_config("grid_world", model="expert", demos=1)
    with RunStore(tmp_path / "runs.sqlite") as store:
        replay_runner(store, demo_store, CopiesTheDemonstration()).evaluate(replay, 3)
        Runner(store, demo_store, progress=False).evaluate(imitation, 3)
        # Replayed afresh, every answer comes back from the call cache.
        copier = CopiesTheDemonstration()
        again = replay_runner(store, demo_store, copier).run(replay, 3, restart=True)
        assert copier.prompts == [] and again.calls_made == 0
        assert again.calls_cached == sum(e.steps for e in again.episodes)
        rows = {(row["regime"], row["model"]): row for row in report_rows(store)}
    assert rows["replay", "test/copier"]["mean_return"] == 1.0
    assert rows["replay", "test/copier"]["normalized_score"] == 1.0
    assert rows["replay", "expert"]["demo_draw"] is None  # means nothing for replay
    assert rows["imitation", "expert"]["demo_draw"] == "shared"
    table = format_table(list(rows.values()))
    assert table.count("| replay |") == 3 and table.count("| imitation |") == 2


def test_the_command_runs_replay_and_refuses_imitation_options(tmp_path: Path) -> None:
    common = ["--task", "grid_world", "--store", "s.sqlite", "--cache-dir", "cache"]
    done = lmact(
        "run",
        "--regime",
        "replay",
        "--model",
        "expert",
        "--episodes",
        "2",
        "--json",
        *common,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["regime"] == "replay" and summary["mean_return"] == 1.0
    estimate = lmact(
        "run",
        "--regime",
        "replay",
        "--episodes",
        "2",
        "--dry-run",
        "--json",
        "--model",
        "random",
        "--seed",
        "2",
        *common,
        cwd=tmp_path,
    )
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["demonstrations_needed"] == 2
    for option in ({"demos": 2}, {"token_budget": 500}, {"demo_draw": "per-episode"}):
        with pytest.raises(LmactError, match="does not apply to regime replay"):
            api.run("grid_world", regime="replay", **option, store=tmp_path / "s.sqlite")
    refused = lmact("run", "--regime", "replay", "--token-budget", "500", *common, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "--token-budget does not apply to --regime replay" in refused.stderr
