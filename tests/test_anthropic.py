"""The Anthropic provider against a loopback server speaking the Messages API wire format,
through the real `anthropic` SDK: what it sends, what it reads, how failures are sorted."""

from __future__ import annotations

import base64
import os
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from helpers import (
    CONVERSATION_PARTS,
    call,
    conversation_request,
    episode_requests,
    simple_request,
)
from loopback import RecordedRequest, Reply, faults_then, loopback

from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.anthropic import AnthropicModel
from lmact.models.base import (
    ImagePart,
    ModelCallError,
    ModelOptions,
    ModelRequest,
    TextPart,
)
from lmact.models.caller import call_key
from lmact.models.registry import resolve_model
from lmact.prompting import PromptSettings
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore

SECRET = "sk-ant-test-SECRET-0123456789"
MODEL = "anthropic/claude-haiku-4-5"
# Read before the fixture below replaces it: the live test alone uses the real key.
LIVE_KEY = os.environ.get("ANTHROPIC_API_KEY")
LEGAL_LINE = "The legal actions in this state are: "


@pytest.fixture(autouse=True)
def _offline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Neither a real key nor a real endpoint from the environment may reach these tests.
    for name in (
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_CUSTOM_HEADERS",
        "ANTHROPIC_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)


def message(
    text: str = "a1",
    *,
    content: list[dict[str, Any]] | None = None,
    stop_reason: str = "end_turn",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Messages API answer, as the API writes it."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": content if content is not None else [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage
        if usage is not None
        else {
            "input_tokens": 12,
            "output_tokens": 2,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def error(kind: str, text: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind, "message": text}
    if details:
        body["details"] = details
    return {"type": "error", "error": body, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def answer(reply: dict[str, Any]) -> Any:
    return lambda request: Reply(200, reply)


def model_at(url: str, **options: Any) -> AnthropicModel:
    model = resolve_model(MODEL, ModelOptions(base_url=url, **options))
    assert isinstance(model, AnthropicModel)
    return model


def blocks_of(recorded: RecordedRequest) -> list[dict[str, Any]]:
    messages = recorded.json["messages"]
    assert len(messages) == 1 and messages[0]["role"] == "user"
    return messages[0]["content"]


def cache_marks(recorded: RecordedRequest) -> list[int]:
    return [i for i, block in enumerate(blocks_of(recorded)) if "cache_control" in block]


# --- what the SDK sends ------------------------------------------------------------------


def test_request_wire_format() -> None:
    with loopback(answer(message())) as server:
        request = simple_request(system="Be brief.", stable_prefix_parts=2, max_tokens=7)
        response, _ = call(model_at(server.url), request)
    assert response.text == "a1"
    (sent,) = server.requests
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    # SDK 2.x speaks API version 2026-10-21 and sends the key as a bearer token.
    assert sent.headers["anthropic-version"] == "2026-10-21"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    body = sent.json
    assert body["model"] == "claude-haiku-4-5"
    assert body["system"] == "Be brief."
    assert body["max_tokens"] == 7
    assert blocks_of(sent) == [
        {"type": "text", "text": "Preamble.\n"},
        {"type": "text", "text": "Demonstrations.\n", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Now: x1\n"},
    ]
    # Version 2026-10-21 rejects sampling parameters, even at their defaults.
    for absent in ("temperature", "top_p", "top_k", "thinking", "stop_sequences"):
        assert absent not in body
    assert body.get("stream") in (None, False)


def test_no_system_and_no_cache_mark_without_a_stable_prefix() -> None:
    with loopback(answer(message())) as server:
        call(model_at(server.url), simple_request(stable_prefix_parts=0))
    (sent,) = server.requests
    assert "system" not in sent.json
    assert cache_marks(sent) == []
    assert len(blocks_of(sent)) == 3


def test_images_inline_in_order_with_the_cache_mark_on_the_prefix_end() -> None:
    _, requests = episode_requests(
        "tic_tac_toe", "png", PromptSettings(show_legal_actions=True), demos=2
    )
    request = requests[2][0]  # a step with a trajectory, so the tail holds images too
    assert 0 < request.stable_prefix_parts < len(request.parts)
    with loopback(answer(message())) as server:
        call(model_at(server.url), request)
    (sent,) = server.requests
    blocks = blocks_of(sent)
    assert len(blocks) == len(request.parts)
    images = 0
    for part, block in zip(request.parts, blocks, strict=True):
        if isinstance(part, ImagePart):
            images += 1
            assert block["type"] == "image"
            assert block["source"]["type"] == "base64"
            assert block["source"]["media_type"] == "image/png"
            assert base64.b64decode(block["source"]["data"]) == part.png
        else:
            assert block["type"] == "text" and block["text"] == part.text
    assert images >= 3
    assert cache_marks(sent) == [request.stable_prefix_parts - 1]
    assert blocks[request.stable_prefix_parts - 1]["cache_control"] == {"type": "ephemeral"}


def test_a_conversation_is_a_message_per_turn_the_cache_mark_after_the_third() -> None:
    tool_call = {"type": "tool_use", "id": "toolu_01", "name": "answer", "input": {"action": "b"}}
    reply = message(content=[tool_call], stop_reason="tool_use")
    request = conversation_request(system="You choose.", choices=("a", "b"))
    with loopback(answer(reply)) as server:
        response, _ = call(model_at(server.url), request)
    assert (response.text, response.stop_reason) == ("b", "stop")  # forced through the tool
    body = server.requests[0].json
    assert body["system"] == "You choose."
    assert body["tool_choice"] == {"type": "tool", "name": "answer"}
    mark = {"cache_control": {"type": "ephemeral"}}
    # The stable prefix (five parts, two of them turn starts) ends with "Right.".
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "in 1\n"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Action: a\n"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Right.\n", **mark},
                {"type": "text", "text": "in 2\n"},
            ],
        },
    ]
    # A prefix ending in the answer marks the answer; an empty turn leaves the roles
    # alternating.
    model = model_at("http://127.0.0.1:9")
    at_answer = replace(request, stable_prefix_parts=3)
    assert model.request_arguments(at_answer)["messages"][1]["content"][0] == {
        "type": "text",
        "text": "Action: a\n",
        **mark,
    }
    empty = (*CONVERSATION_PARTS[:2], TextPart(""), *CONVERSATION_PARTS[3:])
    empty_answer = replace(request, parts=empty)
    messages = model.request_arguments(empty_answer)["messages"]
    assert [m["role"] for m in messages] == ["user"]
    assert [block["text"] for block in messages[0]["content"]] == ["in 1\n", "Right.\n", "in 2\n"]
    with pytest.raises(ValueError, match="ends with a user turn"):
        model.request_arguments(replace(request, parts=CONVERSATION_PARTS[:3]))


def test_thinking_parameters_and_answer() -> None:
    reply = message(
        content=[
            {"type": "thinking", "thinking": "b2 is the centre...", "signature": "EqQBCgIYAh"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
            {"type": "text", "text": "Action: "},
            {"type": "text", "text": "b2"},
        ],
        usage={
            "input_tokens": 40,
            "output_tokens": 900,
            "output_tokens_details": {"thinking_tokens": 880},
        },
    )
    with loopback(answer(reply)) as server:
        model = model_at(server.url, reasoning_budget=2048)
        response, _ = call(model, simple_request(max_tokens=16, temperature=0.0))
    body = server.requests[0].json
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 16 + 2048
    assert "temperature" not in body
    assert response.text == "Action: b2"
    assert response.completion_tokens == 900
    assert response.reasoning_tokens == 880
    # Thinking changes the answer: a call with it is cached apart from one without.
    plain = resolve_model(MODEL, ModelOptions())
    request = simple_request()
    assert call_key(model, request) != call_key(plain, request)
    assert model.identity() == {"model": MODEL, "reasoning_budget": 2048}
    assert plain.identity() == {"model": MODEL}


# --- what it reads back --------------------------------------------------------------------


def test_usage_sums_cache_reads_and_writes_and_cost() -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 3,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 1200,
    }
    with loopback(answer(message("c3", usage=usage))) as server:
        model = model_at(server.url)
        response, _ = call(model, simple_request(stable_prefix_parts=2))
    assert response.text == "c3"
    assert response.prompt_tokens == 10 + 300 + 1200
    assert response.cached_tokens == 1200
    assert response.cache_write_tokens == 300
    assert response.completion_tokens == 3
    assert response.reasoning_tokens == 0
    assert response.latency_s > 0
    # The catalog's Haiku 4.5 prices: 1.00 in, 0.10 cache read, 1.25 cache write, 5.00 out.
    expected = (10 * 1.00 + 1200 * 0.10 + 300 * 1.25 + 3 * 5.00) / 1_000_000
    assert model.cost_usd(response) == pytest.approx(expected)


def test_missing_and_null_usage_fields_count_zero() -> None:
    usage = {
        "input_tokens": 7,
        "output_tokens": 1,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
        "output_tokens_details": None,
    }
    with loopback(answer(message(usage=usage))) as server:
        response, _ = call(model_at(server.url), simple_request())
    assert (response.prompt_tokens, response.cached_tokens, response.cache_write_tokens) == (
        7,
        0,
        0,
    )
    assert (response.completion_tokens, response.reasoning_tokens) == (1, 0)


@pytest.mark.parametrize(
    ("wire", "ours", "text"),
    [
        ("end_turn", "stop", "a1"),
        ("stop_sequence", "stop", "a1"),
        ("max_tokens", "length", "Action: a"),
        ("model_context_window_exceeded", "length", "Act"),
        ("refusal", "refusal", "I can't"),
        ("pause_turn", "pause_turn", ""),
    ],
)
def test_stop_reasons(wire: str, ours: str, text: str) -> None:
    with loopback(answer(message(text, stop_reason=wire))) as server:
        response, _ = call(model_at(server.url), simple_request())
    assert response.stop_reason == ours
    assert response.text == text  # whatever text came is kept, a refusal's too


# --- faults, through the one retrying caller ---------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Reply(500, error("api_error", "Internal server error")), id="500"),
        pytest.param(Reply(529, error("overloaded_error", "Overloaded")), id="529-overloaded"),
        pytest.param(Reply(503, b"<html>upstream unavailable</html>"), id="503-html"),
        pytest.param(Reply(200, message(), delay_s=1.5), id="timeout"),
        pytest.param(Reply(drop=True), id="dropped-connection"),
        pytest.param(Reply(200, b'{"id": "msg_01", "type": "mess'), id="malformed-json"),
        pytest.param(Reply(200, {"detail": "not a message"}), id="not-a-message"),
    ],
)
def test_transient_faults_succeed_on_a_later_attempt(fault: Reply) -> None:
    with loopback(faults_then(fault, then=answer(message("b3")))) as server:
        model = model_at(server.url, timeout_s=0.3)
        response, caller = call(model, simple_request())
    assert response.text == "b3"
    assert len(server.requests) == 2
    assert caller.totals.retries == 1 and caller.totals.calls_made == 1


