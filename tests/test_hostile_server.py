"""The real SDKs against loopback servers that misbehave: keys with a trailing line break,
servers that echo the key, base URLs with credentials, impossible numbers, huge answers,
unparsable or endless Retry-After, and answers that are never readable. Nothing may be
lost, nothing leaked, and nothing may end in a traceback."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import simple_request
from loopback import (
    LoopbackServer,
    RecordedRequest,
    Reply,
    chat_completion,
    faults_then,
    loopback,
)

from lmact.errors import LmactError
from lmact.models.base import (
    UNREADABLE,
    ModelCallError,
    ModelClient,
    ModelOptions,
    ModelResponse,
)
from lmact.models.caller import ModelCaller, call_key
from lmact.models.registry import resolve_model
from lmact.models.remote import RemoteModel
from lmact.store import RunStore

KEY = "sk-test-0123-SECRET-abcdef"
PASSWORD = "hunter2-SECRET-pw"
VARIABLES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_COMPATIBLE_API_KEY",
    "OPENAI_COMPATIBLE_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "GOOGLE_GENAI_USE_VERTEXAI",
)


@pytest.fixture(autouse=True)
def _offline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never a real key or endpoint from the developer's shell.
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.setenv(variable, KEY)


# --- the three wire formats ----------------------------------------------------------------


def openai_answer(text: Any = "a1", prompt: Any = 10, completion: Any = 1) -> dict[str, Any]:
    return chat_completion(text, prompt, completion)


def anthropic_answer(
    text: Any = "a1", prompt: Any = 10, completion: Any = 1, stop: Any = "end_turn"
) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }


def google_answer(text: Any = "a1", prompt: Any = 10, completion: Any = 1) -> dict[str, Any]:
    return {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": completion},
    }


# name, path of the base URL on the loopback server, answer builder
PROVIDERS: dict[str, tuple[str, str, Callable[..., dict[str, Any]]]] = {
    "openai": ("openai/gpt-4o", "/v1", openai_answer),
    "openai-compatible": ("openai-compatible/m", "/v1", openai_answer),
    "anthropic": ("anthropic/claude-haiku-4-5", "", anthropic_answer),
    "google": ("google/gemini-2.5-flash", "", google_answer),
}


def model_at(server: LoopbackServer, provider: str, **options: Any) -> ModelClient:
    name, path, _ = PROVIDERS[provider]
    return resolve_model(name, ModelOptions(base_url=server.url + path, **options))


def fast_caller(client: ModelClient, cache: Any = None, **options: Any) -> ModelCaller:
    options = {"backoff_s": 0.01, "max_retries": 2, "max_wait_s": 0.3, **options}
    return ModelCaller(client, cache, **options)


def call(caller: ModelCaller) -> ModelResponse:
    # Bounded: a wait that is not capped must fail the test, not hang it.
    return asyncio.run(asyncio.wait_for(caller.call(simple_request()), timeout=20))


def ok(provider: str) -> Callable[[RecordedRequest], Reply]:
    answer = PROVIDERS[provider][2]
    return lambda request: Reply(body=answer())


def cached_rows(store_path: Path) -> list[str]:
    with sqlite3.connect(store_path) as db:
        return [row[0] for row in db.execute("SELECT response FROM model_calls")]


# --- 1. keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "variable"),
    [("openai-compatible", "OPENAI_COMPATIBLE_API_KEY"), ("openai", "OPENAI_API_KEY")],
)
def test_a_key_with_a_trailing_line_break_is_stripped_and_works(
    provider: str, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: "connection failed (LocalProtocolError: Illegal header value
    # b'Bearer sk-test-123\r\n')", the key in the message.
    monkeypatch.setenv(variable, "sk-test-123\r\n")
    with loopback(ok(provider)) as server:
        response = call(fast_caller(model_at(server, provider)))
    assert response.text == "a1"
    assert server.requests[0].headers["authorization"] == "Bearer sk-test-123"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("sk-test\r\n-123", "a line break at character 8"),
        ("sk-test 123", "a space at character 8"),
        ("sk-test\x07123", "a control character at character 8"),
        ("sk-tést-123", "a non-ASCII character at character 5"),
    ],
)
@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic", "google"])
def test_a_key_that_cannot_be_sent_is_refused_before_any_request(
    provider: str, key: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = {
        "openai-compatible": "OPENAI_COMPATIBLE_API_KEY",
        "anthropic": "ANTHROPIC_API_KEY",
        "google": "GEMINI_API_KEY",
    }[provider]
    monkeypatch.setenv(variable, key)
    with loopback(ok(provider)) as server:
        client = model_at(server, provider)
        with pytest.raises(LmactError) as raised:
            client.check_ready()
        with pytest.raises(LmactError) as from_call:
            call(fast_caller(client))
    assert not server.requests
    for message in (str(raised.value), str(from_call.value)):
        assert message == f"{variable} holds {problem}; an API key is printable ASCII"
        assert "sk-" not in message and "123" not in message


def echoed_forms(request: RecordedRequest) -> str:
    """Whatever credentials the request carried, in every form a careless server or proxy
    has been seen to echo them."""
    header = request.headers.get("authorization") or request.headers.get("x-api-key") or ""
    header = header or request.headers.get("x-goog-api-key", "")
    raw = header.encode()
    return " ".join(
        [
            header,
            repr(raw),
            json.dumps(header),
            quote(header, safe=""),
            base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(b"user:" + raw).decode(),
        ]
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_an_error_that_echoes_the_key_in_any_form_keeps_it_secret(provider: str) -> None:
    def echo(request: RecordedRequest) -> Reply:
        text = f"bad request from {echoed_forms(request)}"
        body = {"error": {"message": text, "type": "invalid_request_error", "code": 400}}
        return Reply(400, body)

    with loopback(echo) as server, pytest.raises(ModelCallError) as raised:
        call(fast_caller(model_at(server, provider)))
    message = str(raised.value)
    assert "HTTP 400" in message and "[redacted]" in message
    assert KEY not in message and KEY[8:20] not in message
    assert base64.b64encode(KEY.encode()).decode()[:16] not in message


# --- 2. a server that echoes the key in an answer ------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic", "google"])
def test_an_answer_that_echoes_the_key_is_cached_without_it(provider: str, tmp_path: Path) -> None:
    answer = PROVIDERS[provider][2]

    def echo(request: RecordedRequest) -> Reply:
        return Reply(body=answer(f"a1 (you sent {echoed_forms(request)})"))

    store_path = tmp_path / "runs.sqlite"
    with loopback(echo) as server, RunStore(store_path) as store:
        caller = fast_caller(model_at(server, provider), store)
        response = call(caller)
        again = call(fast_caller(model_at(server, provider), store))
    assert response.text.startswith("a1 (you sent ") and "[redacted]" in response.text
    assert again.from_cache and again.text == response.text
    (row,) = cached_rows(store_path)
    for stored in (row, response.text):
        assert KEY not in stored and KEY[8:20] not in stored
        assert base64.b64encode(KEY.encode()).decode()[:16] not in stored


# --- 3. base URLs with credentials -----------------------------------------------------------


def credentialed(server: LoopbackServer, path: str = "/v1") -> str:
    return server.url.replace("http://", f"http://user:{PASSWORD}@") + path


def test_a_wrong_path_with_credentials_in_the_url_shows_neither() -> None:
    def not_found(request: RecordedRequest) -> Reply:
        return Reply(404, {"detail": f"Not Found ({echoed_forms(request)})"})

    with loopback(not_found) as server:
        url = credentialed(server, "")
        client = resolve_model("openai-compatible/m", ModelOptions(base_url=url))
        with pytest.raises(ModelCallError) as raised:
            call(fast_caller(client))
    message = str(raised.value)
    assert "HTTP 404" in message and "[redacted]@127.0.0.1" in message
    assert PASSWORD not in message and PASSWORD[:8] not in message
    assert base64.b64encode(f"user:{PASSWORD}".encode()).decode()[4:16] not in message


def test_the_cache_key_of_a_server_leaves_out_its_credentials() -> None:
    with_credentials = resolve_model(
        "openai-compatible/m", ModelOptions(base_url=f"http://user:{PASSWORD}@h:8000/v1")
    )
    without = resolve_model("openai-compatible/m", ModelOptions(base_url="http://h:8000/v1"))
    assert with_credentials.identity() == without.identity()
    assert with_credentials.identity()["base_url"] == "http://h:8000/v1"
    request = simple_request()
    assert call_key(with_credentials, request) == call_key(without, request)
    assert PASSWORD not in json.dumps(with_credentials.identity())


BAD_URLS = {
    "no scheme": ("localhost:8000/v1", "needs the scheme http:// or https://"),
    "another scheme": (f"ftp://user:{PASSWORD}@h/v1", "needs the scheme http:// or https://"),
    "no host": (f"http://user:{PASSWORD}@/v1", "names no host"),
    "a space": (f"http://user:{PASSWORD}@h /v1", "holds whitespace or a control character"),
    "a line break": ("http://h:8000/v1\r\n", "holds whitespace or a control character"),
    "a bad port": (f"http://user:{PASSWORD}@h:80a/v1", "is not a URL (a bad port or host)"),
}


@pytest.mark.parametrize(("url", "problem"), BAD_URLS.values(), ids=BAD_URLS.keys())
@pytest.mark.parametrize(
    ("model", "variable"),
    [
        ("openai-compatible/m", "OPENAI_COMPATIBLE_BASE_URL"),
        ("openai/gpt-4o", "OPENAI_BASE_URL"),
        ("anthropic/claude-haiku-4-5", "ANTHROPIC_BASE_URL"),
        ("google/gemini-2.5-flash", "GOOGLE_GEMINI_BASE_URL"),
    ],
)
def test_a_bad_base_url_is_a_one_line_error_without_its_credentials(
    model: str, variable: str, url: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(LmactError) as given:
        resolve_model(model, ModelOptions(base_url=url))
    monkeypatch.setenv(variable, url)
    with pytest.raises(LmactError) as from_environment:
        resolve_model(model, ModelOptions())
    for raised, source in ((given, "--base-url"), (from_environment, variable)):
        message = str(raised.value)
        assert message.startswith(f"{source}: the base URL ") and message.endswith(problem)
        assert "\n" not in message and PASSWORD not in message
        if PASSWORD in url:
            assert "[redacted]@" in message


# --- 4. numbers and texts no real answer has ---------------------------------------------------

HOSTILE = {
    "10**30 prompt tokens": {"prompt": 10**30},
    "negative usage": {"prompt": -5, "completion": -1},
    "a 5 MB text": {"text": "x" * 5_000_000},
    "a count as a string": {"prompt": "abc"},
    "a count as a fraction": {"completion": 1.5},
    "an infinite count": {"prompt": 1e400},
    "a text that is a number": {"text": 123},
}


@pytest.mark.parametrize("fault", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic", "google"])
def test_an_impossible_answer_is_unreadable_and_tried_again(
    provider: str, fault: dict[str, Any], tmp_path: Path
) -> None:
    answer = PROVIDERS[provider][2]
    body = json.dumps(answer(**fault)).encode()  # 1e400 is written as Infinity, as sent
    store_path = tmp_path / "runs.sqlite"
    with (
        loopback(faults_then(Reply(body=body), then=ok(provider))) as server,
        RunStore(store_path) as store,
    ):
        caller = fast_caller(model_at(server, provider), store)
        response = call(caller)
    assert (response.text, response.prompt_tokens) == ("a1", 10)
    assert (
        len(server.requests) == 2 and caller.totals.retries == 1 and caller.totals.unreadable == 0
    )
    (row,) = cached_rows(store_path)
    assert ModelResponse.from_json(row) == response


@pytest.mark.parametrize(
    "fault",
    [
        {"stop": ["end_turn"]},  # a stop reason that is not a string
        {"stop": "x" * 100_000},  # not a reason anyone knows: "other"
    ],
)
def test_anthropic_answers_of_the_wrong_shape_never_raise_a_type_error(
    fault: dict[str, Any],
) -> None:
    with loopback(lambda request: Reply(body=anthropic_answer(**fault))) as server:
        caller = fast_caller(model_at(server, "anthropic"), max_retries=0)
        response = call(caller)
    assert response.stop_reason in ("other", UNREADABLE)


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        '{"text": 5}',
        json.dumps({"text": "a1", "prompt_tokens": 10**30}),
        json.dumps({"text": "a1", "stop_reason": "sk-whatever"}),
        "[" * 50_000,
    ],
)
def test_a_cache_entry_edited_to_garbage_is_fetched_again_and_replaced(
    garbage: str, tmp_path: Path
) -> None:
    store_path = tmp_path / "runs.sqlite"
    with loopback(ok("openai-compatible")) as server, RunStore(store_path) as store:
        client = model_at(server, "openai-compatible")
        first = call(fast_caller(client, store))
        with sqlite3.connect(store_path) as db:
            db.execute("UPDATE model_calls SET response = ?", (garbage,))
        caller = fast_caller(client, store)
        second = call(caller)
        third = call(fast_caller(client, store))
    assert first.text == second.text == third.text == "a1"
    assert not second.from_cache and third.from_cache
    assert caller.cache_entries_replaced == 1 and caller.totals.calls_made == 1
    assert len(server.requests) == 2  # the garbage was fetched again, once
    (row,) = cached_rows(store_path)
    assert ModelResponse.from_json(row) == second == third  # the new answer replaced it


class RacingCache:
    """A call cache that another process wrote to first: `put_call` keeps what it holds."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.replaced: list[str] = []

    def get_call(self, key: str) -> str | None:
        return None  # the other process's answer came after this one's lookup

    def put_call(self, key: str, model: str, response_json: str) -> str:
        return self.first

    def replace_call(self, key: str, model: str, response_json: str) -> None:
        self.replaced.append(response_json)


