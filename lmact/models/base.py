"""The provider-neutral model interface: a request of text and image parts in, a response out.

A provider module is a thin translator from `ModelRequest` to its SDK and back to
`ModelResponse`. The cache, concurrency and usage accounting live once, in
`lmact.models.caller`, above every provider.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

from lmact.errors import LmactError


# Why an answer ended. The first five are every provider's; "unreadable" marks a call whose
# answers could not be read however often it was tried (an empty answer, never cached); the
# others are a provider's own reasons, kept apart (Anthropic's pause_turn and tool_use,
# Gemini's language); a provider maps any other reason of its own to "other".
class StopReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    REFUSAL = "refusal"
    CONTENT_FILTER = "content_filter"
    UNREADABLE = "unreadable"
    OTHER = "other"
    PAUSE_TURN = "pause_turn"
    TOOL_USE = "tool_use"
    LANGUAGE = "language"


UNREADABLE = StopReason.UNREADABLE
STOP_REASONS = frozenset(StopReason)
# Bounds on what a server may report for one call; numbers beyond them are a broken or
# hostile server, not a real answer. 100 million tokens is a hundred times the largest
# context window of 2025; a million characters is far beyond any action's answer.
MAX_TOKENS_PER_CALL = 100_000_000
MAX_ANSWER_CHARS = 1_000_000
# The longest a server's Retry-After, or a backoff, may pause calls, by default (seconds).
DEFAULT_MAX_WAIT_S = 300.0
TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    png: bytes

    @cached_property
    def sha256(self) -> str:
        # Cached: the demonstration images of a prompt are hashed again at every step.
        return hashlib.sha256(self.png).hexdigest()

    @cached_property
    def size(self) -> tuple[int, int]:
        """Width and height in pixels, read from the PNG header: providers price images by size."""
        if self.png[:8] != b"\x89PNG\r\n\x1a\n" or self.png[12:16] != b"IHDR":
            raise ValueError("an image part must hold a PNG")
        width, height = struct.unpack(">II", self.png[16:24])
        return width, height


Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class TurnStart:
    """Where a new turn of a conversation starts: the parts after it, up to the next
    `TurnStart`, are one message of `role`. Parts before the first are a user turn, and a
    request without any is the single user turn it always was."""

    role: Role


Part = TextPart | ImagePart | TurnStart
ROLES = ("user", "assistant")


def turns(parts: Iterable[Part]) -> list[tuple[str, tuple[Part, ...]]]:
    """The parts as (role, parts) turns in order: neighbouring turns of one role are one
    turn, and turns with no parts are dropped."""
    result: list[tuple[str, list[Part]]] = []
    role = "user"
    for part in parts:
        if isinstance(part, TurnStart):
            if part.role not in ROLES:
                raise ValueError(f"a turn's role is one of {', '.join(ROLES)}")
            role = part.role
            continue
        if result and result[-1][0] == role:
            result[-1][1].append(part)
        else:
            result.append((role, [part]))
    return [(role, tuple(group)) for role, group in result]


def role_at(parts: Sequence[Part], index: int) -> Role:
    """The role in effect just before the part at `index`: where a request is cut (a cached
    prefix and the rest), the rest's first parts go on with that turn."""
    for part in reversed(parts[:index]):
        if isinstance(part, TurnStart):
            return part.role
    return "user"


def conversation(parts: Sequence[Part]) -> list[tuple[str, tuple[Part, ...]]]:
    """The turns of a chat request's parts, checked once by each chat client as it builds
    its messages: a conversation starts and ends with a user turn (the model answers the
    last, and Anthropic takes no other first), and an assistant turn (a model's answer)
    holds text only, as OpenAI and Anthropic require. A request of no parts is the one
    empty user turn it always was. A ValueError is a caller's mistake, not the model's."""
    found = turns(parts)
    if not found:
        return [("user", ())]
    if found[0][0] != "user" or found[-1][0] != "user":
        raise ValueError("a conversation starts and ends with a user turn")
    for role, group in found:
        if role == "assistant" and any(isinstance(part, ImagePart) for part in group):
            raise ValueError("an assistant turn holds text only")
    return found


def merge_text_parts(parts: Iterable[Part]) -> tuple[Part, ...]:
    """Join neighbouring text parts (empty ones dropped), so that a prompt has as few parts
    as it can; in time linear in the text: merging into a growing part would copy it at
    every part, quadratic in a prefix of thousands of demonstrations."""
    merged: list[Part] = []
    run: list[str] = []
    for part in parts:
        if isinstance(part, TextPart):
            run.append(part.text)
            continue
        if text := "".join(run):
            merged.append(TextPart(text))
        run = []
        merged.append(part)
    if text := "".join(run):
        merged.append(TextPart(text))
    return tuple(merged)


