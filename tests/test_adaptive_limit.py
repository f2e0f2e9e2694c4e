"""A provider that serves fewer requests at once than it is sent: after its rate-limit
answers the caller sends fewer, climbing back as answers succeed (additive increase,
multiplicative decrease); the connections in use settle near what it serves, and the run
loses no step."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from loopback import RecordedRequest, Reply, chat_completion, loopback

from lmact.demos import DemoStore
from lmact.models.base import ModelOptions, TransientModelError
from lmact.models.limits import AdaptiveLimit
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore

SERVED = 4  # requests the server takes at once; above it, 429
CONNECTIONS = 16  # what lmact may send at once
CELLS = [f"{row}{column}" for row in "abc" for column in "123"]


class CrowdedServer:
    """Answers at most SERVED requests at once (each after a short think), 429 above."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.refused = 0
        self.served_at_once: list[int] = []

    def __call__(self, request: RecordedRequest) -> Reply:
        with self.lock:
            if self.active >= SERVED:
                self.refused += 1
                return Reply(status=429, body={"error": {"message": "rate limited"}})
            self.active += 1
            self.served_at_once.append(self.active)
        try:
            time.sleep(0.03)
            cell = CELLS[hashlib.sha256(request.body).digest()[0] % len(CELLS)]
            return Reply(body=chat_completion(cell))
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.slow
def test_the_limit_falls_to_what_a_crowded_provider_serves_and_no_step_is_lost(
    tmp_path: Path,
) -> None:
    server = CrowdedServer()
    with loopback(server) as url_server, RunStore(tmp_path / "runs.sqlite") as store:
        options = ModelOptions(base_url=f"{url_server.url}/v1", max_retries=50)
        runner = Runner(store, DemoStore(tmp_path / "demos"), options, CONNECTIONS,
                        progress=False, retry_backoff_s=0.01)  # fmt: skip
        try:
            config = make_config("tic_tac_toe", model="openai-compatible/m", demos=0)
            result = runner.run(config, 40)
            limit = runner.policies.caller("openai-compatible/m").connection_limit()
        finally:
            runner.close()
        stored = store.steps(config.run_id)
    assert len(result.episodes) == 40  # every episode finished, none lost to a 429
    assert sum(e.steps for e in result.episodes) == len(stored)
    assert server.refused > 0  # it was sent more than it serves: the limit fell
    assert limit is not None and limit[1] == CONNECTIONS
    assert 1 <= limit[0] <= 2 * SERVED  # settled near what the server serves, not at 16
    # Most requests were answered, not refused: the caller did not keep sending 16.
    assert server.refused < len(server.served_at_once)


CROWDED = TransientModelError("HTTP 429: rate limited", crowded=True)


async def _answered(limit: AdaptiveLimit) -> None:
    """A request over one of `limit`'s connections, answered."""
    async with limit.slot():
        pass


def test_a_burst_of_crowded_answers_halves_the_limit_once_and_successes_raise_it() -> None:
    import asyncio

    async def scenario() -> list[int]:
        limit = AdaptiveLimit(16)
        seen = [limit.current]
        with pytest.raises(TransientModelError):
            async with limit.slot(), limit.slot():  # sent together, both answered crowded
                raise CROWDED  # the same burst: the second does not halve it again
        seen.append(limit.current)
        for _ in range(9):  # about `limit` answers: one more connection
            await _answered(limit)
        seen.append(limit.current)
        for _ in range(400):
            await _answered(limit)
        seen.append(limit.current)
        return seen

    assert asyncio.run(scenario()) == [16, 8, 9, 16]  # never above the ceiling
