"""`openai-compatible/<model>`: both endpoints against a loopback server, the base URL rules,
and a whole run against llama.cpp's real OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import conversation_request, episode_requests
from llama_servers import llama_servers
from loopback import RecordedRequest, Reply, chat_completion, loopback
from PIL import Image

from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import (
    ImagePart,
    ModelCallError,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    TextPart,
)
from lmact.models.caller import ModelCaller, call_key
from lmact.models.openai_compatible import OpenAICompatibleModel
from lmact.models.registry import resolve_model
from lmact.prompting import PromptSettings
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore

VARIABLES = (
    "OPENAI_COMPATIBLE_API_KEY",
    "OPENAI_COMPATIBLE_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "OPENAI_CUSTOM_HEADERS",
)
NAME = "openai-compatible/my-model"


@pytest.fixture(autouse=True)
def _offline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def text_completion(text: str, usage: dict[str, int] | None = None) -> dict[str, Any]:
    """A text_completion object, as vLLM or llama.cpp's server return it."""
    body: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_760_000_000,
        "model": "my-model",
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def client_for(base_url: str | None, chat: bool = True, **options: Any) -> OpenAICompatibleModel:
    client = resolve_model(NAME, ModelOptions(base_url=base_url, chat=chat, **options))
    assert isinstance(client, OpenAICompatibleModel)
    return client


def call(client: OpenAICompatibleModel, request: ModelRequest) -> Any:
    return asyncio.run(ModelCaller(client, None, backoff_s=0.01).call(request))


def a_request() -> ModelRequest:
    _, requests = episode_requests("tic_tac_toe", "txt", PromptSettings(True), demos=1)
    request = requests[1][0]
    assert request.stop and request.answer_prefix
    return request


def test_completions_mode_sends_the_prompt_text_and_stop() -> None:
    request = a_request()
    answer = text_completion(" b2", {"prompt_tokens": 812, "completion_tokens": 3})
    with loopback(lambda r: Reply(body=answer)) as server:
        client = client_for(server.url + "/v1", chat=False)
        response = call(client, request)
    (sent,) = server.requests
    assert (sent.method, sent.path) == ("POST", "/v1/completions")
    assert sent.headers["authorization"] == "Bearer EMPTY"  # no key set: a placeholder
    body = sent.json
    assert body["prompt"] == request.completion_text()
    assert body["prompt"].endswith(request.answer_prefix)
    assert body["stop"] == list(request.stop)
    assert body["max_tokens"] == request.max_tokens and body["model"] == "my-model"
    assert body["temperature"] == 0.0 and body["seed"] == request.seed
    assert "messages" not in body and "prompt_cache_key" not in body
    assert (response.text, response.stop_reason) == (" b2", "stop")
    assert (response.prompt_tokens, response.completion_tokens) == (812, 3)
    assert response.cached_tokens == response.reasoning_tokens == 0


def test_chat_mode_sends_plain_chat_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", "local-key")
    request = ModelRequest(
        parts=(TextPart("Board\n"), TextPart("Action?")), system="Play.", max_tokens=6, seed=9
    )
    with loopback(lambda r: Reply(body=chat_completion("a2"))) as server:
        response = call(client_for(server.url + "/v1"), request)
    (sent,) = server.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer local-key"
    body = sent.json
    assert body["messages"] == [
        {"role": "system", "content": "Play."},
        {"role": "user", "content": "Board\nAction?"},  # text only: one string
    ]
    assert body["max_tokens"] == 6 and body["temperature"] == 0.0 and body["seed"] == 9
    assert not {"max_completion_tokens", "prompt_cache_key", "stop"} & set(body)
    assert response.text == "a2" and response.prompt_tokens == 40


def test_chat_mode_sends_images_inline() -> None:
    _, requests = episode_requests("tic_tac_toe", "png", PromptSettings(True), demos=1)
    request = requests[0][0]
    with loopback(lambda r: Reply(body=chat_completion("a2"))) as server:
        call(client_for(server.url + "/v1"), request)
    content = server.requests[0].json["messages"][-1]["content"]
    kinds = [part["type"] for part in content]
    assert kinds.count("image_url") == sum(isinstance(p, ImagePart) for p in request.parts) > 1
    assert len(content) == len(request.parts)


