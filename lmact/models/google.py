"""`google/<model>`: Gemini through the Gemini Developer API (the `google-genai` SDK,
non-streaming, API version v1beta).

A conversation's turns are contents of role "user" or "model". A long stable prefix
(preamble and demonstrations) goes into an explicit context cache (`cachedContents`),
created once per distinct prefix and named by later requests, which then send only the rest
of the prompt (each split into contents by turns). The SDK's own retries are off:
`ModelCaller` retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError

from lmact.models.base import (
    STOP_REASONS,
    ImagePart,
    ModelCallError,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    Part,
    Role,
    TextPart,
    TransientModelError,
    TurnStart,
    conversation,
    role_at,
    token_count,
    turns,
)
from lmact.models.redaction import display_url
from lmact.models.remote import RETRYABLE_STATUSES, RemoteModel, missing_sdk

# Finish reasons that mean a filter, not the model, ended the answer.
FILTER_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)

# The SDK's types of what the API answers: a ValidationError naming one is a server's fault
# (one naming a request type would be lmact's, and is not retried).
ANSWER_TYPES = frozenset({"GenerateContentResponse", "CachedContent"})


def _sdk() -> tuple[Any, Any, Any]:
    """The SDK's `genai`, `types` and `errors` modules, imported on first use."""
    try:
        from google import genai
        from google.genai import errors, types
    except ImportError:
        raise missing_sdk("Google Gemini", "google-genai", "google") from None
    return genai, types, errors