@dataclass(frozen=True)
class ModelRequest:
    """One call: a user turn of text and images, in order, or a conversation of turns (its
    parts grouped by `TurnStart` parts, see `turns`).

    `stable_prefix_parts` leading parts are identical at every step of a run (preamble and
    demonstrations): providers with prompt caching mark the cache boundary there.
    `answer_prefix` is the text a completion (base) model continues from, e.g. "Action:";
    chat models get the parts alone. `stop` applies to completion models only. `system`, if
    given, goes to a chat provider's own system field and precedes a completion prompt.
    `choices`, if given, are the only answers the model may give (`--constrained`): each
    client that can constrain its decoding does so by its provider's own mechanism, and
    its answer's text is then the choice alone.
    """

    parts: tuple[Part, ...]
    system: str = ""
    stable_prefix_parts: int = 0
    answer_prefix: str = ""
    stop: tuple[str, ...] = ()
    max_tokens: int = 16
    temperature: float = 0.0
    seed: int = 0
    choices: tuple[str, ...] = ()

    def completion_text(self) -> str:
        """The prompt as one text, for completion models (which accept no images). A
        conversation's turns are read as one text: a `TurnStart` adds none (each turn's text
        ends in a newline already), and, as for chat models, its last turn is a user's."""
        texts: list[str] = []
        role = last = "user"  # the turn in effect, and that of the last text
        for part in self.parts:
            if isinstance(part, TextPart):
                texts.append(part.text)
                last = role
            elif isinstance(part, TurnStart):
                role = part.role
            else:
                raise ValueError("a completion prompt cannot hold images")
        if last != "user":
            raise ValueError("a conversation ends with a user turn")
        return self.system + "".join(texts) + self.answer_prefix

    @cached_property
    def prompt_hash(self) -> str:
        """A hash of the prompt (text, and images by their hashes), computed once per request:
        recorded with each step and part of the call's cache key."""
        digest = hashlib.sha256()
        if self.system:  # absent from the hash when empty, so that earlier hashes stay valid
            digest.update(b"S%d:" % len(self.system.encode()) + self.system.encode())
        for part in self.parts:
            if isinstance(part, TextPart):
                digest.update(b"T%d:" % len(part.text.encode()) + part.text.encode())
            elif isinstance(part, TurnStart):  # only in conversations: other hashes stay
                digest.update(b"R:" + part.role.encode() + b";")
            else:
                digest.update(b"I:" + part.sha256.encode())
        return digest.hexdigest()

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the answer, the prompt by its hash (the choices only
        when there are some: the calls cached before them keep their keys)."""
        fields = {
            "prompt_sha256": self.prompt_hash,
            "answer_prefix": self.answer_prefix,
            "stop": list(self.stop),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }
        return {**fields, "choices": list(self.choices)} if self.choices else fields


@dataclass(frozen=True)
class ModelResponse:
    """One answer, in the same shape for every provider."""

    text: str
    stop_reason: str = StopReason.STOP  # one of StopReason, once checked (`check_response`)
    prompt_tokens: int = 0  # all prompt tokens, cached and cache-written ones included
    completion_tokens: int = 0  # all generated tokens, reasoning included (as billed)
    cached_tokens: int = 0  # prompt tokens served from a prefix / prompt cache
    cache_write_tokens: int = 0  # prompt tokens written to a provider's prompt cache
    reasoning_tokens: int = 0
    latency_s: float = 0.0
    from_cache: bool = field(default=False, compare=False)

    def to_json(self) -> str:
        fields = {
            "text": self.text,
            "stop_reason": self.stop_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "latency_s": self.latency_s,
        }
        return json.dumps(fields, sort_keys=True)

    @classmethod
    def from_json(cls, payload: str | bytes) -> ModelResponse:
        """A cached answer read back and checked: ValueError, with the reason, for anything
        that is not a valid response (a damaged or hand-edited cache row)."""
        if not isinstance(payload, str | bytes):
            raise ValueError(f"a cached answer is a JSON text, not {type(payload).__name__}")
        try:
            fields = json.loads(payload)
        except RecursionError:  # nesting deeper than the parser's stack
            raise ValueError("a cached answer is nested too deeply") from None
        if not isinstance(fields, dict):
            raise ValueError("a cached answer is not a JSON object")
        # Fields added after the first release may be missing: they take their defaults.
        if "text" not in fields:
            raise ValueError("a cached answer has no text")
        known = {
            key: fields[key]
            for key in ("text", "stop_reason", *TOKEN_FIELDS, "latency_s")
            if key in fields
        }
        return check_response(cls(**known, from_cache=True))


def response_problem(response: ModelResponse) -> str | None:
    """What makes a response impossible to trust, or None: counts that are not whole numbers
    in 0 … MAX_TOKENS_PER_CALL or contradict each other, a text that is not a string of at
    most MAX_ANSWER_CHARS characters, an unknown stop reason, a latency that is not a finite
    number of seconds. The values themselves are not quoted: they came from the server."""
    for name in TOKEN_FIELDS:
        value = getattr(response, name)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} is a {type(value).__name__}, not a whole number"
        if not 0 <= value <= MAX_TOKENS_PER_CALL:
            return f"{name} is outside 0 … {MAX_TOKENS_PER_CALL:_}"
    for name in ("cached_tokens", "cache_write_tokens"):
        if getattr(response, name) > response.prompt_tokens:
            return f"{name} is more than prompt_tokens"
    if response.reasoning_tokens > response.completion_tokens:
        return "reasoning_tokens is more than completion_tokens"
    text = response.text
    if not isinstance(text, str):
        return f"the text is a {type(text).__name__}, not a string"
    if len(text) > MAX_ANSWER_CHARS:
        return f"the text has {len(text):_} characters, more than {MAX_ANSWER_CHARS:_}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "the text is not valid Unicode (a lone surrogate)"
    if not isinstance(response.stop_reason, str) or response.stop_reason not in STOP_REASONS:
        return "the stop reason is not a known one"
    latency = response.latency_s
    if isinstance(latency, bool) or not isinstance(latency, int | float):
        return f"latency_s is a {type(latency).__name__}, not a number"
    if not (math.isfinite(latency) and latency >= 0):
        return "latency_s is not a finite number of seconds"
    return None


def check_response(response: ModelResponse) -> ModelResponse:
    """The response if it can be trusted (its latency as a float), else ValueError naming
    what is wrong. Every answer passes here before it is used or cached."""
    problem = response_problem(response)
    if problem is not None:
        raise ValueError(problem)
    if not isinstance(response.latency_s, float):
        response = replace(response, latency_s=float(response.latency_s))
    return response


def token_count(value: object, name: str) -> int:
    """A token count read from an SDK object that did not check it: None counts 0; anything
    but a whole number is a ValueError (then the answer is unreadable)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} is a {type(value).__name__}, not a whole number")
    return value


