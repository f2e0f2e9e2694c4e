"""The in-context RL prompts of the papers' protocols: Krishnamurthy et al.'s prompt factors
(scenario, framing, history, answer form, chain of thought) and Monea et al.'s conversation
layout, checked by what the model is sent and how its answers are read."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import StubModel

from lmact.declarations import OptionError
from lmact.demos import DemoStore
from lmact.models.base import ModelRequest, ModelResponse, TextPart, TurnStart, turns
from lmact.prompting import AnswerForm, read_distribution
from lmact.records import AnswerKind
from lmact.regimes.icrl import make_icrl_config
from lmact.runner import Runner
from lmact.store import RunStore

_PRESS = re.compile(r"^Press (\d+): (\w+) button, reward ([01])$", re.MULTILINE)


class Scripted(StubModel):
    """Answers with `answer(request, call)` and keeps every request."""

    def __init__(self, answer: Callable[[ModelRequest, int], str]) -> None:
        super().__init__("test/scripted")
        self.answer = answer
        self.requests: list[ModelRequest] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        return ModelResponse(text=self.answer(request, len(self.requests) - 1))


def played(tmp_path: Path, config: object, model: Scripted, episodes: int) -> list:
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        runner.policies.register(model)
        runner.run(config, episodes)  # type: ignore[arg-type]
        steps = store.steps(config.run_id)  # type: ignore[attr-defined]
        runner.close()
    return steps


def user_text(request: ModelRequest) -> str:
    return "".join(part.text for part in request.parts if isinstance(part, TextPart))


ARMS = ["blue", "green", "red", "yellow", "purple"]


def test_a_buttons_scenario_states_arms_and_horizon_and_shows_every_press(tmp_path: Path) -> None:
    config = make_icrl_config("bandit_hard", model="test/scripted", scenario="buttons",
                              replicates=1, prompt_horizon=40)  # fmt: skip
    model = Scripted(lambda _, call: f"I pick <Answer>{ARMS[call % 5]}</Answer>")
    steps = played(tmp_path, config, model, 6)
    first, last = model.requests[0], model.requests[-1]
    assert "blue, green, red, yellow, purple" in first.system and "40" in first.system
    assert "<Answer>" in first.system and "bandit" not in first.system  # neutral framing
    assert "not pressed any button yet" in user_text(first)
    presses = _PRESS.findall(user_text(last))
    assert [(int(n), arm, int(r)) for n, arm, r in presses] == [
        (i + 1, s.action, int(s.reward)) for i, s in enumerate(steps[:5])
    ]
    assert "press 6 of 40" in user_text(last)
    assert [s.action for s in steps] == [ARMS[i % 5] for i in range(6)]
    assert all(s.kind == AnswerKind.VALID for s in steps)


def test_the_factors_change_what_the_prompt_says(tmp_path: Path) -> None:
    config = make_icrl_config("bandit_easy", model="test/scripted", scenario="adverts",
                              framing="suggestive", history="summary", reinforced_cot=True,
                              replicates=1)  # fmt: skip
    assert config.chain_of_thought and config.max_tokens == 512 and config.prompt_horizon == 100
    model = Scripted(lambda *_: "Reasoning first. <Answer>green</Answer>")
    played(tmp_path, config, model, 4)
    system, user = model.requests[-1].system, user_text(model.requests[-1])
    assert "advertisement" in system and "bandit" in system and "step by step" in system
    assert "Advertisement green: shown 3 times, average reward" in user
    assert "Advertisement blue: shown 0 times, average reward n/a" in user
    assert "step by step" in user  # reinforced: asked again in the user message
    untagged = Scripted(lambda *_: "green")
    steps = played(tmp_path / "untagged", config, untagged, 2)
    assert [s.kind for s in steps] == [AnswerKind.EMPTY] * 2  # the tag is the answer


def test_a_distribution_answer_is_sampled_reproducibly(tmp_path: Path) -> None:
    config = make_icrl_config("bandit_hard", model="test/scripted", scenario="buttons",
                              returns="distribution", replicates=1)  # fmt: skip
    half = "<Answer>blue: 50%, green: 0.5</Answer>"
    steps = played(tmp_path / "a", config, Scripted(lambda *_: half), 40)
    again = played(tmp_path / "b", config, Scripted(lambda *_: half), 40)
    actions = [s.action for s in steps]
    assert actions == [s.action for s in again]  # the draws come from the run's seed
    assert set(actions) == {"blue", "green"} and 8 <= actions.count("blue") <= 32
    assert all(s.kind == AnswerKind.VALID for s in steps)
    model = Scripted(lambda *_: "<Answer>blue: 0.5, green: 0.2</Answer>")  # adds up to 0.7
    steps = played(tmp_path / "c", config, model, 2)
    assert [s.kind for s in steps] == [AnswerKind.INVALID] * 2
    assert "blue: 0.20, green: 0.20" in model.requests[0].system  # the example, adding to 1


def test_reading_a_distribution() -> None:
    legal = ["blue", "green", "red"]
    assert read_distribution("Blue: 20%, green button = 0.8", legal) == pytest.approx(
        {"blue": 0.2, "green": 0.8}
    )
    assert read_distribution("blue: 0.5, blue: 0.5", legal) is None  # repeated
    assert read_distribution("blue: 0.5, pink: 0.5", legal) is None  # unknown
    assert read_distribution("no numbers here", legal) is None
    form = AnswerForm(tagged=True, distribution=True)
    picks = {
        form.read("<answer>red: 1</answer>", lambda: legal, lambda rng=rng: rng)
        for rng in map(np.random.default_rng, range(20))
    }
    assert picks == {"red"}
    assert AnswerForm(tagged=True).read("green", list, list, constrained=True) == "green"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"task": "classification", "scenario": "buttons"}, "--scenario"),
        ({"task": "bandit_hard", "framing": "suggestive"}, "--framing"),
        ({"task": "bandit_hard", "scenario": "buttons", "variant": "stochastic"}, "--variant"),
        (
            {
                "task": "bandit_hard",
                "scenario": "buttons",
                "returns": "distribution",
                "constrained": True,
            },
            "--constrained",
        ),
        ({"task": "bandit_hard", "scenario": "buttons", "layout": "conversation"}, "--layout"),
    ],
)
def test_factors_that_do_not_go_together_are_refused(options: dict, named: str) -> None:
    task = options.pop("task")
    with pytest.raises(OptionError) as refused:
        make_icrl_config(task, model="random", **options)
    assert named.removeprefix("--") in str(refused.value)


def test_more_rounds_than_the_prompt_states_are_refused(tmp_path: Path) -> None:
    config = make_icrl_config("bandit_hard", model="test/scripted", scenario="buttons",
                              prompt_horizon=3, replicates=1)  # fmt: skip
    model = Scripted(lambda *_: "<Answer>blue</Answer>")
    with pytest.raises(OptionError, match="prompt_horizon"):
        played(tmp_path, config, model, 4)
    assert model.requests == []  # refused before any call


def test_defaults_keep_the_ids_of_runs_made_before() -> None:
    plain = make_icrl_config("bandit_hard", model="random", buttons="drawn")
    assert plain.scenario is None and plain.layout is None and plain.added_prompts is None
    assert make_icrl_config("bandit_hard", model="random", buttons="drawn").run_id == plain.run_id
    buttons = make_icrl_config("bandit_hard", model="random", scenario="buttons")
    adverts = make_icrl_config("bandit_hard", model="random", scenario="adverts")
    assert len({plain.run_id, buttons.run_id, adverts.run_id}) == 3


@pytest.mark.parametrize("variant", ["naive", "supervised"])
def test_a_conversation_shows_each_example_as_turns(tmp_path: Path, variant: str) -> None:
    config = make_icrl_config("classification", model="test/scripted", layout="conversation",
                              variant=variant, labels="unlisted", replicates=1)  # fmt: skip
    model = Scripted(lambda _, call: ["noun.location", "verb.motion"][call % 2])
    steps = played(tmp_path, config, model, 4)
    last = model.requests[-1]
    assert "conversation" in last.system and "Action: <action>" in last.system
    conversation = turns(last.parts)
    roles = [role for role, _ in conversation]
    assert roles == ["user", "assistant"] * 3 + [
        "user"
    ]  # feedback joins the next input's user turn
    said = [
        "".join(p.text for p in parts if isinstance(p, TextPart)) for role, parts in conversation
    ]
    assert [text.strip() for text in said[1::2]] == (
        [f"Action: {s.action}" for s in steps[:3]]
        if variant == "naive"
        else [f"Action: {gold}" for gold in _golds(3)]
    )
    for step, reply in zip(steps[:3], said[2::2], strict=True):
        if variant == "naive":
            assert reply.startswith("That is right." if step.reward else "That is wrong.")
        else:
            assert "That is" not in reply
    assert "Attempt" not in "".join(said) and "Reward:" not in "".join(said)
    assert sum(isinstance(p, TurnStart) for p in last.parts) >= 6


def _golds(count: int) -> list[str]:
    from lmact.regimes.icrl import REPLICATE_STRIDE
    from lmact.tasks import get_task

    env = get_task("classification").make_environment()
    golds = []
    for episode in range(count):
        env.reset(0 * REPLICATE_STRIDE + episode)
        golds.append(env.expert_action())
    return golds


def test_chain_of_thought_asks_for_reasoning_in_either_layout(tmp_path: Path) -> None:
    for layout in ("block", "conversation"):
        config = make_icrl_config("bandit_hard", model="test/scripted", chain_of_thought=True,
                                  layout=layout, replicates=1)  # fmt: skip
        model = Scripted(lambda *_: "The blue one looks best.\nAction: blue")
        steps = played(tmp_path / layout, config, model, 2)
        request = model.requests[-1]
        said = request.system + user_text(request)
        assert "step by step" in said and request.answer_prefix == "Reasoning:"
        assert request.max_tokens == 512 and [s.action for s in steps] == ["blue", "blue"]
