"""`anthropic/<model>`: Claude through the Messages API (the `anthropic` SDK, non-streaming).

The SDK (2.x) speaks API version 2026-10-21, which removed the sampling parameters
(`temperature`, `top_p`, `top_k`: a 400 even at their defaults), so no temperature is sent
and Claude samples at its own default. It sends the key as `Authorization: Bearer`.

The stable prefix (preamble and demonstrations) ends with a `cache_control` breakpoint, so
every step after the first reads it from Anthropic's prompt cache. A conversation's turns
are messages of their roles.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any, ClassVar

from lmact.errors import LmactError
from lmact.models.base import (
    ImagePart,
    ModelCallError,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    TurnStart,
    choice_schema,
    conversation,
    token_count,
)
from lmact.models.remote import RemoteModel, missing_sdk

# The tool a constrained answer is forced through, and the tokens its call takes beside
# the choice (the tool's name and its JSON input).
ANSWER_TOOL = "answer"
TOOL_ROOM = 32

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    # The prompt and answer reached the context window: the answer was cut off.
    "model_context_window_exceeded": "length",
    "refusal": "refusal",
    "pause_turn": "pause_turn",
    "tool_use": "tool_use",
}


def _sdk() -> Any:
    try:
        import anthropic
    except ImportError:
        raise missing_sdk("Anthropic", "anthropic", "anthropic") from None
    return anthropic


def _block(part: Part) -> dict[str, Any] | None:
    """A part's content block; None for a turn start and for empty text, which the API
    rejects."""
    if isinstance(part, ImagePart):
        data = base64.b64encode(part.png).decode("ascii")
        source = {"type": "base64", "media_type": "image/png", "data": data}
        return {"type": "image", "source": source}
    if isinstance(part, TextPart) and part.text:
        return {"type": "text", "text": part.text}
    return None


def messages(request: ModelRequest) -> list[dict[str, Any]]:
    """One message per turn, its parts one block each, in order, with a prompt-cache
    breakpoint on the block that ends the stable prefix (none when there is no stable
    prefix). A turn left without blocks (empty text) is dropped, so that the roles still
    alternate, as the API requires."""
    conversation(request.parts)  # checked here as by every client, built below by index
    result: list[dict[str, Any]] = []
    breakpoint_block: dict[str, Any] | None = None
    role = "user"
    for index, part in enumerate(request.parts):
        if isinstance(part, TurnStart):
            role = part.role
            continue
        block = _block(part)
        if block is None:
            continue
        if not result or result[-1]["role"] != role:
            result.append({"role": role, "content": []})
        result[-1]["content"].append(block)
        if index < request.stable_prefix_parts:  # turn starts count, as in the request
            breakpoint_block = block
    if breakpoint_block is not None:
        breakpoint_block["cache_control"] = {"type": "ephemeral"}
    return result or [{"role": "user", "content": []}]


def _count(usage: Any, field: str) -> int:
    # The SDK builds its answer objects without checking their types: a server's "abc" or
    # 1e400 arrives here as it was sent.
    return token_count(getattr(usage, field, None), field)


def _answer_text(content: list[Any]) -> str:
    """The text blocks joined; thinking and redacted_thinking blocks are reasoning. A
    forced answer tool's input (a constrained answer) as its JSON."""
    texts = []
    for block in content:
        kind = getattr(block, "type", None)
        if kind == "tool_use" and getattr(block, "name", None) == ANSWER_TOOL:
            texts.append(json.dumps(getattr(block, "input", None)))
        elif kind == "text":
            text = getattr(block, "text", None) or ""
            if not isinstance(text, str):
                raise ValueError(f"a text block holds a {type(text).__name__}")
            texts.append(text)
    return "".join(texts)


