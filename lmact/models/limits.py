"""How many requests a provider is sent at once, adapting to what it serves: at most the
connection limit (`--max-connections`), halved when the provider answers that it is
crowded (a rate limit, an overload) and climbing back by one for every `limit` answers
that succeed (additive increase, multiplicative decrease, as TCP's congestion window), so
that the requests in flight settle near what the server takes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lmact.models.base import TransientModelError


class AdaptiveLimit:
    """The connections of one caller in one event loop (asyncio's primitives belong to one)."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.in_use = 0
        self._free = asyncio.Condition()
        # Decreases so far: a crowded answer to a request sent before the last decrease
        # (one of the same burst) does not decrease the limit again.
        self._decreases = 0

    @property
    def current(self) -> int:
        """The requests that may be in flight now."""
        return max(1, int(self.limit))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A connection, once one is free under the current limit; the answer that comes
        over it moves the limit (a crowded one down, a successful one up)."""
        async with self._free:
            await self._free.wait_for(lambda: self.in_use < self.current)
            self.in_use += 1
        sent_at = self._decreases
        try:
            yield
        except TransientModelError as error:
            if error.crowded:
                self._crowded(sent_at)
            raise
        else:
            self._succeeded()
        finally:
            async with self._free:
                self.in_use -= 1
                self._free.notify_all()

    def _succeeded(self) -> None:
        """An answer came: one more connection for every `limit` of them."""
        self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)

    def _crowded(self, sent_at: int) -> None:
        """The provider answered a request sent after `sent_at` decreases that it is
        crowded: half the connections, once a burst."""
        if sent_at == self._decreases:
            self.limit = max(1.0, self.limit / 2)
            self._decreases += 1
