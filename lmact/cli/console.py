"""What the commands print: a run's summary and estimate, a sweep's table, its estimate and
its progress. Text that anyone may have written (names, completions, a server's words) goes
through `lmact.text.visible`, so an escape sequence never reaches the terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lmact.api import estimate_dict
from lmact.budget import BudgetReached, cap_against_estimate
from lmact.demos import duration
from lmact.errors import LmactError
from lmact.regimes import DEFAULT_REGIME, MEASURES, regime_of
from lmact.report.page import counted
from lmact.runner import RunEstimate, RunSummary
from lmact.text import visible


def _measure_rows(details: dict[str, object]) -> list[tuple[str, str]]:
    """The regimes' measures a summary shows (`Regime.measures_shown`), where the run has them."""
    return [
        (measure.summary, f"{details[measure.name]:.3f}")
        for measure in MEASURES
        if measure.summary is not None and isinstance(details.get(measure.name), float | int)
    ]


def print_summary(summary: RunSummary, store: object) -> None:
    score = summary.normalized_score
    rows = [
        (
            "mean return",
            f"{summary.mean_return:.3f}  (95% CI {summary.ci95[0]:.3f} … {summary.ci95[1]:.3f})",
        ),
        ("normalized score", "n/a (expert = random)" if score is None else f"{score:.3f}"),
        ("expert / random return", f"{summary.expert_return:.3f} / {summary.random_return:.3f}"),
        *_measure_rows(summary.details),
        (
            "illegal / invalid / empty",
            f"{summary.illegal_rate:.1%} / {summary.invalid_rate:.1%}"
            f" / {summary.empty_rate:.1%} of {summary.steps} steps",
        ),
        (
            "tokens prompt / completion",
            f"{summary.usage.prompt_tokens} / {summary.usage.completion_tokens}"
            f" ({summary.usage.cached_tokens} prompt tokens reused)",
        ),
        ("cost", dollars(summary.cost_usd)),
        *(
            [("unreadable answers", f"{summary.unreadable_answers} (recorded as empty)")]
            if summary.unreadable_answers
            else []
        ),
        (
            "model calls new / cached",
            f"{summary.calls_made} / {summary.calls_cached}"
            + (f" ({summary.retries} retries)" if summary.retries else ""),
        ),
    ]
    regime = "" if summary.regime == DEFAULT_REGIME else f"{summary.regime} · "
    heading = (
        f"{summary.task} · {summary.observation} · {summary.model} · {regime}"
        f"{summary.description} · {counted(summary.episodes, 'episode')}"
    )
    print(visible(heading))  # names are anyone's text: an escape sequence would reach the terminal
    if summary.details.get("stopped_by"):
        print(visible(f"(no further demonstration fit: {summary.details['stopped_by']})"))
    print_table(rows)
    print(visible(f"run {summary.run_id} in {store}"))


def print_estimate(estimate: RunEstimate, as_json: bool, max_cost: float | None = None) -> None:
    """A dry run's estimate, as a table or one JSON object, with the spend cap against it."""
    config, prepared = estimate.config, estimate.prepared
    if as_json:
        cap = cap_against_estimate(max_cost, estimate.cost_usd)
        print(json.dumps(estimate_dict(estimate) | cap))
        return
    print(
        f"dry run: {config.task} · {config.observation} · {config.model} · "
        f"{regime_of(config).describe(prepared.facts)}"
    )
    stopped_by = prepared.facts.details.get("stopped_by")
    if stopped_by:
        print(f"(no further demonstration fit: {stopped_by})")
    cost = dollars(estimate.cost_usd)
    if estimate.cost_usd is not None and estimate.cost_cached_usd is not None:
        cost += f" ({dollars(estimate.cost_cached_usd)} if the prefix is read from cache)"
    print_table(
        [
            (
                "episodes to play",
                f"{estimate.episodes_todo} ({estimate.episodes_done} already finished)",
            ),
            ("model calls", f"{estimate.calls} (as many as the expert takes steps)"),
            ("demonstrations needed", _demonstrations_made(estimate)),
            (
                "prompt tokens",
                f"{estimate.prompt_tokens} ({estimate.prefix_tokens} of them the demonstration "
                "prefix, cacheable)",
            ),
            ("completion tokens", f"at most {estimate.completion_tokens}"),
            ("estimated cost", cost),
        ]
    )
    print_cap(max_cost, estimate.cost_usd)
    print("no model was called")


def _demonstrations_made(estimate: RunEstimate) -> str:
    """The demonstrations a run needs, and what generating those not stored took."""
    needed, made = estimate.demonstrations_needed, estimate.demonstrations_generated
    if not made:
        return f"{needed} (all stored already)"
    took = estimate.demonstrations_generation_s
    workers = estimate.demonstration_workers
    played_by = "" if workers == 1 else f" on {workers} worker processes"
    return (
        f"{needed} ({made} generated by this dry run in {duration(took)}, "
        f"{duration(took / made)} each{played_by}; "
        f"{duration(estimate.demonstrations_forecast_s)} forecast)"
    )


def print_table(rows: Sequence[tuple[str, str]]) -> None:
    print("| metric | value |\n|---|---|")
    for name, value in rows:
        print(visible(f"| {name} | {value} |"))


def dollars(value: float | None) -> str:
    if value is None:
        return "unknown (no prices for this model; give --input-price and --output-price)"
    return f"${value:.4f}"


