"""The `lmact` command."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lmact.demos import MAX_DEMONSTRATIONS, DemoStore, default_cache_dir
from lmact.envs.base import DEMO_SEED_BASE
from lmact.errors import LmactError
from lmact.models.base import DEFAULT_MAX_WAIT_S
from lmact.models.registry import DEFAULT_MODEL, accepted_model_names
from lmact.report.page import counted
from lmact.store import DEFAULT_STORE, MAX_EPISODES
from lmact.text import visible

if TYPE_CHECKING:
    from lmact.runner import RunEstimate, RunSummary

EXIT_USAGE = 2
# The numeric options, checked in one place before any work: (least, most) allowed.
# A float option must also be finite. Integers stay within what SQLite stores.
_INT_LIMIT = 2**31 - 1
# The episodes a run's viewer page in an HTML report shows: each is replayed to rebuild its
# prompts, which for long runs (chess, in-context RL's hundreds of episodes) takes minutes.
DEFAULT_VIEW_EPISODES = 20
_BOUNDS: dict[str, tuple[float, float]] = {
    "--episodes": (1, MAX_EPISODES),
    "--demos": (0, MAX_DEMONSTRATIONS),
    "--demo-pool": (1, MAX_DEMONSTRATIONS),
    "--token-budget": (1, _INT_LIMIT),
    "--seed": (0, DEMO_SEED_BASE - 1),
    "--max-steps": (1, _INT_LIMIT),
    "--max-tokens": (1, _INT_LIMIT),
    "--p-keep": (0, 1),  # strictly above 0: see _POSITIVE
    "--contexts": (1, 10_000),
    "--replicates": (1, 10_000),
    "--temperature": (0, 2),
    "--eval-every": (1, _INT_LIMIT),
    "--eval-size": (1, 100_000),
    "--context-window": (1, _INT_LIMIT),
    "--threads": (1, 1024),
    "--max-connections": (1, 10_000),
    "--workers": (1, 1024),
    "--max-retries": (0, 1000),
    "--max-images": (1, _INT_LIMIT),
    "--view-episodes": (0, MAX_EPISODES),
    "--view-max-mb": (0, math.inf),  # strictly above 0: see _POSITIVE
    "--reasoning-budget": (1, _INT_LIMIT),
    "--timeout": (0, math.inf),  # strictly above 0: see _POSITIVE
    "--max-wait": (0, math.inf),
    "--input-price": (0, math.inf),
    "--output-price": (0, math.inf),
    "--episode": (0, _INT_LIMIT),
    "--port": (0, 65535),
}
_POSITIVE = frozenset({"--timeout", "--max-wait", "--p-keep", "--view-max-mb"})


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other lmact error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_storage_options(parser: argparse.ArgumentParser, store: bool = True) -> None:
    if store:
        parser.add_argument(
            "--store",
            type=Path,
            default=DEFAULT_STORE,
            help="the run store, a SQLite file (default: %(default)s)",
        )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where demonstrations are kept (default: $LMACT_CACHE_DIR or {default_cache_dir()})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes that generate demonstrations when the expert is slow "
        "(a first episode of 1 s or more; default: one per CPU)",
    )


def _add_episode_options(run: argparse.ArgumentParser) -> None:
    """What is played: task, model, demonstrations, episodes, limits."""
    run.add_argument(
        "--regime",
        choices=("imitation", "replay", "icrl"),
        default="imitation",
        help="imitation (default): demonstrations in the prompt, then new test episodes; "
        "replay: the prompt shows one demonstration, then the model is asked for each of "
        "its actions in turn (scored by the share it matches; expert 1.0); icrl: no "
        "demonstrations, the model plays episode after episode with its own earlier "
        "episodes and rewards in context (see --variant)",
    )
    run.add_argument("--task", required=True, help="a task name (see `lmact tasks`)")
    run.add_argument("--observation", help="observation format (default: the task's own)")
    run.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model name (default: %(default)s; see `lmact models`)",
    )
    demos = run.add_mutually_exclusive_group()
    demos.add_argument(
        "--demos", type=int, help="use exactly N demonstration episodes (default: 1)"
    )
    demos.add_argument(
        "--token-budget",
        type=int,
        metavar="T",
        help="pack as many whole demonstrations as fit T prompt tokens "
        "(preamble and demonstrations, counted by the model's tokenizer)",
    )
    run.add_argument("--episodes", type=int, help="test episodes (default: the task's own)")
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        help="test episode i starts from seed SEED+i; with --regime replay, episode i "
        "replays demonstration SEED+i (default: %(default)s)",
    )
    run.add_argument("--max-steps", type=int, help="step limit per episode (default: the task's)")
    run.add_argument(
        "--max-tokens", type=int, help="answer length limit (default: the task's; 512 with --cot)"
    )


def _add_prompt_options(run: argparse.ArgumentParser) -> None:
    """What the prompt shows and how answers are read (the reference protocol's options)."""
    run.add_argument(
        "--legal-actions", action="store_true", help="list the legal actions in the prompt"
    )
    run.add_argument(
        "--cot", action="store_true", help="ask for reasoning before the action (chain of thought)"
    )
    run.add_argument(
        "--no-past-actions",
        action="store_true",
        help="show the current episode's past observations without the actions taken "
        "(demonstrations keep their actions)",
    )
    run.add_argument(
        "--demo-draw",
        choices=("per-episode", "shared"),
        default="shared",
        help="shared (default): every test episode gets the first N demonstrations (one "
        "prefix, cached across episodes); per-episode: each test episode draws its own N "
        "from a pool of --demo-pool, seeded by its test seed, as the reference code does",
    )
    run.add_argument(
        "--demo-pool",
        type=int,
        metavar="P",
        help="how many demonstrations per-episode draws choose from; all are generated "
        "(default: 100)",
    )
    run.add_argument(
        "--prompts",
        metavar="DIR",
        help="a folder of prompt templates with the shipped file names, replacing the "
        "shipped set (their text is part of the run's identity)",
    )
    run.add_argument(
        "--answer-match",
        choices=("lenient", "exact"),
        default="lenient",
        help="lenient (default): read answers with the task's parser (any case, SAN without "
        "+); exact: only an answer spelled exactly as one of the legal actions is legal, as "
        "in the reference code",
    )


def _add_icrl_options(run: argparse.ArgumentParser) -> None:
    """The in-context RL regime's options (--regime icrl)."""
    group = run.add_argument_group("in-context RL (--regime icrl)")
    group.add_argument(
        "--variant",
        choices=("naive", "naive-positive", "stochastic", "approximate", "supervised"),
        default="naive",
        help="which earlier episodes the context holds: naive (default): all, the most "
        "recent that fit; naive-positive: successful ones only; stochastic: successful "
        "ones, each kept with probability --p-keep, drawn afresh at every step; "
        "approximate: --contexts growing contexts, one drawn per step; supervised: all, "
        "with the expert's actions (gold labels) instead of those played",
    )
    group.add_argument(
        "--p-keep", type=float, default=0.1, help="keep probability (default: %(default)s)"
    )
    group.add_argument(
        "--contexts", type=int, default=8, help="approximate contexts (default: %(default)s)"
    )
    group.add_argument(
        "--replicates",
        type=int,
        default=5,
        help="independent replicates, replicate r from seed SEED+r; --episodes is each "
        "one's horizon (default: %(default)s)",
    )
    group.add_argument(
        "--history",
        choices=("raw", "summary"),
        default="raw",
        help="raw (default): the earlier rounds as played; summary (bandits): per-arm "
        "counts and mean rewards instead",
    )
    group.add_argument(
        "--reset",
        choices=("same", "fresh"),
        help="same: every episode of a replicate starts from one initial state (the "
        "default); fresh: a new start per episode (the default for classification, a "
        "stream of inputs)",
    )
    group.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (default: 0)"
    )
    group.add_argument(
        "--eval-every",
        type=int,
        metavar="K",
        help="classification: before episode 0 and every K episodes, label held-out "
        "examples with that episode's context (never added to a context)",
    )
    group.add_argument(
        "--eval-size",
        type=int,
        default=100,
        help="held-out examples per evaluation (default: %(default)s)",
    )