def test_the_answer_stored_first_is_the_one_both_go_on_with() -> None:
    theirs = ModelResponse("b2", "stop", 99, 9, latency_s=100.0)
    with loopback(ok("openai-compatible")) as server:
        client = model_at(server, "openai-compatible")
        cache = RacingCache(theirs.to_json())
        answer = call(fast_caller(client, cache))
        # Their words, this call's usage (what it cost).
        assert (answer.text, answer.stop_reason) == ("b2", "stop") and not answer.from_cache
        assert (answer.prompt_tokens, answer.completion_tokens) == (10, 1)
        assert answer.latency_s != theirs.latency_s
        assert cache.replaced == []
        damaged = RacingCache("garbage")  # theirs does not load: ours replaces it
        caller = fast_caller(client, damaged)
        ours = call(caller)
    assert ours.text == "a1" and caller.cache_entries_replaced == 1
    assert [ModelResponse.from_json(row) for row in damaged.replaced] == [ours]


# --- 6 and 7. Retry-After: parsed when it can be, capped, and announced ----------------------


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


RATE_LIMITS = {
    "a date years ahead": ({"Retry-After": http_date(10 * 365 * 86400)}, True),
    "1e12 seconds": ({"Retry-After": "1e12"}, True),
    "retry-after-ms 1e15": ({"retry-after-ms": "1e15"}, True),
    "inf": ({"Retry-After": "inf"}, False),
    "nan": ({"Retry-After": "nan"}, False),
    "1e400": ({"Retry-After": "1e400"}, False),
    "soon": ({"Retry-After": "soon"}, False),
    "a garbage date": ({"Retry-After": "Mon, 99 Foo 2025 25:61:00 GMT"}, False),
}
MAX_WAIT_S = 0.3


