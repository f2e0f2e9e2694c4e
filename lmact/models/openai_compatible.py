"""`openai-compatible/<model>`: a server that speaks OpenAI's API (vLLM, SGLang, llama.cpp's
server, Ollama, LiteLLM), through the `openai` SDK pointed at its base URL.

Two modes: chat completions (`ModelOptions.chat`, the default), for models with a chat
template; plain completions (`chat=False`), for base models, where the prompt is one text
that ends in the answer prefix and the model stops at the request's stop strings. The model
is unknown to the catalog: token counts are the four-characters estimate and costs are
known only if the user gives prices.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

from lmact.errors import LmactError
from lmact.models.base import (
    ImagePart,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
)
from lmact.models.openai import JSON_ROOM, OpenAIModel, import_openai, structured_choice
from lmact.models.redaction import display_url, url_secrets, url_without_credentials
from lmact.models.remote import RemoteModel, base_url_problem, close_at_loop_end

# Sent when no key is set: most self-hosted servers check none, but the SDK wants one.
PLACEHOLDER_KEY = "EMPTY"
# A server of several that could not be reached is passed over this long (unless all are
# down), so that the calls after a server dies do not each try it first and back off.
SERVER_DOWN_S = 30.0
# The server the current call (its task) was sent to, to mark it down if unreachable.
_chosen_server: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chosen_server", default=None
)


class OpenAICompatibleModel(OpenAIModel):
    """A model behind any OpenAI-compatible server; the base URL is required."""

    key_variables: ClassVar[tuple[str, ...]] = ("OPENAI_COMPATIBLE_API_KEY",)
    base_url_variables: ClassVar[tuple[str, ...]] = ("OPENAI_COMPATIBLE_BASE_URL",)
    several_servers: ClassVar[bool] = True

    def __init__(self, name: str, options: ModelOptions) -> None:
        super().__init__(name, options)
        # A completion prompt is one text: no images in that mode.
        self.accepts_images = options.chat
        for url in options.more_base_urls:
            problem = base_url_problem(url)
            if problem is not None:
                raise LmactError(f"--base-url: the base URL {display_url(url)!r} {problem}")
        # Several servers of one model: each attempt goes to the next in turn, so requests
        # spread across them and a retry after a failure goes to another one.
        self.base_urls = [self.base_url, *options.more_base_urls] if self.base_url else []
        self._clients: dict[str, Any] = {}
        self._clients_loop: asyncio.AbstractEventLoop | None = None
        self._closers: list[AsyncIterator[None]] = []
        self._turn = 0
        self._down_until: dict[str, float] = {}  # time.monotonic(), by base URL

    @property
    def mode(self) -> str:
        return "chat" if self.options.chat else "completions"

    @property
    def reasoning(self) -> bool:
        return False  # no catalog, no name rules: the server's model is whatever it serves

    def identity(self) -> dict[str, Any]:
        # The same model name on another server, or through another endpoint, may answer
        # differently; the credentials in the URL do not change answers, and stay out.
        urls = sorted(url_without_credentials(url) for url in self.base_urls)
        # One server as before (a string); several as the sorted list, whatever the order.
        base_url = (urls[0] if len(urls) == 1 else urls) if urls else None
        return {"model": self.name, "base_url": base_url, "mode": self.mode}

    def secrets(self) -> list[str]:
        extra = [secret for url in self.base_urls[1:] for secret in url_secrets(url)]
        return super().secrets() + extra

    def count_text_tokens(self, text: str) -> int:
        return RemoteModel.count_text_tokens(self, text)  # no tokenizer known: the estimate

    def check_ready(self) -> None:
        if not self.base_url:
            raise LmactError(
                f"model {self.name} needs the server's address: give --base-url "
                "(e.g. http://localhost:8000/v1) or set OPENAI_COMPATIBLE_BASE_URL"
            )
        self.load_sdk()
        self.api_key()  # optional, but one that is set must be usable

    def make_sdk_client(self, base_url: str | None = None) -> Any:
        openai = import_openai()
        return openai.AsyncOpenAI(
            api_key=self.api_key() or PLACEHOLDER_KEY,
            base_url=base_url or self.base_url,
            max_retries=0,
            timeout=self.attempt_timeout_s,
        )

    async def loop_client(self) -> Any:
        """The running loop's SDK client of the server whose turn it is (one client per
        server and loop, each closed when its loop ends)."""
        if len(self.base_urls) <= 1:
            return await super().loop_client()
        loop = asyncio.get_running_loop()
        if self._clients_loop is not loop:
            self.check_ready()
            self._clients = {url: self.make_sdk_client(url) for url in self.base_urls}
            self._clients_loop = loop
            self._closers = [close_at_loop_end(self, c) for c in self._clients.values()]
            for closer in self._closers:
                await anext(closer)
        url = self._next_server()
        _chosen_server.set(url)
        return self._clients[url]

    def _next_server(self) -> str:
        """The next server in turn that is not marked down (if all are, the next)."""
        now, count = time.monotonic(), len(self.base_urls)
        for offset in range(count):
            url = self.base_urls[(self._turn + offset) % count]
            if self._down_until.get(url, 0.0) <= now:
                self._turn += offset + 1
                return url
        url = self.base_urls[self._turn % count]
        self._turn += 1
        return url

    def translate_error(self, error: Exception) -> Exception | None:
        if isinstance(error, import_openai().APIConnectionError):  # timeouts are one too
            server = _chosen_server.get()
            if server is not None:
                self._down_until[server] = time.monotonic() + SERVER_DOWN_S
        return super().translate_error(error)

    def status_error(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> Exception:
        if status == 404 and self.base_url:
            shown = display_url(self.base_url)
            message += f" (is the base URL {shown} right? servers usually serve /v1)"
        return super().status_error(status, message, headers)

    # --- the request -----------------------------------------------------------------------

    def turn_content(self, parts: Sequence[Part]) -> list[dict[str, Any]] | str:
        # Plain text for a turn without images: every server's chat template takes a string.
        if not any(isinstance(part, ImagePart) for part in parts):
            return "".join(part.text for part in parts if isinstance(part, TextPart))
        return super().turn_content(parts)

    def chat_parameters(self, request: ModelRequest) -> dict[str, Any]:
        # `max_tokens`: older servers do not know `max_completion_tokens`; no cache key,
        # which is OpenAI's own (servers with prefix caching match prefixes themselves).
        parameters = {
            "model": self.model,
            "messages": self.messages(request),
            "max_tokens": self.completion_cap(request),
            "temperature": request.temperature,
            "seed": request.seed,
        }
        return _constrained(parameters, request)

    def completion_parameters(self, request: ModelRequest) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "model": self.model,
            "prompt": request.completion_text(),
            "max_tokens": self.completion_cap(request),
            "temperature": request.temperature,
            "seed": request.seed,
        }
        if request.stop:
            parameters["stop"] = list(request.stop)
        return _constrained(parameters, request)

    def completion_cap(self, request: ModelRequest) -> int:
        return request.max_tokens + (JSON_ROOM if request.choices else 0)

    async def send(self, request: ModelRequest) -> ModelResponse:
        if self.options.chat:
            return await super().send(request)
        client = await self.loop_client()
        raw = await client.completions.with_raw_response.create(
            **self.completion_parameters(request)
        )
        return self.read_text_completion(raw.content)


def _constrained(parameters: dict[str, Any], request: ModelRequest) -> dict[str, Any]:
    """With choices, OpenAI's `response_format` (vLLM, SGLang and llama.cpp's server take
    it, on chat and on completions; the room its JSON takes is in `completion_cap`)."""
    if not request.choices:
        return parameters
    return {**parameters, "extra_body": {"response_format": structured_choice(request.choices)}}
