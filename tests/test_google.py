"""The Gemini provider against a loopback server speaking the Gemini REST wire format
(v1beta), through the real `google-genai` SDK: what it sends, what it reads, the explicit
context cache, and how failures are sorted."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from helpers import call, conversation_request, simple_request
from loopback import RecordedRequest, Reply, faults_then, loopback
from PIL import Image

from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import (
    ImagePart,
    ModelAuthError,
    ModelCallError,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    TextPart,
)
from lmact.models.caller import ModelCaller, call_key
from lmact.models.google import GoogleModel
from lmact.models.registry import resolve_model
from lmact.models.remote import DEFAULT_REASONING_BUDGET
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore

SECRET = "AIzaSy-test-SECRET-0123456789"
MODEL = "google/gemini-2.5-flash"
GENERATE_PATH = "/v1beta/models/gemini-2.5-flash:generateContent"
CACHES_PATH = "/v1beta/cachedContents"
# Read before the fixture below replaces them: the live test alone uses a real key.
LIVE_KEY = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
LEGAL_LINE = "The legal actions in this state are: "
# Variables the SDK itself reads, which could send these tests elsewhere.
SDK_VARIABLES = (
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_VERTEX_BASE_URL",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_GENAI_USE_ENTERPRISE",
    "GOOGLE_GENAI_API_VERSION",
    "GOOGLE_GENAI_HTTP_CLIENT",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


@pytest.fixture(autouse=True)
def _offline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Neither a real key nor a real endpoint from the environment may reach these tests.
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)


def png(width: int = 4, height: int = 3, colour: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def generated(
    text: str = "a1",
    *,
    parts: list[dict[str, Any]] | None = None,
    finish: str = "STOP",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A generateContent answer, as the API writes it."""
    return {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": parts if parts is not None else [{"text": text}],
                },
                "finishReason": finish,
                "index": 0,
            }
        ],
        "usageMetadata": usage
        if usage is not None
        else {"promptTokenCount": 12, "candidatesTokenCount": 2, "totalTokenCount": 14},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mCx9aPzwEo2p1dkPmLmq0Ao",
    }


def cached_content(name: str = "cachedContents/abc", tokens: int = 5000) -> dict[str, Any]:
    """A cachedContents.create answer."""
    return {
        "name": name,
        "model": "models/gemini-2.5-flash",
        "createTime": "2026-01-01T00:00:00.000000Z",
        "updateTime": "2026-01-01T00:00:00.000000Z",
        "expireTime": "2026-01-01T01:00:00.000000Z",
        "usageMetadata": {"totalTokenCount": tokens},
    }


