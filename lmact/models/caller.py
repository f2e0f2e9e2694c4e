"""The one layer above every provider: model-call cache, concurrency limit, usage counts.

Order per call: cache lookup ► (concurrency slot) ► provider ► cache write. Retries and
rate limits for network providers belong here too, so no provider writes them twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Protocol

from lmact.models.base import ModelClient, ModelRequest, ModelResponse, PolicyOracle


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
    """Calls a client through the cache; counts calls made and calls served from cache."""

    def __init__(
        self, client: ModelClient, cache: CallCache | None, max_connections: int | None = None
    ) -> None:
        self.client = client
        self.cache = cache if client.cacheable else None
        self._slots = asyncio.Semaphore(max_connections or client.max_concurrency)
        self.calls_made = 0
        self.calls_cached = 0

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
        async with self._slots:
            response = await self.client.complete(request, oracle)
        self.calls_made += 1
        if cache is not None and key is not None:
            cache.put_call(key, self.client.name, response.to_json())
        return response