def _transport_errors() -> tuple[tuple[type[Exception], ...], ...]:
    """(timeouts, unusable URLs, other connection failures) of the HTTP libraries the SDK
    may use, whichever are installed: httpx2 by default, httpx if chosen, and aiohttp for
    its async calls whenever aiohttp is installed (as many other packages install it)."""
    timeouts: list[type[Exception]] = []
    bad_url: list[type[Exception]] = []
    transport: list[type[Exception]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        bad_url += [module.UnsupportedProtocol, module.InvalidURL]
        transport.append(module.TransportError)
    try:
        import aiohttp
    except ImportError:
        pass
    else:  # a timeout is a connection error too: it is looked for first
        timeouts.append(aiohttp.ServerTimeoutError)
        bad_url.append(aiohttp.InvalidURL)
        transport += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    return tuple(timeouts), tuple(bad_url), tuple(transport)


def _count(usage: Any, field: str) -> int:
    return token_count(getattr(usage, field, None), field)


def _duration_s(value: Any) -> float | None:
    """A protobuf Duration as JSON ("37s", "0.5s") in seconds; None if it is not one, or
    too large to be a number of seconds ("1" and 400 zeros)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", str(value))
    seconds = float(match.group(1)) if match else None
    return seconds if seconds is not None and math.isfinite(seconds) else None


def retry_delay_s(details: Any) -> float | None:
    """The wait a Gemini error body asks for: its `google.rpc.RetryInfo` detail, which the
    API sends with a 429 in place of a Retry-After header."""
    error = details.get("error", details) if isinstance(details, Mapping) else None
    entries = error.get("details") if isinstance(error, Mapping) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and str(entry.get("@type", "")).endswith("RetryInfo"):
            return _duration_s(entry.get("retryDelay"))
    return None


def stop_reason(finish_reason: Any) -> str:
    name = str(getattr(finish_reason, "value", None) or finish_reason or "STOP").upper()
    if name == "STOP":
        return "stop"
    if name == "MAX_TOKENS":
        return "length"
    if name in FILTER_REASONS:
        return "content_filter"
    # Gemini's own reasons kept apart where lmact knows them (LANGUAGE), others are "other".
    return name.lower() if name.lower() in STOP_REASONS else "other"


@dataclass
class _PrefixCache:
    name: str
    created: float  # time.monotonic() at creation
    unclaimed_write_tokens: int  # reported by the first call that succeeds with the cache


class GoogleModel(RemoteModel):
    """Gemini models. Token counts are estimates: the SDK's local tokenizer downloads its
    model files from the internet on first use, so it is not used; text is four characters a
    token (the base rule) and images follow the catalog's `gemini` rule (258 tokens a tile).
    The API's usage figures are exact."""

    max_concurrency = 8
    constrains = True  # an enum response type (`text/x.enum`)
    key_variables: ClassVar[tuple[str, ...]] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    base_url_variables: ClassVar[tuple[str, ...]] = ("GOOGLE_GEMINI_BASE_URL",)
    # The SDK defaults to v1; v1beta is the version whose reference documents every field
    # used here (cachedContents, thinkingConfig, seed).
    api_version: ClassVar[str] = "v1beta"
    # A stable prefix this long (estimated tokens) or longer goes into an explicit context
    # cache. Gemini refuses caches below a model-dependent minimum (1,024 to 4,096 tokens),
    # and a cache costs storage by the hour, so only long demonstration prefixes are cached.
    cache_min_tokens: ClassVar[int] = 4096
    cache_ttl_s: ClassVar[int] = 3600
    # A cache this close to its expiry is replaced by a new one rather than used.
    cache_renew_margin_s: ClassVar[int] = 300
    # One attempt at deleting a cache when the client closes.
    cache_delete_timeout_s: ClassVar[float] = 5.0

    def __init__(self, name: str, options: ModelOptions) -> None:
        super().__init__(name, options)
        self._caches: dict[str, _PrefixCache] = {}  # prefix hash -> its cache
        self._uncached: set[str] = set()  # prefixes too short, or refused by the API
        self._created: list[str] = []  # cache names to delete on close
        # One lock per prefix and event loop (a runner runs each run in a new loop).
        self._locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()

    def load_sdk(self) -> Any:
        return _sdk()

    def make_sdk_client(self) -> Any:
        genai, types, _ = _sdk()
        return genai.Client(
            api_key=self.api_key(),
            vertexai=False,
            http_options=types.HttpOptions(
                base_url=self.base_url,
                api_version=self.api_version,
                timeout=int(self.attempt_timeout_s * 1000),  # milliseconds
                retry_options=types.HttpRetryOptions(attempts=1),  # one try: the caller retries
            ),
        )

    # --- the request -------------------------------------------------------------------

    def _contents(self, parts: Sequence[Part], role: Role = "user") -> list[Any]:
        """One `Content` per turn, "user" or "model" (Gemini's name for the assistant), the
        parts before the first turn start taking `role`. Empty text is left out (the API
        rejects empty parts), before the turns are found: a turn of empty text is none."""
        _, types, _ = _sdk()
        kept = (p for p in parts if not (isinstance(p, TextPart) and not p.text))
        contents = []
        for turn_role, group in turns((TurnStart(role), *kept)):
            sdk_parts = []
            for part in group:
                if isinstance(part, ImagePart):
                    sdk_parts.append(types.Part.from_bytes(data=part.png, mime_type="image/png"))
                elif isinstance(part, TextPart):
                    sdk_parts.append(types.Part.from_text(text=part.text))
            gemini_role = "model" if turn_role == "assistant" else "user"
            contents.append(types.Content(role=gemini_role, parts=sdk_parts))
        return contents or [types.Content(role="user", parts=[])]

    def completion_cap(self, request: ModelRequest) -> int:
        # Thinking models think by default, billed as output: leave room for it.
        return request.max_tokens + self.reasoning_room()

    def _config(self, request: ModelRequest, cache: _PrefixCache | None) -> Any:
        _, types, _ = _sdk()
        budget = self.options.reasoning_budget
        config: dict[str, Any] = {
            "max_output_tokens": self.completion_cap(request),
            "temperature": request.temperature,
            "seed": request.seed,
        }
        if budget is not None:
            config["thinking_config"] = types.ThinkingConfig(thinking_budget=budget)
        if request.choices:  # Gemini's enum answer: the text is one of them, nothing else
            config["response_mime_type"] = "text/x.enum"
            config["response_schema"] = {"type": "STRING", "enum": list(request.choices)}
        if cache is not None:
            config["cached_content"] = cache.name  # the system instruction lives in the cache
        elif request.system:
            config["system_instruction"] = request.system
        return types.GenerateContentConfig(**config)

    def _lock(self, key: str) -> asyncio.Lock:
        locks = self._locks.setdefault(asyncio.get_running_loop(), {})
        return locks.setdefault(key, asyncio.Lock())

    def _fresh(self, key: str) -> _PrefixCache | None:
        cache = self._caches.get(key)
        if cache is None:
            return None
        if time.monotonic() - cache.created > self.cache_ttl_s - self.cache_renew_margin_s:
            return None
        return cache

    async def _prefix_cache(self, request: ModelRequest) -> _PrefixCache | None:
        """The context cache holding this request's stable prefix (and system instruction),
        created on first need; None when the prefix is not worth caching or cannot be."""
        prefix = request.parts[: request.stable_prefix_parts]
        key = ModelRequest(parts=prefix, system=request.system).prompt_hash
        cache = self._fresh(key)
        if cache is not None or key in self._uncached:
            return cache
        if self.count_tokens(prefix) + self.count_text_tokens(request.system) < (
            self.cache_min_tokens
        ):
            self._uncached.add(key)
            return None
        async with self._lock(key):  # concurrent episodes: one creates, the others wait
            cache = self._fresh(key)
            if cache is not None or key in self._uncached:
                return cache
            _, types, errors = _sdk()
            try:
                created = await (await self.loop_client()).aio.caches.create(
                    model=self.model,
                    config=types.CreateCachedContentConfig(
                        contents=self._contents(prefix),
                        system_instruction=request.system or None,
                        ttl=f"{self.cache_ttl_s}s",
                    ),
                )
            except errors.APIError as error:
                if error.code in RETRYABLE_STATUSES:
                    raise  # worth another attempt, through the caller
                # Refused (model without caching, prefix too small …): send it uncached.
                self._uncached.add(key)
                return None
            if not created.name:
                self._uncached.add(key)
                return None
            cache = _PrefixCache(
                created.name,
                time.monotonic(),
                _count(created.usage_metadata, "total_token_count"),
            )
            self._caches[key] = cache
            self._created.append(created.name)
            return cache

    def _forget(self, cache: _PrefixCache) -> None:
        for key, known in list(self._caches.items()):
            if known is cache:
                del self._caches[key]

    async def send(self, request: ModelRequest) -> ModelResponse:
        conversation(request.parts)  # checked as every client does; sent by turns below
        _, _, errors = _sdk()
        client = await self.loop_client()
        cache = None
        if 0 < request.stable_prefix_parts < len(request.parts):
            cache = await self._prefix_cache(request)
        if cache is None:
            contents = self._contents(request.parts)
        else:  # the rest of the prompt goes on with the turn the prefix ends in
            split = request.stable_prefix_parts
            rest = request.parts[split:]
            contents = self._contents(rest, role_at(request.parts, split))
        try:
            response = await client.aio.models.generate_content(
                model=self.model,
                contents=contents,
                config=self._config(request, cache),
            )
        except errors.APIError as error:
            message = f"{error.message or ''}".lower()
            if cache is not None and error.code in (403, 404) and "cache" in message:
                # The cache expired or was deleted: make a new one on the next attempt.
                self._forget(cache)
                raise TransientModelError(
                    self.redact(f"{self.name}: context cache {cache.name} is gone")
                ) from None
            raise
        written = 0
        if cache is not None:  # claimed once, by the first call that succeeds with it
            written, cache.unclaimed_write_tokens = cache.unclaimed_write_tokens, 0
        return self._read(response, written)

    # --- the response ------------------------------------------------------------------

    def _read(self, response: Any, written: int) -> ModelResponse:
        usage = response.usage_metadata
        # The call that wrote the cache reports the prefix as written, not read, so that
        # cached + written never exceed the prompt and the prefix is billed once.
        cached = max(_count(usage, "cached_content_token_count") - written, 0)
        thoughts = _count(usage, "thoughts_token_count")
        counts = {
            "prompt_tokens": _count(usage, "prompt_token_count"),
            "completion_tokens": _count(usage, "candidates_token_count") + thoughts,
            "cached_tokens": cached,
            "cache_write_tokens": written,
            "reasoning_tokens": thoughts,
        }
        if not response.candidates:
            feedback = response.prompt_feedback
            if feedback is not None and feedback.block_reason:
                return ModelResponse("", "content_filter", **counts)
            raise self.unreadable_answer("no candidates")
        candidate = response.candidates[0]
        parts = (candidate.content.parts if candidate.content else None) or []
        text = "".join(part.text for part in parts if part.text and not part.thought)
        return ModelResponse(text, stop_reason(candidate.finish_reason), **counts)

    def translate_error(self, error: Exception) -> Exception | None:
        _, _, errors = _sdk()
        if isinstance(error, errors.ContinuationInterruptedError) and isinstance(
            error.__cause__, Exception
        ):
            return self.translate_error(error.__cause__)
        if isinstance(error, errors.APIError):
            headers = getattr(getattr(error, "response", None), "headers", None)
            message = f"{error.status or ''} {error.message or ''}".strip()
            translated = self.status_error(int(error.code or 0), message, headers)
            if isinstance(translated, TransientModelError) and translated.retry_after is None:
                translated.retry_after = retry_delay_s(error.details)
            return translated
        if isinstance(error, json.JSONDecodeError | errors.UnknownApiResponseError):
            return self.unreadable_answer("not JSON")
        if isinstance(error, ValidationError) and error.title in ANSWER_TYPES:
            # The SDK checks the answer against its types: a field of the wrong type.
            return self.unreadable_answer(f"{error.title} with fields of the wrong type")
        timeouts, bad_url, transport = _transport_errors()
        if isinstance(error, bad_url):
            shown = display_url(self.base_url or "")
            return ModelCallError(f"{self.name}: unusable base URL {shown!r}: {error}")
        if isinstance(error, timeouts):
            return self.timeout_error()
        if isinstance(error, transport):
            return self.connection_error(f"{type(error).__name__}: {error}")
        return None

    async def aclose_sdk_client(self, client: Any) -> None:
        await client.aio.aclose()

    def close(self) -> None:
        """Delete the context caches this client made (best effort: they expire anyway)."""
        client, names = self._sdk_client, self._created
        self._caches.clear()
        self._uncached.clear()
        self._created = []
        if client is not None:
            _, types, _ = _sdk()
            timeout_ms = int(self.cache_delete_timeout_s * 1000)
            config = types.DeleteCachedContentConfig(
                http_options=types.HttpOptions(timeout=timeout_ms)
            )
            for name in names:
                with contextlib.suppress(Exception):  # its TTL removes the cache anyway
                    client.caches.delete(name=name, config=config)
            with contextlib.suppress(Exception):  # releasing sockets only
                client.close()
        super().close()
