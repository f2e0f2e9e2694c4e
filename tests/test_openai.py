"""`openai/<model>` through the real `openai` SDK against a loopback server that answers in
the Chat Completions wire format: what is sent, what is read, faults, token counts, runs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import call, conversation_request, episode_requests, simple_request
from loopback import LoopbackServer, RecordedRequest, Reply, faults_then, loopback
from PIL import Image

from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models import openai as openai_provider
from lmact.models.base import (
    ImagePart,
    ModelCallError,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    TextPart,
)
from lmact.models.openai import OpenAIModel, offline_encoding
from lmact.models.registry import resolve_model
from lmact.prompting import PromptSettings
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore

SECRET = "sk-test-0123-SECRET-abcdef"
# Read before the fixture below clears the environment: only the live test uses it.
LIVE_KEY = os.environ.get("OPENAI_API_KEY")
OPENAI_VARIABLES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ADMIN_KEY",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_CUSTOM_HEADERS",
    "OPENAI_WEBHOOK_SECRET",
)


@pytest.fixture(autouse=True)
def _offline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never a real key or endpoint from the developer's shell.
    for variable in OPENAI_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def png(width: int, height: int, color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def chat_body(
    content: str | None = "a1",
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    usage: dict[str, Any] | None = None,
    model: str = "gpt-4o-2024-08-06",
) -> dict[str, Any]:
    """A chat.completion object as the API returns it."""
    body: dict[str, Any] = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "system_fingerprint": "fp_1",
    }
    if usage is not None:
        body["usage"] = usage
    return body


def usage(
    prompt: int, completion: int, cached: int = 0, reasoning: int = 0, **extra: Any
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0, **extra},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def ok(request: RecordedRequest) -> Reply:
    return Reply(body=chat_body(usage=usage(10, 1)))


def client_for(server: LoopbackServer, name: str = "openai/gpt-4o", **options: Any) -> OpenAIModel:
    client = resolve_model(name, ModelOptions(base_url=server.url + "/v1", **options))
    assert isinstance(client, OpenAIModel)
    return client


TEXT_REQUEST = ModelRequest(parts=(TextPart("Board: ...\nAction:"),), max_tokens=8, seed=3)


# --- what the SDK sends --------------------------------------------------------------------


def test_the_request_holds_system_text_and_inline_images_in_order() -> None:
    first, second = png(100, 60, "red"), png(30, 40, "blue")
    request = ModelRequest(
        parts=(
            TextPart("Demonstration:\n"),
            ImagePart(first),
            TextPart("Action: a1\nNow:\n"),
            ImagePart(second),
            TextPart("Your action?"),
        ),
        system="You play tic-tac-toe.",
        stable_prefix_parts=3,
        max_tokens=12,
        temperature=0.5,
        seed=42,
        stop=("\n",),
        answer_prefix="Action:",
    )
    with loopback(ok) as server:
        response, _ = call(client_for(server), request)
    assert response.text == "a1"
    (sent,) = server.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    body = sent.json
    data_url = "data:image/png;base64,"
    assert body["messages"] == [
        {"role": "system", "content": "You play tic-tac-toe."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Demonstration:\n"},
                {
                    "type": "image_url",
                    "image_url": {"url": data_url + base64.b64encode(first).decode()},
                },
                {"type": "text", "text": "Action: a1\nNow:\n"},
                {
                    "type": "image_url",
                    "image_url": {"url": data_url + base64.b64encode(second).decode()},
                },
                {"type": "text", "text": "Your action?"},
            ],
        },
    ]
    assert body["model"] == "gpt-4o"
    assert body["max_completion_tokens"] == 12
    assert body["temperature"] == 0.5 and body["seed"] == 42
    # Completion-model fields and streaming stay out of a chat request.
    assert not {"max_tokens", "stop", "prompt", "stream"} & set(body)
    assert re.fullmatch(r"lmact-[0-9a-f]{32}", body["prompt_cache_key"])


@pytest.mark.parametrize(
    ("name", "budget", "expected_limit"),
    [
        ("openai/o3", None, 8 + 4096),  # in the catalog, reasoning = true
        ("openai/gpt-5-mini-2025-08-07", 1000, 8 + 1000),  # a dated catalog model
        ("openai/o4-preview", None, 8 + 4096),  # not in the catalog: known by its name
        ("openai/gpt-5.1", 0, 8),
    ],
)
def test_reasoning_models_get_a_developer_message_and_room_to_think(
    name: str, budget: int | None, expected_limit: int
) -> None:
    request = ModelRequest(parts=(TextPart("Your action?"),), system="Be brief.", max_tokens=8)
    with loopback(ok) as server:
        client = client_for(server, name, reasoning_budget=budget)
        call(client, request)
    body = server.requests[0].json
    assert body["model"] == name.partition("/")[2]
    assert body["messages"][0] == {"role": "developer", "content": "Be brief."}
    assert body["max_completion_tokens"] == expected_limit
    assert "temperature" not in body and "seed" not in body and "max_tokens" not in body
    # A budget the user gives changes answers: it is part of the call cache key.
    given = {} if budget is None else {"reasoning_budget": budget}
    assert client.identity() == {"model": name, **given}


def test_a_catalog_model_that_does_not_reason_is_a_plain_chat_model() -> None:
    with loopback(ok) as server:
        client = client_for(server, "openai/gpt-4.1-mini-2025-04-14", reasoning_budget=100)
        call(client, ModelRequest(parts=(TextPart("x"),), system="S", max_tokens=5))
    body = server.requests[0].json
    assert body["messages"][0]["role"] == "system"
    assert body["max_completion_tokens"] == 5 and body["temperature"] == 0.0
    assert "reasoning_budget" not in str(body)


def test_the_prompt_cache_key_follows_the_stable_prefix() -> None:
    settings = PromptSettings(show_legal_actions=True)
    _, one_demo = episode_requests("tic_tac_toe", "txt", settings, demos=1)
    _, two_demos = episode_requests("tic_tac_toe", "png", settings, demos=2)
    steps = [one_demo[0][0], one_demo[1][0], two_demos[0][0], two_demos[1][0]]
    assert steps[0].parts != steps[1].parts
    with loopback(ok) as server:
        client = client_for(server)
        for request in steps:
            call(client, request)
    keys = [sent.json["prompt_cache_key"] for sent in server.requests]
    assert keys[0] == keys[1] and keys[2] == keys[3]  # every step of a run: one key
    assert keys[0] != keys[2]  # another prefix, another key
    other_model = client_for(server, "openai/gpt-4.1")
    assert other_model.prompt_cache_key(steps[0]) != keys[0]
    assert client.prompt_cache_key(steps[0]) == keys[0]  # stable across calls, not random


def test_a_conversation_is_one_message_per_turn_with_its_role() -> None:
    request = conversation_request(system="You choose.")
    with loopback(ok) as server:
        client = client_for(server)
        call(client, request)
    body = server.requests[0].json
    assert body["messages"] == [
        {"role": "system", "content": "You choose."},
        {"role": "user", "content": [{"type": "text", "text": "in 1\n"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Action: a\n"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Right.\n"}, {"type": "text", "text": "in 2\n"}],
        },
    ]
    # The roles are part of the cache key: the same texts in one user turn are another prompt.
    texts = tuple(part for part in request.parts if isinstance(part, TextPart))
    one_turn = replace(request, parts=texts, stable_prefix_parts=3)
    assert client.prompt_cache_key(one_turn) != body["prompt_cache_key"]
    # A prefix without turns keeps the key it had before conversations (pinned).
    plain = replace(simple_request(system="You choose."), stable_prefix_parts=2)
    assert client.prompt_cache_key(plain) == "lmact-347217aa14e3fc0e31f5e35d93835aca"
    # A conversation ending in the model's own answer is the caller's mistake.
    with pytest.raises(ValueError, match="ends with a user turn"):
        client.messages(replace(request, parts=request.parts[:3]))


# --- what it reads back --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            chat_body("b2", usage=usage(1500, 3, cached=1280)),
            ModelResponse("b2", "stop", 1500, 3, cached_tokens=1280),
        ),
        (
            chat_body("c3", usage=usage(900, 320, cached=0, reasoning=310, cache_write_tokens=896)),
            ModelResponse("c3", "stop", 900, 320, cache_write_tokens=896, reasoning_tokens=310),
        ),
        (
            chat_body(None, refusal="I can't help with that.", usage=usage(50, 7)),
            ModelResponse("I can't help with that.", "refusal", 50, 7),
        ),
        (
            chat_body(None, finish_reason="content_filter", usage=usage(60, 0)),
            ModelResponse("", "content_filter", 60, 0),
        ),
        (
            chat_body("Action: a", finish_reason="length", usage=usage(70, 8)),
            ModelResponse("Action: a", "length", 70, 8),
        ),
        # Servers that leave out usage, or its details: zeros, not errors.
        (chat_body("a3"), ModelResponse("a3", "stop")),
        (
            chat_body("a3", usage={"prompt_tokens": 12, "completion_tokens": 2}),
            ModelResponse("a3", "stop", 12, 2),
        ),
    ],
)
def test_the_answer_is_read(body: dict[str, Any], expected: ModelResponse) -> None:
    with loopback(lambda request: Reply(body=body)) as server:
        response, _ = call(client_for(server), TEXT_REQUEST)
    assert response.latency_s > 0
    assert replace(response, latency_s=0.0) == expected


# --- faults ----------------------------------------------------------------------------------

TRANSIENT_FAULTS = {
    "500": Reply(500, {"error": {"message": "The server had an error", "type": "server_error"}}),
    "503": Reply(503, {"error": {"message": "Slow down", "type": "overloaded"}}),
    "timeout": Reply(body=chat_body("a1"), delay_s=1.0),
    "dropped connection": Reply(drop=True),
    "malformed JSON": Reply(body=b'{"id": "chatcmpl-1", "choices": [{"mess'),
    "not a chat completion": Reply(body={"id": "x", "choices": []}),
    "an HTML error page": Reply(body=b"<html><body>502 Bad Gateway</body></html>"),
}


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS.values(), ids=TRANSIENT_FAULTS.keys())
def test_transient_faults_are_retried(fault: Reply) -> None:
    with loopback(faults_then(fault, then=ok)) as server:
        client = client_for(server, timeout_s=0.3)
        response, caller = call(client, TEXT_REQUEST)
    assert response.text == "a1" and response.prompt_tokens == 10
    assert (
        len(server.requests) == 2 and caller.totals.retries == 1 and caller.totals.calls_made == 1
    )


def test_a_rate_limit_waits_as_long_as_the_server_asks() -> None:
    limited = Reply(
        429,
        {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        },
        headers={"Retry-After": "1"},
    )
    arrivals: list[float] = []

    def timed(request: RecordedRequest) -> Reply:
        arrivals.append(time.monotonic())
        return handler(request)

    handler = faults_then(limited, then=ok)
    with loopback(timed) as server:
        response, caller = call(client_for(server), TEXT_REQUEST)
    assert response.text == "a1" and len(server.requests) == 2 and caller.totals.retries == 1
    assert arrivals[1] - arrivals[0] >= 1.0


def echo_key(status: int) -> Callable[[RecordedRequest], Reply]:
    """An error answer that repeats the request's credentials, as a careless proxy might."""

    def handle(request: RecordedRequest) -> Reply:
        header = request.headers.get("authorization", "")
        message = f"Incorrect API key provided: {header}. You sent {header}"
        return Reply(status, {"error": {"message": message, "type": "invalid_request_error"}})

    return handle