def test_rate_limit_waits_as_long_as_retry_after_asks() -> None:
    replies: list[float] = []

    def timed(request: RecordedRequest) -> Reply:
        replies.append(time.monotonic())
        return Reply(200, message("a3"))

    limited = Reply(
        429,
        error("rate_limit_error", "Number of request tokens has exceeded your rate limit"),
        headers={"retry-after": "1"},
    )
    with loopback(faults_then(limited, then=timed)) as server:
        started = time.monotonic()
        response, caller = call(model_at(server.url), simple_request())
    assert response.text == "a3"
    assert len(server.requests) == 2 and caller.totals.retries == 1
    assert replies[0] - started >= 1.0


@pytest.mark.parametrize(
    ("status", "kind", "hint"),
    [
        (401, "authentication_error", "ANTHROPIC_API_KEY"),
        (400, "invalid_request_error", "invalid_request_error"),
        (403, "permission_error", "ANTHROPIC_API_KEY"),
    ],
)
def test_fatal_statuses_stop_after_one_request(status: int, kind: str, hint: str) -> None:
    fatal = Reply(status, error(kind, "no"))
    with loopback(lambda request: fatal) as server, pytest.raises(ModelCallError) as raised:
        call(model_at(server.url), simple_request())
    assert len(server.requests) == 1
    assert f"HTTP {status}" in str(raised.value) and hint in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_long_error_page_is_cut_to_one_redacted_line() -> None:
    def page(request: RecordedRequest) -> Reply:
        padding = "x" * 270  # the key straddles the cut at 300 characters
        text = f"<html>\n<body>{padding} {request.headers['authorization']}\n</body></html>"
        return Reply(404, text.encode())

    with loopback(page) as server, pytest.raises(ModelCallError) as raised:
        call(model_at(server.url), simple_request())
    text = str(raised.value)
    # Where the cut falls depends on how much text the SDK puts before the page, which this
    # test does not control: it asserts what holds wherever it falls.
    assert "HTTP 404" in text and "<html> <body>xxx" in text
    assert "\n" not in text and len(text) < 400
    assert not any(SECRET[i : i + 8] in text for i in range(len(SECRET) - 7))