@pytest.mark.parametrize(("headers", "parsed"), RATE_LIMITS.values(), ids=RATE_LIMITS.keys())
def test_a_rate_limit_waits_no_longer_than_max_wait(headers: dict[str, str], parsed: bool) -> None:
    limited = Reply(429, {"error": {"message": "slow down", "type": "requests"}}, headers=headers)
    arrivals: list[float] = []  # time.time() of each request
    pauses: list[tuple[float, str]] = []
    handler = faults_then(limited, then=ok("openai"))

    def timed(request: RecordedRequest) -> Reply:
        arrivals.append(time.time())
        return handler(request)

    with loopback(timed) as server:
        caller = fast_caller(
            model_at(server, "openai"),
            max_wait_s=MAX_WAIT_S,
            on_pause=lambda until, reason: pauses.append((until, reason)),
        )
        response = call(caller)
    assert response.text == "a1" and caller.totals.retries == 1
    assert arrivals[1] - arrivals[0] < MAX_WAIT_S + 1.5  # uncapped: years
    if parsed:  # the server's wait, cut to max_wait_s, paused the caller and was announced
        (until, reason), *_ = pauses
        assert reason == "rate limit (HTTP 429)"
        assert arrivals[0] < until < arrivals[0] + MAX_WAIT_S + 0.3  # uncapped: years
        assert arrivals[1] - arrivals[0] >= MAX_WAIT_S - 0.05
    else:  # no wait named: a (capped) backoff, no pause
        assert pauses == []
    assert caller.paused_until_wall() is None  # the pause is over


