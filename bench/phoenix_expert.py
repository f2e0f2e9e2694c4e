"""Returns of Phoenix's planning expert against a uniformly random policy, and their speed.

Plays `--seeds` test episodes (seeds 0, 1, ...) of `--steps` agent steps with each policy, as
the phoenix task plays them (frame skip 4, no sticky actions, seeded no-op starts), and prints
the mean and standard deviation of both returns, their ratio, the expert's seconds per step,
and how many emulator agent steps per second a plain random episode runs at. Episodes run in
`--workers` processes (one emulator each). Needs the atari extra: pip install "lmact[atari]".

    python bench/phoenix_expert.py [--seeds 20] [--steps 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from lmact.envs.phoenix import ACTIONS, Phoenix

# Not a test seed's stream: the random policy's own, so it never shares the expert's rng.
_RANDOM_POLICY_SALT = 7_919


@dataclass(frozen=True)
class Episode:
    policy: str
    seed: int
    episode_return: float
    steps: int
    seconds: float
    lives_lost: int


def play_episode(policy: str, seed: int, max_steps: int) -> Episode:
    """One episode of `policy` ("expert" or "random") from `seed`, timed without the reset."""
    env = Phoenix()
    try:
        env.reset(seed)
        rng = np.random.default_rng([_RANDOM_POLICY_SALT, seed])
        lives = env.lives
        total = 0.0
        steps = 0
        started = time.perf_counter()
        for _ in range(max_steps):
            if policy == "expert":
                action = env.expert_action()
            else:
                action = ACTIONS[int(rng.integers(len(ACTIONS)))]
            outcome = env.step(action)
            total += outcome.reward
            steps += 1
            if outcome.done:
                break
        seconds = time.perf_counter() - started
        return Episode(policy, seed, total, steps, seconds, lives - env.lives)
    finally:
        env.close()


def emulator_steps_per_second(steps: int = 3_000) -> float:
    """Agent steps (of 4 frames) per second of the real environment under a random policy."""
    env = Phoenix()
    try:
        env.reset(0)
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for _ in range(steps):
            if env.step(ACTIONS[int(rng.integers(len(ACTIONS)))]).done:
                env.reset(0)
        return steps / (time.perf_counter() - started)
    finally:
        env.close()


def describe(returns: list[float]) -> str:
    return f"{statistics.mean(returns):8.1f} ± {statistics.pstdev(returns):6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="episodes per policy (seeds 0..)")
    parser.add_argument("--steps", type=int, default=100, help="agent steps per episode")
    parser.add_argument("--workers", type=int, default=2, help="processes playing episodes")
    args = parser.parse_args()

    seeds = list(range(args.seeds))
    wall_started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        jobs = [
            pool.submit(play_episode, policy, seed, args.steps)
            for policy in ("expert", "random")
            for seed in seeds
        ]
        episodes = [job.result() for job in jobs]
    wall = time.perf_counter() - wall_started
    expert = [episode for episode in episodes if episode.policy == "expert"]
    random = [episode for episode in episodes if episode.policy == "random"]

    print(f"Phoenix, {args.seeds} seeds (0..{args.seeds - 1}), {args.steps}-step episodes")
    print("seed   expert  lives lost   random")
    for expert_episode, random_episode in zip(expert, random, strict=True):
        print(
            f"{expert_episode.seed:4d} {expert_episode.episode_return:8.0f} "
            f"{expert_episode.lives_lost:11d} {random_episode.episode_return:8.0f}"
        )
    expert_returns = [episode.episode_return for episode in expert]
    random_returns = [episode.episode_return for episode in random]
    print(f"expert return (mean ± std): {describe(expert_returns)}")
    print(f"random return (mean ± std): {describe(random_returns)}")
    random_mean = statistics.mean(random_returns)
    ratio = statistics.mean(expert_returns) / random_mean if random_mean else float("inf")
    print(f"expert / random: {ratio:.2f}x")
    expert_seconds = sum(episode.seconds for episode in expert)
    expert_steps = sum(episode.steps for episode in expert)
    print(f"expert seconds per step: {expert_seconds / expert_steps:.3f}")
    print(f"lives lost by the expert: {sum(episode.lives_lost for episode in expert)}")
    print(f"emulator agent steps per second (frame skip 4): {emulator_steps_per_second():,.0f}")
    print(f"wall time of the episodes with {args.workers} workers: {wall:.0f} s")


if __name__ == "__main__":
    main()
