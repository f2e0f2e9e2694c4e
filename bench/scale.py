"""Scale: imitation with up to a million tokens of demonstrations, in-context RL with many
replicates and rounds, and `lmact report` over a store of those runs; each measure in a
process of its own, so that its peak memory (maximum resident set size, the ~150 MB of
what lmact imports included) is its own. The models answer at once: what is measured is
the harness.

- imitation (tic-tac-toe as text; chess as PGN), for each demonstration count, shared and
  per-episode draws (the pool is the N demonstrations, so every episode's prefix is as long
  as the shared one): the run's preparation (loading and packing; for per-episode draws,
  the pool and episode 0's packing), the packings of further test episodes (per-episode),
  the harness's time per step (the difference between runs of E and 5E episodes over the
  steps they differ by, as bench/overhead.py; per-episode runs pack each episode, within
  the figure) and the process's peak memory. Demonstrations are generated once into
  `--cache-dir` (default /tmp/lmact-scale) and reused by later runs of the bench: 16,384
  tic-tac-toe take about 5 s, 512 chess games about 35 minutes (hence `--chess-demos 64`
  by default; the issue's count is `--chess-demos 512`).
- in-context RL (`bandit_hard`): R replicates x T rounds by ucb1, a scripted policy (time,
  peak memory, what the run adds to the store); one ucb1 replicate of L rounds (the same);
  one replicate of L rounds by a model that answers at once, naive and stochastic, with a
  token budget: the same, and the harness's time per step from round 100 and over the last
  rounds (the time between the model's successive calls: one replicate plays in order).
  Only public entry points: `lmact.options.read_run` and a Runner with a registered model.
- report: `lmact report` (markdown, CSV, HTML) in a process of its own over the store of
  those in-context RL runs (and the R replicates' baselines): seconds and peak memory.
  `--only report` plays the in-context RL runs first, to make that store.

    python bench/scale.py [--only imitation|icrl|report] [--cache-dir DIR]
        [--ttt-demos 512 4096 16384] [--chess-demos 64] [--draws shared per-episode]
        [--episodes 16] [--preparations 100] [--replicates 1000] [--rounds 100]
        [--long-rounds 10000] [--step-variants naive stochastic] [--icrl-budget 2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import StubModel
from report_scale import report

from lmact.demos import DemoStore
from lmact.models.base import ModelRequest, ModelResponse
from lmact.options import read_run
from lmact.regimes.base import RegimeConfig
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task

INSTANT = "bench/instant"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lmact-scale"
REPORT_FORMATS = ("md", "csv", "html")
# Steps averaged for the time per step around a round of a long in-context RL replicate.
STEP_WINDOW = 100


class Instant(StubModel):
    """Answers every request at once (a move that is sometimes legal), and notes when each
    call came: one replicate's calls are its steps, in order."""

    accepts_images = True

    def __init__(self) -> None:
        super().__init__(INSTANT)
        self.answer = 0
        self.called: list[float] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.called.append(time.perf_counter())
        self.answer += 1
        return ModelResponse(text=("a1", "b2", "c3", "blue", "e4")[self.answer % 5])


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def runner_for(store: RunStore, cache: Path) -> tuple[Runner, Instant]:
    runner = Runner(store, DemoStore.in_cache(cache), progress=False)
    model = Instant()
    runner.policies.register(model)
    return runner, model


# --- imitation ----------------------------------------------------------------------------


def imitation_options(task: str, observation: str, demos: int, draw: str) -> dict[str, Any]:
    options = {"task": task, "observation": observation, "model": INSTANT, "demos": demos}
    if draw == "per-episode":  # the pool is the N demonstrations: prefixes as long as shared
        options |= {"demo_draw": "per-episode", "demo_pool": demos}
    return options


def timed_run(config: RegimeConfig, episodes: int, cache: Path) -> tuple[float, int]:
    """Seconds to play `episodes` from an empty run store (preparation included), steps."""
    with tempfile.TemporaryDirectory() as folder, RunStore(Path(folder) / "r.sqlite") as store:
        runner, _ = runner_for(store, cache)
        started = time.perf_counter()
        result = runner.run(config, episodes)
        elapsed = time.perf_counter() - started
        runner.close()
    return elapsed, sum(e.steps for e in result.episodes)