def test_a_spend_limit_is_fatal_though_it_is_a_429() -> None:
    body = error(
        "rate_limit_error", "Spend limit reached", error_code="enforced_spend_limit_reached"
    )
    limited = Reply(429, body, headers={"retry-after": "0"})
    with (
        loopback(lambda request: limited) as server,
        pytest.raises(ModelCallError, match="Spend limit reached"),
    ):
        call(model_at(server.url), simple_request())
    assert len(server.requests) == 1


def test_exhausted_retries_give_a_model_call_error() -> None:
    overloaded = Reply(529, error("overloaded_error", "Overloaded"))
    with (
        loopback(lambda request: overloaded) as server,
        pytest.raises(ModelCallError, match=r"gave up after 3 attempts.*HTTP 529"),
    ):
        call(model_at(server.url), simple_request(), max_retries=2)
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [401, 500, 400])
def test_the_key_never_appears_in_an_error(status: int) -> None:
    def echo(request: RecordedRequest) -> Reply:
        # A misbehaving proxy that quotes the request's credentials back.
        quoted = f"bad credentials {request.headers.get('authorization')}"
        return Reply(status, error("api_error", quoted), headers={"retry-after": "0"})

    with loopback(echo) as server, pytest.raises(ModelCallError) as raised:
        call(model_at(server.url), simple_request(), max_retries=1)
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it was sent
    message_text = str(raised.value)
    assert SECRET not in message_text
    assert "[redacted]" in message_text
    assert raised.value.__cause__ is None


