"""The harness's own time per step: a model that answers at once, 512 demonstrations in the
prompt, tic-tac-toe as text and as PNG images.

Each step renders the prompt (the demonstration prefix is built once per run; the current
episode is rendered every step), hashes it (images included) for the call cache, asks the
model, parses the answer, steps the environment and writes the step to the run store. The
run's preparation (packing 512 demonstrations) is timed apart and left out.

    python bench/overhead.py [--demos 512] [--episodes 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import StubModel

from lmact.demos import DemoStore
from lmact.models.base import ModelRequest, ModelResponse
from lmact.regimes.base import RegimeConfig
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore

TARGET_MS = {"txt": 2.0, "png": 10.0}


class Instant(StubModel):
    """Answers every request at once, with a move that is sometimes legal."""

    accepts_images = True

    def __init__(self) -> None:
        super().__init__("bench/instant")
        self.answer = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.answer += 1
        return ModelResponse(text=f"{self.answer % 3},{self.answer // 3 % 3}")


def timed_run(config: RegimeConfig, episodes: int, scratch: Path) -> tuple[float, int, int]:
    """Seconds to play `episodes` from an empty run store (preparation included), the
    steps played and the demonstrations in the prompt."""
    with (
        tempfile.TemporaryDirectory(dir=scratch) as folder,
        RunStore(Path(folder) / "runs.sqlite") as store,
    ):
        runner = Runner(store, DemoStore(scratch / "demos"), progress=False)
        runner.policies.register(Instant())
        started = time.perf_counter()
        result = runner.run(config, episodes)
        elapsed = time.perf_counter() - started
        runner.close()
    steps = sum(e.steps for e in result.episodes)
    return elapsed, steps, result.prepared.facts.demonstrations or 0


def per_step_ms(observation: str, demos: int, episodes: int, scratch: Path) -> tuple[float, int]:
    """The time a step adds: two runs of the same preparation, one with `episodes` and one
    with five times as many, their difference over the steps they differ by."""
    config = make_config("tic_tac_toe", model="bench/instant", demos=demos, observation=observation)
    timed_run(config, 1, scratch)  # demonstrations generated and cached
    short, short_steps, used = timed_run(config, episodes, scratch)
    long, long_steps, _ = timed_run(config, 5 * episodes, scratch)
    assert used == demos, f"{used} demonstrations in the prompt, not {demos}"
    return (long - short) / (long_steps - short_steps) * 1000, long_steps - short_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demos", type=int, default=512)
    parser.add_argument("--episodes", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for observation, target in TARGET_MS.items():
            ms, steps = per_step_ms(observation, args.demos, args.episodes, Path(scratch))
            print(f"{observation}: {ms:.2f} ms per step over {steps} steps (target {target} ms)")


if __name__ == "__main__":
    main()