def measure_imitation(job: dict[str, Any]) -> dict[str, Any]:
    """Preparation, further per-episode packings, time per step; in this process."""
    config = read_run(imitation_options(job["task"], job["observation"], job["demos"],
                                        job["draw"])).config  # fmt: skip
    cache = Path(job["cache"])
    with tempfile.TemporaryDirectory() as folder, RunStore(Path(folder) / "r.sqlite") as store:
        runner, _ = runner_for(store, cache)
        started, cpu = time.perf_counter(), time.process_time()
        prepared = runner.plan(config, record=False)
        preparation = time.perf_counter() - started
        preparation_cpu = time.process_time() - cpu  # what a shared machine's load leaves out
        packings, started = 0, time.perf_counter()
        if job["draw"] == "per-episode":
            for episode in range(1, job["preparations"]):
                prepared.plan.packing_for(episode)
                packings += 1
        packing = (time.perf_counter() - started) / max(packings, 1)
        facts = prepared.facts
        del prepared
        runner.close()
    result = {"preparation_s": preparation, "preparation_cpu_s": preparation_cpu,
              "packing_s": packing, "packings": packings,
              "demos": facts.demonstrations, "prefix_tokens": facts.prefix_tokens}  # fmt: skip
    if job["episodes"]:
        short, short_steps = timed_run(config, job["episodes"], cache)
        long, long_steps = timed_run(config, 5 * job["episodes"], cache)
        result["step_ms"] = (long - short) / (long_steps - short_steps) * 1000
        result["steps"] = long_steps - short_steps
    return result | {"peak_mb": peak_mb()}


def ensure_demonstrations(task: str, observation: str, count: int, cache: Path) -> None:
    """The first `count` demonstrations in the bench's cache, generated if missing."""
    started = time.perf_counter()
    DemoStore.in_cache(cache).load(get_task(task), observation, 0, count)
    print(f"{count} {task}/{observation} demonstrations ready in "
          f"{time.perf_counter() - started:.1f} s (cached in {cache})", flush=True)  # fmt: skip