def test_the_backoff_is_capped_too() -> None:
    busy = Reply(503, {"error": {"message": "busy"}})
    with loopback(faults_then(busy, busy, then=ok("openai"))) as server:
        # A backoff of 100 s scale would wait tens of seconds; max_wait_s cuts each to 0.1 s.
        caller = fast_caller(model_at(server, "openai"), backoff_s=100.0, max_wait_s=0.1)
        started = time.monotonic()
        assert call(caller).text == "a1"
    assert time.monotonic() - started < 5 and caller.totals.retries == 2


def test_a_pause_is_visible_while_it_lasts() -> None:
    limited = Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "0.5"})
    seen: list[float | None] = []
    pauses: list[tuple[float, str]] = []
    with loopback(faults_then(limited, then=ok("openai"))) as server:
        caller = fast_caller(
            model_at(server, "openai"),
            max_wait_s=5.0,
            on_pause=lambda until, reason: pauses.append((until, reason)),
        )
        assert caller.paused_until_wall() is None

        async def watch() -> None:
            task = asyncio.create_task(caller.call(simple_request()))
            while not pauses and not task.done():  # until the 429 has come back
                await asyncio.sleep(0.01)
            seen.append(caller.paused_until_wall())
            await task

        asyncio.run(watch())
    (until, reason), *_ = pauses
    assert reason == "rate limit (HTTP 429)"
    assert seen[0] is not None and abs(seen[0] - until) < 0.05
    assert caller.paused_until_wall() is None


