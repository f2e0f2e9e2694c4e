"""Step latency of the local model with and without reuse of the KV cache of the prompt prefix.

Tic-tac-toe, a demonstration prefix of about 2,000 tokens (packed with the model's own
tokenizer), the same test episodes (expert moves, so both modes see identical prompts) played
twice: once reusing the KV cache between steps, once from a fresh model state at every step.

    python bench/prefix_reuse.py [--budget 2000] [--episodes 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from lmact.demos import DemoStore
from lmact.models.base import ModelOptions, ModelRequest
from lmact.models.local import LocalModel
from lmact.prompting import PromptBuilder, PromptSettings, pack_demonstrations
from lmact.tasks import get_task


def episode_requests(builder: PromptBuilder, prefix: tuple, episodes: int) -> list[ModelRequest]:
    task = get_task("tic_tac_toe")
    env = task.make_environment()
    requests = []
    for seed in range(episodes):
        env.reset(seed)
        trajectory: list = []
        while True:
            observation = env.render("txt")
            requests.append(
                builder.request(
                    prefix,
                    trajectory,
                    observation,
                    env.legal_actions(),
                    with_demonstrations=True,
                    max_tokens=task.max_answer_tokens,
                )
            )
            action = env.expert_action()
            trajectory.append((observation, action))
            if env.step(action).done:
                break
    return requests


def timed(model: LocalModel, requests: list[ModelRequest]) -> list[float]:
    latencies = []
    for request in requests:
        started = time.perf_counter()
        asyncio.run(model.complete(request))
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    options = ModelOptions(threads=args.threads)
    reusing = LocalModel("local/gemma-3-270m", options)
    fresh = LocalModel("local/gemma-3-270m", options, reuse_prefix=False)
    task = get_task("tic_tac_toe")
    builder = PromptBuilder(PromptSettings())
    with tempfile.TemporaryDirectory() as folder:
        demos = DemoStore(Path(folder)).stream(task, "txt")
        packing = pack_demonstrations(
            builder, (d.steps for d in demos), reusing.count_tokens, budget=args.budget
        )
    requests = episode_requests(builder, packing.prefix, args.episodes)

    # Warm-up: load the weights and fill the cache with the prefix, as after a run's first step.
    timed(reusing, requests[:1])
    with_reuse = timed(reusing, requests)
    without_reuse = timed(fresh, requests)

    mean_with, mean_without = statistics.mean(with_reuse), statistics.mean(without_reuse)
    print(f"demonstrations: {len(packing.demonstrations)} ({packing.prefix_tokens} prefix tokens)")
    print(f"steps: {len(requests)} over {args.episodes} episodes, {args.threads} threads")
    print(f"mean step latency with prefix reuse:    {mean_with * 1000:8.1f} ms")
    print(f"mean step latency without prefix reuse: {mean_without * 1000:8.1f} ms")
    print(f"ratio (without / with): {mean_without / mean_with:.1f}x")


if __name__ == "__main__":
    main()