def _add_dataset_options(run: argparse.ArgumentParser) -> None:
    """A user's dataset for a classification task."""
    group = run.add_argument_group("a dataset of your own (classification tasks)")
    group.add_argument(
        "--dataset",
        type=Path,
        metavar="PATH",
        help="a JSONL or CSV file of labelled texts: the stream episodes draw from",
    )
    group.add_argument(
        "--held-out",
        type=Path,
        metavar="PATH",
        help="held-out examples (demonstrations, --eval-every); default: the --dataset file",
    )
    group.add_argument("--text-field", default="text", help="default: %(default)s")
    group.add_argument("--label-field", default="label", help="default: %(default)s")
    group.add_argument(
        "--unsemantic-labels",
        action="store_true",
        help="replace the labels by meaningless ids (L01, L02 … in sorted order)",
    )


def _add_execution_options(run: argparse.ArgumentParser) -> None:
    """How a run is carried out and reported."""
    run.add_argument(
        "--context-window",
        type=int,
        help="the model's context window in tokens (local models: the KV cache "
        "size; default: the model's own)",
    )
    run.add_argument("--threads", type=int, help="CPU threads for local models (default: all)")
    run.add_argument(
        "--max-connections",
        type=int,
        help="requests in flight at once, which is also the number of episodes played "
        "at once (default: the provider's: 16 OpenAI, 8 Anthropic and Gemini, "
        "16 OpenAI-compatible, 1 local)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="call no model: print the calls, tokens and estimated cost of the run, "
        "with the expert playing the episodes",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument(
        "--restart",
        action="store_true",
        help="discard the run's stored episodes and play them afresh (the call cache is kept); "
        "needed when the demonstrations changed since the run started",
    )


def _add_remote_options(run: argparse.ArgumentParser) -> None:
    """Options of networked models."""
    remote = run.add_argument_group("networked models")
    remote.add_argument(
        "--base-url",
        action="append",
        help="the API's base URL (openai-compatible: required here or in "
        "$OPENAI_COMPATIBLE_BASE_URL; others: a gateway or proxy). openai-compatible "
        "takes it more than once: servers of the same model, asked in turn",
    )
    remote.add_argument(
        "--completions",
        action="store_true",
        help="openai-compatible: use the completions endpoint with the plain prompt, for "
        "base models without a chat template",
    )
    remote.add_argument(
        "--timeout", type=float, metavar="S", help="seconds one attempt may take (default: 120)"
    )
    remote.add_argument(
        "--max-retries",
        type=int,
        default=6,
        help="further attempts after a rate limit, overload, 5xx, timeout or dropped "
        "connection (default: %(default)s)",
    )
    remote.add_argument(
        "--max-wait",
        type=float,
        metavar="S",
        default=DEFAULT_MAX_WAIT_S,
        help="the longest a server's Retry-After (or a backoff) may pause the run, in "
        "seconds; a longer wait is cut to this (default: %(default)g)",
    )
    remote.add_argument(
        "--max-images", type=int, help="images one request may hold (default: the catalog's)"
    )
    remote.add_argument(
        "--reasoning-budget",
        type=int,
        metavar="T",
        help="tokens a reasoning model may think for (OpenAI reasoning models: 4096 unless "
        "given; Anthropic and Gemini: turns thinking on)",
    )
    remote.add_argument(
        "--input-price", type=float, help="USD per million prompt tokens (default: the catalog's)"
    )
    remote.add_argument(
        "--output-price",
        type=float,
        help="USD per million completion tokens (default: the catalog's)",
    )


def _add_run_command(commands: argparse._SubParsersAction) -> None:
    """`lmact run` and its options, by group."""
    run = commands.add_parser(
        "run",
        help="evaluate a model on a task",
        description="Evaluate a model on test episodes of a task, with expert demonstrations "
        "in the prompt; also runs the random and expert baselines on the same "
        "test seeds and prints the normalized score. Everything is stored: rerunning "
        "the same command makes no model call, and a killed run resumes.",
    )
    _add_run_options(run)


def _add_run_options(run: argparse.ArgumentParser) -> None:
    _add_episode_options(run)
    _add_prompt_options(run)
    _add_icrl_options(run)
    _add_dataset_options(run)
    _add_execution_options(run)
    _add_remote_options(run)
    _add_storage_options(run)


def _add_sweep_command(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="play a grid of runs from a TOML file",
        description="Play every run of a sweep file (a base of run options and axes whose "
        "product is the grid; see tasks/sweeps/) and the baselines they need, each once, "
        "in one event loop with one caller per model. Resumable like a run; the sweep's "
        "name and grid are kept in the store for `lmact report --sweep NAME`.",
    )
    sweep.add_argument("file", type=Path, help="the sweep file (TOML)")
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="call no model: print the runs, calls, prompt tokens and estimated cost",
    )
    sweep.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="requests in flight at once per model (default: the sweep file's "
        "max_connections, else each provider's)",
    )
    _add_storage_options(sweep)
    # Unset on the command line, these come from the sweep file's [base], if it sets them.
    sweep.set_defaults(store=None)
    for action in sweep._actions:
        if action.dest == "store":
            action.help = f"the run store (default: the sweep file's store, else {DEFAULT_STORE})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lmact",
        description="Evaluate language models as policies in interactive tasks, "
        "from demonstrations in context (LMAct).",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_run_command(commands)
    _add_sweep_command(commands)

    demos_command = commands.add_parser(
        "demos",
        help="generate demonstrations ahead of a run",
        description="Generate (or check) the first N expert demonstrations of a task.",
    )
    demos_command.add_argument("task", help="a task name (see `lmact tasks`)")
    demos_command.add_argument("--episodes", type=int, required=True, metavar="N")
    demos_command.add_argument("--observation", help="observation format (default: the task's)")
    _add_storage_options(demos_command, store=False)

    _add_report_command(commands)

    _add_compare_command(commands)
    _add_view_command(commands)
    commands.add_parser("tasks", help="list the tasks", description="List the tasks.")
    commands.add_parser(
        "models", help="list the model names", description="List the model names lmact accepts."
    )
    return parser


