"""`openai/<model>`: OpenAI's Chat Completions API through the official `openai` SDK.

A thin translator: a `ModelRequest` becomes an optional system message and one message per
turn (text and inline PNG images, in order; a request without turns is one user message);
the answer's text, stop reason and usage come back as a `ModelResponse`. Retries, backoff
and concurrency live in `lmact.models.caller`; the SDK's own retries are off.

OpenAI caches byte-identical prompt prefixes by itself; every step of a run sends the same
`prompt_cache_key` (a hash of the stable prefix) so that its calls reach the same cache.
Prompt tokens are counted offline with tiktoken, from the BPE ranks that the `bpe-openai`
package ships (tiktoken would download them).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import cache, cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmact.models.base import (
    ImagePart,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    TurnStart,
    UnreadableAnswerError,
    choice_schema,
    conversation,
)
from lmact.models.catalog import catalog_entry
from lmact.models.remote import RemoteModel, missing_sdk

# Reasoning models not in the catalog, recognised by name.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
DEFAULT_ENCODING = "o200k_base"
# tiktoken encodings whose BPE ranks bpe-openai ships, with the sha256 of the decompressed
# file that tiktoken itself expects.
BPE_DATA: dict[str, str] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
STOP_REASONS = {"length": "length", "content_filter": "content_filter"}


def import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise missing_sdk("OpenAI", "openai", "openai") from None
    return openai


# --- the answer, as read from the wire --------------------------------------------------
# Only the fields lmact uses, validated; anything else the server adds is ignored.


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _PromptDetails(_Wire):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None


class _CompletionDetails(_Wire):
    reasoning_tokens: int | None = None


class _Usage(_Wire):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _Message(_Wire):
    content: str | None = None
    refusal: str | None = None


class _ChatChoice(_Wire):
    message: _Message
    finish_reason: str | None = None


class _ChatAnswer(_Wire):
    choices: list[_ChatChoice] = Field(min_length=1)
    usage: _Usage | None = None


class _TextChoice(_Wire):
    text: str
    finish_reason: str | None = None


class _TextAnswer(_Wire):
    choices: list[_TextChoice] = Field(min_length=1)
    usage: _Usage | None = None


def usage_counts(usage: _Usage | None) -> dict[str, int]:
    """ModelResponse's token fields from an OpenAI usage object; what is missing counts 0."""
    if usage is None:
        return {}
    prompt = usage.prompt_tokens or 0
    prompt_details = usage.prompt_tokens_details or _PromptDetails()
    completion_details = usage.completion_tokens_details or _CompletionDetails()
    cached = min(prompt_details.cached_tokens or 0, prompt)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.completion_tokens or 0,
        "cached_tokens": cached,
        # Written tokens are part of prompt_tokens too: never more than the uncached rest.
        "cache_write_tokens": min(prompt_details.cache_write_tokens or 0, prompt - cached),
        "reasoning_tokens": completion_details.reasoning_tokens or 0,
    }


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "", "stop")


# --- offline token counting ---------------------------------------------------------------