@pytest.mark.parametrize("status", [401, 403, 400, 404])
def test_fatal_statuses_stop_at_once_and_keep_the_key_secret(status: int) -> None:
    with loopback(echo_key(status)) as server, pytest.raises(ModelCallError) as raised:
        call(client_for(server), TEXT_REQUEST)
    assert len(server.requests) == 1
    message = str(raised.value)
    assert SECRET not in message and "[redacted]" in message
    assert f"HTTP {status}" in message and "Incorrect API key provided" in message
    assert "\n" not in message
    if status in (401, 403):
        assert "OPENAI_API_KEY" in message


def test_exhausted_retries_give_a_call_error_without_the_key() -> None:
    with (
        loopback(echo_key(503)) as server,
        pytest.raises(ModelCallError, match="gave up after 3 attempts") as raised,
    ):
        call(client_for(server), TEXT_REQUEST, max_retries=2)
    assert len(server.requests) == 3
    assert "HTTP 503" in str(raised.value) and SECRET not in str(raised.value)


def test_a_missing_key_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    client = resolve_model("openai/gpt-4o", ModelOptions())
    with pytest.raises(LmactError, match="OPENAI_API_KEY") as raised:
        client.check_ready()
    assert "\n" not in str(raised.value)


def test_the_base_url_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with loopback(ok) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/proxy/v1")
        client = resolve_model("openai/gpt-4o", ModelOptions())
        call(client, TEXT_REQUEST)
    assert server.requests[0].path == "/proxy/v1/chat/completions"


