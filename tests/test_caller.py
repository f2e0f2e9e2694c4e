"""The caller above every provider: retries with backoff, Retry-After pauses shared by all
calls, per-attempt timeouts, what is never retried, and the call cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from helpers import StubModel

from lmact.models.base import (
    ModelAuthError,
    ModelCallError,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    TextPart,
    TransientModelError,
)
from lmact.models.caller import CallTally, ModelCaller, PrefixTurns, shared_start
from lmact.store import RunStore


class FlakyClient(StubModel):
    """Fails its first calls with the given errors (or sleeps), then answers."""

    def __init__(self, failures: Sequence[Exception | float], options: ModelOptions) -> None:
        super().__init__("test/flaky", options)
        self.failures = list(failures)
        self.attempts: list[float] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.attempts.append(time.monotonic())
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, float):
                await asyncio.sleep(failure)
            else:
                raise failure
        return ModelResponse(text="a1", prompt_tokens=3, completion_tokens=1)


def request(text: str = "prompt") -> ModelRequest:
    return ModelRequest(parts=(TextPart(text),))


def call(caller: ModelCaller, text: str = "prompt") -> ModelResponse:
    return asyncio.run(caller.call(request(text)))


def test_transient_failures_are_retried_until_an_answer() -> None:
    client = FlakyClient(
        [TransientModelError("HTTP 500"), TransientModelError("overloaded")], ModelOptions()
    )
    caller = ModelCaller(client, None, backoff_s=0.01)
    assert call(caller).text == "a1"
    assert len(client.attempts) == 3
    assert caller.totals.retries == 2 and caller.totals.calls_made == 1


def test_retry_after_is_honoured() -> None:
    client = FlakyClient([TransientModelError("HTTP 429", retry_after=0.3)], ModelOptions())
    caller = ModelCaller(client, None, backoff_s=0.01)
    call(caller)
    first, second = client.attempts
    assert second - first >= 0.3


def test_a_rate_limit_pauses_the_other_calls_too() -> None:
    # Call A is rate limited for 0.4 s; call B, started just after, waits out the same pause
    # instead of hitting the limit again.
    client = FlakyClient([TransientModelError("HTTP 429", retry_after=0.4)], ModelOptions())
    caller = ModelCaller(client, None, max_connections=4, backoff_s=0.01)

    async def both() -> None:
        first = asyncio.create_task(caller.call(request("a")))
        await asyncio.sleep(0.05)
        await caller.call(request("b"))
        await first

    started = time.monotonic()
    asyncio.run(both())
    assert len(client.attempts) == 3
    assert client.attempts[2] - started >= 0.4  # B's attempt came after the pause


def test_an_attempt_that_takes_too_long_is_abandoned_and_retried() -> None:
    client = FlakyClient([5.0], ModelOptions(timeout_s=0.2))
    caller = ModelCaller(client, None, backoff_s=0.01)
    started = time.monotonic()
    assert call(caller).text == "a1"
    assert time.monotonic() - started < 2
    assert caller.totals.retries == 1


@pytest.mark.parametrize("error", [ModelCallError("HTTP 400: bad"), ModelAuthError("HTTP 401")])
def test_fatal_errors_are_not_retried(error: Exception) -> None:
    client = FlakyClient([error], ModelOptions())
    caller = ModelCaller(client, None, backoff_s=0.01)
    with pytest.raises(type(error)):
        call(caller)
    assert len(client.attempts) == 1


def test_exhausted_retries_become_a_model_call_error() -> None:
    client = FlakyClient([TransientModelError("HTTP 503")] * 5, ModelOptions(max_retries=2))
    caller = ModelCaller(client, None, backoff_s=0.01)
    with pytest.raises(ModelCallError, match="gave up after 3 attempts: HTTP 503"):
        call(caller)
    assert len(client.attempts) == 3


def test_a_cached_call_is_not_repeated(run_store: RunStore) -> None:
    client = FlakyClient([TransientModelError("HTTP 500")], ModelOptions())
    caller = ModelCaller(client, run_store, backoff_s=0.01)
    first = call(caller)
    again = ModelCaller(client, run_store)
    second = call(again)
    assert second.from_cache and second.text == first.text
    assert len(client.attempts) == 2 and again.totals.calls_made == 0


def test_one_caller_serves_calls_from_one_event_loop_after_another() -> None:
    """A caller outlives a run's event loop (one per model per process): its connection
    limit holds in every loop that calls it, and each run's tally counts its own calls."""
    client = FlakyClient([0.05, 0.05, 0.05, 0.05, 0.05, 0.05], ModelOptions())
    caller = ModelCaller(client, None, max_connections=1)
    in_flight, most = 0, 0
    answer = caller._answer

    async def counted(request: ModelRequest) -> ModelResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await answer(request)
        finally:
            in_flight -= 1

    caller._answer = counted  # type: ignore[method-assign]

    async def three_at_once(tally: CallTally) -> None:
        calls = [caller.call(request(f"p{k}"), tally) for k in range(3)]
        await asyncio.wait_for(asyncio.gather(*calls), timeout=10)

    tallies = [CallTally(), CallTally()]
    for tally in tallies:  # two runs, two event loops
        asyncio.run(three_at_once(tally))
    assert most == 1
    assert [t.calls_made for t in tallies] == [3, 3] and caller.totals.calls_made == 6


