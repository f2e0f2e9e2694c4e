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
import os
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

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
    PolicyOracle,
    TextPart,
    TransientModelError,
)
from lmact.models.catalog import ModelFacts, model_facts

# HTTP statuses worth another attempt: timeout, conflict, rate limit, server errors,
# Anthropic's "overloaded" (529).
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
REDACTED = "[redacted]"
# Longest server text kept in an error message: an error page can be long.
MAX_DETAIL_CHARS = 300
DEFAULT_TIMEOUT_S = 120.0
# Completion tokens left for thinking, on top of the answer, for models that always think.
DEFAULT_REASONING_BUDGET = 4096


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a server asks for: `retry-after-ms`, or `retry-after` in seconds or as a date."""
    if not headers:
        return None
    lowered = {key.lower(): value for key, value in headers.items()}
    if "retry-after-ms" in lowered:
        try:
            return max(float(lowered["retry-after-ms"]) / 1000, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value.strip() else None
        return max(when.timestamp() - time.time(), 0.0) if when else None


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
        self.base_url = options.base_url or next(
            (os.environ[v] for v in self.base_url_variables if os.environ.get(v)), None
        )
        self._sdk_client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncIterator[None] | None = None

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
        for variable in self.key_variables:
            value = os.environ.get(variable)
            if value:
                return value
        return None

    def load_sdk(self) -> Any:
        """Import the provider's SDK: a one-line LmactError naming the extra if it is absent."""
        return None

    def check_ready(self) -> None:
        self.load_sdk()
        if self.key_variables and self.api_key() is None:
            names = " or ".join(self.key_variables)
            raise LmactError(f"model {self.name} needs an API key: set {names}")

    def redact(self, text: str) -> str:
        """`text` with the API key taken out, for messages that may echo a request."""
        key = self.api_key()
        return text.replace(key, REDACTED) if key else text

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
            self._closer = _close_at_loop_end(self, client)
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

    async def complete(
        self, request: ModelRequest, oracle: PolicyOracle | None = None
    ) -> ModelResponse:
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
            # Rebuilt with the key taken out: an error body may echo the request.
            if isinstance(translated, TransientModelError):
                raise TransientModelError(
                    self.redact(str(translated)), translated.retry_after
                ) from None
            raise type(translated)(self.redact(str(translated))) from None
        if not response.latency_s:
            response = replace(response, latency_s=time.perf_counter() - started)
        return response

    def detail(self, text: str) -> str:
        """A server's words, fit for an error message: the key taken out first (so that no
        fragment of it survives the cut), on one line, at most MAX_DETAIL_CHARS long."""
        text = " ".join(self.redact(text).split())
        return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + " …"

    def timeout_error(self) -> TransientModelError:
        return TransientModelError(f"{self.name}: no answer within {self.attempt_timeout_s:g} s")

    def connection_error(self, detail: str) -> TransientModelError:
        return TransientModelError(f"{self.name}: connection failed ({self.detail(detail)})")

    def status_error(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> Exception:
        """An HTTP error status sorted into retry (with the server's wait) or stop."""
        text = f"{self.name}: HTTP {status}: {self.detail(message)}"
        if status in RETRYABLE_STATUSES:
            return TransientModelError(text, retry_after_seconds(headers))
        if status in (401, 403):
            text += f" (check {' / '.join(self.key_variables) or 'the credentials'})"
            return ModelAuthError(text)
        return ModelCallError(text)

    def close(self) -> None:
        self._client_loop = None  # the next call, in any loop, opens a new client


async def _close_at_loop_end(model: RemoteModel, client: Any) -> AsyncIterator[None]:
    """Suspended until the event loop shuts down its async generators, then closes `client`."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a connection already gone is closed enough
            await model.aclose_sdk_client(client)