@dataclass(frozen=True)
class ModelOptions:
    """Settings a user may give any model; a provider ignores those that do not apply.

    Facts left `None` come from the model catalog (`lmact/models/catalog.toml`).
    """

    context_window: int | None = None
    threads: int | None = None
    max_images: int | None = None  # images one request may hold
    base_url: str | None = None
    # openai-compatible: more servers of the same model, asked in turn with base_url.
    more_base_urls: tuple[str, ...] = ()
    chat: bool = True  # OpenAI-compatible servers: chat endpoint, or plain completions
    timeout_s: float | None = None  # one attempt of one call (networked models: 120 s)
    max_retries: int = 6  # further attempts after a transient failure
    # The longest one wait may last, whether a server's Retry-After or the backoff (seconds):
    # a server asking for hours, or a date years ahead, pauses a run this long at most.
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    # Tokens a reasoning model may think for, on top of the answer's own limit (OpenAI
    # reasoning models: 4096 when not given; Anthropic and Gemini: thinking when given).
    reasoning_budget: int | None = None
    input_price: float | None = None  # USD per million prompt tokens
    output_price: float | None = None  # USD per million completion tokens


class ModelCallError(LmactError):
    """A call that retrying cannot fix (invalid request, retries exhausted): its episode
    stops, resumable; the run's other episodes go on."""


class ModelAuthError(ModelCallError):
    """The provider refused the credentials: every call would fail, so the whole run stops."""


