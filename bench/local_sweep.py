"""What the order of calls at the embedded model saves in a sweep: three local-model runs of
grid world (1, 2 and 3 demonstrations; 2 episodes of at most 4 steps) played side by side
in one event loop, once with the caller's prefix order (`PrefixTurns`: the waiting call
that starts most like the last answered goes next) and once first come, first served.

With first-come order the runs take turns at the model and each call evaluates its prompt
again from where the runs' prompts part; in prefix order a run keeps the model until its
steps are done.

    python bench/local_sweep.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from lmact.demos import DemoStore
from lmact.models import caller
from lmact.models.base import ModelOptions
from lmact.models.caller import PrefixTurns
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.sweeps import load_sweep, play_sweep

SWEEP = """
name = "local-order"
[base]
model = "local/gemma-3-270m"
task = "grid_world"
episodes = 2
max_steps = 4
threads = 2
[axes]
demos = [1, 2, 3]
"""


def first_come(turns: PrefixTurns) -> tuple[int, int]:
    """`PrefixTurns._best` as a plain queue: the earliest waiting call, sharing nothing."""
    return 0, 0


def played(scratch: Path, name: str) -> tuple[float, int, int]:
    """Wall seconds, prompt tokens and prompt tokens evaluated (not from the KV cache)."""
    (scratch / "sweep.toml").write_text(SWEEP)
    sweep = load_sweep(scratch / "sweep.toml")
    with RunStore(scratch / f"{name}.sqlite") as store:
        runner = Runner(store, DemoStore(scratch / "demos"), ModelOptions(threads=2),
                        progress=False)  # fmt: skip
        for run in sweep.runs:  # demonstrations and the model loaded before the clock
            runner.plan(run.config, record=False)
        started = time.perf_counter()
        outcomes = asyncio.run(play_sweep(runner, sweep, lambda outcome: None))
        elapsed = time.perf_counter() - started
        runner.close()
        assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
        steps = [s for r in sweep.runs for s in store.steps(r.config.run_id)]
    prompt = sum(s.usage.prompt_tokens for s in steps)
    return elapsed, prompt, prompt - sum(s.usage.cached_tokens for s in steps)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        ordered = played(scratch, "prefix-order")
        PrefixTurns._best = first_come  # type: ignore[method-assign,assignment]
        caller.LINGER_S = 0.0
        queued = played(scratch, "first-come")
    for name, (seconds, prompt, evaluated) in (("prefix order", ordered), ("first come", queued)):
        print(f"  {name}: {seconds:6.1f} s, {evaluated} of {prompt} prompt tokens evaluated")
    print(f"prefix order is {queued[0] / ordered[0]:.1f}x faster "
          f"({ordered[0]:.1f} s vs {queued[0]:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
