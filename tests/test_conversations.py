"""Conversations in a model request: `turns` groups the parts by `TurnStart`, a request
without one keeps the hash it always had, a conversation's roles are part of its hash, a
completion prompt reads the turns as one text, and a conversation that does not end with a
user turn is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import CONVERSATION_PARTS, conversation_request

from lmact.models.base import (
    ImagePart,
    ModelRequest,
    TextPart,
    TurnStart,
    conversation,
    role_at,
    turns,
)

# A PNG header of 1 by 1 pixels: enough for a part's size and hash.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00"


def test_turns_group_the_parts_by_role() -> None:
    assert turns(CONVERSATION_PARTS) == [
        ("user", (TextPart("in 1\n"),)),
        ("assistant", (TextPart("Action: a\n"),)),
        ("user", (TextPart("Right.\n"), TextPart("in 2\n"))),
    ]
    # Without a turn start, the parts are the one user turn they always were.
    plain = (TextPart("a"), ImagePart(PNG), TextPart("b"))
    assert turns(plain) == [("user", plain)]
    # Neighbouring turns of one role are one; a turn with no parts is none.
    parts = (TurnStart("user"), TextPart("a"), TurnStart("assistant"), TurnStart("user"))
    assert turns((*parts, TextPart("b"))) == [("user", (TextPart("a"), TextPart("b")))]
    with pytest.raises(ValueError, match="role"):
        turns((TurnStart("system"), TextPart("a")))  # type: ignore[arg-type]


def test_a_request_without_turns_keeps_its_hash_and_roles_change_it() -> None:
    # Pinned: computed by the hash before conversations existed.
    with_image = ModelRequest(
        parts=(TextPart("Preamble.\n"), ImagePart(b"\x89PNG fake"), TextPart("Now: x1\n")),
        system="Be brief.",
    )
    assert with_image.prompt_hash == (
        "f338354b791e5c9f300c64c91c0eeeb166a3eb95395a9755e4d9c9156c82f915"
    )
    text_only = ModelRequest(parts=(TextPart("Preamble.\n"), TextPart("Now: x1\n")))
    assert text_only.prompt_hash == (
        "264c111fab3abd47efd59b719df70aec622b7098d024ddd26b5f5befed964593"
    )
    # The same texts in other turns, or in none, are other prompts.
    request = conversation_request()
    texts = tuple(part for part in CONVERSATION_PARTS if isinstance(part, TextPart))
    swapped = tuple(
        TurnStart("user" if part.role == "assistant" else "assistant")
        if isinstance(part, TurnStart)
        else part
        for part in CONVERSATION_PARTS
    )
    hashes = {
        request.prompt_hash,
        replace(request, parts=texts).prompt_hash,
        replace(request, parts=swapped).prompt_hash,
    }
    assert len(hashes) == 3


def test_a_completion_prompt_reads_the_turns_as_one_text() -> None:
    request = conversation_request(system="Choose.\n", answer_prefix="Action:")
    assert request.completion_text() == "Choose.\nin 1\nAction: a\nRight.\nin 2\nAction:"
    ends_with_answer = replace(request, parts=CONVERSATION_PARTS[:3])
    with pytest.raises(ValueError, match="ends with a user turn"):
        ends_with_answer.completion_text()
    with pytest.raises(ValueError, match="images"):
        replace(request, parts=(*CONVERSATION_PARTS, ImagePart(PNG))).completion_text()


def test_a_conversation_starts_and_ends_with_a_user_turn_its_answers_text() -> None:
    assert conversation(CONVERSATION_PARTS) == turns(CONVERSATION_PARTS)
    assert conversation(()) == [("user", ())]  # an empty request: one empty user turn
    with pytest.raises(ValueError, match="ends with a user turn"):
        conversation(CONVERSATION_PARTS[:3])
    with pytest.raises(ValueError, match="starts and ends"):
        conversation(CONVERSATION_PARTS[1:])
    with pytest.raises(ValueError, match="text only"):
        conversation((*CONVERSATION_PARTS[:3], ImagePart(PNG), *CONVERSATION_PARTS[3:]))


def test_the_role_at_a_cut_is_that_of_the_turn_it_falls_in() -> None:
    roles = [role_at(CONVERSATION_PARTS, index) for index in range(len(CONVERSATION_PARTS))]
    assert roles == ["user", "user", "assistant", "assistant", "user", "user"]