def test_a_client_serves_one_event_loop_after_another() -> None:
    # The runner calls asyncio.run once per run; the SDK's connections die with their loop.
    with loopback(ok) as server:
        client = client_for(server)
        for _ in range(3):
            assert asyncio.run(client.complete(TEXT_REQUEST)).text == "a1"
    assert len(server.requests) == 3


# --- token counts ------------------------------------------------------------------------------


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Fail any attempt of tiktoken to fetch (or reuse a cached download of) its files."""
    import tiktoken.load

    def refuse(path: str, *args: Any, **kwargs: Any) -> bytes:
        raise AssertionError(f"tried to fetch {path}")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-tiktoken-cache"))
    try:
        import requests

        monkeypatch.setattr(requests, "get", refuse)
        monkeypatch.setattr(requests.Session, "request", refuse)
    except ImportError:
        pass
    offline_encoding.cache_clear()
    yield
    offline_encoding.cache_clear()


@pytest.mark.usefixtures("no_downloads")
def test_token_counts_are_tiktoken_counts_built_offline() -> None:
    gpt_4o = resolve_model("openai/gpt-4o", ModelOptions())  # catalog: o200k_base
    gpt_35 = resolve_model("openai/gpt-3.5-turbo", ModelOptions())  # tiktoken: cl100k_base
    word = "antidisestablishmentarianism"
    # Token ids from OpenAI's cookbook ("How to count tokens with tiktoken").
    assert offline_encoding("o200k_base").encode_ordinary(word) == [
        493, 129901, 376, 160388, 21203, 2367,
    ]  # fmt: skip
    assert offline_encoding("cl100k_base").encode_ordinary(word) == [
        519, 85342, 34500, 479, 8997, 2191,
    ]  # fmt: skip
    assert gpt_4o.count_text_tokens("お誕生日おめでとう") == 8
    assert gpt_35.count_text_tokens("お誕生日おめでとう") == 9
    assert gpt_4o.count_text_tokens("2 + 2 = 4") == 7
    # Special-token text is ordinary text in a prompt.
    assert gpt_4o.count_text_tokens("<|endoftext|>") > 1
    # Images by the catalog's rule (gpt-4o: 85 + 170 per 512-px tile).
    parts = [TextPart("hello "), ImagePart(png(100, 100, "red")), TextPart("world")]
    assert gpt_4o.count_tokens(parts) == 2 + 85 + 170


@pytest.mark.usefixtures("no_downloads")
def test_ranks_that_fail_their_hash_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(openai_provider.BPE_DATA, "o200k_base", "0" * 64)
    client = resolve_model("openai/gpt-4o", ModelOptions())
    with pytest.warns(UserWarning, match="estimates"):
        assert client.count_text_tokens("x" * 41) == 11  # four characters a token


def test_without_tiktoken_counts_are_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    offline_encoding.cache_clear()
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken fails
    try:
        client = resolve_model("openai/gpt-4o", ModelOptions())
        assert client.count_text_tokens("x" * 41) == 11
    finally:
        offline_encoding.cache_clear()


def test_the_modules_import_without_the_sdk_or_tiktoken() -> None:
    script = (
        "import sys\n"
        "sys.modules.update(openai=None, tiktoken=None, httpx2=None)\n"
        "import lmact.models.openai, lmact.models.openai_compatible\n"
        "from lmact.models.registry import resolve_model\n"
        "from lmact.models.base import ModelOptions\n"
        "print(resolve_model('openai/gpt-4o', ModelOptions()).count_text_tokens('x' * 8))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "2"


# --- whole runs ----------------------------------------------------------------------------------

LEGAL = re.compile(r"The legal actions in this state are: (.+)")


class FakeOpenAI:
    """Answers every chat request with the first legal action of its prompt's last step and
    counts the answers it gave; `faults` come first."""

    def __init__(self, *faults: Reply) -> None:
        self.handler = faults_then(*faults, then=self.answer)
        self.answers = 0
        self.images = 0
        self._lock = threading.Lock()

    def answer(self, request: RecordedRequest) -> Reply:
        content = request.json["messages"][-1]["content"]
        text = "".join(part.get("text", "") for part in content)
        images = sum(part["type"] == "image_url" for part in content)
        action = LEGAL.findall(text)[-1].split(", ")[0].strip()
        with self._lock:
            self.answers += 1
            self.images = max(self.images, images)
        return Reply(body=chat_body(action, usage=usage(len(text) // 4, 2, cached=0)))

    def __call__(self, request: RecordedRequest) -> Reply:
        return self.handler(request)


@pytest.mark.parametrize("observation", ["txt", "png"])
def test_a_run_through_faults_loses_no_step(
    observation: str, run_store: RunStore, demo_store: DemoStore
) -> None:
    fake = FakeOpenAI(
        Reply(503, {"error": {"message": "overloaded"}}, headers={"retry-after-ms": "20"}),
        Reply(drop=True),
        Reply(429, {"error": {"message": "slow down"}}, headers={"retry-after": "0"}),
        Reply(body=b"not json"),
    )
    config = make_config(
        "tic_tac_toe",
        observation=observation,
        model="openai/gpt-4o",
        demos=2,
        demo_draw="shared",  # one prefix for every episode: what is cached
        show_legal_actions=True,
    )
    with loopback(fake) as server:
        options = ModelOptions(base_url=server.url + "/v1", timeout_s=10)
        runner = Runner(run_store, demo_store, options, max_connections=4, progress=False)
        try:
            result = runner.run(config, episodes=4)
        finally:
            runner.close()
    steps = run_store.steps(config.run_id)
    assert len(result.episodes) == 4 and all(e.terminated for e in result.episodes)
    # Every answer the server gave is a recorded step (identical prompts of two episodes
    # may share one answer through the call cache).
    assert len(steps) == sum(e.steps for e in result.episodes)
    assert len(steps) == fake.answers + result.calls_cached
    assert result.calls_made == fake.answers == len(server.requests) - 4
    assert all(step.kind == "valid" for step in steps)  # the answers were legal moves
    assert sum(e.usage.prompt_tokens for e in result.episodes) == sum(
        s.usage.prompt_tokens for s in steps
    )
    assert all(s.usage.prompt_tokens > 0 and s.usage.completion_tokens == 2 for s in steps)
    # The same prefix for every step: one cache key for the whole run.
    keys = {r.json["prompt_cache_key"] for r in server.requests if r.body}
    assert len(keys) == 1
    if observation == "png":
        assert fake.images >= 3  # demonstration and current boards travel as images


# --- live ---------------------------------------------------------------------------------------


@pytest.mark.network
@pytest.mark.skipif(not LIVE_KEY, reason="needs a paid OpenAI key in OPENAI_API_KEY")
def test_live_call(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LIVE_KEY is not None
    monkeypatch.setenv("OPENAI_API_KEY", LIVE_KEY)
    client = resolve_model("openai/gpt-4o-mini", ModelOptions(timeout_s=60))
    client.check_ready()
    _, requests = episode_requests("tic_tac_toe", "txt", PromptSettings(True), demos=1)
    request = requests[0][0]
    response, _ = call(client, request, max_retries=2)
    assert response.text.strip() and response.stop_reason in {"stop", "length"}
    expected = client.count_tokens(request.parts)
    # The API adds a few tokens of message framing to the parts' own.
    assert expected <= response.prompt_tokens <= expected + 20
    assert 0 < response.completion_tokens <= request.max_tokens
    assert json.loads(response.to_json())["text"] == response.text


def test_a_constrained_request_asks_for_structured_outputs_and_reads_the_choice() -> None:
    request = ModelRequest(parts=(TextPart("Which button?"),), max_tokens=8, choices=("a1", "b2"))
    reply = chat_body('{"action":"b2"}', usage=usage(10, 6))
    with loopback(lambda r: Reply(body=reply)) as server:
        response, _ = call(client_for(server), request)
    assert response.text == "b2"  # the JSON envelope unwrapped
    body = server.requests[0].json
    assert body["response_format"]["type"] == "json_schema"
    spec = body["response_format"]["json_schema"]
    assert spec["strict"] is True and spec["schema"]["required"] == ["action"]
    assert spec["schema"]["properties"]["action"]["enum"] == ["a1", "b2"]
    assert spec["schema"]["additionalProperties"] is False
    assert body["max_completion_tokens"] > 8  # room for the envelope