def _add_report_command(commands: argparse._SubParsersAction) -> None:
    """`lmact report`: tables, plots and the HTML report."""
    report = commands.add_parser(
        "report",
        help="a table of every run in the store, and plots",
        description="Print a table of every run in the run store, grouped by task; "
        "draw its plots with --plot or --out (see docs/reports.md).",
    )
    report.add_argument(
        "--format",
        default="markdown",
        help="markdown (default; also md), csv, json (the rows and each run's episodes) "
        "or html (a page with the tables, plots and a viewer page per run; needs --out)",
    )
    for option, noun in (("--task", "task"), ("--model", "model")):
        report.add_argument(
            option,
            action="append",
            metavar="NAME[,NAME…]",
            help=f"only the runs of this {noun}; repeat it or list names with commas",
        )
    report.add_argument(
        "--curves",
        action="store_true",
        help="the learning curves of in-context RL runs (mean return per episode index "
        "across replicates, with its 95%% interval) instead of the table of runs",
    )
    report.add_argument(
        "--sweep", metavar="NAME", help="only the runs of this sweep (see `lmact sweep`)"
    )
    _add_report_outputs(report)
    _add_storage_options(report)  # the cache: where viewer pages read demonstrations


def _add_report_outputs(report: argparse.ArgumentParser) -> None:
    """Where `lmact report` writes: plots, files, the HTML report's viewer pages."""
    report.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help="also draw every plot the runs support (normalized score and answer rates "
        "against demonstrations, learning curves, bandit measures) as PNG files into DIR "
        "(needs matplotlib: pip install 'lmact[report]')",
    )
    report.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write the table (DIR/report.md, .csv or .json; DIR/curves.* with --curves) "
        "and every plot (DIR/*.png) into DIR instead of printing the table; with --format "
        "html, DIR/index.html and a viewer page per run, DIR/runs/RUN_ID.html",
    )
    report.add_argument(
        "--view-episodes",
        type=int,
        metavar="N",
        help="--format html: a run's viewer page shows its first N episodes (default "
        f"{DEFAULT_VIEW_EPISODES}; replaying them is what a page costs); 0: no viewer pages",
    )
    report.add_argument(
        "--view-max-mb",
        type=float,
        metavar="MB",
        help="--format html: leave out (and name) the viewer pages larger than this; image "
        "observations make big pages (default: no limit)",
    )