def test_a_conversation_is_a_message_per_turn_plain_text_where_a_turn_has_no_image() -> None:
    request = conversation_request(system="Choose.\n", answer_prefix="Action:")
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    image = ImagePart(buffer.getvalue())
    with_image = replace(request, parts=(*request.parts, image))
    with loopback(lambda r: Reply(body=chat_completion("a"))) as server:
        call(client_for(server.url + "/v1"), request)
        call(client_for(server.url + "/v1"), with_image)
    plain, mixed = (sent.json["messages"] for sent in server.requests)
    assert plain == [
        {"role": "system", "content": "Choose.\n"},
        {"role": "user", "content": "in 1\n"},
        {"role": "assistant", "content": "Action: a\n"},
        {"role": "user", "content": "Right.\nin 2\n"},
    ]
    # Only the turn with an image is a list of blocks.
    assert mixed[:3] == plain[:3]
    assert [block["type"] for block in mixed[3]["content"]] == ["text", "text", "image_url"]
    # A completions endpoint reads the turns as one text.
    answer = text_completion(" a")
    with loopback(lambda r: Reply(body=answer)) as server:
        call(client_for(server.url + "/v1", chat=False), request)
    assert server.requests[0].json["prompt"] == "Choose.\nin 1\nAction: a\nRight.\nin 2\nAction:"


def test_identity_names_the_server_and_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    chat = client_for("http://a:8000/v1")
    completions = client_for("http://a:8000/v1", chat=False)
    elsewhere = client_for("http://b:8000/v1")
    assert chat.identity() == {"model": NAME, "base_url": "http://a:8000/v1", "mode": "chat"}
    assert completions.identity()["mode"] == "completions"
    request = ModelRequest(parts=(TextPart("x"),))
    keys = {call_key(client, request) for client in (chat, completions, elsewhere)}
    assert len(keys) == 3
    assert chat.accepts_images and not completions.accepts_images
    # No catalog facts: the estimate, and no cost unless the user gives prices.
    assert chat.count_text_tokens("x" * 41) == 11 and chat.context_window is None
    assert chat.cost_usd(ModelResponse("a1", prompt_tokens=1000, completion_tokens=10)) is None
    priced = client_for("http://a:8000/v1", input_price=1.0, output_price=2.0)
    assert priced.cost_usd(
        ModelResponse("a1", prompt_tokens=1000, completion_tokens=10)
    ) == pytest.approx((1000 * 1.0 + 10 * 2.0) / 1e6)


def test_the_base_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    client = client_for(None)
    with pytest.raises(LmactError, match="--base-url") as raised:
        client.check_ready()
    assert "\n" not in str(raised.value) and "OPENAI_COMPATIBLE_BASE_URL" in str(raised.value)
    monkeypatch.setenv("OPENAI_COMPATIBLE_BASE_URL", "http://localhost:11434/v1")
    from_environment = client_for(None)
    from_environment.check_ready()  # no key needed
    assert from_environment.base_url == "http://localhost:11434/v1"
    # The command line wins over the environment.
    assert client_for("http://other:1/v1").base_url == "http://other:1/v1"


def test_a_wrong_path_says_so_and_keeps_the_key_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", "sk-local-SECRET-99")

    def not_found(request: RecordedRequest) -> Reply:
        return Reply(404, {"detail": f"Not Found ({request.headers['authorization']})"})

    with loopback(not_found) as server, pytest.raises(ModelCallError) as raised:
        call(client_for(server.url), ModelRequest(parts=(TextPart("x"),)))
    message = str(raised.value)
    assert len(server.requests) == 1 and server.requests[0].path == "/chat/completions"
    assert "HTTP 404" in message and "Not Found" in message and "/v1" in message
    assert "sk-local-SECRET-99" not in message


def test_completions_mode_refuses_image_observations(
    run_store: RunStore, demo_store: DemoStore
) -> None:
    runner = Runner(
        run_store, demo_store, ModelOptions(base_url="http://127.0.0.1:9/v1", chat=False)
    )
    config = make_config("tic_tac_toe", observation="png", model=NAME, demos=0)
    with pytest.raises(LmactError, match="accepts no images"):
        runner.run(config, episodes=1)


# --- llama.cpp's server, for real ---------------------------------------------------------------


