"""The reference protocol's options: exact answer matching and a trajectory without past
actions; each is part of the run's identity, and at its default a run keeps its old id."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import StubModel, demonstrations, lmact

from lmact import api
from lmact.demos import DEMO_SEED_BASE, DemoStore
from lmact.envs.base import AnswerKind, classify_answer
from lmact.errors import LmactError
from lmact.models.base import (
    ModelRequest,
    ModelResponse,
)
from lmact.prompting import (
    ACTION_LABEL,
    PLAIN_ANSWER,
    STRICT_ANSWER,
    PromptBuilder,
    PromptSettings,
)
from lmact.regimes.imitation import make_config
from lmact.regimes.prompted import prompt_settings
from lmact.resources import data_dir
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task


@pytest.mark.parametrize(
    ("task", "answer", "lenient", "exact"),
    [
        ("tic_tac_toe", "a2", AnswerKind.VALID, AnswerKind.VALID),
        ("tic_tac_toe", "A2", AnswerKind.VALID, AnswerKind.ILLEGAL),
        ("tic_tac_toe", "a2.", AnswerKind.VALID, AnswerKind.ILLEGAL),
        ("tic_tac_toe", "  a2 ", AnswerKind.VALID, AnswerKind.VALID),
        ("tic_tac_toe", "z9", AnswerKind.INVALID, AnswerKind.INVALID),
        ("grid_world", "Left", AnswerKind.VALID, AnswerKind.ILLEGAL),
        ("grid_world", "left", AnswerKind.VALID, AnswerKind.VALID),
    ],
)
def test_exact_matching_accepts_only_the_listed_spelling(
    task: str, answer: str, lenient: AnswerKind, exact: AnswerKind
) -> None:
    env = get_task(task).make_environment()
    env.reset(3)
    if task == "tic_tac_toe" and "a2" not in env.legal_actions():
        env.reset(4)
    assert classify_answer(env, answer).kind is lenient
    parsed = classify_answer(env, answer, exact=True)
    assert parsed.kind is exact
    if exact is AnswerKind.VALID:
        assert parsed.action == answer.strip()


@pytest.mark.parametrize(
    ("completion", "lenient", "exact"),
    [
        ("a2", AnswerKind.VALID, AnswerKind.VALID),
        ("Action: a2", AnswerKind.VALID, AnswerKind.VALID),
        ("I think so.\nAction:  a2 \n", AnswerKind.VALID, AnswerKind.VALID),
        ("`a2`", AnswerKind.VALID, AnswerKind.INVALID),  # nothing else is stripped
        ("**a2**", AnswerKind.VALID, AnswerKind.INVALID),
        ('"a2"', AnswerKind.VALID, AnswerKind.INVALID),
        ("Action: a2\nbecause it blocks", AnswerKind.VALID, AnswerKind.INVALID),
        ("action: a2", AnswerKind.VALID, AnswerKind.INVALID),  # the marker as written
    ],
)
def test_exact_matching_reads_the_text_after_action_trimmed_and_nothing_else(
    completion: str, lenient: AnswerKind, exact: AnswerKind
) -> None:
    env = get_task("tic_tac_toe").make_environment()
    env.reset(next(seed for seed in range(20) if _a2_is_free(env, seed)))
    assert classify_answer(env, PLAIN_ANSWER.read(completion, list, list)).kind is lenient
    strict = STRICT_ANSWER.read(completion, list, list)
    assert classify_answer(env, strict, exact=True).kind is exact


def _a2_is_free(env: Any, seed: int) -> bool:
    env.reset(seed)
    return "a2" in env.legal_actions()


def test_exact_matching_takes_any_well_formed_torques_for_the_cheetah() -> None:
    env = get_task("cheetah").make_environment()
    try:
        env.reset(0)
        answer = STRICT_ANSWER.read("Action: [0.5, -1, 0, 0.25, 1, -0.3]", list, list)
        assert classify_answer(env, answer, exact=True).kind is AnswerKind.VALID
        assert classify_answer(env, "[2, 0, 0, 0, 0, 0]", exact=True).kind is not AnswerKind.VALID
    finally:
        env.close()


def test_exact_matching_needs_the_check_sign_in_chess() -> None:
    env = get_task("chess").make_environment()
    for seed in range(200):  # the first test opening where the agent can give check
        env.reset(seed)
        checks = [move for move in env.legal_actions() if move.endswith("+")]
        if checks:
            break
    assert checks, "no test opening allows a check"
    move = checks[0]
    assert classify_answer(env, move[:-1]).kind is AnswerKind.VALID
    assert classify_answer(env, move[:-1], exact=True).kind is AnswerKind.ILLEGAL
    assert classify_answer(env, move, exact=True).action == move


def test_without_past_actions_the_episode_shows_observations_only() -> None:
    demos = demonstrations("grid_world", "txt", 1)
    env = get_task("grid_world").make_environment()
    env.reset(5)
    first = env.render("txt")
    action = env.expert_action()
    env.step(action)
    trajectory = [(first, action)]
    requests = {}
    for past_actions in (True, False):
        builder = PromptBuilder(PromptSettings(past_actions=past_actions))
        prefix = builder.prefix(demos)
        request = builder.request(
            prefix,
            trajectory,
            env.render("txt"),
            env.legal_actions(),
            with_demonstrations=True,
            max_tokens=8,
        )
        requests[past_actions] = "".join(p.text for p in request.parts[len(prefix) :])
        assert ACTION_LABEL in "".join(p.text for p in prefix)  # demonstrations keep theirs
    assert f"{ACTION_LABEL} {action}" in requests[True]
    assert ACTION_LABEL not in requests[False].split("Observation:")[1]
    assert requests[False].count("Observation:") == requests[True].count("Observation:") == 2


class UpperCaseAnswers(StubModel):
    """Answers every step with the first legal cell it reads in the prompt, in upper case."""

    def __init__(self) -> None:
        super().__init__("test/upper-case")

    async def complete(self, request: ModelRequest) -> ModelResponse:
        legal = request.parts[-1].text.split("legal actions in this state are: ")[1]
        return ModelResponse(text=legal.split(",")[0].strip().upper(), prompt_tokens=1)


def test_exact_runs_count_a_wrong_spelling_as_illegal(tmp_path: Path) -> None:
    summaries = {}
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        runner.policies.register(UpperCaseAnswers())
        for match in ("lenient", "exact"):
            config = make_config(
                "tic_tac_toe",
                model="test/upper-case",
                demos=0,
                show_legal_actions=True,
                answer_match=match,
            )
            summaries[match] = runner.evaluate(config, 3)
    assert summaries["lenient"].illegal_rate == 0.0
    assert summaries["exact"].illegal_rate == 1.0
    assert summaries["lenient"].run_id != summaries["exact"].run_id
    assert summaries["exact"].to_dict()["answer_match"] == "exact"


def test_a_run_keeps_its_old_id_at_the_defaults() -> None:
    config = make_config("tic_tac_toe", model="random", demos=2)
    added = {"past_actions", "answer_match", "prompts_dir", "demo_draw", "demo_pool", "rendering",
             "constrained", "task_options", "inline_observations"}  # fmt: skip
    old = config.model_dump(exclude=added)
    expected = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert config.run_id == expected
    changed = make_config("tic_tac_toe", model="random", demos=2, past_actions=False)
    assert changed.run_id != expected


def test_the_options_reach_json_and_the_report(tmp_path: Path) -> None:
    run = ["run", "--task", "grid_world", "--model", "expert", "--episodes", "2", "--json"]
    result = lmact(*run, "--no-past-actions", "--answer-match", "exact", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["past_actions"] is False and summary["answer_match"] == "exact"
    report = lmact("report", "--format", "csv", cwd=tmp_path)
    header, *rows = report.stdout.splitlines()
    columns = header.split(",")
    row = next(
        dict(zip(columns, r.split(","), strict=True)) for r in rows if summary["run_id"] in r
    )
    assert row["answer_match"] == "exact" and row["past_actions"] == "False"
    bad = lmact(*run, "--answer-match", "fuzzy", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'fuzzy'" in bad.stderr


def custom_prompts(folder: Path) -> Path:
    shutil.copytree(data_dir("prompts"), folder)
    preamble = folder / "preamble_with_demos.txt"
    preamble.write_text("CUSTOM PREAMBLE. " + preamble.read_text())
    return folder


def test_a_prompts_folder_replaces_the_templates(tmp_path: Path) -> None:
    folder = custom_prompts(tmp_path / "prompts")
    shipped = make_config("tic_tac_toe", model="random", demos=1)
    custom = make_config("tic_tac_toe", model="random", demos=1, prompts_dir=str(folder))
    assert custom.run_id != shipped.run_id and custom.prompts != shipped.prompts
    builder = PromptBuilder(prompt_settings(custom))
    prefix = builder.prefix(demonstrations("tic_tac_toe", "txt", 1))
    assert prefix[0].text.startswith("CUSTOM PREAMBLE. ")
    moved = shutil.copytree(folder, tmp_path / "elsewhere")  # the same text, elsewhere
    again = make_config("tic_tac_toe", model="random", demos=1, prompts_dir=str(moved))
    assert again.run_id == custom.run_id


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "instruction.txt").unlink(), "instruction.txt is missing"),
        (
            lambda f: (f / "legal_actions.txt").write_text("Legal: $moves"),
            "legal_actions.txt: unknown placeholder $'moves'; it may use $actions",
        ),
        (
            lambda f: (f / "current_episode.txt").write_text("costs $5"),
            "current_episode.txt: Invalid placeholder",
        ),
    ],
    ids=["missing", "unknown-placeholder", "stray-dollar"],
)
def test_a_broken_prompts_folder_is_one_line(tmp_path: Path, damage: object, message: str) -> None:
    folder = custom_prompts(tmp_path / "prompts")
    damage(folder)  # type: ignore[operator]
    result = lmact("run", "--task", "tic_tac_toe", "--prompts", str(folder), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


def test_per_episode_draws_differ_nest_in_n_and_repeat() -> None:
    def draws(demos: int, episode: int, pool: int = 40) -> list[int]:
        config = make_config(
            "tic_tac_toe", model="random", demos=demos, demo_draw="per-episode", demo_pool=pool
        )
        return config.drawn_demonstrations(episode)[:demos]

    per_episode = [draws(4, episode) for episode in range(8)]
    assert len({tuple(d) for d in per_episode}) == 8  # each episode its own draw
    assert all(len(set(d)) == 4 and all(0 <= i < 40 for i in d) for d in per_episode)
    for episode in range(8):
        assert draws(8, episode)[:4] == draws(4, episode)  # nested in N
        assert draws(4, episode) == per_episode[episode]  # the same on every call
    with pytest.raises(LmactError, match="demos 8 cannot be drawn from a pool of 5; give demo_"):
        draws(8, 0, pool=5)
    shared = make_config("tic_tac_toe", model="random", demos=4)
    assert (
        shared.demo_draw == "shared"
        and shared.run_id
        == make_config("tic_tac_toe", model="random", demos=4, demo_draw="shared").run_id
    )
    zero = make_config("tic_tac_toe", model="random", demos=0, demo_draw="per-episode")
    assert zero.demo_draw == "shared" and zero.demo_pool is None  # nothing to draw


def test_a_per_episode_run_shows_each_episode_its_draw(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as store:
        demo_store = DemoStore(tmp_path / "demos")
        runner = Runner(store, demo_store, progress=False)
        plans = {}
        for demos in (2, 3):
            config = make_config(
                "grid_world", model="expert", demos=demos, demo_draw="per-episode", demo_pool=12
            )
            plans[demos] = runner.plan(config).plan
            summary = runner.evaluate(config, 4)
            assert summary.details["demo_draw"] == "per-episode"
            assert summary.details["demo_pool"] == 12
        pool = demo_store.load(get_task("grid_world"), "txt", 0, 12)
        seeds = {}
        for episode in range(4):
            shown = plans[3].packing_for(episode).demonstrations
            expected = [pool[i].steps for i in config.drawn_demonstrations(episode)[:3]]
            assert list(shown) == expected
            assert list(plans[2].packing_for(episode).demonstrations) == expected[:2]
            seeds[episode] = [pool[i].seed for i in config.drawn_demonstrations(episode)[:3]]
        assert len({tuple(s) for s in seeds.values()}) == 4
        assert all(seed >= DEMO_SEED_BASE for s in seeds.values() for seed in s)  # not a test seed


def test_a_dry_run_says_how_many_demonstrations_a_pool_needs(tmp_path: Path) -> None:
    dry = {"model": "random", "demos": 2, "dry_run": True, "store": tmp_path / "r.sqlite"}
    pooled = api.run("tic_tac_toe", demo_draw="per-episode", demo_pool=30, **dry)
    assert pooled["demonstrations_needed"] == 30
    assert api.run("tic_tac_toe", **dry)["demonstrations_needed"] == 2
    run = ["run", "--task", "tic_tac_toe", "--model", "random", "--demos", "2", "--dry-run"]
    table = lmact(*run, "--demo-draw", "per-episode", cwd=tmp_path)
    assert "| demonstrations needed | 100 " in table.stdout


def test_a_new_rendering_is_a_new_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmact.envs.tic_tac_toe import TicTacToe

    before = make_config("tic_tac_toe", model="random", demos=0)
    monkeypatch.setattr(TicTacToe, "rendering_version", 2)
    after = make_config("tic_tac_toe", model="random", demos=0)
    assert after.rendering == 2 and after.run_id != before.run_id
