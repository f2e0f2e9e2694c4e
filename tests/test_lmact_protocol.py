"""The LMAct protocol's settings: task options set per run (`--task-option`), which reach
the environment, its demonstrations and its baselines, and refuse what the environment does
not take."""

from __future__ import annotations

from pathlib import Path

from helpers import StubModel, lmact

from lmact.demos import DemoStore
from lmact.models.base import ModelRequest, ModelResponse, TextPart
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore


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
