"""Every preset played offline, through the real OpenAI SDK of `openai-compatible/`, against
a loopback server: what each sends (messages and their roles, temperature, the constraint,
what the context holds) is the paper's protocol as the preset says it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import lmact
from loopback import RecordedRequest, Reply, chat_completion, loopback

from lmact.presets import presets

KRISHNAMURTHY = sorted(name for name in presets() if name.startswith("krishnamurthy"))
MONEA = sorted(name for name in presets() if name.startswith("monea"))
LABEL = "noun.location"  # one of the classification task's labels
EPISODES = 4


def answer(request: RecordedRequest) -> Reply:
    body = request.json
    if "response_format" in body:  # constrained: the JSON object of the schema
        choices = body["response_format"]["json_schema"]["schema"]["properties"]["action"]
        return Reply(body=chat_completion(json.dumps({"action": choices["enum"][0]})))
    return Reply(body=chat_completion("Thinking it over. <Answer>blue</Answer>"))


def played(tmp_path: Path, name: str, *extra: str) -> list[dict[str, Any]]:
    """The chat requests a preset's run sent, in order."""
    with loopback(answer) as server:
        done = lmact("run", "--preset", name, "--model", "openai-compatible/m", "--base-url",
                     server.url + "/v1", "--episodes", str(EPISODES), "--replicates", "1",
                     "--store", "s.sqlite", "--cache-dir", "cache", *extra,
                     cwd=tmp_path, env={"OPENAI_COMPATIBLE_API_KEY": ""})  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [r.json for r in server.requests if r.path.endswith("/chat/completions")]


@pytest.mark.parametrize("name", KRISHNAMURTHY)
def test_a_krishnamurthy_preset_sends_a_system_and_a_user_message(
    tmp_path: Path, name: str
) -> None:
    options = presets()[name].options
    requests = played(tmp_path, name)
    assert len(requests) == EPISODES  # one round an episode
    arms = ["blue", "green", "red", "yellow", "purple"][: 5 if "hard" in name else 4]
    for number, body in enumerate(requests, start=1):
        system, user = body["messages"]
        assert (system["role"], user["role"]) == ("system", "user")
        assert body["temperature"] == options["temperature"] and "response_format" not in body
        assert ", ".join(arms) + "." in system["content"] and "100" in system["content"]
        assert "<Answer>" in system["content"]
        assert ("step by step" in system["content"]) == bool(options.get("cot"))
        assert f"press {number} of 100" in user["content"]
        if number == 1:
            assert "not pressed any button yet" in user["content"]
        elif options["history"] == "summary":
            pressed = re.findall(r"blue button: pressed (\d+) times", user["content"])
            assert pressed == [str(number - 1)]  # the server always answers blue
        else:
            assert len(re.findall(r"^Press \d+: blue button", user["content"], re.M)) == number - 1
    assert requests[-1]["max_tokens"] >= (512 if options.get("cot") else 128)


@pytest.mark.parametrize("name", MONEA)
def test_a_monea_preset_sends_a_conversation_under_a_constraint(tmp_path: Path, name: str) -> None:
    options = presets()[name].options
    requests = played(tmp_path, name, "--task", "classification", "--eval-size", "2")
    # Two held-out examples before the first episode, then the episodes.
    assert len(requests) == 2 + EPISODES
    for body in requests:
        assert body["temperature"] == options["temperature"]
        enum = body["response_format"]["json_schema"]["schema"]["properties"]["action"]["enum"]
        assert LABEL in enum and len(enum) > 10  # constrained onto every label
        roles = [message["role"] for message in body["messages"]]
        assert roles[0] == "system" and roles[-1] == "user"
        assert "Labels:" not in json.dumps(body["messages"])  # never listed
    last = requests[-1]["messages"]
    roles = [message["role"] for message in last]
    shown = roles.count("assistant")
    if options["variant"] == "naive-positive" or options["variant"] == "stochastic":
        assert shown <= EPISODES - 1  # only examples of reward 1 (and, stochastic, kept)
    elif options["variant"] != "approximate":
        assert shown == EPISODES - 1  # every earlier example
    assert roles == ["system"] + ["user", "assistant"] * shown + ["user"]
    feedback = [m["content"] for m in last[3::2]]  # the user turns after an answer
    if options["variant"] == "supervised":
        assert not any("That is" in text for text in feedback)  # gold labels, no feedback
    else:
        assert all(text.startswith(("That is right.", "That is wrong.")) for text in feedback)
