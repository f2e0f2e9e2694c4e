"""The one layer above every provider: model-call cache, retries, rate limits, concurrency,
usage counts.

Order per call: cache lookup ► wait out any rate-limit pause ► (concurrency slot) ►
provider, under a per-attempt timeout ► on a transient failure, back off and try again ►
cache write. No provider writes any of this itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from lmact.models.base import (
    ModelCallError,
    ModelClient,
    ModelRequest,
    ModelResponse,
    PolicyOracle,
    TextPart,
    TransientModelError,
)

# Upper bound of a backoff wait when the server gives no Retry-After.
MAX_BACKOFF_S = 60.0


class CallCache(Protocol):
    def get_call(self, key: str) -> str | None: ...

    def put_call(self, key: str, model: str, response_json: str) -> None: ...


def call_key(client: ModelClient, request: ModelRequest) -> str:
    """The cache key of a call: a hash of the model's identity and the exact request."""
    payload = json.dumps(
        {"client": client.identity(), "request": request.fingerprint()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ModelCaller:
    """Calls a client through the cache, retrying transient failures.

    A rate limit that names a wait (Retry-After) pauses every call of this caller until the
    wait is over, not only the one that received it: the limit is the account's, not the
    request's. `backoff_s` scales the exponential backoff used when no wait is named.
    """

    def __init__(
        self,
        client: ModelClient,
        cache: CallCache | None,
        max_connections: int | None = None,
        *,
        max_retries: int | None = None,
        timeout_s: float | None = None,
        backoff_s: float = 1.0,
    ) -> None:
        self.client = client
        self.cache = cache if client.cacheable else None
        self._slots = asyncio.Semaphore(max_connections or client.max_concurrency)
        self.max_retries = client.options.max_retries if max_retries is None else max_retries
        self.timeout_s = client.attempt_timeout_s if timeout_s is None else timeout_s
        self._backoff = wait_random_exponential(multiplier=backoff_s, max=MAX_BACKOFF_S)
        self._paused_until = 0.0
        self.calls_made = 0
        self.calls_cached = 0
        self.retries = 0

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None:
            return self._backoff(state)
        # The server's wait, and a little jitter so that paused calls do not return at once.
        wait = retry_after + random.uniform(0, 0.1 * retry_after + 0.05)
        self._paused_until = max(self._paused_until, time.monotonic() + wait)
        return wait

    def _count_retry(self, state: RetryCallState) -> None:
        self.retries += 1

    async def _attempt(self, request: ModelRequest, oracle: PolicyOracle | None) -> ModelResponse:
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        async with self._slots:
            if self.timeout_s is None:
                return await self.client.complete(request, oracle)
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self.client.complete(request, oracle)
            except TimeoutError:
                raise TransientModelError(
                    f"{self.client.name}: no answer within {self.timeout_s:g} s"
                ) from None

    async def _call_with_retries(
        self, request: ModelRequest, oracle: PolicyOracle | None
    ) -> ModelResponse:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientModelError),
            stop=stop_after_attempt(1 + self.max_retries),
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(request, oracle)
        except TransientModelError as error:
            attempts = 1 + self.max_retries
            raise ModelCallError(f"gave up after {attempts} attempts: {error}") from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def call(
        self, request: ModelRequest, oracle: PolicyOracle | None = None
    ) -> ModelResponse:
        cache = self.cache
        key = call_key(self.client, request) if cache is not None else None
        if cache is not None and key is not None:
            hit = cache.get_call(key)
            if hit is not None:
                self.calls_cached += 1
                return ModelResponse.from_json(hit)
        response = await self._call_with_retries(request, oracle)
        self.calls_made += 1
        if cache is not None and key is not None:
            cache.put_call(key, self.client.name, response.to_json())
        return response


class TokenCountingCaller(ModelCaller):
    """A dry run's stand-in for the model: counts each request's prompt tokens with the
    model's own counter and answers with the expert's action, so that the episode goes on
    as a competent policy's would. Completion tokens are counted at the answer limit."""

    def __init__(self, client: ModelClient) -> None:
        super().__init__(client, cache=None)
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    async def call(
        self, request: ModelRequest, oracle: PolicyOracle | None = None
    ) -> ModelResponse:
        if oracle is None:
            raise ValueError("a dry run needs the environment to play the expert's action")
        prompt_tokens = self.client.count_tokens(request.parts)
        if request.system:
            prompt_tokens += self.client.count_tokens([TextPart(request.system)])
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += request.max_tokens
        return ModelResponse(
            text=oracle.expert_action(),
            prompt_tokens=prompt_tokens,
            completion_tokens=request.max_tokens,
        )