# --- setup ---------------------------------------------------------------------------------


def test_a_missing_key_is_a_one_line_error_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with loopback(answer(message())) as server:
        model = model_at(server.url)
        with pytest.raises(LmactError) as raised:
            model.check_ready()
        assert str(raised.value) == (
            "model anthropic/claude-haiku-4-5 needs an API key: set ANTHROPIC_API_KEY"
        )
        with pytest.raises(LmactError, match="ANTHROPIC_API_KEY"):
            call(model, simple_request())
    assert server.requests == []


def test_the_base_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with loopback(answer(message("c1"))) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        model = resolve_model(MODEL, ModelOptions())
        assert isinstance(model, AnthropicModel)
        response, _ = call(model, simple_request())
    assert response.text == "c1" and len(server.requests) == 1


def test_one_client_serves_successive_event_loops() -> None:
    # The runner starts a new event loop per run; the SDK's pool must not outlive its loop.
    clients = []
    with loopback(answer(message())) as server:
        model = model_at(server.url)
        for _ in range(2):
            response, _ = call(model, simple_request(), max_retries=0)
            assert response.text == "a1"
            clients.append(model._sdk_client)
    assert len(server.requests) == 2
    # Each loop had its own client, closed (connections and all) when its loop ended.
    assert clients[0] is not clients[1]
    assert all(client.is_closed() for client in clients)


# --- a whole run ---------------------------------------------------------------------------


class TicTacToeServer:
    """Answers each request with the first legal action of its prompt, after a few faults;
    counts the answers it gave."""

    def __init__(self, *faults: Reply) -> None:
        self.answers = 0
        self._lock = threading.Lock()
        self.handler = faults_then(*faults, then=self.play)

    def play(self, request: RecordedRequest) -> Reply:
        texts = [block["text"] for block in blocks_of(request) if block["type"] == "text"]
        lines = [line for line in "".join(texts).splitlines() if line.startswith(LEGAL_LINE)]
        action = lines[-1].removeprefix(LEGAL_LINE).split(", ")[0]
        with self._lock:
            self.answers += 1
        usage = {"input_tokens": 30, "output_tokens": 2, "cache_read_input_tokens": 500}
        return Reply(200, message(action, usage=usage))


