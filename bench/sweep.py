"""Wall time of a sweep against the ideal schedule its providers' connection limits allow.

A grid of 24 runs x 8 episodes (two models x tic-tac-toe and grid world x 0, 1, 2
demonstrations x two seeds, at most 10 steps an episode), each model behind a fake
OpenAI-compatible provider of its own (bench/fake_provider.py, each in its own process):
`fast` answers in 200 ms with at most 8 connections, `slow` in 500 ms with at most 4. The
scripted random and expert baselines the runs need (8 runs, each once) play in the same
event loop.

The ideal is a lower bound on any schedule: for each provider, the larger of its answers
spread over its connections (answers x latency / connections) and its longest episode's
answers one after another; the sweep can end no sooner than its slowest provider.

    python bench/sweep.py [--episodes 8]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_provider import fake_provider

from lmact.demos import DemoStore
from lmact.models.base import ModelOptions
from lmact.models.registry import resolve_model
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.sweeps import Sweep, SweepOutcome, load_sweep, play_sweep

# name: (seconds per answer, connections)
PROVIDERS = {"fast": (0.2, 8), "slow": (0.5, 4)}
SWEEP = """
name = "bench"
[base]
legal_actions = true
episodes = {episodes}
max_steps = 10  # the fake's first legal action can wander a grid world for 100 steps
[axes]
model = ["openai-compatible/fast", "openai-compatible/slow"]
task = ["tic_tac_toe", "grid_world"]
demos = [0, 1, 2]
seed = [0, 100]
"""


def ideal_seconds(store: RunStore, sweep: Sweep) -> tuple[float, dict[str, int]]:
    """The lower bound on the sweep's wall time, and the answers each provider sent."""
    bound, answers = 0.0, {}
    for name, (latency, connections) in PROVIDERS.items():
        runs = [r.config.run_id for r in sweep.runs if r.config.model.endswith("/" + name)]
        paid = [
            sum(not step.from_cache for step in store.steps(run_id, episode))
            for run_id in runs
            for episode in store.finished_episodes(run_id)
        ]
        answers[name] = sum(paid)
        spread = math.ceil(sum(paid) / connections) * latency
        bound = max(bound, spread, max(paid) * latency)
    return bound, answers


def make_runner(store: RunStore, demos: Path, urls: dict[str, str]) -> Runner:
    runner = Runner(store, DemoStore(demos), progress=False)
    for name, (_, connections) in PROVIDERS.items():
        client = resolve_model(f"openai-compatible/{name}", ModelOptions(base_url=urls[name]))
        client.max_concurrency = connections  # the provider's limit
        runner.policies.register(client)
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=8)
    args = parser.parse_args()
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        urls = {
            name: stack.enter_context(fake_provider(latency))
            for name, (latency, _) in PROVIDERS.items()
        }
        (scratch / "sweep.toml").write_text(SWEEP.format(episodes=args.episodes))
        sweep = load_sweep(scratch / "sweep.toml")
        store = stack.enter_context(RunStore(scratch / "runs.sqlite"))
        runner = make_runner(store, scratch / "demos", urls)
        stack.callback(runner.close)
        for run in sweep.runs:  # demonstrations generated before the clock starts
            runner.plan(run.config, record=False)
        started = time.perf_counter()
        outcomes: list[SweepOutcome] = asyncio.run(play_sweep(runner, sweep, lambda o: None))
        elapsed = time.perf_counter() - started
        assert all(o.error is None for o in outcomes), [o.error for o in outcomes if o.error]
        played = sum(len(store.finished_episodes(run_id)) for run_id in set(sweep.run_ids()))
        expected = len(set(sweep.run_ids())) * args.episodes
        assert played == expected, f"{expected - played} episodes lost"
        ideal, answers = ideal_seconds(store, sweep)
    baselines = len(set(sweep.run_ids())) - len(sweep.runs)
    print(f"{len(sweep.runs)} runs and {baselines} baselines x {args.episodes} episodes")
    print(f"  {played} episodes played, none lost")
    for name, (latency, connections) in PROVIDERS.items():
        shown = f"{latency * 1000:.0f} ms, {connections} at once"
        print(f"  {name}: {answers[name]} answers at {shown}")
    print(f"  {elapsed:.2f} s against an ideal of {ideal:.2f} s")
    print(f"sweep wall time / ideal: {elapsed / ideal:.2f}x")


if __name__ == "__main__":
    main()