def _add_compare_command(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help="the paired difference of two runs on the test seeds both played",
        description="Compare two runs of one task on the test seeds both played: the mean "
        "of A - B of their returns, its 95% paired bootstrap interval (and, for contrast, "
        "the interval without pairing), and the share of seeds where each is ahead "
        "(see docs/reports.md).",
    )
    for name in ("RUN_A", "RUN_B"):
        compare.add_argument(
            name.lower(), metavar=name, help="a run id, or its first characters "
            "(`lmact report` lists them)",
        )  # fmt: skip
    compare.add_argument("--format", default="markdown", help="markdown (default; also md) or json")
    compare.add_argument(
        "--store", type=Path, default=DEFAULT_STORE, help="the run store (default: %(default)s)"
    )


def _add_view_command(commands: argparse._SubParsersAction) -> None:
    view = commands.add_parser(
        "view",
        help="a step-by-step page of a run's episodes",
        description="Write a self-contained HTML page of a run's finished episodes, step by "
        "step: each observation as the model saw it, the completion, the answer and its kind, "
        "the action executed (marked when it replaced the answer), reward, tokens, latency, "
        "and the demonstrations or in-context RL context. The episodes are replayed offline "
        "to rebuild each prompt, which is checked against the stored prompt hash.",
    )
    view.add_argument(
        "run_id",
        nargs="?",
        metavar="RUN_ID",
        help="a run id, or its first characters (default: the latest run that is not a "
        "baseline; `lmact report` lists them)",
    )
    view.add_argument(
        "--episode",
        type=int,
        metavar="N",
        help="the episode shown first: episode N (in-context RL: of replicate 0; the page "
        "links every other; default: the first)",
    )
    view.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the page, - for stdout (default: view-RUN_ID.html beside the "
        "run store); the path written is printed",
    )
    view.add_argument(
        "--serve",
        action="store_true",
        help="also serve the page on http://127.0.0.1:PORT/ until Ctrl-C",
    )
    view.add_argument(
        "--port", type=int, default=0, help="the port of --serve (default: any free one)"
    )
    _add_storage_options(view)


def _demo_store(args: argparse.Namespace) -> DemoStore:
    return DemoStore.in_cache(args.cache_dir, args.workers)


def _command_run(args: argparse.Namespace) -> None:
    from lmact.api import play
    from lmact.options import read_run
    from lmact.runner import RunEstimate

    read = read_run({name: value for name, value in vars(args).items() if name != "command"})
    played = play(read, progress=sys.stderr.isatty())
    if isinstance(played, RunEstimate):
        _print_estimate(played, args.json)
    elif args.json:
        print(json.dumps(played.to_dict()))
    else:
        _print_summary(played, args.store)


# Measures of in-context RL runs shown in the summary, when a run has them.
_LEARNING_MEASURES = {
    "final_return": "return, last 10% of episodes",
    "final_normalized": "normalized, last 10%",
    "regret": "regret (gap x pulls of worse arms)",
    "suffix_failure": "suffix failures (never the best arm in the second half)",
    "k_min_frac": "K x least-pulled arm's share",
}


def _learning_rows(details: dict[str, object]) -> list[tuple[str, str]]:
    return [
        (label, f"{details[name]:.3f}")
        for name, label in _LEARNING_MEASURES.items()
        if isinstance(details.get(name), float | int)
    ]


