"""Returns of the cheetah's planning expert against random play, and the expert's cost per step.

Episodes of the task's length (100 steps) from test seeds 0, 1, ...; the expert uses the task
spec's planner options. Two random policies: the harness's `random` baseline (uniform over
`legal_actions()`, the {-1, 0, 1}**6 grid, drawn as the harness draws it) and uniform torques
in [-1, 1]**6 (rounded to the canonical two decimals), the usual random reference.

    python bench/cheetah_expert.py [--seeds 20] [--steps 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from lmact.envs.cheetah import Cheetah, format_action
from lmact.tasks import get_task

Policy = Callable[[Cheetah, np.random.Generator], str]


def expert(env: Cheetah, rng: np.random.Generator) -> str:
    return env.expert_action()


def random_grid(env: Cheetah, rng: np.random.Generator) -> str:
    legal = env.legal_actions()
    return legal[int(rng.integers(len(legal)))]


def random_uniform(env: Cheetah, rng: np.random.Generator) -> str:
    return format_action(rng.uniform(-1.0, 1.0, 6))


def episode_return(env: Cheetah, policy: Policy, seed: int, steps: int) -> float:
    env.reset(seed)
    rng = np.random.default_rng([seed, 2])  # the harness's policy stream
    total = 0.0
    for _ in range(steps):
        outcome = env.step(policy(env, rng))
        total += outcome.reward
        if outcome.done:
            break
    return total


def summary(returns: list[float]) -> str:
    return f"{statistics.mean(returns):7.2f} ± {statistics.stdev(returns):5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="episodes per policy (seeds 0..)")
    parser.add_argument("--steps", type=int, default=100, help="steps per episode")
    args = parser.parse_args()
    if args.seeds < 2 or args.steps < 1:
        parser.error("need at least 2 seeds and 1 step")

    task = get_task("cheetah")
    env = task.make_environment()
    assert isinstance(env, Cheetah)
    print(f"cheetah run, {args.seeds} seeds x {args.steps} steps, options {task.options}")
    seeds = range(args.seeds)
    started = time.perf_counter()
    expert_returns = [episode_return(env, expert, seed, args.steps) for seed in seeds]
    seconds_per_step = (time.perf_counter() - started) / (args.seeds * args.steps)
    grid_returns = [episode_return(env, random_grid, seed, args.steps) for seed in seeds]
    uniform_returns = [episode_return(env, random_uniform, seed, args.steps) for seed in seeds]
    env.close()

    print(f"expert                        {summary(expert_returns)}")
    print(f"random (legal grid, baseline) {summary(grid_returns)}")
    print(f"random (uniform torques)      {summary(uniform_returns)}")
    for name, returns in (("legal grid", grid_returns), ("uniform", uniform_returns)):
        ratio = statistics.mean(expert_returns) / statistics.mean(returns)
        print(f"expert / random ({name}): {ratio:.1f}x")
    print(f"expert worst episode: {min(expert_returns):.2f}")
    print(f"seconds per expert step (planning and stepping): {seconds_per_step:.4f}")


if __name__ == "__main__":
    main()