def error(code: int, status: str, text: str, details: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": text, "status": status}
    if details is not None:
        body["details"] = details
    return {"error": body}


def answer(reply: dict[str, Any]) -> Any:
    return lambda request: Reply(200, reply)


def model_at(url: str, name: str = MODEL, **options: Any) -> GoogleModel:
    model = resolve_model(name, ModelOptions(base_url=url, **options))
    assert isinstance(model, GoogleModel)
    return model


def field(mapping: dict[str, Any], camel: str) -> Any:
    """A JSON field by its camelCase name or its snake_case spelling: the API accepts both,
    and this SDK writes some nested fields (inline data, thinking) in snake_case."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    assert camel in mapping or snake in mapping, f"{camel} missing from {sorted(mapping)}"
    return mapping[camel] if camel in mapping else mapping[snake]


def parts_of(recorded: RecordedRequest) -> list[dict[str, Any]]:
    contents = recorded.json["contents"]
    assert len(contents) == 1 and contents[0]["role"] == "user"
    return contents[0]["parts"]


def described(parts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Parts as (kind, value): ("text", text) or (mime type, decoded bytes as latin-1)."""
    out = []
    for part in parts:
        if "text" in part:
            out.append(("text", part["text"]))
        else:
            inline = field(part, "inlineData")
            # This SDK writes bytes in URL-safe base64, which the API's JSON mapping accepts.
            data = base64.urlsafe_b64decode(inline["data"]).decode("latin-1")
            out.append((field(inline, "mimeType"), data))
    return out


def generate_requests(server: Any) -> list[RecordedRequest]:
    return [r for r in server.requests if r.path == GENERATE_PATH]


def cache_creations(server: Any) -> list[RecordedRequest]:
    return [r for r in server.requests if r.method == "POST" and r.path == CACHES_PATH]


# --- what the SDK sends ------------------------------------------------------------------


def test_request_wire_format() -> None:
    image_a, image_b = png(colour=(255, 0, 0)), png(5, 5, colour=(0, 0, 255))
    parts = (
        TextPart("Board:\n"),
        ImagePart(image_a),
        TextPart("then\n"),
        ImagePart(image_b),
        TextPart("Action:"),
    )
    request = ModelRequest(parts=parts, system="Be brief.", max_tokens=7, temperature=0.5, seed=11)
    with loopback(answer(generated())) as server:
        response, _ = call(model_at(server.url, reasoning_budget=256), request)
    assert response.text == "a1" and response.stop_reason == "stop"
    (sent,) = server.requests
    assert sent.method == "POST" and sent.path == GENERATE_PATH
    assert sent.headers["x-goog-api-key"] == SECRET
    assert described(parts_of(sent)) == [
        ("text", "Board:\n"),
        ("image/png", image_a.decode("latin-1")),
        ("text", "then\n"),
        ("image/png", image_b.decode("latin-1")),
        ("text", "Action:"),
    ]
    assert sent.json["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    config = sent.json["generationConfig"]
    # The thinking budget comes on top of the answer's own limit.
    assert config["maxOutputTokens"] == 7 + 256
    assert config["temperature"] == 0.5 and config["seed"] == 11
    assert field(field(config, "thinkingConfig"), "thinkingBudget") == 256
    assert "cachedContent" not in sent.json


def test_no_thinking_and_no_system_unless_given() -> None:
    with loopback(answer(generated())) as server:
        call(model_at(server.url), simple_request(max_tokens=5))
        call(model_at(server.url, name="google/gemini-2.0-flash"), simple_request(max_tokens=5))
    thinking, plain = server.requests
    assert "systemInstruction" not in thinking.json
    # A model that always thinks gets room for it; thinking itself stays at its default.
    config = thinking.json["generationConfig"]
    assert config["maxOutputTokens"] == 5 + DEFAULT_REASONING_BUDGET and config["seed"] == 0
    assert "thinkingConfig" not in config and "thinking_config" not in config
    assert plain.json["generationConfig"]["maxOutputTokens"] == 5
    sent = thinking
    assert described(parts_of(sent)) == [
        ("text", "Preamble.\n"),
        ("text", "Demonstrations.\n"),
        ("text", "Now: x1\n"),
    ]


def test_a_thinking_budget_is_part_of_the_call_cache_key() -> None:
    plain = GoogleModel(MODEL, ModelOptions())
    thinking = GoogleModel(MODEL, ModelOptions(reasoning_budget=512))
    request = simple_request()
    assert plain.identity() == {"model": MODEL}
    assert call_key(plain, request) != call_key(thinking, request)


# --- what it reads back ------------------------------------------------------------------


def test_text_skips_thoughts_and_usage_is_read() -> None:
    parts = [{"text": "Thinking about b2...", "thought": True}, {"text": "b"}, {"text": "2"}]
    usage = {
        "promptTokenCount": 1200,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": 2,
        "thoughtsTokenCount": 40,
        "totalTokenCount": 1242,
    }
    with loopback(answer(generated(parts=parts, usage=usage))) as server:
        model = model_at(server.url)
        response, _ = call(model, simple_request())
    assert response.text == "b2" and response.stop_reason == "stop"
    assert response.prompt_tokens == 1200  # cached tokens included, as the API counts them
    assert response.cached_tokens == 1000
    assert response.cache_write_tokens == 0
    assert response.reasoning_tokens == 40
    assert response.completion_tokens == 42  # thinking is billed as output
    # gemini-2.5-flash: $0.30 in, $0.03 cached, $2.50 out per million tokens.
    assert model.cost_usd(response) == pytest.approx((200 * 0.30 + 1000 * 0.03 + 42 * 2.50) / 1e6)


def test_missing_usage_counts_zero() -> None:
    reply = generated()
    del reply["usageMetadata"]
    with loopback(answer(reply)) as server:
        response, _ = call(model_at(server.url), simple_request())
    assert response.text == "a1"
    assert (response.prompt_tokens, response.completion_tokens, response.cached_tokens) == (0, 0, 0)


FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "BLOCKLIST": "content_filter",
    "SPII": "content_filter",
    "LANGUAGE": "language",
    "OTHER": "other",
}


def test_finish_reasons() -> None:
    # One server for every reason (each loopback costs a shutdown): the prompt names it.
    def finish_as_asked(request: RecordedRequest) -> Reply:
        return Reply(200, generated("c3", finish=parts_of(request)[0]["text"]))

    with loopback(finish_as_asked) as server:
        model = model_at(server.url)
        for finish, ours in FINISH_REASONS.items():
            response, _ = call(model, simple_request(parts=(TextPart(finish),)))
            assert (finish, response.stop_reason, response.text) == (finish, ours, "c3")


def test_a_candidate_without_content_reads_as_empty() -> None:
    reply = generated(finish="SAFETY")
    del reply["candidates"][0]["content"]
    with loopback(answer(reply)) as server:
        response, _ = call(model_at(server.url), simple_request())
    assert response.text == "" and response.stop_reason == "content_filter"


def test_a_blocked_prompt_is_an_empty_filtered_answer() -> None:
    reply = {
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": "gemini-2.5-flash",
    }
    with loopback(answer(reply)) as server:
        response, _ = call(model_at(server.url), simple_request())
    assert response.text == "" and response.stop_reason == "content_filter"
    assert response.prompt_tokens == 9 and len(server.requests) == 1


# --- the explicit context cache ------------------------------------------------------------

LONG_PREFIX = (TextPart("Demonstration step. " * 1000), ImagePart(png(8, 8)))  # ~5,000 tokens


def cached_request(tail: str = "Now: x1\n", prefix: tuple = LONG_PREFIX) -> ModelRequest:
    return ModelRequest(
        parts=(*prefix, TextPart(tail)),
        system="Play well.",
        stable_prefix_parts=len(prefix),
        max_tokens=4,
    )


class CachingServer:
    """Creates caches (named in order: abc, def, …) and answers generate calls; the usage
    counts the cached tokens when a request names a cache."""

    NAMES = ("cachedContents/abc", "cachedContents/def", "cachedContents/ghi")

    def __init__(self, tokens: int = 5000, create_delay_s: float = 0.0) -> None:
        self.tokens = tokens
        self.create_delay_s = create_delay_s
        self.created = 0
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.path == CACHES_PATH:
            with self._lock:
                name = self.NAMES[self.created]
                self.created += 1
            return Reply(200, cached_content(name, self.tokens), delay_s=self.create_delay_s)
        if request.method == "DELETE":
            return Reply(200, {})
        cached = self.tokens if "cachedContent" in request.json else 0
        usage = {
            "promptTokenCount": cached + 10,
            "cachedContentTokenCount": cached,
            "candidatesTokenCount": 1,
            "totalTokenCount": cached + 11,
        }
        return Reply(200, generated("a1", usage=usage))


def test_a_long_prefix_is_cached_once_and_later_requests_name_it() -> None:
    server_logic = CachingServer()
    with loopback(server_logic) as server:
        model = model_at(server.url)
        caller = ModelCaller(model, None, backoff_s=0.01)

        async def three_steps() -> list[ModelResponse]:
            return [await caller.call(cached_request(f"Now: x{i}\n")) for i in range(3)]

        responses = asyncio.run(three_steps())
        (creation,) = cache_creations(server)
        body = creation.json
        assert body["model"] == "models/gemini-2.5-flash" and body["ttl"] == "3600s"
        assert body["systemInstruction"]["parts"] == [{"text": "Play well."}]
        (content,) = body["contents"]
        assert described(content["parts"]) == [
            ("text", LONG_PREFIX[0].text),
            ("image/png", LONG_PREFIX[1].png.decode("latin-1")),
        ]
        sent = generate_requests(server)
        assert len(sent) == 3
        for i, recorded in enumerate(sent):
            assert recorded.json["cachedContent"] == "cachedContents/abc"
            assert described(parts_of(recorded)) == [("text", f"Now: x{i}\n")]
            assert "systemInstruction" not in recorded.json  # it lives in the cache
        # The first call wrote the cache; the later ones read it.
        assert [r.cache_write_tokens for r in responses] == [5000, 0, 0]
        assert [r.cached_tokens for r in responses] == [0, 5000, 5000]
        assert all(r.prompt_tokens == 5010 for r in responses)

        # Another prefix gets a cache of its own.
        other = (TextPart("Other demonstrations. " * 1000),)
        response, _ = call(model, cached_request(prefix=other))
        assert len(cache_creations(server)) == 2 and response.cache_write_tokens == 5000
        assert generate_requests(server)[-1].json["cachedContent"] == "cachedContents/def"

        # Closing the client deletes the caches it made.
        model.close()
    deleted = {r.path for r in server.requests if r.method == "DELETE"}
    assert deleted == {"/v1beta/cachedContents/abc", "/v1beta/cachedContents/def"}


def turns_of(contents: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    return [(content["role"], described(content["parts"])) for content in contents]


def test_a_conversation_is_contents_by_turn_cached_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    request = conversation_request(system="You choose.")
    user_1, answer_a = ("user", [("text", "in 1\n")]), ("model", [("text", "Action: a\n")])
    with loopback(CachingServer()) as server:
        call(model_at(server.url), request)  # too short a prefix to cache
        assert not cache_creations(server)
        assert turns_of(server.requests[0].json["contents"]) == [
            user_1,
            answer_a,
            ("user", [("text", "Right.\n"), ("text", "in 2\n")]),
        ]
        assert server.requests[0].json["systemInstruction"]["parts"] == [{"text": "You choose."}]
        monkeypatch.setattr(GoogleModel, "cache_min_tokens", 1)
        model = model_at(server.url)
        # The cache holds the first three turns, the request the rest.
        call(model, request)
        # Cut inside the conversation, the rest goes on with the answer's turn.
        call(model, replace(request, stable_prefix_parts=2))
        model.close()
    first, second = (creation.json["contents"] for creation in cache_creations(server))
    assert turns_of(first) == [user_1, answer_a, ("user", [("text", "Right.\n")])]
    assert turns_of(second) == [user_1]
    sent = generate_requests(server)[1:]
    assert [r.json["cachedContent"] for r in sent] == ["cachedContents/abc", "cachedContents/def"]
    assert turns_of(sent[0].json["contents"]) == [("user", [("text", "in 2\n")])]
    assert turns_of(sent[1].json["contents"]) == [
        answer_a,
        ("user", [("text", "Right.\n"), ("text", "in 2\n")]),
    ]


def test_concurrent_requests_create_one_cache() -> None:
    with loopback(CachingServer(create_delay_s=0.2)) as server:
        model = model_at(server.url)
        caller = ModelCaller(model, None, max_connections=8, backoff_s=0.01)

        async def eight_episodes() -> list[ModelResponse]:
            calls = [caller.call(cached_request(f"Episode {i}\n")) for i in range(8)]
            return await asyncio.gather(*calls)

        responses = asyncio.run(eight_episodes())
        model.close()
    assert len(cache_creations(server)) == 1
    sent = generate_requests(server)
    assert len(sent) == 8
    assert {r.json["cachedContent"] for r in sent} == {"cachedContents/abc"}
    assert sorted(r.cache_write_tokens for r in responses) == [0] * 7 + [5000]


def test_a_short_prefix_is_sent_whole() -> None:
    with loopback(CachingServer()) as server:
        prefix = (TextPart("Short demonstrations.\n"),)
        response, _ = call(model_at(server.url), cached_request(prefix=prefix))
    assert response.text == "a1" and not cache_creations(server)
    (sent,) = server.requests
    assert "cachedContent" not in sent.json
    assert described(parts_of(sent)) == [
        ("text", "Short demonstrations.\n"),
        ("text", "Now: x1\n"),
    ]
    assert sent.json["systemInstruction"]["parts"] == [{"text": "Play well."}]


def test_a_refused_cache_falls_back_to_whole_prompts_once_and_for_all() -> None:
    def handle(request: RecordedRequest) -> Reply:
        if request.path == CACHES_PATH:
            text = "Cached content is too small. total_token_count=4000, min=4096"
            return Reply(400, error(400, "INVALID_ARGUMENT", text))
        return Reply(200, generated())

    with loopback(handle) as server:
        model = model_at(server.url)
        for tail in ("Now: x1\n", "Now: x2\n"):
            response, _ = call(model, cached_request(tail))
            assert response.text == "a1" and response.cache_write_tokens == 0
    assert len(cache_creations(server)) == 1  # not tried again for the same prefix
    sent = generate_requests(server)
    assert len(sent) == 2
    for recorded, tail in zip(sent, ("Now: x1\n", "Now: x2\n"), strict=True):
        assert "cachedContent" not in recorded.json
        assert [text for kind, text in described(parts_of(recorded)) if kind == "text"] == [
            LONG_PREFIX[0].text,
            tail,
        ]
        assert recorded.json["systemInstruction"]["parts"] == [{"text": "Play well."}]


def test_a_transient_failure_to_create_the_cache_is_retried() -> None:
    logic = CachingServer()
    handler = faults_then(
        Reply(503, error(503, "UNAVAILABLE", "The model is overloaded.")), then=logic
    )
    with loopback(handler) as server:
        response, caller = call(model_at(server.url), cached_request())
    assert response.cache_write_tokens == 5000 and caller.totals.retries == 1
    assert len(cache_creations(server)) == 2  # the refused one, then the created one
    assert generate_requests(server)[0].json["cachedContent"] == "cachedContents/abc"


def test_an_expired_cache_is_made_again() -> None:
    logic = CachingServer()
    gone = error(403, "PERMISSION_DENIED", "CachedContent not found (or permission denied)")
    refused_once: list[bool] = []

    def handle(request: RecordedRequest) -> Reply:
        if request.path == GENERATE_PATH and not refused_once:
            refused_once.append(True)
            return Reply(403, gone)
        return logic(request)

    with loopback(handle) as server:
        response, caller = call(model_at(server.url), cached_request())
    assert response.text == "a1" and caller.totals.retries == 1
    assert len(cache_creations(server)) == 2
    names = [r.json["cachedContent"] for r in generate_requests(server)]
    assert names == ["cachedContents/abc", "cachedContents/def"]


# --- faults, through the caller ------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Reply(500, error(500, "INTERNAL", "An internal error has occurred.")),
        Reply(503, error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")),
        Reply(429, error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.")),
        Reply(drop=True),
        Reply(200, b'{"candidates": [{"content": '),
        Reply(503, b"<html>Service Unavailable</html>"),
    ],
    ids=["500", "503", "429", "dropped", "malformed-json", "html-503"],
)
def test_transient_faults_succeed_on_a_later_attempt(fault: Reply) -> None:
    with loopback(faults_then(fault, then=answer(generated("b2")))) as server:
        response, caller = call(model_at(server.url), simple_request())
    assert response.text == "b2" and caller.totals.retries == 1
    assert len(server.requests) == 2


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_a_dropped_connection_or_a_slow_answer_is_retried_over_either_transport(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK sends its async calls with aiohttp whenever that is installed (many packages
    install it), else with httpx: either library's faults are transient ones."""
    from google.genai import _api_client

    if transport == "httpx":
        monkeypatch.setattr(_api_client, "has_aiohttp", False)
    else:
        assert _api_client.has_aiohttp  # the dev extra installs it (inspect-ai needs it)
    slow = Reply(200, generated("late"), delay_s=1.5)
    for fault, timeout_s in ((Reply(drop=True), 10.0), (slow, 0.3)):
        with loopback(faults_then(fault, then=answer(generated("b2")))) as server:
            response, caller = call(model_at(server.url, timeout_s=timeout_s), simple_request())
        assert response.text == "b2" and caller.totals.retries == 1
        assert len(server.requests) == 2


def test_the_sdk_itself_does_not_retry() -> None:
    busy = Reply(503, error(503, "UNAVAILABLE", "overloaded"))
    handler = faults_then(busy, then=answer(generated()))
    with loopback(handler) as server, pytest.raises(ModelCallError, match="after 1 attempts"):
        call(model_at(server.url), simple_request(), max_retries=0)
    assert len(server.requests) == 1


class Timed:
    """A handler that notes when each request arrives, to measure the caller's waits."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.arrivals: list[float] = []

    def __call__(self, request: RecordedRequest) -> Reply:
        self.arrivals.append(time.monotonic())
        return self.handler(request)

    @property
    def gap(self) -> float:
        return self.arrivals[1] - self.arrivals[0]


def test_rate_limit_waits_as_long_as_retry_after_asks() -> None:
    limited = Reply(
        429, error(429, "RESOURCE_EXHAUSTED", "slow down"), headers={"Retry-After": "1"}
    )
    timed = Timed(faults_then(limited, then=answer(generated())))
    with loopback(timed) as server:
        response, caller = call(model_at(server.url), simple_request())
    assert response.text == "a1" and len(server.requests) == 2 and caller.totals.retries == 1
    assert timed.gap >= 1.0


def test_rate_limit_waits_as_long_as_the_retry_info_asks() -> None:
    # Gemini names its wait in the error body (google.rpc.RetryInfo), not in a header.
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generate_content_free_tier_requests"}],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.6s"},
    ]
    limited = Reply(429, error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", details))
    timed = Timed(faults_then(limited, then=answer(generated())))
    with loopback(timed) as server:
        response, _ = call(model_at(server.url), simple_request())
    assert response.text == "a1" and timed.gap >= 0.6


def test_a_slow_answer_times_out_and_is_retried() -> None:
    slow = Reply(200, generated("late"), delay_s=1.5)
    with loopback(faults_then(slow, then=answer(generated("b2")))) as server:
        started = time.monotonic()
        response, caller = call(model_at(server.url, timeout_s=0.3), simple_request())
        elapsed = time.monotonic() - started
    assert response.text == "b2" and caller.totals.retries == 1
    assert len(server.requests) == 2 and elapsed < 1.5


@pytest.mark.parametrize(
    ("status", "kind", "error_type"),
    [
        (400, "INVALID_ARGUMENT", ModelCallError),
        (401, "UNAUTHENTICATED", ModelAuthError),
        (403, "PERMISSION_DENIED", ModelAuthError),
        (404, "NOT_FOUND", ModelCallError),
    ],
)
def test_fatal_statuses_stop_after_one_request(
    status: int, kind: str, error_type: type[Exception]
) -> None:
    def echo_key(request: RecordedRequest) -> Reply:
        text = f"API key not valid: {request.headers.get('x-goog-api-key')}"
        return Reply(status, error(status, kind, text))

    with loopback(echo_key) as server, pytest.raises(error_type) as raised:
        call(model_at(server.url), simple_request())
    assert len(server.requests) == 1
    message = str(raised.value)
    assert f"HTTP {status}" in message and kind in message
    assert SECRET not in message and "[redacted]" in message
    assert "\n" not in message
    if status in (401, 403):
        assert "GEMINI_API_KEY" in message


def test_exhausted_retries_give_a_model_call_error_without_the_key() -> None:
    def busy(request: RecordedRequest) -> Reply:
        text = f"overloaded for {request.headers.get('x-goog-api-key')}"
        return Reply(503, error(503, "UNAVAILABLE", text))

    gave_up = pytest.raises(ModelCallError, match="gave up after 3 attempts")
    with loopback(busy) as server, gave_up as raised:
        call(model_at(server.url), simple_request(), max_retries=2)
    assert len(server.requests) == 3
    assert SECRET not in str(raised.value) and "HTTP 503" in str(raised.value)


def test_a_missing_key_is_a_one_line_error_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    with loopback(answer(generated())) as server:
        model = model_at(server.url)
        with pytest.raises(LmactError) as raised:
            model.check_ready()
        assert str(raised.value) == (
            f"model {MODEL} needs an API key: set GEMINI_API_KEY or GOOGLE_API_KEY"
        )
        with pytest.raises(LmactError):
            call(model, simple_request())
    assert not server.requests


def test_google_api_key_is_the_second_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", "AIzaSy-second-choice")
    with loopback(answer(generated())) as server:
        call(model_at(server.url), simple_request())
    assert server.requests[0].headers["x-goog-api-key"] == "AIzaSy-second-choice"


def test_the_base_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with loopback(answer(generated("c3"))) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
        model = resolve_model(MODEL, ModelOptions())
        assert isinstance(model, GoogleModel)
        response, _ = call(model, simple_request())
    assert response.text == "c3" and server.requests[0].path == GENERATE_PATH


def test_one_client_serves_successive_event_loops() -> None:
    # The runner starts a new event loop per run; the client and its locks must follow.
    with loopback(CachingServer()) as server:
        model = model_at(server.url)
        for tail in ("Now: x1\n", "Now: x2\n"):
            response, _ = call(model, cached_request(tail), max_retries=0)
            assert response.text == "a1"
    assert len(cache_creations(server)) == 1 and len(generate_requests(server)) == 2


# --- a whole run ---------------------------------------------------------------------------


class TicTacToeServer:
    """Answers each generate request with the first legal action of its prompt, after a few
    faults; creates caches when asked; counts the answers it gave."""

    def __init__(self, *faults: Reply) -> None:
        self.answers = 0
        self.caches = CachingServer(tokens=700)
        self._lock = threading.Lock()
        self.handler = faults_then(*faults, then=self.play)

    def play(self, request: RecordedRequest) -> Reply:
        if request.path != GENERATE_PATH:
            return self.caches(request)
        texts = [part["text"] for part in parts_of(request) if "text" in part]
        lines = [line for line in "".join(texts).splitlines() if line.startswith(LEGAL_LINE)]
        action = lines[-1].removeprefix(LEGAL_LINE).split(", ")[0]
        with self._lock:
            self.answers += 1
        cached = 700 if "cachedContent" in request.json else 0
        usage = {
            "promptTokenCount": cached + 30,
            "cachedContentTokenCount": cached,
            "candidatesTokenCount": 2,
            "totalTokenCount": cached + 32,
        }
        return Reply(200, generated(action, usage=usage))


@pytest.mark.parametrize("observation", ["txt", "png"])
def test_runner_plays_tic_tac_toe_through_faults(
    observation: str, run_store: RunStore, demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cache every prefix here, so that the run also goes through the context cache.
    monkeypatch.setattr(GoogleModel, "cache_min_tokens", 1)
    faults = (
        Reply(503, error(503, "UNAVAILABLE", "The model is overloaded.")),
        Reply(drop=True),
        Reply(429, error(429, "RESOURCE_EXHAUSTED", "slow down"), headers={"Retry-After": "0.1"}),
        Reply(200, b"not json"),
    )
    game = TicTacToeServer(*faults)
    with loopback(game.handler) as server:
        options = ModelOptions(base_url=server.url, timeout_s=10)
        runner = Runner(
            run_store, demo_store, options, max_connections=4, progress=False, retry_backoff_s=0.01
        )
        try:
            config = make_config(
                "tic_tac_toe",
                model=MODEL,
                demos=2,
                demo_draw="shared",  # one prefix for every episode: what is cached
                show_legal_actions=True,
                observation=observation,
            )
            result = runner.run(config, episodes=4)
        finally:
            runner.close()
    assert [e.episode for e in result.episodes] == [0, 1, 2, 3]
    steps = run_store.steps(config.run_id)
    assert steps and all(step.kind == "valid" for step in steps)
    # No lost steps: every answer the server gave is one recorded step.
    assert len(steps) == sum(e.steps for e in result.episodes)
    assert result.calls_made == game.answers
    assert len(steps) == result.calls_made + result.calls_cached
    assert result.retries == len(faults)  # whether a fault hit a generate call or the cache
    # One cache for the run's one stable prefix, written once and read by every other call.
    assert game.caches.created == 1
    fresh = [s for s in steps if not s.from_cache]
    assert sum(s.usage.cache_write_tokens for s in fresh) == 700
    assert sum(s.usage.cached_tokens for s in fresh) == 700 * (len(fresh) - 1)
    sent = generate_requests(server)
    assert all(r.json.get("cachedContent") == "cachedContents/abc" for r in sent)
    has_images = any("text" not in part for r in sent for part in parts_of(r))
    assert has_images == (observation == "png")
    deleted = [r.path for r in server.requests if r.method == "DELETE"]
    assert deleted == ["/v1beta/cachedContents/abc"]


# --- live ----------------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.skipif(not LIVE_KEY, reason="needs a paid Gemini key (GEMINI_API_KEY)")
def test_live_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", LIVE_KEY or "")
    model = resolve_model("google/gemini-2.5-flash-lite", ModelOptions(timeout_s=60))
    request = ModelRequest(
        parts=(TextPart("Reply with the single word: ready"),), max_tokens=8, system="Be terse."
    )
    try:
        response, _ = call(model, request, max_retries=2)
    finally:
        model.close()
    assert "ready" in response.text.lower()
    assert response.prompt_tokens > 0 and response.completion_tokens > 0
    assert response.stop_reason in ("stop", "length")


def test_a_constrained_request_asks_for_gemini_s_enum_answer() -> None:
    request = simple_request(choices=("blue", "green"), max_tokens=7)
    with loopback(answer(generated("green"))) as server:
        response, _ = call(model_at(server.url), request)
    assert response.text == "green"
    config = server.requests[0].json["generationConfig"]
    assert field(config, "responseMimeType") == "text/x.enum"
    schema = field(config, "responseSchema")
    assert schema["enum"] == ["blue", "green"] and schema["type"].upper() == "STRING"
    # Unconstrained, the same prompt asks for free text (and is another cache key).
    with loopback(answer(generated("a1"))) as server:
        call(model_at(server.url), simple_request(max_tokens=7))
    config = server.requests[0].json["generationConfig"]
    assert "responseMimeType" not in config and "response_mime_type" not in config
