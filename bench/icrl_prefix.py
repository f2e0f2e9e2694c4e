"""Step latency of the local model in in-context RL, with and without KV-cache prefix reuse.

`bandit_hard`, one replicate of 100 rounds, played by the local model through the runner
(reusing its KV cache between steps); then the same prompts answered again from a fresh
model state at every step. Once for `naive` (the context only grows, so each prompt begins
with the one before) and once for `stochastic` (its context is drawn afresh every step).

    python bench/icrl_prefix.py [--rounds 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from lmact.demos import DemoStore
from lmact.models.base import ModelOptions, ModelRequest, ModelResponse
from lmact.models.local import LocalModel
from lmact.regimes.icrl import by_replicate, make_icrl_config
from lmact.runner import Runner
from lmact.store import RunStore

MODEL = "local/gemma-3-270m"


class TimedModel(LocalModel):
    """The local model, keeping each request and how long its answer took."""

    def __init__(self, options: ModelOptions, reuse_prefix: bool = True) -> None:
        super().__init__(MODEL, options, reuse_prefix=reuse_prefix)
        self.requests: list[ModelRequest] = []
        self.latencies: list[float] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        started = time.perf_counter()
        response = await super().complete(request)
        self.latencies.append(time.perf_counter() - started)
        self.requests.append(request)
        return response


def play(variant: str, rounds: int, options: ModelOptions) -> tuple[TimedModel, list[float]]:
    """One replicate played with prefix reuse; the model (its requests, latencies) and the
    replicate's rewards."""
    model = TimedModel(options)
    config = make_icrl_config("bandit_hard", model=MODEL, variant=variant, replicates=1)
    with tempfile.TemporaryDirectory() as folder, RunStore(Path(folder) / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(Path(folder) / "demos"), progress=False)
        runner.policies.register(model)
        rewards = by_replicate(runner.run(config, rounds).episodes)[0]
    return model, rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    options = ModelOptions(threads=args.threads)
    fresh = TimedModel(options, reuse_prefix=False)
    for variant in ("naive", "stochastic"):
        reusing, rewards = play(variant, args.rounds, options)
        fresh.latencies.clear()
        for request in reusing.requests:
            asyncio.run(fresh.complete(request))
        # The first step of each mode loads the weights: left out of both means.
        with_reuse = statistics.mean(reusing.latencies[1:]) * 1000
        without = statistics.mean(fresh.latencies[1:]) * 1000
        tokens = reusing.count_tokens(reusing.requests[-1].parts)
        print(
            f"{variant}: {args.rounds} rounds, last prompt {tokens} tokens, mean reward "
            f"{statistics.mean(rewards):.2f}; mean step latency {with_reuse:.1f} ms with "
            f"prefix reuse, {without:.1f} ms without: {without / with_reuse:.1f}x"
        )


if __name__ == "__main__":
    main()
