"""What every networked provider shares: keys and base URLs from the environment, catalog
facts, token counting, cost, and sorting failures into "try again" and "stop".

A provider module subclasses `RemoteModel`, builds its SDK client in `make_sdk_client`,
translates a `ModelRequest` in `send`, and maps its SDK's exceptions in `translate_error`.
Retries, backoff and concurrency live in `lmact.models.caller`, above every provider; the
SDKs' own retries are switched off so that no call is retried twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import os
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC
from typing import Any, ClassVar
from urllib.parse import urlsplit

from lmact.errors import LmactError
from lmact.models.base import (
    ImagePart,
    ModelAuthError,
    ModelCallError,
    ModelClient,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    TransientModelError,
    UnreadableAnswerError,
    read_choice,
)
from lmact.models.catalog import ModelFacts, model_facts
from lmact.models.redaction import REDACTED, display_url, redact_secrets, url_secrets

# HTTP statuses worth another attempt: timeout, conflict, rate limit, server errors,
# Anthropic's "overloaded" (529).
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
# Statuses that say the provider is sent more than it serves: the caller sends fewer.
CROWDED_STATUSES = frozenset({429, 503, 529})
# What a retryable status means, in the words a paused run shows (others: "server error").
STATUS_REASONS = {
    408: "request timeout",
    409: "conflict",
    425: "too early",
    429: "rate limit",
    503: "overloaded",
    529: "overloaded",
}
# A secret shorter than this is not taken out of answers (it is taken out of error messages):
# it would garble ordinary words, e.g. a local server's placeholder key "EMPTY" or "x".
MIN_ANSWER_SECRET_CHARS = 8
# Longest server text kept in an error message: an error page can be long.
MAX_DETAIL_CHARS = 300
DEFAULT_TIMEOUT_S = 120.0
# Completion tokens left for thinking, on top of the answer, for models that always think.
DEFAULT_REASONING_BUDGET = 4096


def _seconds(value: str) -> float | None:
    """A number of seconds as a server writes it, if finite and ≥ 0 ("inf", "nan", "1e400",
    "-1" and words are not)."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _seconds_until(date: str) -> float | None:
    """Seconds from now until an HTTP date (0 if it is past); None if it is not a date."""
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (ValueError, TypeError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - time.time(), 0.0)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a server asks for: `retry-after-ms`, else `retry-after` in seconds or as an
    HTTP date; None when neither is there or parses. The caller caps the wait."""
    if not headers:
        return None
    lowered = {str(key).lower(): str(value).strip() for key, value in headers.items()}
    milliseconds = _seconds(lowered.get("retry-after-ms", ""))
    if milliseconds is not None:
        return milliseconds / 1000
    value = lowered.get("retry-after", "")
    if not value:
        return None
    seconds = _seconds(value)
    return seconds if seconds is not None else _seconds_until(value)


CONTROL_CODES = frozenset({*range(32), 127})


def api_key_problem(key: str) -> str | None:
    """What makes `key` (already stripped) unusable in an HTTP header, said without showing
    any of it: the kind and position of the first bad character."""
    for position, character in enumerate(key, start=1):
        if character in "\r\n":
            kind = "a line break"
        elif character == "\t":
            kind = "a tab"
        elif character.isspace():
            kind = "a space" if character == " " else "whitespace"
        elif ord(character) in CONTROL_CODES:
            kind = "a control character"
        elif ord(character) > 127:
            kind = "a non-ASCII character"
        else:
            continue
        return f"holds {kind} at character {position}; an API key is printable ASCII"
    return None


def base_url_problem(url: str) -> str | None:
    """Why `url` cannot be a provider's base URL, or None: it needs scheme http or https, a
    host, and no whitespace or control characters."""
    if any(character.isspace() or ord(character) in CONTROL_CODES for character in url):
        return "holds whitespace or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "is not a URL (a bad port or host)"
    if parts.scheme.lower() not in ("http", "https"):
        return "needs the scheme http:// or https://"
    if not parts.hostname:
        return "names no host"
    return None


def missing_sdk(provider: str, package: str, extra: str) -> LmactError:
    return LmactError(f"{provider} models need the {package} package: pip install 'lmact[{extra}]'")


class RemoteModel(ModelClient):
    """A model behind an HTTP API. Subclasses set the class attributes and three methods."""

    accepts_images = True
    max_concurrency = 8
    # Environment variables holding the key, in order of preference (empty: no key needed).
    key_variables: ClassVar[tuple[str, ...]] = ()
    # Environment variables holding a base URL that replaces the provider's default.
    base_url_variables: ClassVar[tuple[str, ...]] = ()
    # Whether the model may be asked across several servers (ModelOptions.more_base_urls).
    several_servers: ClassVar[bool] = False

    def __init__(self, name: str, options: ModelOptions) -> None:
        super().__init__(name, options)
        self.model = name.partition("/")[2]
        # The catalog's facts with what the user gave in their place, merged once.
        given = {
            "context_window": options.context_window,
            "max_images": options.max_images,
            "input_price": options.input_price,
            "output_price": options.output_price,
        }
        self.facts: ModelFacts = model_facts(name).model_copy(
            update={key: value for key, value in given.items() if value is not None}
        )
        self.base_url = self._given_base_url()
        if options.more_base_urls and not self.several_servers:
            raise LmactError(
                f"model {name}: --base-url is given more than once; only openai-compatible/ "
                "models are asked across several servers"
            )
        self._sdk_client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncIterator[None] | None = None

    def _given_base_url(self) -> str | None:
        """--base-url, else the first of `base_url_variables` that is set; checked, so that a
        bad one is a one-line error (with the URL's credentials redacted) before any work."""
        given = [("--base-url", self.options.base_url)]
        given += [(variable, os.environ.get(variable)) for variable in self.base_url_variables]
        source, url = next(((source, url) for source, url in given if url), ("", None))
        if not url:
            return None
        problem = base_url_problem(url)
        if problem is not None:
            raise LmactError(f"{source}: the base URL {display_url(url)!r} {problem}")
        return url

    # --- facts -----------------------------------------------------------------------

    @property
    def context_window(self) -> int | None:
        return self.facts.context_window

    @property
    def max_images(self) -> int | None:
        return self.facts.max_images

    @property
    def attempt_timeout_s(self) -> float:
        return self.options.timeout_s or DEFAULT_TIMEOUT_S

    def cost_usd(self, response: ModelResponse) -> float | None:
        return self.facts.cost_usd(response)

    @property
    def reasoning(self) -> bool:
        """Whether the model always thinks before it answers (billed as completion tokens)."""
        return self.facts.reasoning

    def reasoning_room(self) -> int:
        """Completion tokens allowed for thinking on top of the answer: the user's
        --reasoning-budget, else a default for models that always think, else none."""
        if self.options.reasoning_budget is not None:
            return self.options.reasoning_budget
        return DEFAULT_REASONING_BUDGET if self.reasoning else 0

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        if self.options.reasoning_budget is not None:  # thinking changes the answer
            identity["reasoning_budget"] = self.options.reasoning_budget
        return identity

    def count_text_tokens(self, text: str) -> int:
        """Tokens of a text; a documented estimate (four characters a token) by default."""
        return -(-len(text) // 4)

    def count_tokens(self, parts: Sequence[Part]) -> int:
        text = "".join(part.text for part in parts if isinstance(part, TextPart))
        images = sum(
            self.facts.image_tokens(*part.size) for part in parts if isinstance(part, ImagePart)
        )
        return self.count_text_tokens(text) + images

    # --- keys and the SDK client -----------------------------------------------------------

    def api_key(self) -> str | None:
        """The key from the first of `key_variables` that is set, without surrounding
        whitespace (a `.env` file's CR/LF); a one-line LmactError if it cannot be a key."""
        for variable in self.key_variables:
            key = os.environ.get(variable, "").strip()
            if key:
                problem = api_key_problem(key)
                if problem is not None:
                    raise LmactError(f"{variable} {problem}")
                return key
        return None

    def secrets(self) -> list[str]:
        """What must never be shown: every key variable's value as set (redaction also
        covers it stripped), and the credentials in the base URL."""
        values = [os.environ.get(variable, "") for variable in self.key_variables]
        return [value for value in values if value] + url_secrets(self.base_url)

    def load_sdk(self) -> Any:
        """Import the provider's SDK: a one-line LmactError naming the extra if it is absent."""
        return None

    def check_ready(self) -> None:
        self.load_sdk()
        if self.key_variables and self.api_key() is None:
            names = " or ".join(self.key_variables)
            raise LmactError(f"model {self.name} needs an API key: set {names}")

    def redact(self, text: str) -> str:
        """`text` with every form of every secret taken out, for messages that may echo a
        request."""
        return redact_secrets(text, self.secrets())

    def redact_answer(self, text: str) -> str:
        """An answer's text with the secrets taken out (a server may echo the request), all
        but those too short to tell from ordinary words."""
        long_enough = [s for s in self.secrets() if len(s.strip()) >= MIN_ANSWER_SECRET_CHARS]
        return redact_secrets(text, long_enough)

    async def loop_client(self) -> Any:
        """The SDK client of the running event loop.

        An SDK's connection pool belongs to the loop that opened it, and every run is a new
        `asyncio.run`: each loop gets a client of its own, closed when that loop shuts down
        its async generators, so that no connection outlives its loop.
        """
        loop = asyncio.get_running_loop()
        if self._client_loop is not loop:
            self.check_ready()
            client = self.make_sdk_client()
            self._sdk_client, self._client_loop = client, loop
            self._closer = close_at_loop_end(self, client)
            await anext(self._closer)
        return self._sdk_client

    async def aclose_sdk_client(self, client: Any) -> None:
        """Close an SDK client's connections; called when its event loop ends."""
        await client.close()

    @abstractmethod
    def make_sdk_client(self) -> Any:
        """The provider's async SDK client, with its own retries off and our timeout."""

    @abstractmethod
    async def send(self, request: ModelRequest) -> ModelResponse:
        """One attempt at one call, through the SDK."""

    @abstractmethod
    def translate_error(self, error: Exception) -> Exception | None:
        """The SDK's exception as a `TransientModelError` or `ModelCallError` (None: a bug)."""

    # --- the call ----------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelResponse:
        started = time.perf_counter()
        try:
            response = await self.send(request)
        except Exception as error:
            translated = (
                error
                if isinstance(error, TransientModelError | ModelCallError)
                else self.translate_error(error)
            )
            if translated is None:
                raise
            # The key taken out in place (its type, wait and reason kept): an error body may
            # echo the request.
            translated.args = tuple(
                self.redact(arg) if isinstance(arg, str) else arg for arg in translated.args
            )
            raise translated from None
        if not response.latency_s:
            response = replace(response, latency_s=time.perf_counter() - started)
        if request.choices and self.constrains:  # the provider's envelope (JSON …) unwrapped
            response = replace(response, text=read_choice(response.text, request.choices))
        # A server may echo the request's credentials in an answer: what is cached and stored
        # is the answer without them.
        if isinstance(response.text, str) and isinstance(response.stop_reason, str):
            response = replace(
                response,
                text=self.redact_answer(response.text),
                stop_reason=self.redact_answer(response.stop_reason),
            )
        return response

    def detail(self, text: str) -> str:
        """A server's words, fit for an error message: the key taken out first (so that no
        fragment of it survives the cut), on one line, at most MAX_DETAIL_CHARS long."""
        text = " ".join(self.redact(text).split())
        if len(text) <= MAX_DETAIL_CHARS:
            return text
        cut = MAX_DETAIL_CHARS
        # A cut inside a "[redacted]" marker would leave "[redac", which reads like a fragment
        # of something: keep the marker whole.
        marker_start = text.rfind(REDACTED[0], max(cut - len(REDACTED) + 1, 0), cut)
        if marker_start >= 0 and text.startswith(REDACTED, marker_start):
            cut = marker_start + len(REDACTED)
        return text[:cut] + " …"

    def timeout_error(self) -> TransientModelError:
        return TransientModelError(f"{self.name}: no answer within {self.attempt_timeout_s:g} s")

    def unreadable_answer(self, detail: str) -> UnreadableAnswerError:
        """An answer that cannot be read, worth another attempt; `detail` says why."""
        return UnreadableAnswerError(f"{self.name}: unreadable answer ({self.detail(detail)})")

    def connection_error(self, detail: str) -> TransientModelError:
        return TransientModelError(f"{self.name}: connection failed ({self.detail(detail)})")

    def status_error(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> Exception:
        """An HTTP error status sorted into retry (with the server's wait) or stop."""
        text = f"{self.name}: HTTP {status}: {self.detail(message)}"
        if status in RETRYABLE_STATUSES:
            reason = f"{STATUS_REASONS.get(status, 'server error')} (HTTP {status})"
            crowded = status in CROWDED_STATUSES
            return TransientModelError(text, retry_after_seconds(headers), reason, crowded)
        if status in (401, 403):
            text += f" (check {' / '.join(self.key_variables) or 'the credentials'})"
            return ModelAuthError(text)
        return ModelCallError(text)

    def close(self) -> None:
        self._client_loop = None  # the next call, in any loop, opens a new client


async def close_at_loop_end(model: RemoteModel, client: Any) -> AsyncIterator[None]:
    """Suspended until the event loop shuts down its async generators, then closes `client`."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a connection already gone is closed enough
            await model.aclose_sdk_client(client)