class TransientModelError(Exception):
    """A call that may succeed if tried again: rate limit, overload, 5xx, timeout, dropped
    connection, unreadable answer. `retry_after` is the server's requested wait, if any;
    `reason` says in a few words why it pauses calls (e.g. "rate limit (HTTP 429)")."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        reason: str = "",
        crowded: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason
        # The provider serves fewer requests at once than it was sent (a rate limit, an
        # overload): the caller sends it fewer (`lmact.models.limits`).
        self.crowded = crowded


class UnreadableAnswerError(TransientModelError):
    """An answer that came but cannot be used: not the expected format, or numbers no real
    answer has. Retried; if every attempt is unreadable, the call is an empty answer with
    stop reason "unreadable" instead of a failure."""


class ModelClient(ABC):
    """One model. Subclasses are registered by provider name in `lmact.models.registry`."""

    accepts_images: bool = False
    # Calls worth caching (a test double may say no).
    cacheable: bool = True
    # Requests in flight at once; the caller's semaphore enforces it.
    max_concurrency: int = 1
    # Keeps the KV cache of the last prompt between calls (the embedded model): worth a
    # moment's wait, at one connection, for the call that would reuse all of it.
    keeps_last_prefix: bool = False
    # Decodes under a constraint onto a request's `choices` (`--constrained`); else why not.
    constrains: bool = False
    unconstrained_because: str = "its provider has no constrained decoding lmact uses"

    def __init__(self, name: str, options: ModelOptions) -> None:
        self.name = name
        self.options = options

    @property
    def context_window(self) -> int | None:
        """Tokens the model accepts in one request (prompt and answer), if known."""
        return self.options.context_window

    @property
    def max_images(self) -> int | None:
        """Images the model accepts in one request, if limited."""
        return self.options.max_images

    @property
    def attempt_timeout_s(self) -> float | None:
        """How long one attempt at a call may take before it is abandoned and retried."""
        return self.options.timeout_s

    def cost_usd(self, response: ModelResponse) -> float | None:
        """What a call cost in USD, if the model's prices are known."""
        return None

    def completion_cap(self, request: ModelRequest) -> int:
        """The completion tokens a call of `request` is capped at, as the client asks the
        server: the answer's and whatever room it adds (thinking, a structured answer's
        wrapping), all billed as completion. One home for both the request and the most a
        call may cost (`--max-cost`)."""
        return request.max_tokens

    def check_ready(self) -> None:  # noqa: B027 - most clients need nothing
        """Fail with a one-line LmactError if the client cannot work (e.g. no API key);
        called before a run's first call, not for a dry run."""

    def identity(self) -> dict[str, Any]:
        """What, besides the request, determines the answer: part of every cache key."""
        return {"model": self.name}

    @abstractmethod
    def count_tokens(self, parts: Sequence[Part]) -> int:
        """Prompt tokens that `parts` cost this model."""

    @abstractmethod
    async def complete(self, request: ModelRequest) -> ModelResponse:
        """Answer one request, from the request alone."""

    def close(self) -> None:  # noqa: B027 - most clients hold nothing to release
        """Release what the client holds (connections, loaded weights)."""


def estimate_tokens(parts: Sequence[Part], image_tokens: int = 256) -> int:
    """A documented estimate for models without a tokenizer here: four characters a token,
    and a flat cost per image."""
    chars = sum(len(p.text) for p in parts if isinstance(p, TextPart))
    images = sum(1 for p in parts if isinstance(p, ImagePart))
    return -(-chars // 4) + images * image_tokens


# --- Constrained answers: each provider's form of "one of these" ---------------------------

ANSWER_FIELD = "action"  # the one field of a constrained JSON answer


def choice_grammar(choices: Sequence[str]) -> str:
    """A GBNF grammar (llama.cpp's) whose sentences are the choices, after an optional space
    (a completion continues "Action:")."""
    return 'root ::= " "? (' + " | ".join(_gbnf_literal(c) for c in choices) + ")"


def _gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def choice_schema(choices: Sequence[str]) -> dict[str, Any]:
    """A JSON schema of an object whose one field is one of the choices (OpenAI's structured
    outputs want an object at the root, every field required, no other)."""
    return {
        "type": "object",
        "properties": {ANSWER_FIELD: {"type": "string", "enum": list(choices)}},
        "required": [ANSWER_FIELD],
        "additionalProperties": False,
    }


def read_choice(text: str, choices: Sequence[str]) -> str:
    """The choice a constrained answer holds: the JSON object of `choice_schema` or the bare
    choice; anything else (a server that ignored the constraint) is returned as it came,
    for the task's parser to judge."""
    stripped = text.strip()
    if stripped in choices:
        return stripped
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        return text
    if isinstance(value, dict) and isinstance(value.get(ANSWER_FIELD), str):
        return value[ANSWER_FIELD]
    return text