def test_runner_plays_tic_tac_toe_txt_then_png_through_faults(
    run_store: RunStore, demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = (
        Reply(529, error("overloaded_error", "Overloaded")),
        Reply(drop=True),
        Reply(429, error("rate_limit_error", "slow down"), headers={"retry-after-ms": "50"}),
    )
    game = TicTacToeServer(*faults)
    with loopback(game.handler) as server:
        options = ModelOptions(base_url=server.url, timeout_s=10)
        # Short backoffs, so that the faults cost no time.
        runner = Runner(run_store, demo_store, options, 4, progress=False, retry_backoff_s=0.01)
        seen = 0
        try:
            # One runner, one client: the second run plays under a new event loop.
            for observation in ("txt", "png"):
                config = make_config(
                    "tic_tac_toe",
                    model="anthropic/claude-haiku-4-5",
                    demos=2,
                    demo_draw="shared",  # one prefix for every episode: what is cached
                    show_legal_actions=True,
                    observation=observation,
                )
                answers_before = game.answers
                result = runner.run(config, episodes=4)
                requests = server.requests[seen:]
                seen = len(server.requests)

                assert [e.episode for e in result.episodes] == [0, 1, 2, 3]
                steps = run_store.steps(config.run_id)
                assert all(step.kind == "valid" for step in steps)
                assert len(steps) == sum(e.steps for e in result.episodes)
                assert result.calls_made == game.answers - answers_before
                assert len(steps) == result.calls_made + result.calls_cached
                assert sum(s.usage.cached_tokens for s in steps if not s.from_cache) == (
                    500 * result.calls_made
                )
                # Every request marks the end of the same stable prefix for the prompt cache.
                marks = {tuple(cache_marks(r)) for r in requests if r.body}
                assert len(marks) == 1 and len(next(iter(marks))) == 1
                (mark,) = next(iter(marks))
                prefixes = {str(blocks_of(r)[: mark + 1]) for r in requests if r.body}
                assert len(prefixes) == 1
                has_images = any(
                    block["type"] == "image" for r in requests for block in blocks_of(r)
                )
                assert has_images == (observation == "png")
        finally:
            runner.close()
    assert len(server.requests) == game.answers + len(faults)


# --- live ----------------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.skipif(not LIVE_KEY, reason="needs a paid Anthropic key (ANTHROPIC_API_KEY)")
def test_live_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", LIVE_KEY or "")
    model = resolve_model("anthropic/claude-haiku-4-5", ModelOptions(timeout_s=60))
    request = ModelRequest(
        parts=(TextPart("Reply with the single word: ready"),), max_tokens=8, system="Be terse."
    )
    response, _ = call(model, request, max_retries=2)
    assert "ready" in response.text.lower()
    assert response.prompt_tokens > 0 and response.completion_tokens > 0
    assert response.stop_reason in ("stop", "length")


def test_a_constrained_request_forces_an_answer_tool_whose_input_is_the_choice() -> None:
    tool_call = {"type": "tool_use", "id": "toolu_01", "name": "answer", "input": {"action": "b2"}}
    reply = message(content=[tool_call], stop_reason="tool_use")
    request = simple_request(max_tokens=7, choices=("a1", "b2"))
    with loopback(answer(reply)) as server:
        response, _ = call(model_at(server.url), request)
    assert (response.text, response.stop_reason) == ("b2", "stop")
    body = server.requests[0].json
    (tool,) = body["tools"]
    assert tool["name"] == "answer" and body["tool_choice"] == {"type": "tool", "name": "answer"}
    assert tool["input_schema"]["properties"]["action"]["enum"] == ["a1", "b2"]
    assert body["max_tokens"] > 7  # room for the call
    # Anthropic forces no tool beside extended thinking: that model does not constrain.
    thinking = model_at("http://127.0.0.1:9", reasoning_budget=1024)
    assert not thinking.constrains and "tools" not in thinking.request_arguments(request)
