"""Caps on what a process's model calls may spend and how long they may go on (`--max-cost`,
`--max-time`), shared by every caller of a runner: every run of a sweep counts against one
cap. A call is sent only if the spend so far, the calls in flight and this call's most
(its prompt as counted here, with room for the server counting more, and every completion
token it may write, at the model's prices) stay within the cap; else the run stops, having
spent at most the cap, and a rerun with a higher cap resumes it (its calls from the cache).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from lmact.errors import LmactError

# Exit status of a command stopped at a cap: not an error of its input (2), nor a success.
EXIT_CAPPED = 3
# A call's prompt is taken as this much larger than counted here (and a few tokens more):
# a server's tokenizer and template may count more than lmact's count.
PROMPT_ROOM = 1.25
PROMPT_SLACK_TOKENS = 32


class BudgetReached(LmactError):
    """A cap was reached: no further call is sent. The run stops; its finished episodes
    are stored and its calls cached."""

    exit_code = EXIT_CAPPED


@dataclass
class Budget:
    """The caps (None: none) and what the calls have spent and hold in flight."""

    max_cost: float | None = None  # USD
    max_time_s: float | None = None  # seconds from the first call asked for
    spent: float = 0.0
    in_flight: float = 0.0  # the most the calls on their way may cost
    calls: int = 0
    started: float | None = field(default=None, repr=False)

    @property
    def capped(self) -> bool:
        return self.max_cost is not None or self.max_time_s is not None

    def reserve(self, most: float | None) -> None:
        """Before a call that may cost `most` (None: its prices unknown): take it from the
        budget, or raise BudgetReached if it could pass a cap."""
        now = time.monotonic()
        self.started = now if self.started is None else self.started
        if self.max_time_s is not None and now - self.started >= self.max_time_s:
            raise BudgetReached(f"stopped at --max-time {self.max_time_s:g} s ({self.said()})")
        if self.max_cost is None:
            return
        if most is None or not math.isfinite(most):
            raise BudgetReached("--max-cost needs the model's prices: give --input-price and "
                                "--output-price (USD per million tokens)")  # fmt: skip
        if self.spent + self.in_flight + most > self.max_cost:
            raise BudgetReached(
                f"stopped at --max-cost ${self.max_cost:g}: the next call could cost up to "
                f"${most:.6f} ({self.said()})"
            )
        self.in_flight += most

    def settle(self, most: float | None, cost: float | None) -> None:
        """After a reserved call: its reservation released, what it cost spent."""
        if self.max_cost is not None and most is not None:
            self.in_flight = max(self.in_flight - most, 0.0)
        self.spent += cost or 0.0
        self.calls += 1

    def said(self) -> str:
        return f"${self.spent:.6f} spent on {self.calls} calls"


def cap_against_estimate(max_cost: float | None, estimated: float | None) -> dict[str, Any]:
    """A dry run's spend cap against its estimated cost, as the fields of its JSON: the
    cap, and whether the estimate fits within it (None: no prices, so no estimate)."""
    if max_cost is None:
        return {}
    fits = None if estimated is None else estimated <= max_cost
    return {"max_cost_usd": max_cost, "estimate_within_cap": fits}