def _print_summary(summary: RunSummary, store: Path) -> None:
    score = summary.normalized_score
    rows = [
        (
            "mean return",
            f"{summary.mean_return:.3f}  (95% CI {summary.ci95[0]:.3f} … {summary.ci95[1]:.3f})",
        ),
        ("normalized score", "n/a (expert = random)" if score is None else f"{score:.3f}"),
        ("expert / random return", f"{summary.expert_return:.3f} / {summary.random_return:.3f}"),
        *_learning_rows(summary.details),
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
        ("cost", _dollars(summary.cost_usd)),
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
    regime = "" if summary.regime == "imitation" else f"{summary.regime} · "
    heading = (
        f"{summary.task} · {summary.observation} · {summary.model} · {regime}"
        f"{summary.description} · {counted(summary.episodes, 'episode')}"
    )
    print(visible(heading))  # names are anyone's text: an escape sequence would reach the terminal
    if summary.details.get("stopped_by"):
        print(visible(f"(no further demonstration fit: {summary.details['stopped_by']})"))
    _print_table(rows)
    print(visible(f"run {summary.run_id} in {store}"))


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option within its bounds (and finite), before any work starts."""
    for flag, (least, most) in _BOUNDS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if value is None:
            continue
        if not math.isfinite(value):
            raise LmactError(f"{flag} must be a finite number, not {value}")
        if (flag in _POSITIVE and value <= 0) or (least == 1 and value < 1):
            raise LmactError(f"{flag} must be positive, not {value:g}")
        if value < least:
            raise LmactError(f"{flag} must be at least {least:g}, not {value:g}")
        if value > most:
            raise LmactError(f"{flag} must be at most {most:g}, not {value:g}")


def _print_estimate(estimate: RunEstimate, as_json: bool) -> None:
    from lmact.api import estimate_dict

    config, prepared = estimate.config, estimate.prepared
    if as_json:
        print(json.dumps(estimate_dict(estimate)))
        return
    from lmact.regimes import regime_of

    print(
        f"dry run: {config.task} · {config.observation} · {config.model} · "
        f"{regime_of(config).describe(prepared.facts)}"
    )
    stopped_by = prepared.facts.details.get("stopped_by")
    if stopped_by:
        print(f"(no further demonstration fit: {stopped_by})")
    cost = _dollars(estimate.cost_usd)
    if estimate.cost_usd is not None and estimate.cost_cached_usd is not None:
        cost += f" ({_dollars(estimate.cost_cached_usd)} if the prefix is read from cache)"
    _print_table(
        [
            (
                "episodes to play",
                f"{estimate.episodes_todo} ({estimate.episodes_done} already finished)",
            ),
            ("model calls", f"{estimate.calls} (as many as the expert takes steps)"),
            (
                "demonstrations needed",
                f"{estimate.demonstrations_needed} (the dry run generated those not stored yet)",
            ),
            (
                "prompt tokens",
                f"{estimate.prompt_tokens} ({estimate.prefix_tokens} of them the demonstration "
                "prefix, cacheable)",
            ),
            ("completion tokens", f"at most {estimate.completion_tokens}"),
            ("estimated cost", cost),
        ]
    )
    print("no model was called")


def _print_table(rows: Sequence[tuple[str, str]]) -> None:
    print("| metric | value |\n|---|---|")
    for name, value in rows:
        print(visible(f"| {name} | {value} |"))


def _dollars(value: float | None) -> str:
    if value is None:
        return "unknown (no prices for this model; give --input-price and --output-price)"
    return f"${value:.4f}"


def _command_sweep(args: argparse.Namespace) -> None:
    from lmact.sweeps import plan_sweep

    plan = plan_sweep(args.file, store=args.store, cache_dir=args.cache_dir,
                      workers=args.workers, max_connections=args.max_connections)  # fmt: skip
    if args.dry_run:
        _print_sweep_estimate(plan.sweep, plan.estimate())
        return
    _print_sweep(plan.sweep, plan.play(_sweep_progress))


def _sweep_progress(
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


def _print_sweep(sweep: Any, outcomes: Sequence[Any]) -> None:
    varying = _varying(sweep)
    print(visible(f"sweep {sweep.name}: {len(outcomes)} runs"))
    print("| " + " | ".join([*varying, "mean return", "normalized", "run"]) + " |")
    print("|" + "---|" * (len(varying) + 3))
    failed = 0
    for outcome in outcomes:
        cells = [str(outcome.run.options.get(name, "")) for name in varying]
        if outcome.summary is None:
            failed += 1
            cells += ["failed", outcome.error or "", outcome.run.config.run_id]
        else:
            score = outcome.summary.normalized_score
            shown = "n/a" if score is None else f"{score:.3f}"
            cells += [f"{outcome.summary.mean_return:.3f}", shown, outcome.summary.run_id]
        shown = (visible(" ".join(c.split())).replace("|", "\\|") for c in cells)
        print("| " + " | ".join(shown) + " |")
    if failed:
        raise LmactError(visible(
            f"{failed} of {len(outcomes)} runs of sweep {sweep.name} did not finish; the "
            "others are stored and every successful call is cached: rerun to resume"
        ))  # fmt: skip


def _print_sweep_estimate(sweep: Any, estimate: Any) -> None:
    """A sweep's dry run: per model, its runs, calls, tokens and estimated cost."""
    print(f"dry run: sweep {sweep.name}, {len(sweep.runs)} runs (baselines besides), "
          f"{estimate.demonstrations} demonstrations to load or generate")  # fmt: skip
    print("| model | runs | calls | prompt tokens (cacheable) | estimated cost |")
    print("|---|---|---|---|---|")
    for model, row in sorted(estimate.models.items()):
        print(f"| {model} | {row.runs} | {row.calls} | {row.prompt_tokens} "
              f"({row.prefix_tokens}) | {_dollars(row.cost_usd)} |")  # fmt: skip
    rows = estimate.models.values()
    costs = [row.cost_usd for row in rows]
    total = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
    print(f"| total | {len(sweep.runs)} | {sum(r.calls for r in rows)} | "
          f"{sum(r.prompt_tokens for r in rows)} | {_dollars(total)} |")  # fmt: skip
    print("no model was called")


def _command_demos(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from lmact.tasks import get_task

    task = get_task(args.task)
    observation = args.observation or task.default_observation
    task.check_observation(observation)
    store = _demo_store(args)
    with tqdm(
        total=args.episodes,
        desc=f"demonstrations {task.name}",
        unit="demo",
        disable=not sys.stderr.isatty(),
    ) as bar:
        demonstrations = store.load(task, observation, 0, args.episodes, bar.update)
    returns = [d.total_return for d in demonstrations]
    print(
        f"{counted(len(demonstrations), 'demonstration')} of {task.name}/{observation} in "
        f"{store.directory(task, observation)} (mean return {sum(returns) / len(returns):.3f})"
    )


def _names(values: list[str] | None, rows: list[dict[str, Any]], column: str) -> list[str] | None:
    """A repeated option's names, each value possibly a comma list; None if not given. A
    value that is exactly the `column` of some row is that one name, commas and all (a task
    of a dataset, or given by its path, may have one)."""
    if values is None:
        return None
    known = _known(rows, column)
    return [
        name
        for value in values
        for name in ([value] if value in known else [n.strip() for n in value.split(",")])
        if name
    ]


def _known(rows: list[dict[str, Any]], column: str) -> set[str]:
    return {str(row[column]) for row in rows if row.get(column) is not None}


def _report_rows(args: argparse.Namespace, fmt: str) -> list[dict[str, Any]]:
    """The rows `lmact report` shows: the selected runs (with their episodes for JSON)."""
    from lmact.report.tables import report_rows, select_rows, with_episodes
    from lmact.store import RunStore

    if not args.store.exists():
        raise LmactError(f"no run store at {args.store}; start with `lmact run`")
    with RunStore(args.store) as store:
        members = store.sweep_runs(args.sweep) if args.sweep is not None else None
        rows = report_rows(store)
        tasks, models = _names(args.task, rows, "task"), _names(args.model, rows, "model")
        _check_names(rows, "task", tasks)
        _check_names(rows, "model", models)
        rows = select_rows(rows, tasks=tasks, models=models, run_ids=members)
        if fmt == "json" and not args.curves:
            rows = with_episodes(store, rows)
    return rows


def _check_names(rows: list[dict[str, Any]], column: str, names: list[str] | None) -> None:
    """A name no run has is a one-line error naming those there are (a typo, most often)."""
    known = sorted(_known(rows, column))
    for name in names or []:
        if name not in known:
            listed = visible(", ".join(known)) or "none"  # the store's names: anyone's text
            raise LmactError(f"no run of {column} {name!r} in the store ({column}s: {listed})")


def _report_format(name: str) -> str:
    """`html`, or a table format's canonical name; an unknown one is an error naming all."""
    from lmact.errors import UnknownNameError
    from lmact.report.tables import FORMAT_ALIASES, FORMATS, table_format

    if name == "html":
        return name
    try:
        return table_format(name)
    except UnknownNameError:
        raise UnknownNameError("report format", name, (*FORMATS, "html", *FORMAT_ALIASES)) from None


def _command_report(args: argparse.Namespace) -> None:
    from lmact.report.tables import CURVE_COLUMNS, SUFFIXES, curve_rows, format_table

    fmt = _report_format(args.format)
    if fmt == "html":
        _html_report(args)
        return
    for flag in ("view_episodes", "view_max_mb"):
        if getattr(args, flag) is not None:
            raise LmactError(f"--{flag.replace('_', '-')} is an option of --format html")
    if args.out is not None or args.plot is not None:
        from lmact.report.plots import check_matplotlib

        check_matplotlib()  # without it, fail before anything is written
    rows = _report_rows(args, fmt)
    curves = curve_rows(rows)
    if args.curves and not curves and fmt == "markdown":
        raise LmactError("the run store holds no in-context RL run (--regime icrl) yet")
    table = format_table(curves, fmt, CURVE_COLUMNS) if args.curves else format_table(rows, fmt)
    if fmt == "markdown" and not args.curves:
        table += _comparison_section(args.store, rows)
    written = []
    if args.plot is not None:
        written += _plot_files(rows, curves, args.plot, "--plot")
    if args.out is not None:
        written += _plot_files(rows, curves, args.out, "--out", required=False)
        path = args.out / f"{'curves' if args.curves else 'report'}.{SUFFIXES[fmt]}"
        try:
            path.write_text(table, encoding="utf-8")
        except OSError as error:
            raise LmactError(f"--out {path}: {error.strerror}") from None
        written.append(path)
    for path in written:
        print(f"lmact: wrote {path}", file=sys.stderr)
    if args.out is None:
        print(table, end="")


def _comparison_section(store_path: Path, rows: list[dict[str, Any]]) -> str:
    """The report's paired comparisons of the rows' runs that share test seeds, after the
    tables and a blank line; empty when no two runs do."""
    from lmact.report.compare import comparison_section, find_comparisons
    from lmact.store import RunStore

    with RunStore(store_path) as store:
        found = find_comparisons(store, rows)
    section = comparison_section(found.rows, found.left_off, found.counted)
    return f"\n{section}" if section else ""


# The viewer pages an HTML report writes, at most (of its first runs): each page replays its
# episodes, tens of milliseconds for tic-tac-toe, seconds for chess; a sweep of thousands of
# runs would take hours.
MAX_VIEWER_PAGES = 100


def _html_report(args: argparse.Namespace) -> None:
    """`lmact report --format html --out DIR`: DIR/index.html, and DIR/runs/RUN_ID.html, the
    viewer page of each run (its first --view-episodes episodes; of the first
    MAX_VIEWER_PAGES runs) that the index links to."""
    from lmact.report.compare import comparison_rows
    from lmact.report.html import render_report
    from lmact.report.plots import check_matplotlib, report_figures
    from lmact.report.tables import curve_rows
    from lmact.store import RunStore

    if args.out is None:
        raise LmactError("--format html needs --out DIR: the page comes with a viewer page "
                         "per run, written beside it")  # fmt: skip
    if args.curves:
        raise LmactError("--curves is for the table formats; the HTML report draws the "
                         "learning curves")  # fmt: skip
    check_matplotlib()  # without it, fail before anything is written
    rows = _report_rows(args, "html")
    if not rows:
        raise LmactError("the selected runs have no finished episode yet; start with `lmact run`")
    curves = curve_rows(rows)
    written = _plot_files(rows, curves, args.plot, "--plot") if args.plot is not None else []
    viewed = DEFAULT_VIEW_EPISODES if args.view_episodes is None else args.view_episodes
    viewed_runs = [row["run_id"] for row in rows[:MAX_VIEWER_PAGES]]
    pages, left_out = _viewer_pages(args, viewed_runs, viewed)
    index = args.out / "index.html"
    with RunStore(args.store) as store:
        compared, _ = comparison_rows(store, rows)
    notes = [
        f"Viewer pages of {counted(len(left_out), 'run')} left out, each over "
        f"{args.view_max_mb:g} MB: {', '.join(left_out)}; `lmact view RUN_ID` writes one."
    ] if left_out else []  # fmt: skip
    if viewed and len(rows) > MAX_VIEWER_PAGES:
        notes.append(f"Viewer pages of the first {MAX_VIEWER_PAGES} of {len(rows)} runs only; "
                     "`lmact view RUN_ID` writes any other.")  # fmt: skip
    report = render_report(rows, report_figures(rows, curves), run_pages=pages,
                           store=args.store, comparisons=compared or None, notes=notes)  # fmt: skip
    _write_page(index, report)
    for path in written:
        print(f"lmact: wrote {path}", file=sys.stderr)
    if pages:
        print(f"lmact: wrote {len(pages)} viewer pages under {args.out / 'runs'}", file=sys.stderr)
    print(index)


def _viewer_pages(
    args: argparse.Namespace, run_ids: list[str], episodes: int
) -> tuple[dict[str, str], list[str]]:
    """Each run's viewer page (its first `episodes` episodes) written under --out: where
    each is, relative to the report's index.html, and the runs whose page was left out,
    being over --view-max-mb."""
    from lmact.report.html import run_page_path
    from lmact.report.viewer import render_viewer
    from lmact.store import RunStore

    pages, left_out = {}, []
    if not episodes:
        return pages, left_out
    demo_store = _demo_store(args)
    limit = None if args.view_max_mb is None else args.view_max_mb * 1_000_000
    with RunStore(args.store) as store:
        for run_id in run_ids:
            page = render_viewer(store, run_id, demo_store=demo_store, max_episodes=episodes)
            if limit is not None and len(page.encode("utf-8")) > limit:
                left_out.append(run_id)
                continue
            pages[run_id] = run_page_path(run_id)
            _write_page(args.out / pages[run_id], page)
    return pages, left_out


def _write_page(path: Path, page: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise LmactError(f"--out {path}: {error.strerror or error}") from None


def _plot_files(
    rows: list[dict[str, Any]], curves: list[dict[str, Any]], folder: Path, option: str,
    required: bool = True,
) -> list[Path]:  # fmt: skip
    """Every plot the rows support, written under `folder`; with `required`, having none
    is an error (--plot asks for plots; --out for a report, plots where there are any)."""
    from lmact.report.plots import write_report_plots

    written = write_report_plots(rows, curves, folder, option)
    if required and not written:
        raise LmactError("the selected runs have nothing to plot: plots need imitation "
                         "runs with normalized scores, or in-context RL runs")  # fmt: skip
    return written


def _command_compare(args: argparse.Namespace) -> None:
    from lmact.report.compare import compare_runs, comparison_format, format_comparison
    from lmact.store import RunStore

    fmt = comparison_format(args.format)
    if not args.store.exists():
        raise LmactError(f"no run store at {args.store}; start with `lmact run`")
    with RunStore(args.store) as store:
        row = compare_runs(store, args.run_a, args.run_b)
    print(format_comparison(row, fmt), end="")


def _command_view(args: argparse.Namespace) -> None:
    from lmact.report.tables import resolve_run
    from lmact.report.viewer import render_viewer, serve_page, view_path
    from lmact.store import RunStore

    if not args.store.exists():
        raise LmactError(f"no run store at {args.store}; start with `lmact run`")
    with RunStore(args.store) as store:
        run = resolve_run(store, args.run_id)
        page = render_viewer(store, run.run_id, args.episode, demo_store=_demo_store(args))
    if args.out == "-":
        # The page's text is a model's: raw, its escape sequences would reach a terminal
        # (a browser shows the written escapes alike; the page's script holds only JSON).
        print(visible(page, keep="\n\t"), end="")
    else:
        out = Path(args.out) if args.out else view_path(args.store, run.run_id)
        try:
            out.write_text(page, encoding="utf-8")
        except OSError as error:
            raise LmactError(f"cannot write {out}: {error.strerror or error}") from None
        print(out)
    if args.serve:  # stdout is written when the command ends: the address goes to stderr
        serve_page(page, args.port, lambda url: print(f"lmact: serving {url} (Ctrl-C stops)",
                                                       file=sys.stderr, flush=True))  # fmt: skip


def _command_tasks(args: argparse.Namespace) -> None:
    from lmact.tasks import task_specs

    for spec in task_specs().values():
        formats = ", ".join(
            f"{o} (default)" if o == spec.default_observation else o for o in spec.observations
        )
        print(
            f"{spec.name}: {spec.description}\n  observations: {formats}; "
            f"{spec.max_steps} steps at most; {spec.episodes} test episodes by default"
        )


def _command_models(args: argparse.Namespace) -> None:
    for name in accepted_model_names():
        suffix = "  (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{suffix}")


COMMANDS = {
    "run": _command_run,
    "sweep": _command_sweep,
    "demos": _command_demos,
    "report": _command_report,
    "compare": _command_compare,
    "view": _command_view,
    "tasks": _command_tasks,
    "models": _command_models,
}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: claims released, children ended


def _write_output(text: str) -> str | None:
    """Write a command's output to stdout; the reason if it cannot be written (a full
    disk, a closed pipe: `| head` is no error, so its reason is empty)."""
    if sys.stdout.isatty():  # what no command made visible yet (a CSV cell, say) stays harmless
        text = visible(text, keep="\n\t")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as error:
        # Point stdout at nothing, so that the interpreter's own flush at exit is quiet.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return "" if error.errno == errno.EPIPE else error.strerror or str(error)
    return None


def _flagged(error: LmactError) -> str:
    """An error as the command line says it: options by their flags."""
    from lmact.declarations import OptionError

    if isinstance(error, OptionError):
        return error.say(lambda name: "--" + name.replace("_", "-"))
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        return _dispatch(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args: argparse.Namespace) -> int:
    """Run a command; its output is written at the end, in one place that can fail."""
    output = io.StringIO()
    code = 0
    try:
        check_numbers(args)
        with contextlib.redirect_stdout(output):
            COMMANDS[args.command](args)
    except LmactError as error:
        code, message = EXIT_USAGE, f"lmact: error: {_flagged(error)}"
    except KeyboardInterrupt:
        code, message = 130, "lmact: interrupted; rerun the same command to resume"
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise  # not a full disk: a bug, keep its traceback
        where = f" ({error.filename})" if error.filename else ""
        code, message = EXIT_USAGE, f"lmact: error: no space left on the device{where}"
    problem = _write_output(output.getvalue())
    if code:
        print(message, file=sys.stderr)
    elif problem:
        print(f"lmact: error: cannot write the output: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