class AnthropicModel(RemoteModel):
    """Claude models. Token counts are estimates: Anthropic publishes no offline tokenizer
    for Claude, so text is four characters a token (the base rule) and images follow the
    catalog's `anthropic` rule (pixels / 750 after fitting); the API's usage is exact."""

    max_concurrency = 8
    key_variables: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY",)
    base_url_variables: ClassVar[tuple[str, ...]] = ("ANTHROPIC_BASE_URL",)

    def load_sdk(self) -> Any:
        return _sdk()

    def make_sdk_client(self) -> Any:
        return _sdk().AsyncAnthropic(
            api_key=self.api_key(),
            base_url=self.base_url,  # None: the SDK's default (or its ANTHROPIC_BASE_URL)
            max_retries=0,  # retries belong to ModelCaller alone
            timeout=self.attempt_timeout_s,
        )

    def request_arguments(self, request: ModelRequest) -> dict[str, Any]:
        """The keyword arguments of `messages.create` for one request."""
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": messages(request),
            "max_tokens": self.completion_cap(request),
        }
        if request.system:
            arguments["system"] = request.system
        budget = self.options.reasoning_budget
        if budget:
            # Thinking tokens count against max_tokens: the answer keeps its own allowance.
            arguments["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if request.choices and self.constrains:
            # A tool the model must call, whose one argument is one of the choices.
            arguments["tools"] = [{
                "name": ANSWER_TOOL,
                "description": "Give your answer: one of the allowed values.",
                "input_schema": choice_schema(request.choices),
            }]  # fmt: skip
            arguments["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
        return arguments

    def completion_cap(self, request: ModelRequest) -> int:
        # Thinking tokens count against max_tokens: the answer keeps its own allowance, and
        # the forced tool call's wrapping its room.
        thinking = self.options.reasoning_budget or 0
        tool = TOOL_ROOM if request.choices and self.constrains else 0
        return request.max_tokens + thinking + tool

    @property
    def constrains(self) -> bool:  # type: ignore[override]
        """A forced tool call, which Anthropic refuses beside extended thinking."""
        return not self.options.reasoning_budget

    unconstrained_because = "Anthropic forces no tool call while a model thinks"

    async def send(self, request: ModelRequest) -> ModelResponse:
        client = await self.loop_client()
        message = await client.messages.create(**self.request_arguments(request))
        response = self.read_message(message)
        if request.choices and response.stop_reason == "tool_use":  # the forced answer: done
            response = replace(response, stop_reason="stop")
        return response

    def read_message(self, message: Any) -> ModelResponse:
        """A Messages API answer as a `ModelResponse`; an answer that is not a message (the
        SDK hands back text it cannot parse), or one with fields of the wrong type, is worth
        another attempt."""
        content = getattr(message, "content", None)
        if getattr(message, "type", None) != "message" or not isinstance(content, list):
            raise self.unreadable_answer("not a message")
        try:
            return self._response(message, content)
        except ValueError as problem:
            raise self.unreadable_answer(str(problem)) from None

    def _response(self, message: Any, content: list[Any]) -> ModelResponse:
        stop_reason = getattr(message, "stop_reason", None) or "end_turn"
        if not isinstance(stop_reason, str):
            raise ValueError(f"the stop reason is a {type(stop_reason).__name__}")
        usage = getattr(message, "usage", None)
        written = _count(usage, "cache_creation_input_tokens")
        read = _count(usage, "cache_read_input_tokens")
        details = getattr(usage, "output_tokens_details", None)
        return ModelResponse(
            text=_answer_text(content),
            stop_reason=STOP_REASONS.get(stop_reason, "other"),
            # Anthropic's input_tokens leaves out the tokens read from or written to the cache.
            prompt_tokens=_count(usage, "input_tokens") + written + read,
            completion_tokens=_count(usage, "output_tokens"),
            cached_tokens=read,
            cache_write_tokens=written,
            reasoning_tokens=_count(details, "thinking_tokens"),
        )

    def translate_error(self, error: Exception) -> Exception | None:
        if isinstance(error, LmactError):  # no key, or no SDK: already one line
            return error
        if isinstance(error, json.JSONDecodeError):
            return self.unreadable_answer("not JSON")
        anthropic = _sdk()
        if isinstance(error, anthropic.APIStatusError):
            detail = error.message
            if error.api_message:
                detail = f"{error.type or 'error'}: {error.api_message}"
            if error.request_id:  # first, so that shortening a long detail keeps it
                detail = f"(request id {error.request_id}) {detail}"
            if error.error_code and error.error_code.endswith("spend_limit_reached"):
                # A 429 that waiting does not fix: the account's spend limit.
                return ModelCallError(
                    f"{self.name}: HTTP {error.status_code}: {self.detail(detail)}"
                )
            return self.status_error(error.status_code, detail, error.response.headers)
        if isinstance(error, anthropic.APITimeoutError):
            return self.timeout_error()
        if isinstance(error, anthropic.APIConnectionError):
            cause = error.__cause__ or error.__context__
            return self.connection_error(f"{type(cause).__name__}: {cause}" if cause else "")
        if isinstance(error, anthropic.APIResponseValidationError):
            return self.unreadable_answer(error.message)
        if isinstance(error, anthropic.AnthropicError):
            return ModelCallError(f"{self.name}: {error}")
        return None
