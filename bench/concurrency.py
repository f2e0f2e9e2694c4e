"""Wall time of a run whose episodes run concurrently, against the same run on one connection.

32 test episodes of tic-tac-toe through `openai-compatible/` (the real OpenAI SDK) against a
loopback server that speaks the Chat Completions wire format and answers every request after
a fixed latency (200 ms) with the first legal action listed in the prompt; the server runs
in its own process (bench/fake_provider.py), as a provider would. Each run starts
from an empty run store; within a run, a prompt seen before (episodes that open alike)
comes from the call cache, or from the answer of the same request still in flight.

    python bench/concurrency.py [--episodes 32] [--latency 0.2] [--connections 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_provider import fake_provider

from lmact.demos import DemoStore
from lmact.models.base import ModelOptions
from lmact.regimes.imitation import make_config
from lmact.runner import Runner, RunResult
from lmact.store import RunStore


def timed_run(
    base_url: str, episodes: int, connections: int, cache_dir: Path
) -> tuple[float, RunResult]:
    config = make_config(
        "tic_tac_toe", model="openai-compatible/bench", demos=1, show_legal_actions=True
    )
    options = ModelOptions(base_url=base_url)
    with tempfile.TemporaryDirectory() as scratch, RunStore(Path(scratch) / "r.sqlite") as store:
        runner = Runner(store, DemoStore(cache_dir), options, connections, progress=False)
        runner.plan(config)  # demonstrations generated before the clock starts
        started = time.perf_counter()
        result = runner.run(config, episodes)
        elapsed = time.perf_counter() - started
        runner.close()
    steps = sum(e.steps for e in result.episodes)
    # Episodes that open alike send identical prompts: the call cache answers a repeat, and
    # a twin sent while the first is in flight waits for its answer.
    assert result.calls_made + result.calls_cached == steps, "a step was lost"
    print(
        f"  {connections:>2} connection(s): {elapsed:6.2f} s for {steps} steps, "
        f"{result.calls_made} of them answered by the server"
    )
    return elapsed, result


def longest_episode_calls(result: RunResult) -> int:
    """The most steps one episode took: its answers come one after another, so no schedule
    finishes the run in fewer answer latencies."""
    return max(e.steps for e in result.episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache, fake_provider(args.latency) as base_url:
        print(f"{args.episodes} tic-tac-toe episodes, {args.latency * 1000:.0f} ms per answer")
        one, sequential = timed_run(base_url, args.episodes, 1, Path(cache))
        many, concurrent = timed_run(base_url, args.episodes, args.connections, Path(cache))
    assert concurrent.calls_made <= sequential.calls_made, "the concurrent run sent more"
    # The bound: every answer paid once, one after another, against the longest episode's
    # answers one after another.
    bound = sequential.calls_made / longest_episode_calls(concurrent)
    print(f"  at most {bound:.1f}x is possible: {sequential.calls_made} answers in sequence")
    print(f"  against the longest episode's {longest_episode_calls(concurrent)}")
    print(f"concurrent run is {one / many:.1f}x faster ({one:.2f} s vs {many:.2f} s)")


if __name__ == "__main__":
    main()