def _bpe_openai_data() -> Path | None:
    """bpe-openai's data folder, found without importing the package (its import loads every
    encoding it ships, which takes most of a second)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _local_bpe_loader(name: str, data: Path, loaded: list[str]) -> Callable[..., dict[bytes, int]]:
    """A stand-in for `tiktoken.load.load_tiktoken_bpe` that reads bpe-openai's copy of the
    ranks of encoding `name` and checks it against the hash tiktoken and lmact expect."""

    def load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if url.rsplit("/", 1)[-1] != f"{name}.tiktoken":
            raise ValueError(f"tiktoken asked for {url}, not the ranks of {name}")
        contents = gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes())
        digest = hashlib.sha256(contents).hexdigest()
        if digest != BPE_DATA[name] or (expected_hash and digest != expected_hash):
            raise ValueError(f"bpe-openai's {name} ranks differ from tiktoken's (sha256 {digest})")
        loaded.append(name)
        ranks: dict[bytes, int] = {}
        for line in contents.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks

    return load


@cache
def offline_encoding(name: str) -> Any | None:
    """tiktoken's encoding `name` built without the network, or None (then the caller
    estimates): None when tiktoken or bpe-openai is missing or the encoding is not shipped.

    tiktoken's own constructor supplies the split pattern and special tokens; it runs as a
    copy whose `load_tiktoken_bpe` reads the local ranks, so tiktoken itself is untouched.
    """
    data = _bpe_openai_data()
    if name not in BPE_DATA or data is None:
        return None
    try:
        import tiktoken
        from tiktoken_ext import openai_public
    except ImportError:
        return None
    constructor = getattr(openai_public, name)
    loaded: list[str] = []
    loader = _local_bpe_loader(name, data, loaded)
    namespace = {**constructor.__globals__, "load_tiktoken_bpe": loader}
    offline = types.FunctionType(constructor.__code__, namespace, constructor.__name__)
    try:
        definition = offline()
        if loaded != [name]:  # tiktoken changed how it builds the encoding
            raise ValueError(f"tiktoken's {name} constructor did not read the local ranks")
    except (ImportError, OSError, ValueError) as error:
        warnings.warn(f"token counts for {name} are estimates: {error}", stacklevel=2)
        return None
    return tiktoken.Encoding(**definition)


def encoding_name(model: str, tokenizer: str | None) -> str:
    """The catalog's tokenizer, else tiktoken's choice for the model name, else o200k_base."""
    if tokenizer:
        return tokenizer
    try:
        import tiktoken

        return tiktoken.encoding_name_for_model(model)
    except (ImportError, KeyError):
        return DEFAULT_ENCODING


# --- the client ------------------------------------------------------------------------------


# Tokens a constrained answer's JSON envelope (`{"action": "…"}`) takes beside the choice.
JSON_ROOM = 16


def structured_choice(choices: Sequence[str]) -> dict[str, Any]:
    """OpenAI's structured outputs (`response_format`, as vLLM, SGLang and llama.cpp's
    server also take it): a JSON object whose one field is one of the choices."""
    schema = {"name": "answer", "strict": True, "schema": choice_schema(choices)}
    return {"type": "json_schema", "json_schema": schema}


class OpenAIModel(RemoteModel):
    """An OpenAI chat model (GPT-4o, GPT-4.1, o3, GPT-5 …) through Chat Completions."""

    max_concurrency = 16
    constrains = True  # structured outputs: a JSON schema with an enum
    key_variables: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    base_url_variables: ClassVar[tuple[str, ...]] = ("OPENAI_BASE_URL",)

    @cached_property
    def reasoning(self) -> bool:
        """Reasoning models take a developer message, no temperature, and think in billed
        completion tokens."""
        if catalog_entry(self.name) is not None:
            return self.facts.reasoning
        return self.model.startswith(REASONING_PREFIXES)

    # --- tokens ---------------------------------------------------------------------------

    def count_text_tokens(self, text: str) -> int:
        encoding = offline_encoding(encoding_name(self.model, self.facts.tokenizer))
        if encoding is None:
            return super().count_text_tokens(text)
        return len(encoding.encode_ordinary(text))

    # --- the SDK client ------------------------------------------------------------------

    def load_sdk(self) -> Any:
        return import_openai()

    def make_sdk_client(self) -> Any:
        openai = import_openai()
        return openai.AsyncOpenAI(
            api_key=self.api_key(),
            base_url=self.base_url,
            max_retries=0,
            timeout=self.attempt_timeout_s,
        )

    # --- the request -----------------------------------------------------------------------

    def turn_content(self, parts: Sequence[Part]) -> list[dict[str, Any]] | str:
        """One turn's parts in order: text, and images inline as PNG data URLs."""
        content: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                url = "data:image/png;base64," + base64.b64encode(part.png).decode("ascii")
                content.append({"type": "image_url", "image_url": {"url": url}})
        return content

    def messages(self, request: ModelRequest) -> list[dict[str, Any]]:
        """The system (developer) message, then one message per turn, with its role."""
        messages: list[dict[str, Any]] = []
        if request.system:
            role = "developer" if self.reasoning else "system"
            messages.append({"role": role, "content": request.system})
        for role, parts in conversation(request.parts):
            messages.append({"role": role, "content": self.turn_content(parts)})
        return messages

    def prompt_cache_key(self, request: ModelRequest) -> str:
        """A short hash of what every step of a run shares: model, system text and the
        stable prefix parts, so that OpenAI routes all of them to one prompt cache."""
        digest = hashlib.sha256()
        for text in (self.model, request.system):
            digest.update(b"%d:" % len(text.encode()) + text.encode())
        for part in request.parts[: request.stable_prefix_parts]:
            if isinstance(part, TextPart):
                digest.update(b"T" + hashlib.sha256(part.text.encode()).digest())
            elif isinstance(part, TurnStart):  # the role too: another role, another prompt
                digest.update(b"R" + part.role.encode() + b";")
            else:
                digest.update(b"I" + bytes.fromhex(part.sha256))
        return "lmact-" + digest.hexdigest()[:32]

    def chat_parameters(self, request: ModelRequest) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages(request),
            "prompt_cache_key": self.prompt_cache_key(request),
        }
        parameters["max_completion_tokens"] = self.completion_cap(request)
        if not self.reasoning:
            parameters["temperature"] = request.temperature
            parameters["seed"] = request.seed
        if request.choices:
            parameters["response_format"] = structured_choice(request.choices)
        return parameters

    def completion_cap(self, request: ModelRequest) -> int:
        # Thinking is billed as completion tokens and counts against the same limit.
        thinking = self.reasoning_room() if self.reasoning else 0
        return request.max_tokens + thinking + (JSON_ROOM if request.choices else 0)

    async def send(self, request: ModelRequest) -> ModelResponse:
        client = await self.loop_client()
        raw = await client.chat.completions.with_raw_response.create(
            **self.chat_parameters(request)
        )
        return self.read_chat(raw.content)

    # --- the answer -------------------------------------------------------------------------

    def unreadable(self, body: bytes) -> UnreadableAnswerError:
        excerpt = self.detail(body.decode("utf-8", "replace"))
        return UnreadableAnswerError(f"{self.name}: unreadable answer: {excerpt!r}")

    def read_chat(self, body: bytes) -> ModelResponse:
        try:
            answer = _ChatAnswer.model_validate_json(body)
        except ValidationError:
            raise self.unreadable(body) from None
        choice = answer.choices[0]
        if choice.message.refusal:
            text, reason = choice.message.refusal, "refusal"
        else:
            text, reason = choice.message.content or "", stop_reason(choice.finish_reason)
        return ModelResponse(text=text, stop_reason=reason, **usage_counts(answer.usage))

    def read_text_completion(self, body: bytes) -> ModelResponse:
        try:
            answer = _TextAnswer.model_validate_json(body)
        except ValidationError:
            raise self.unreadable(body) from None
        choice = answer.choices[0]
        return ModelResponse(
            text=choice.text,
            stop_reason=stop_reason(choice.finish_reason),
            **usage_counts(answer.usage),
        )

    # --- errors -------------------------------------------------------------------------------

    def translate_error(self, error: Exception) -> Exception | None:
        openai = import_openai()
        if isinstance(error, openai.APIStatusError):
            return self.status_error(
                error.status_code, api_message(error), dict(error.response.headers)
            )
        if isinstance(error, openai.APITimeoutError):
            return self.timeout_error()
        if isinstance(error, openai.APIConnectionError):
            cause = error.__cause__
            return self.connection_error(
                f"{type(cause).__name__}: {cause}" if cause else error.message
            )
        return None


def api_message(error: Any) -> str:
    """The server's own words from an error answer (`status_error` shortens them)."""
    body = error.body
    message = None
    if isinstance(body, Mapping):
        message = next(
            (body[key] for key in ("message", "detail", "error") if isinstance(body.get(key), str)),
            None,
        )
    if message is None:
        message = body if isinstance(body, str) and body else error.message
    return str(message)