def imitation_section(args: argparse.Namespace) -> None:
    cases = [("tic_tac_toe", "txt", n) for n in args.ttt_demos]
    cases += [("chess", "pgn", n) for n in args.chess_demos]
    for task, observation, demos in cases:
        ensure_demonstrations(task, observation, demos, args.cache_dir)
    print("\n| task | demos | draw | prefix tokens | preparation s (CPU s) | an episode's packing "
          "| ms per step | peak MB |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    # Per task and draw: (prefix tokens, seconds to prepare one prefix) for each count.
    prepared: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for task, observation, demos in cases:
        for draw in args.draws:
            job = {"measure": "imitation", "task": task, "observation": observation,
                   "demos": demos, "draw": draw, "cache": str(args.cache_dir),
                   "episodes": args.episodes, "preparations": args.preparations}  # fmt: skip
            got = in_child(job)
            one = got["packing_s"] if got["packings"] else got["preparation_s"]
            prepared.setdefault((task, draw), []).append((got["prefix_tokens"], one))
            print(imitation_row(task, observation, draw, got), flush=True)
    for (task, draw), points in prepared.items():
        what = "an episode's packing" if draw == "per-episode" else "preparation"
        per_million = ", ".join(f"{s / t * 1e6:.2f} ({t:,})" for t, s in sorted(points))
        print(f"{task} {draw}: {what}, seconds per million tokens (at tokens): {per_million}")


def imitation_row(task: str, observation: str, draw: str, got: dict[str, Any]) -> str:
    packing = "-"
    if got["packings"]:
        total = got["packing_s"] * got["packings"]
        packing = f"{got['packing_s'] * 1000:.1f} ms (x{got['packings']}: {total:.1f} s)"
    step = f"{got['step_ms']:.2f} over {got['steps']}" if "step_ms" in got else "-"
    cells = [f"{task}/{observation}", got["demos"], draw, f"{got['prefix_tokens']:,}",
             f"{got['preparation_s']:.2f} ({got['preparation_cpu_s']:.2f})", packing, step,
             f"{got['peak_mb']:.0f}"]  # fmt: skip
    return "| " + " | ".join(f"{cell}" for cell in cells) + " |"


# --- in-context RL ------------------------------------------------------------------------


def icrl_config(job: dict[str, Any]) -> RegimeConfig:
    options = {
        "task": "bandit_hard",
        "regime": "icrl",
        "model": job["model"],
        "variant": job["variant"],
        "replicates": job["replicates"],
        "seed": job["seed"],
    }
    if job.get("budget"):
        options["token_budget"] = job["budget"]
    return read_run(options).config  # fmt: skip


def store_mb(path: Path) -> float:
    """The store's size on disk, its write-ahead log included."""
    files = [path, path.with_name(path.name + "-wal")]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def measure_icrl(job: dict[str, Any]) -> dict[str, Any]:
    """One in-context RL run into the store `job["store"]` (its seed keeps it apart from the
    store's other runs), timed; then, if `job["baselines"]`, its baselines for the report
    (untimed)."""
    config = icrl_config(job)
    path, cache = Path(job["store"]), Path(job["cache"])
    before = store_mb(path)
    with RunStore(path) as store:
        runner, model = runner_for(store, cache)
        started = time.perf_counter()
        result = runner.run(config, job["rounds"])
        elapsed = time.perf_counter() - started
        peak = peak_mb()
        runner.close()
    measured = {"seconds": elapsed, "peak_mb": peak, "store_mb": store_mb(path) - before,
                "cached": result.calls_cached} | step_times(model.called)  # fmt: skip
    if not job.get("baselines"):
        return measured
    with RunStore(path) as store:
        runner, _ = runner_for(store, cache)
        started = time.perf_counter()
        runner.evaluate(config, job["rounds"])
        measured["baselines_s"] = round(time.perf_counter() - started, 1)
        runner.close()
    return measured


def step_times(called: list[float]) -> dict[str, Any]:
    """Time per step (ms) over the calls from the 100th and over the last calls: one
    replicate's calls are its steps, the harness's work between them."""
    if len(called) < 100 + 2 * STEP_WINDOW:
        return {}
    early = (called[100 + STEP_WINDOW] - called[100]) / STEP_WINDOW * 1000
    late = (called[-1] - called[-1 - STEP_WINDOW]) / STEP_WINDOW * 1000
    return {"early_ms": early, "late_ms": late, "late_call": len(called)}


def icrl_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Many replicates (with their baselines, as `lmact run` stores them) and one long
    replicate by ucb1 (a scripted policy); one long replicate per variant by the model that
    answers at once, with a token budget."""
    runs = [
        {"model": "ucb1", "variant": "naive", "replicates": args.replicates,
         "rounds": args.rounds, "seed": 0, "baselines": True},
        {"model": "ucb1", "variant": "naive", "replicates": 1, "rounds": args.long_rounds,
         "seed": 10**6},
    ]  # fmt: skip
    runs += [{"model": INSTANT, "variant": variant, "replicates": 1, "rounds": args.long_rounds,
              "seed": 2 * 10**6, "budget": args.icrl_budget}
             for variant in args.step_variants]  # fmt: skip
    return runs


def icrl_section(args: argparse.Namespace, store: Path) -> None:
    print(f"\nin-context RL, bandit_hard; {INSTANT} answers at once, with --token-budget "
          f"{args.icrl_budget or 'none'}; store {store}")  # fmt: skip
    print("| model | variant | replicates x rounds | seconds | peak MB | store MB "
          "| ms per step from call 100 / at the end | baselines s |\n"
          "|---|---|---|---|---|---|---|---|")  # fmt: skip
    for run in icrl_runs(args):
        got = in_child({"measure": "icrl", "store": str(store), "cache": str(args.cache_dir)}
                       | run)  # fmt: skip
        steps = "-"
        if "early_ms" in got:
            steps = (f"{got['early_ms']:.2f} / {got['late_ms']:.2f} (to call "
                     f"{got['late_call']:,}): {got['late_ms'] / got['early_ms']:.1f}x")  # fmt: skip
        print(f"| {run['model']} | {run['variant']} | {run['replicates']:,} x "
              f"{run['rounds']:,} | {got['seconds']:.1f} | {got['peak_mb']:.0f} | "
              f"{got['store_mb']:.1f} | {steps} | {got.get('baselines_s', '-')} |",
              flush=True)  # fmt: skip


# --- report -------------------------------------------------------------------------------


def report_section(store: Path, folder: Path) -> None:
    print(f"\nlmact report over {store} ({store_mb(store):.0f} MB)")
    print("| format | seconds | peak MB |\n|---|---|---|")
    for fmt in REPORT_FORMATS:
        seconds, peak, _ = report(store, fmt, folder)  # in a process of its own
        print(f"| {fmt} | {seconds:.1f} | {peak:.0f} |", flush=True)


# --- processes and the command ------------------------------------------------------------


def in_child(job: dict[str, Any]) -> dict[str, Any]:
    """`job` measured by this file in a process of its own; its result."""
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"measuring {job} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def child(job_json: str) -> None:
    job = json.loads(job_json)
    measure = {"imitation": measure_imitation, "icrl": measure_icrl}[job["measure"]]
    print(json.dumps(measure(job)))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["imitation", "icrl", "report"])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"demonstrations, kept for later runs (default {DEFAULT_CACHE})",
    )
    parser.add_argument("--ttt-demos", type=int, nargs="*", default=[512, 4096, 16_384])
    parser.add_argument(
        "--chess-demos",
        type=int,
        nargs="*",
        default=[64],
        help="chess PGN demonstration counts (the issue's: 512; ~2 s a game)",
    )
    parser.add_argument(
        "--draws", nargs="+", default=["shared", "per-episode"], choices=["shared", "per-episode"]
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=16,
        help="time per step from runs of E and 5E episodes (0: not measured)",
    )
    parser.add_argument(
        "--preparations",
        type=int,
        default=100,
        help="per-episode packings timed (episodes 1 … P-1, after episode 0's)",
    )
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--long-rounds", type=int, default=10_000)
    parser.add_argument("--step-variants", nargs="*", default=["naive", "stochastic"])
    parser.add_argument("--icrl-budget", type=int, default=2000,
                        help="the answering model's --token-budget (0: none)")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()  # fmt: skip


def main() -> None:
    args = arguments()
    if args.child:
        child(args.child)
        return
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "imitation"):
        imitation_section(args)
    if args.only == "imitation":
        return
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "icrl.sqlite"
        icrl_section(args, store)  # the report's store: run for --only report too
        if args.only in (None, "report"):
            report_section(store, Path(scratch))


if __name__ == "__main__":
    main()
