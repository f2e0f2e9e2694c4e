"""From completion text to action: extraction, then each environment's strict grammar."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmact.envs.base import AnswerKind, classify_answer
from lmact.envs.grid_world import GridWorld
from lmact.envs.tic_tac_toe import TicTacToe
from lmact.prompting import extract_answer


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (" b2\n", "b2"),
        ("b2", "b2"),
        ("\n\n  up  \nsomething else", "up"),
        ("Reasoning: the centre is free.\nAction: b2", "b2"),
        ("Action: a1\nAction: c3", "c3"),  # the last marker wins
        ("action:   `left`", "left"),
        ("**right**", "right"),
        ("", ""),
        ("   \n  ", ""),
        ("Action:", ""),
    ],
)
def test_extract_answer(completion: str, answer: str) -> None:
    assert extract_answer(completion) == answer


def _tic_tac_toe() -> TicTacToe:
    env = TicTacToe()
    env.reset(3)
    return env


def _grid_world() -> GridWorld:
    env = GridWorld()
    env.reset(3)
    return env


ENVIRONMENTS = {"tic_tac_toe": _tic_tac_toe, "grid_world": _grid_world}


@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_any_text_is_classified_without_error(name: str, text: str) -> None:
    env = ENVIRONMENTS[name]()
    parsed = classify_answer(env, extract_answer(text))
    assert parsed.kind in set(AnswerKind)
    if parsed.kind is AnswerKind.VALID:
        assert parsed.action in env.legal_actions()
    else:
        assert parsed.action is None


@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_every_legal_action_parses_to_itself(name: str, data: st.DataObject) -> None:
    env = ENVIRONMENTS[name]()
    action = data.draw(st.sampled_from(env.legal_actions()))
    spelled = data.draw(st.sampled_from([action, action.upper(), f"  {action}.", f"{action}\n"]))
    parsed = classify_answer(env, extract_answer(spelled))
    assert (parsed.kind, parsed.action) == (AnswerKind.VALID, action)


def test_tic_tac_toe_kinds() -> None:
    env = TicTacToe()
    env._set_position(["x", " ", " ", " ", "o", " ", " ", " ", " "], agent_mark="x")
    assert classify_answer(env, "a1").kind is AnswerKind.ILLEGAL  # occupied
    assert classify_answer(env, "a2").action == "a2"
    assert classify_answer(env, "d4").kind is AnswerKind.INVALID
    assert classify_answer(env, "a1 please").kind is AnswerKind.INVALID
    assert classify_answer(env, " ").kind is AnswerKind.EMPTY


def test_grid_world_kinds() -> None:
    env = _grid_world()
    assert classify_answer(env, "Left").action == "left"
    assert classify_answer(env, "north").kind is AnswerKind.INVALID
    assert classify_answer(env, "").kind is AnswerKind.EMPTY