def sweep_progress(
    sweep: Any, runner: Any
) -> tuple[Callable[[Any], None], Callable[[], None], Callable[[], None]]:
    """What a sweep shows while it plays: on a terminal, a bar of runs done, with those
    playing and waiting, calls new and cached, retries and spend so far; else a line per
    run on stderr as it ends. Returns the run-ended and tick listeners and the closer."""
    from tqdm import tqdm

    total = len(sweep.runs)
    bar = tqdm(total=total, desc=visible(f"sweep {sweep.name}"), unit="run",
               disable=not sys.stderr.isatty())  # fmt: skip
    spent: list[float] = []  # one entry per finished run (a disabled bar counts nothing)

    def on_tick() -> None:
        done, playing = len(spent), len(runner.playing)
        totals = [caller.totals for caller in runner.policies.callers()]
        bar.set_postfix(
            playing=playing,
            waiting=max(total - done - playing, 0),
            calls=sum(t.calls_made for t in totals),
            cached=sum(t.calls_cached for t in totals),
            retries=sum(t.retries for t in totals),
            spent=f"${sum(spent):.4f}",
        )

    def on_done(outcome: Any) -> None:
        bar.update(1)
        cost = outcome.summary.cost_usd if outcome.summary is not None else None
        spent.append(cost or 0.0)
        on_tick()
        if bar.disable:
            state = "failed: " + outcome.error if outcome.error else "done"
            run = outcome.run.config
            print(visible(f"lmact: sweep {sweep.name}: {len(spent)}/{total} runs finished "
                          f"({run.model} {run.task}: {state})"), file=sys.stderr)  # fmt: skip

    return on_done, on_tick, bar.close


def _varying(sweep: Any) -> list[str]:
    """The options that differ between the sweep's runs."""
    names = {name for run in sweep.runs for name in run.options}
    return sorted(n for n in names if len({str(r.options.get(n)) for r in sweep.runs}) > 1)


def print_sweep(sweep: Any, outcomes: Sequence[Any]) -> None:
    varying = _varying(sweep)
    print(visible(f"sweep {sweep.name}: {len(outcomes)} runs"))
    print("| " + " | ".join([*varying, "mean return", "normalized", "run"]) + " |")
    print("|" + "---|" * (len(varying) + 3))
    failed = 0
    for outcome in outcomes:
        cells = [str(outcome.run.options.get(name, "")) for name in varying]
        if outcome.played is not None:  # a shard's run: its share, scored once merged
            cells += [f"{outcome.played} units here", "(merge the shards)",
                      outcome.run.config.run_id]  # fmt: skip
        elif outcome.summary is None:
            failed += 1
            cells += ["failed", outcome.error or "", outcome.run.config.run_id]
        else:
            score = outcome.summary.normalized_score
            shown = "n/a" if score is None else f"{score:.3f}"
            cells += [f"{outcome.summary.mean_return:.3f}", shown, outcome.summary.run_id]
        shown = (visible(" ".join(c.split())).replace("|", "\\|") for c in cells)
        print("| " + " | ".join(shown) + " |")
    capped = sum(outcome.capped for outcome in outcomes)
    if failed and capped == failed:  # the cap stopped them: no failure
        reason = next(outcome.error for outcome in outcomes if outcome.capped)
        raise BudgetReached(visible(
            f"sweep {sweep.name} stopped at its cap ({reason}); {failed} of {len(outcomes)} "
            "runs unfinished: rerun with a higher cap to finish them (no call is sent again)"
        ))  # fmt: skip
    if failed:
        raise LmactError(visible(
            f"{failed} of {len(outcomes)} runs of sweep {sweep.name} did not finish; the "
            "others are stored and every successful call is cached: rerun to resume"
        ))  # fmt: skip


def print_cap(max_cost: float | None, estimated: float | None) -> None:
    """The dry run's spend cap (`--max-cost`) against its estimated cost."""
    if max_cost is None:
        return
    fits = cap_against_estimate(max_cost, estimated)["estimate_within_cap"]
    if fits is None:
        print(f"--max-cost ${max_cost:g}: no estimate to hold it against (no prices known)")
        return
    verdict = "fits within it" if fits else "passes it: the run would stop"
    print(f"--max-cost ${max_cost:g}: the estimate, {dollars(estimated)}, {verdict}")


def print_sweep_estimate(sweep: Any, estimate: Any, max_cost: float | None = None) -> None:
    """A sweep's dry run: per model, its runs, calls, tokens and estimated cost."""
    print(f"dry run: sweep {sweep.name}, {len(sweep.runs)} runs (baselines besides), "
          f"{estimate.demonstrations} demonstrations to load or generate")  # fmt: skip
    print("| model | runs | calls | prompt tokens (cacheable) | estimated cost |")
    print("|---|---|---|---|---|")
    for model, row in sorted(estimate.models.items()):
        print(f"| {model} | {row.runs} | {row.calls} | {row.prompt_tokens} "
              f"({row.prefix_tokens}) | {dollars(row.cost_usd)} |")  # fmt: skip
    rows = estimate.models.values()
    costs = [row.cost_usd for row in rows]
    total = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
    print(f"| total | {len(sweep.runs)} | {sum(r.calls for r in rows)} | "
          f"{sum(r.prompt_tokens for r in rows)} | {dollars(total)} |")  # fmt: skip
    print_cap(max_cost, total)
    print("no model was called")
