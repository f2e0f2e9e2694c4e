"""The LMAct protocol's settings: task options set per run (`--task-option`), which reach
the environment, its demonstrations and its baselines, and refuse what the environment does
not take."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from browser import opened
from helpers import StubModel, lmact
from loopback import RecordedRequest, Reply, chat_completion, loopback

from lmact.demos import DemoStore
from lmact.envs.base import Observation
from lmact.models.base import ModelRequest, ModelResponse, TextPart
from lmact.prompting import BLOCK, INLINE_NEXT_LINE, INLINE_SAME_LINE, observation_parts
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task


class Recorder(StubModel):
    def __init__(self) -> None:
        super().__init__("test/recorder")
        self.texts: list[str] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.texts.append("".join(p.text for p in request.parts if isinstance(p, TextPart)))
        return ModelResponse(text="left")


def test_a_task_option_reaches_prompts_demonstrations_and_baselines(tmp_path: Path) -> None:
    boxed = make_config("grid_world", model="test/recorder", demos=1,
                        task_options=["text_layout=boxed"])  # fmt: skip
    plain = make_config("grid_world", model="test/recorder", demos=1)
    assert boxed.task_options == {"text_layout": "boxed"} and boxed.run_id != plain.run_id
    assert boxed.baseline("random").task_options == {"text_layout": "boxed"}
    demos = DemoStore(tmp_path / "demos")
    recorder = Recorder()
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, demos, progress=False)
        runner.policies.register(recorder)
        runner.evaluate(boxed, 1)
        runner.close()
    row = "|" + "|".join(word.center(8) for word in ["wall"] * 12) + "|"
    assert all(row in text for text in recorder.texts)  # demonstrations and episode alike
    assert "wall wall" not in recorder.texts[0]  # not lmact's word layout
    spec, default = boxed.task_spec(), plain.task_spec()
    assert spec.options["text_layout"] == "boxed" and spec.spec_hash != default.spec_hash
    assert demos.directory(spec, "txt") != demos.directory(default, "txt")


def test_a_task_option_the_environment_does_not_take_is_one_line(tmp_path: Path) -> None:
    for option, named in (("colour=red", "colour"), ("text_layout", "KEY=VALUE"),
                          ("text_layout=grid", "text_layout")):  # fmt: skip
        done = lmact("run", "--task", "grid_world", "--model", "random", "--episodes", "1",
                     "--task-option", option, "--store", "s.sqlite", "--cache-dir", "c",
                     cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert named in done.stderr and "Traceback" not in done.stderr


def test_inline_observations_are_written_as_the_reference_code_writes_them() -> None:
    one_line, block = Observation(text="{'player': [1, 2]}"), Observation(text="a | b\n---")
    image = Observation(image_png=b"\x89PNG fake")

    def shown(observation: Observation, layout: str) -> str:
        parts = [*observation_parts(observation, layout), TextPart("Action: up\n")]
        return "".join(p.text if isinstance(p, TextPart) else "<img>" for p in parts)

    assert shown(one_line, INLINE_SAME_LINE) == "Observation: {'player': [1, 2]} Action: up\n"
    assert shown(one_line, INLINE_NEXT_LINE) == "Observation: {'player': [1, 2]}\nAction: up\n"
    assert shown(one_line, BLOCK) == "Observation:\n{'player': [1, 2]}\nAction: up\n"
    assert shown(image, INLINE_SAME_LINE) == "Observation: <img> Action: up\n"
    for layout in (BLOCK, INLINE_SAME_LINE, INLINE_NEXT_LINE):  # multi-line: a block
        assert shown(block, layout) == "Observation:\na | b\n---\nAction: up\n"


def test_an_inline_run_shows_demonstrations_and_episode_one_line_a_step(tmp_path: Path) -> None:
    config = make_config("grid_world", model="test/recorder", demos=2, observation="coords",
                         inline_observations=True, task_options=["coords_layout=dict"])  # fmt: skip
    assert config.run_id != make_config("grid_world", model="test/recorder", demos=2,
                                        observation="coords",
                                        task_options=["coords_layout=dict"]).run_id  # fmt: skip
    recorder = Recorder()
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        runner.policies.register(recorder)
        runner.run(config, 1)
        runner.close()
    text = recorder.texts[1]  # the second step: one past step in the episode
    step = re.compile(r"^Observation: \{'player': \[\d+, \d+\], 'target': \[\d+, \d+\]\} ")
    lines = [line for line in text.splitlines() if line.startswith("Observation:")]
    assert len(lines) >= 4 and all(step.match(line) for line in lines)
    assert all(re.search(r" Action: (left|right|up|down)$", line) for line in lines[:-1])
    assert "Observation:\n" not in text


# What each task's prompt shows under the preset: a layout the reference code writes.
PRESET_LAYOUTS = {
    "tic_tac_toe": re.compile(r"\n----------\n"),
    "grid_world": re.compile(r"^\|  wall  \|", re.MULTILINE),
    "crossword": re.compile(r"^Observation:\n", re.MULTILINE),  # a board: still a block
    "chess": re.compile(r"^Observation: \S+/\S+ [wb] \S+ \S+ \d+ \d+ Action: ", re.MULTILINE),
    "cheetah": re.compile(r"^Observation: \{'position': \[-?\d+\.\d+(e-\d+)?, ", re.MULTILINE),
}


def _preset_answer(request: RecordedRequest) -> Reply:
    return Reply(body=chat_completion("Action: a1"))


@pytest.mark.parametrize("task", ["tic_tac_toe", "grid_world", "crossword", "chess", "cheetah"])
def test_the_lmact_preset_sends_each_task_the_papers_request(tmp_path: Path, task: str) -> None:
    # A few steps, and (the cheetah's demonstrations cost a planner each) two demonstrations
    # drawn from a pool of three: what is sent is the preset's otherwise.
    demos = ["--demos", "0"] if task == "cheetah" else ["--demos", "2", "--demo-pool", "3"]
    with loopback(_preset_answer) as server:
        done = lmact("run", "--preset", "lmact", "--task", task, "--model", "openai-compatible/m",
                     "--base-url", server.url + "/v1", "--episodes", "1", "--max-steps", "3",
                     *demos, "--store", "s.sqlite", "--cache-dir", "c", "--json",
                     cwd=tmp_path, env={**os.environ, "OPENAI_COMPATIBLE_API_KEY": ""})  # fmt: skip
        assert done.returncode == 0, done.stderr
        bodies = [r.json for r in server.requests if r.path.endswith("/chat/completions")]
    assert bodies and all(b["temperature"] == 0 and b["max_tokens"] == 2048 for b in bodies)
    for body in bodies:
        (message,) = body["messages"]  # one user turn: the prompt
        assert message["role"] == "user"
    prompt = bodies[-1]["messages"][0]["content"]
    assert PRESET_LAYOUTS[task].search(prompt), prompt[:2000]
    if task == "chess" or task == "cheetah":  # one-line observations: never a block
        assert "Observation:\n" not in prompt
    summary = json.loads(done.stdout)
    assert summary["answer_match"] == "exact" and summary["episodes"] == 1


def test_the_lmact_preset_plays_phoenix_with_sticky_actions_and_inline_frames(
    tmp_path: Path,
) -> None:
    # No demonstrations (each costs the planning expert some 25 s) and two steps.
    with loopback(_preset_answer) as server:
        done = lmact("run", "--preset", "lmact", "--task", "phoenix", "--model",
                     "openai-compatible/m", "--base-url", server.url + "/v1", "--episodes", "1",
                     "--max-steps", "2", "--demos", "0", "--store", "s.sqlite", "--cache-dir",
                     "c", "--json", cwd=tmp_path,
                     env={**os.environ, "OPENAI_COMPATIBLE_API_KEY": ""})  # fmt: skip
        assert done.returncode == 0, done.stderr
        bodies = [r.json for r in server.requests if r.path.endswith("/chat/completions")]
    assert [b["max_tokens"] for b in bodies] == [2048, 2048]
    blocks = bodies[-1]["messages"][0]["content"]  # text and the frames, in order
    kinds = [block["type"] for block in blocks]
    assert kinds.count("image_url") == 2  # the first frame, with its action, and the second
    for at, kind in enumerate(kinds):
        if kind == "image_url":  # an inline frame: "Observation: " then the image
            assert blocks[at - 1]["text"].endswith("Observation: ")
    assert blocks[kinds.index("image_url") + 1]["text"].startswith(" Action: ")
    assert json.loads(done.stdout)["task_options"] == {"sticky_actions": True}


def test_the_lmact_preset_reads_answers_exactly(tmp_path: Path) -> None:
    def answer(request: RecordedRequest) -> Reply:  # a legal move, but dressed
        return Reply(body=chat_completion("`a1`"))

    with loopback(answer) as server:
        done = lmact("run", "--preset", "lmact", "--task", "tic_tac_toe", "--model",
                     "openai-compatible/m", "--base-url", server.url + "/v1", "--episodes", "2",
                     "--demos", "0", "--store", "s.sqlite", "--cache-dir", "c", "--json",
                     cwd=tmp_path, env={**os.environ, "OPENAI_COMPATIBLE_API_KEY": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["invalid_rate"] == 1.0  # lenient matching would have read a1


def test_the_papers_expert_values_stand_beside_lmacts_expert_labelled_as_the_papers(
    tmp_path: Path,
) -> None:
    common = ["--store", "s.sqlite", "--cache-dir", "c"]
    played = lmact("run", "--task", "tic_tac_toe", "--model", "expert", "--episodes", "4",
                   *common, cwd=tmp_path)  # fmt: skip
    assert played.returncode == 0, played.stderr
    shown = lmact("report", "--store", "s.sqlite", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = [ln for ln in shown.stdout.splitlines() if "Ruoss et al. 2025" in ln]
    assert lines  # beside each expert run of the task (the run and its baseline)
    for line in lines:
        assert "the paper's agent: minimax" in line and "not lmact's expert" in line
        assert "| 0.850 |" in line  # the paper's value, with no tolerance and no verdict
        assert "True" not in line and "False" not in line
    page = lmact("report", "--store", "s.sqlite", "--format", "html", "--out", "html",
                 cwd=tmp_path)  # fmt: skip
    assert page.returncode == 0, page.stderr
    with opened(tmp_path / "html" / "index.html") as browser:
        heading = browser.page.locator("h4.published")
        assert heading.inner_text() == "Published values beside these runs"
        table = browser.page.locator("h4.published + .table-wrap table")
        assert "the paper's agent: minimax" in table.inner_text()
        assert "0.850" in table.inner_text()


def test_the_grid_world_step_limit_changes_the_random_baseline_as_the_paper_expects() -> None:
    """The paper stops grid world after 25 steps, the reference code after 100: a random
    walk (the random policy's draws) reaches the target in about 10-12% of 1,000 episodes
    within 25 steps, about 35% within 100, so the limit moves the random baseline."""
    env = get_task("grid_world").make_environment()
    rng = np.random.default_rng(0)
    reached = []
    for seed in range(1000):
        env.reset(seed)
        steps = next((t for t in range(1, 101) if env.step(env.random_action(rng)).done), None)
        reached.append(steps if steps is not None else 101)
    within = {limit: float(np.mean(np.array(reached) <= limit)) for limit in (25, 100)}
    # Four standard errors of a rate over 1,000 episodes either side (about 0.04 and 0.06).
    assert 0.06 <= within[25] <= 0.16 and 0.29 <= within[100] <= 0.41, within
    assert within[100] - within[25] > 0.15


def test_a_pool_made_ahead_with_the_presets_task_options_is_the_one_its_runs_read(
    tmp_path: Path,
) -> None:
    layouts = ["--task-option", "text_layout=boxed", "--task-option", "coords_layout=dict"]
    made = lmact("demos", "grid_world", "--episodes", "4", *layouts, "--cache-dir", "c",
                 cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    dry = lmact("run", "--preset", "lmact", "--task", "grid_world", "--model", "random",
                "--demos", "2", "--demo-pool", "4", "--episodes", "3", "--dry-run", "--json",
                "--store", "s.sqlite", "--cache-dir", "c", cwd=tmp_path)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["demonstrations_generated"] == 0  # all made ahead


def test_a_report_reads_runs_with_task_options(tmp_path: Path) -> None:
    """A configuration holding task options (a dict) is no dictionary key: the report
    finds its baselines by run id."""
    common = ["--store", "s.sqlite", "--cache-dir", "c", "--episodes", "2"]
    played = lmact("run", "--task", "grid_world", "--model", "random", "--task-option",
                   "text_layout=boxed", *common, cwd=tmp_path)  # fmt: skip
    assert played.returncode == 0, played.stderr
    shown = lmact("report", "--store", "s.sqlite", "--format", "csv", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.strip().splitlines()) == 4  # the run and its two baselines