# --- 8. an answer never readable ---------------------------------------------------------------

NEVER_READABLE = {
    "not JSON": Reply(body=b"<html>502 Bad Gateway</html>"),
    "no choices": Reply(body={"id": "x", "choices": []}),
    "impossible usage": Reply(body=openai_answer(prompt=10**30)),
}


@pytest.mark.parametrize("reply", NEVER_READABLE.values(), ids=NEVER_READABLE.keys())
def test_an_answer_never_readable_is_an_empty_uncached_answer(reply: Reply, tmp_path: Path) -> None:
    store_path = tmp_path / "runs.sqlite"
    with loopback(lambda request: reply) as server, RunStore(store_path) as store:
        caller = fast_caller(model_at(server, "openai-compatible"), store, max_retries=2)
        response = call(caller)
    assert response == ModelResponse(text="", stop_reason=UNREADABLE)
    assert len(server.requests) == 3 and caller.totals.retries == 2
    assert caller.totals.unreadable == 1 and caller.totals.calls_made == 0
    assert cached_rows(store_path) == []


@pytest.mark.parametrize(
    "reply",
    [Reply(drop=True), Reply(body=openai_answer(), delay_s=1.0)],
    ids=["dropped connection", "timeout"],
)
def test_a_server_that_never_answers_is_still_a_call_error(reply: Reply) -> None:
    with loopback(lambda request: reply) as server:
        client = model_at(server, "openai-compatible", timeout_s=0.2)
        caller = fast_caller(client, max_retries=1)
        with pytest.raises(ModelCallError, match="gave up after 2 attempts"):
            call(caller)
    assert caller.totals.unreadable == 0


def test_a_remote_model_redacts_what_it_returns() -> None:
    client = resolve_model("openai/gpt-4o", ModelOptions())
    assert isinstance(client, RemoteModel)
    # A short placeholder key is no secret worth garbling answers for; errors still lose it.
    assert client.redact_answer(f"a1 {KEY}") == "a1 [redacted]"