def test_identical_requests_in_flight_are_sent_once(run_store: RunStore) -> None:
    client = FlakyClient([0.1, 0.1, 0.1, 0.1], ModelOptions())
    caller = ModelCaller(client, run_store, max_connections=8)

    async def at_once() -> list[ModelResponse]:
        calls = [caller.call(request("same")) for _ in range(3)] + [caller.call(request("other"))]
        return await asyncio.gather(*calls)

    responses = asyncio.run(at_once())
    assert len(client.attempts) == 2  # "same" once, "other" once
    assert [r.from_cache for r in responses] == [False, True, True, False]
    assert {r.text for r in responses} == {"a1"}
    assert caller.totals.calls_made == 2 and caller.totals.calls_cached == 2


class FailsOnceSlowly(FlakyClient):
    """Its first answer, after a while, is a failure that retrying cannot fix."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if not self.attempts:
            self.attempts.append(time.monotonic())
            await asyncio.sleep(0.1)
            raise ModelCallError("HTTP 400: bad request")
        return await super().complete(request)


def test_a_failure_in_flight_reaches_every_call_that_waited_for_it() -> None:
    client = FailsOnceSlowly([], ModelOptions())
    caller = ModelCaller(client, RunStoreless(), max_connections=8)

    async def at_once() -> list[object]:
        calls = [caller.call(request("same")) for _ in range(2)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(at_once())
    assert all(isinstance(o, ModelCallError) for o in outcomes) and len(client.attempts) == 1
    assert call(caller, "same").text == "a1"  # nothing of the failure was kept


class RunStoreless:
    """A call cache in memory."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def get_call(self, key: str) -> str | None:
        return self.rows.get(key)

    def put_call(self, key: str, model: str, response_json: str) -> str | None:
        return self.rows.setdefault(key, response_json)

    def replace_call(self, key: str, model: str, response_json: str) -> None:
        self.rows[key] = response_json


def test_the_waiting_call_that_shares_the_longest_prefix_goes_next() -> None:
    """A call waiting at the local model that starts like the one just answered goes
    before an earlier call of another prompt, so the KV cache keeps their prefix; a
    waiter cancelled meanwhile loses its place, and a cancelled holder passes its turn."""
    turns, order = PrefixTurns(linger_s=0.02), []

    async def call(prompt: str, hold_s: float = 0.01) -> None:
        async with turns.turn(prompt):
            order.append(prompt)
            await asyncio.sleep(hold_s)

    async def main() -> None:
        first = asyncio.create_task(call("demos A, step 1", 0.05))
        await asyncio.sleep(0.01)  # the first holds the model; the others queue
        others = [asyncio.create_task(call(p)) for p in ("demos B, step 1", "demos A, step 2")]
        cancelled = asyncio.create_task(call("demos A, step 1 and more"))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(first, *others)
        await call("demos B, step 2")  # free again: no wait

    asyncio.run(main())
    assert order == ["demos A, step 1", "demos A, step 2", "demos B, step 1", "demos B, step 2"]
    order.clear()

    async def next_step_comes_just_after() -> None:
        first = asyncio.create_task(call("demos A, step 1", 0.02))
        await asyncio.sleep(0.005)
        other = asyncio.create_task(call("demos B, step 1"))
        await first  # the episode then sends its next step at once, as the runner does
        await asyncio.sleep(0.001)
        await asyncio.gather(call("demos A, step 1, step 2"), other)

    asyncio.run(next_step_comes_just_after())
    # The turn lingered for the step that reuses the whole cache, though B waited first.
    assert order == ["demos A, step 1", "demos A, step 1, step 2", "demos B, step 1"]
    assert shared_start("abcdef", "abcxyz") == 3 and shared_start("", "abc") == 0
    assert shared_start("abc", "abc") == 3


def test_a_caller_of_one_connection_answers_in_the_order_that_keeps_the_prefix() -> None:
    class Ordered(StubModel):
        def __init__(self) -> None:
            super().__init__("test/ordered")
            self.order: list[str] = []

        async def complete(self, request: ModelRequest) -> ModelResponse:
            self.order.append(request.parts[0].text)
            await asyncio.sleep(0.02)
            return ModelResponse(text="a1")

    client = Ordered()
    caller = ModelCaller(client, None, max_connections=1)

    async def calls() -> None:
        first = asyncio.create_task(caller.call(request("run A: demos …, step 1")))
        await asyncio.sleep(0.005)
        others = [
            caller.call(request(f"run {p}")) for p in ("B: demos …, step 1", "A: demos …, step 2")
        ]
        await asyncio.gather(first, *others)

    asyncio.run(calls())
    assert client.order == [
        "run A: demos …, step 1",
        "run A: demos …, step 2",
        "run B: demos …, step 1",
    ]
