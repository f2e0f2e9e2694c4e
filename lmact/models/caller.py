"""The one layer above every provider: model-call cache, retries, rate limits, concurrency,
usage counts.

Order per call: cache lookup ► an identical request in flight (then its answer) ► wait
out any rate-limit pause ► (concurrency slot) ►
provider, under a per-attempt timeout ► the answer checked (`check_response`) ► on a
transient failure, back off and try again ► cache write. No provider writes any of this
itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from lmact.budget import PROMPT_ROOM, PROMPT_SLACK_TOKENS, Budget
from lmact.models.base import (
    UNREADABLE,
    ModelCallError,
    ModelClient,
    ModelRequest,
    ModelResponse,
    TextPart,
    TransientModelError,
    UnreadableAnswerError,
    check_response,
)
from lmact.models.limits import AdaptiveLimit

# How long a model that keeps its last prompt's KV cache waits, when no waiting call shares
# most of that prompt, for the answered episode's next step (it comes within a millisecond).
LINGER_S = 0.02
# Upper bound of a backoff wait when the server gives no Retry-After.
MAX_BACKOFF_S = 60.0

# Told when calls are paused by a server's wait: until when (a `time.time()`), and why.
PauseListener = Callable[[float, str], None]


class CallCache(Protocol):
    def get_call(self, key: str) -> str | None: ...

    # Stores an answer unless one is stored already; returns the one stored (or None).
    def put_call(self, key: str, model: str, response_json: str) -> str | None: ...

    # Overwrites a stored answer: one that failed to load.
    def replace_call(self, key: str, model: str, response_json: str) -> None: ...


@dataclass
class CallTally:
    """What the calls of one run (or one episode) cost in calls: a caller counts each call
    in its own totals and in the tally it is given, so that runs sharing a caller are told
    apart."""

    calls_made: int = 0
    calls_cached: int = 0
    retries: int = 0
    unreadable: int = 0  # calls answered "unreadable" after every attempt

    def count(self, name: str, tally: CallTally | None) -> None:
        setattr(self, name, getattr(self, name) + 1)
        if tally is not None:
            setattr(tally, name, getattr(tally, name) + 1)


def call_key(client: ModelClient, request: ModelRequest) -> str:
    """The cache key of a call: a hash of the model's identity and the exact request."""
    payload = json.dumps(
        {"client": client.identity(), "request": request.fingerprint()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def usable_wait(value: object) -> float | None:
    """A wait a server named, if it is a finite number of seconds ≥ 0 (else None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _prompt_text(request: ModelRequest) -> str:
    """The request's text, images left out: what two prompts share, for `PrefixTurns`."""
    text = "".join(part.text for part in request.parts if isinstance(part, TextPart))
    return request.system + text


def shared_start(first: str, second: str) -> int:
    """The length of the longest common start of two texts (by halving: C-speed slices)."""
    low, high = 0, min(len(first), len(second))
    while low < high:
        middle = (low + high + 1) // 2
        if first[:middle] == second[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class PrefixTurns:
    """Turns at a model of one connection (one KV cache), one call at a time. When a call
    ends, the waiting call whose prompt starts most like the one just answered goes next
    (the earliest on a tie): the cache then keeps the prefix they share. In first-come
    order, the runs of a sweep would alternate and evict each other's prefix at every
    call.

    When no waiting call shares most of the last prompt, the turn may be held a moment
    (`linger_s`, for a model that keeps the last prompt's cache): the episode just answered
    sends its next step within about a millisecond, and that step would reuse all of it."""

    def __init__(self, linger_s: float = 0.0, most: float = 0.9) -> None:
        self.linger_s = linger_s
        self.most = most  # the share of the last prompt a waiting call must start with
        self._busy = False
        self._lingering = False
        self._last = ""
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []

    @asynccontextmanager
    async def turn(self, prompt: str) -> AsyncIterator[None]:
        if self._busy or self._waiting:
            granted = asyncio.get_running_loop().create_future()
            self._waiting.append((prompt, granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._pass_on()  # granted as it was cancelled: the turn goes on
                else:
                    self._waiting.remove((prompt, granted))
                raise
        else:
            self._busy = True
        try:
            yield
        finally:
            self._last = prompt
            self._pass_on()

    def _best(self) -> tuple[int, int]:
        """The index of the waiting call to go next, and how much of the last prompt it
        starts with."""
        shares = [shared_start(prompt, self._last) for prompt, _ in self._waiting]
        best = max(range(len(shares)), key=lambda k: (shares[k], -k))
        return best, shares[best]

    def _pass_on(self) -> None:
        if self._waiting and self.linger_s > 0 and not self._lingering:
            _, share = self._best()
            if share < self.most * len(self._last):
                self._lingering = True
                asyncio.get_running_loop().call_later(self.linger_s, self._hand_over)
                return
        self._hand_over()

    def _hand_over(self) -> None:
        self._lingering = False
        if not self._waiting:
            self._busy = False
            return
        best, _ = self._best()
        _, granted = self._waiting.pop(best)
        granted.set_result(None)  # stays busy: the turn is handed over


class ModelCaller:
    """Calls a client through the cache, retrying transient failures. One caller per model
    per process, shared by every run the process plays, so that the connection limit and a
    server's pause hold across them.

    A rate limit that names a wait (Retry-After) pauses every call of this caller until the
    wait is over, not only the one that received it: the limit is the account's, not the
    request's; `on_pause` is told whenever such a pause starts or grows. No wait, named or
    backoff, lasts longer than `max_wait_s`. `backoff_s` scales the exponential backoff used
    when no wait is named.

    An answer that stays unreadable through every attempt comes back as an empty answer with
    stop reason "unreadable" (counted in `unreadable`, never cached); other exhausted
    retries raise ModelCallError.
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
        max_wait_s: float | None = None,
        on_pause: PauseListener | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.client = client
        # The caps on spend and time every caller of the runner shares (`--max-cost`).
        self.budget = budget or Budget()
        self.cache = cache if client.cacheable else None
        self.max_connections = max_connections or client.max_concurrency
        # asyncio primitives belong to one event loop: one semaphore per loop that calls.
        self._slots: tuple[asyncio.AbstractEventLoop, AdaptiveLimit | PrefixTurns] | None = None
        self.max_retries = client.options.max_retries if max_retries is None else max_retries
        self.timeout_s = client.attempt_timeout_s if timeout_s is None else timeout_s
        given_wait = client.options.max_wait_s if max_wait_s is None else max_wait_s
        self.max_wait_s = max(given_wait, 0.0)
        self._backoff = wait_random_exponential(
            multiplier=backoff_s, max=min(MAX_BACKOFF_S, self.max_wait_s)
        )
        self._pause_listeners: list[PauseListener] = [on_pause] if on_pause else []
        self._paused_until = 0.0  # time.monotonic()
        self.totals = CallTally()
        self.cache_entries_replaced = 0  # cached answers that failed to load, fetched anew
        # Requests on their way to the model, by cache key: a second identical request
        # waits for the first one's answer instead of paying for its own.
        self._in_flight: dict[str, asyncio.Future[ModelResponse]] = {}

    def paused_until_wall(self) -> float | None:
        """Until when (a `time.time()`) a server's wait pauses calls; None if not paused."""
        remaining = self._paused_until - time.monotonic()
        return time.time() + remaining if remaining > 0 else None

    def _pause(self, wait: float, reason: str) -> None:
        until = time.monotonic() + wait
        if until <= self._paused_until:
            return
        self._paused_until = until
        for listener in list(self._pause_listeners):
            listener(time.time() + wait, reason or "the server asked to wait")

    @contextmanager
    def pauses_told_to(self, listener: PauseListener) -> Iterator[None]:
        """Tell `listener` of every pause while the block runs (a run's progress line)."""
        self._pause_listeners.append(listener)
        try:
            yield
        finally:
            self._pause_listeners.remove(listener)

    def _connection_slot(self, request: ModelRequest) -> AbstractAsyncContextManager[Any]:
        """A connection for `request`: with one, the turn that keeps the model's prefix
        cache (`PrefixTurns`); with several, the first free (the provider keeps its own)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            one = self.max_connections == 1
            linger_s = LINGER_S if self.client.keeps_last_prefix else 0.0
            slots = PrefixTurns(linger_s) if one else AdaptiveLimit(self.max_connections)
            self._slots = (loop, slots)
        slots = self._slots[1]
        if isinstance(slots, PrefixTurns):
            return slots.turn(_prompt_text(request))
        return slots.slot()

    def connection_limit(self) -> tuple[int, int] | None:
        """The requests that may be in flight now and at most, where they adapt (several
        connections, in the loop that last called)."""
        limit = self._slots[1] if self._slots is not None else None
        return (limit.current, limit.ceiling) if isinstance(limit, AdaptiveLimit) else None

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = usable_wait(getattr(error, "retry_after", None))
        if retry_after is None:
            return self._backoff(state)
        # The server's wait, and a little jitter so that paused calls do not return at once.
        wait = min(retry_after + random.uniform(0, 0.1 * retry_after + 0.05), self.max_wait_s)
        self._pause(wait, getattr(error, "reason", ""))
        return wait

    async def _answer(self, request: ModelRequest) -> ModelResponse:
        response = await self.client.complete(request)
        try:
            return check_response(response)
        except ValueError as problem:
            raise UnreadableAnswerError(
                f"{self.client.name}: unreadable answer ({problem})"
            ) from None

    async def _attempt(self, request: ModelRequest) -> ModelResponse:
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        async with self._connection_slot(request):  # an AdaptiveLimit hears how it went
            if self.timeout_s is None:
                return await self._answer(request)
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self._answer(request)
            except TimeoutError:
                raise TransientModelError(
                    f"{self.client.name}: no answer within {self.timeout_s:g} s"
                ) from None

    async def _call_with_retries(
        self, request: ModelRequest, tally: CallTally | None
    ) -> ModelResponse | None:
        """The answer; None when every attempt's answer was unreadable."""

        def count_retry(state: RetryCallState) -> None:
            self.totals.count("retries", tally)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientModelError),
            stop=stop_after_attempt(1 + self.max_retries),
            wait=self._wait,
            before_sleep=count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(request)
        except UnreadableAnswerError:
            return None
        except TransientModelError as error:
            attempts = 1 + self.max_retries
            raise ModelCallError(f"gave up after {attempts} attempts: {error}") from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _most(self, request: ModelRequest) -> float | None:
        """The most a call of `request` may cost: its prompt as counted here with room for
        the server counting more, and every completion (and thinking) token it may write;
        None where the model's prices are unknown."""
        counted = self.client.count_tokens(request.parts)
        if request.system:  # the system text is billed as prompt tokens too
            counted += self.client.count_tokens([TextPart(request.system)])
        most = ModelResponse(
            text="",
            prompt_tokens=math.ceil(counted * PROMPT_ROOM) + PROMPT_SLACK_TOKENS,
            completion_tokens=self.client.completion_cap(request),
        )
        return self.client.cost_usd(most)

    def _load(self, stored: str) -> ModelResponse | None:
        """A cached answer, or None if it does not load (damaged, edited, or invalid)."""
        try:
            return ModelResponse.from_json(stored)
        except ValueError:
            return None

    def _store(self, key: str, response: ModelResponse, damaged: bool) -> ModelResponse:
        """Cache a fresh answer and return the answer to go on with: the one stored first,
        if another call stored one meanwhile (two episodes, or two processes, sent the same
        request at once), so that both go on alike. A damaged entry is overwritten."""
        assert self.cache is not None
        fresh = response.to_json()
        if not damaged:
            stored = self.cache.put_call(key, self.client.name, fresh)
            if stored is None or stored == fresh:
                return response
            first = self._load(stored)
            if first is not None:
                # The first answer's words; this call's own usage, which is what it cost.
                return replace(response, text=first.text, stop_reason=first.stop_reason)
        self.cache.replace_call(key, self.client.name, fresh)
        self.cache_entries_replaced += 1
        return response

    async def call(self, request: ModelRequest, tally: CallTally | None = None) -> ModelResponse:
        """The answer to `request`, counted in `tally` as well as in `totals`."""
        key = call_key(self.client, request) if self.cache is not None else None
        damaged = False
        if self.cache is not None and key is not None:
            hit = self.cache.get_call(key)
            cached = self._load(hit) if hit is not None else None
            if cached is not None:
                self.totals.count("calls_cached", tally)
                return cached
            damaged = hit is not None  # fetched again, and then replaced
        if key is None:
            return await self._fetch(request, tally, None, damaged)
        waiting = self._in_flight.get(key)
        if waiting is not None and waiting.get_loop() is asyncio.get_running_loop():
            # The same request is on its way already: its answer serves this call too, as
            # the cache would have a moment later.
            response = await asyncio.shield(waiting)
            self.totals.count("calls_cached", tally)
            return replace(response, from_cache=True)
        future: asyncio.Future[ModelResponse] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            response = await self._fetch(request, tally, key, damaged)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: only waiting calls, if any, raise it again
            raise
        finally:
            if self._in_flight.get(key) is future:
                del self._in_flight[key]
        future.set_result(response)
        return response

    async def _fetch(
        self, request: ModelRequest, tally: CallTally | None, key: str | None, damaged: bool
    ) -> ModelResponse:
        """Ask the model (with retries), within the budget, and cache its answer under
        `key`."""
        most = self._most(request) if self.budget.capped else None
        self.budget.reserve(most)
        response = None
        try:
            response = await self._call_with_retries(request, tally)
        finally:
            self.budget.settle(most, self.client.cost_usd(response) if response else None)
        if response is None:
            self.totals.count("unreadable", tally)
            return ModelResponse(text="", stop_reason=UNREADABLE)
        self.totals.count("calls_made", tally)
        if key is not None:
            response = self._store(key, response, damaged)
        return response