@pytest.fixture
def llama_server(tmp_path: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server with the bundled Gemma 3 270M; its URL."""
    with llama_servers(tmp_path, context=4096, threads=2) as (server,):
        yield server.url


@pytest.mark.slow
def test_a_run_against_llama_cpp_server(
    llama_server: str, run_store: RunStore, demo_store: DemoStore
) -> None:
    options = ModelOptions(base_url=llama_server, chat=False, context_window=4096, timeout_s=60)
    runner = Runner(run_store, demo_store, options, max_connections=1, progress=False)
    config = make_config(
        "tic_tac_toe", model="openai-compatible/gemma-3-270m", demos=1, show_legal_actions=True
    )
    try:
        result = runner.run(config, episodes=2)
    finally:
        runner.close()
    steps = run_store.steps(config.run_id)
    assert len(result.episodes) == 2 and all(e.terminated for e in result.episodes)
    assert len(steps) == sum(e.steps for e in result.episodes) > 0
    assert result.calls_made + result.calls_cached == len(steps)
    assert all(s.usage.prompt_tokens > 0 for s in steps)
    assert sum(e.usage.completion_tokens for e in result.episodes) > 0
    assert all("\n" not in s.completion for s in steps)  # the stop string was applied
    assert {s.stop_reason for s in steps} <= {"stop", "length"}


def test_several_servers_share_the_requests_and_one_dying_loses_nothing(
    run_store: RunStore, demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_COMPATIBLE_BASE_URL", raising=False)
    answered = {"first": 0, "second": 0}

    def server(name: str, dies_after: int | None) -> Any:
        def handle(request: RecordedRequest) -> Reply:
            if dies_after is not None and answered[name] >= dies_after:
                return Reply(drop=True)  # the server is gone: connections end unanswered
            answered[name] += 1
            return Reply(body=chat_completion("b2"))

        return handle

    with loopback(server("first", None)) as first, loopback(server("second", 3)) as second:
        options = ModelOptions(
            base_url=first.url + "/v1", more_base_urls=(second.url + "/v1",), timeout_s=10
        )
        runner = Runner(run_store, demo_store, options, max_connections=2, progress=False,
                        retry_backoff_s=0.01)  # fmt: skip
        try:
            config = make_config("tic_tac_toe", model=NAME, demos=1)
            result = runner.run(config, 4)
        finally:
            runner.close()
    steps = run_store.steps(config.run_id)
    assert len(result.episodes) == 4 and len(steps) == sum(e.steps for e in result.episodes)
    assert answered["second"] == 3 and answered["first"] > 3  # spread, then the survivor
    assert len(second.requests) > 3 and result.retries >= 1  # the dead one was tried again
    # Then passed over: no more than the calls already on their way to it (2 connections).
    assert len(second.requests) <= 3 + 2
    # One answer stored per request, whichever server gave it.
    assert result.calls_made == answered["first"] + answered["second"]
    assert result.calls_made + result.calls_cached == len(steps)
    client = runner.policies.caller(NAME).client
    assert client.identity()["base_url"] == sorted([first.url + "/v1", second.url + "/v1"])


def test_several_base_urls_only_for_openai_compatible(tmp_path: Path) -> None:
    from helpers import lmact

    done = lmact("run", "--task", "tic_tac_toe", "--model", "openai/gpt-4o", "--base-url",
                 "http://127.0.0.1:9/v1", "--base-url", "http://127.0.0.1:10/v1",
                 "--store", "s.sqlite", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "only openai-compatible/ models" in done.stderr


@pytest.mark.parametrize("chat", [True, False])
def test_a_constrained_request_sends_openai_s_response_format_in_either_mode(chat: bool) -> None:
    request = replace(a_request(), choices=("a1", "b2", "c3"))
    reply = chat_completion('{"action": "c3"}') if chat else text_completion(' {"action":"c3"}')
    with loopback(lambda r: Reply(body=reply)) as server:
        response = call(client_for(server.url + "/v1", chat=chat), request)
    assert response.text == "c3"
    (sent,) = server.requests
    assert sent.path == ("/v1/chat/completions" if chat else "/v1/completions")
    schema = sent.json["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["action"]["enum"] == ["a1", "b2", "c3"]
    assert sent.json["max_tokens"] > request.max_tokens
    # The constraint is part of what the answer is cached under; the prompt is the same.
    assert call_key(client_for("http://x/v1"), request) != call_key(
        client_for("http://x/v1"), replace(request, choices=())
    )
