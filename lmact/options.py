"""The options of a run, declared once, and the one reader of them.

`read_run` takes a plain mapping of options by name — from `lmact run`'s command line, from
`lmact.api.run(**options)`, from a sweep file — and gives a validated run: the regime's
configuration, the number of episodes, the process's options (store, cache, model client
options …) and what the command does with it (a dry run, a restart). Names are exact (an
unknown one is refused, with the name it resembles), types are checked (a sweep file's
`true` is no number), bounds once, an option of another regime is refused, defaults come
from the declarations or the task. Errors name options by name (`OptionError`); this module
knows no flag.

The common options are declared here; those that only some regimes take, with the regime
(`Regime.options`, collected by `lmact.regimes`). Declarations are `lmact.declarations.Option`.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmact.budget import Budget
from lmact.declarations import INT_LIMIT, Column, Named, Option, OptionError, Scope, in_help_order
from lmact.demos import DEMO_SEED_BASE, default_cache_dir
from lmact.errors import LmactError
from lmact.models.base import DEFAULT_MAX_WAIT_S, ModelOptions
from lmact.models.registry import DEFAULT_MODEL
from lmact.presets import apply_preset
from lmact.regimes import BROKEN_REGIMES, DEFAULT_REGIME, MEASURES, REGIME_OPTIONS, REGIMES
from lmact.regimes.base import RegimeConfig
from lmact.regimes.prompted import ANSWER_MATCHES
from lmact.store import DEFAULT_STORE, MAX_EPISODES, StoreLocation, store_location
from lmact.tasks import dataset_task, get_task, unsemantic_task
from lmact.trackers import tracker_names

DATASET = "a dataset of your own (classification tasks)"
NETWORKED = "networked models"
RUN, MODEL, PROCESS, COMMAND = Scope.RUN, Scope.MODEL, Scope.PROCESS, Scope.COMMAND


def _regime_help() -> str:
    return "; ".join(
        f"{name}{' (default)' if name == DEFAULT_REGIME else ''}: {regime.help}"
        for name, regime in REGIMES.items()
    )


COMMON: tuple[Option, ...] = (
    # What is played.
    Option("preset", order=5, configures=False, metavar="NAME",
           help="a paper's protocol as options (see `lmact presets`); options given as "
           "well win, and the run is the run of the options it resolves to"),
    # A broken plug-in's name is accepted here, to be refused with why in `read_run`.
    Option("regime", choices=(*REGIMES, *BROKEN_REGIMES), default=DEFAULT_REGIME, order=10,
           configures=False, help=_regime_help(), column=Column(place="run", rank=2)),
    Option("task", required=True, order=20, configures=False,
           help="a task name (see `lmact tasks`)",
           column=Column(place="run", rank=1, setting=False, curves=True)),
    Option("observation", order=30, help="observation format (default: the task's own)",
           column=Column(place="run", rank=3)),
    Option("model", default=DEFAULT_MODEL, order=40,
           help="model name (default: %(default)s; see `lmact models`)",
           column=Column(place="run", rank=4, setting=False, curves=True)),
    Option("episodes", int, least=1, most=MAX_EPISODES, order=70, configures=False,
           help="test episodes (default: the task's own)"),
    Option("seed", int, default=0, least=0, most=DEMO_SEED_BASE - 1, order=80,
           help="test episode i starts from seed SEED+i; with --regime replay, episode i "
           "replays demonstration SEED+i (default: %(default)s)"),
    Option("max_tokens", int, least=1, most=INT_LIMIT, order=100,
           help="answer length limit (default: the task's; 512 with --cot)"),
    # What the prompt shows and how answers are read.
    Option("legal_actions", bool, default=False, target="show_legal_actions", order=110,
           help="list the legal actions in the prompt"),
    Option("cot", bool, default=False, target="chain_of_thought", order=120,
           help="ask for reasoning before the action (chain of thought)"),
    Option("no_past_actions", bool, default=False, target="past_actions", negated=True,
           order=130, column=Column(rank=2),
           help="show the current episode's past observations without the actions taken "
           "(demonstrations keep their actions)"),
    Option("prompts", Path, target="prompts_dir", metavar="DIR", order=160,
           help="a folder of prompt templates with the shipped file names, replacing the "
           "shipped set (their text is part of the run's identity)"),
    Option("task_option", multiple=True, target="task_options", metavar="KEY=VALUE", order=35,
           help="set an option of the task's environment, over its spec's [options] (e.g. "
           "text_layout=boxed; `lmact tasks TASK` lists them); VALUE is read as TOML (true, "
           "3, 0.5) or else as text; repeat for more; another value is another run"),
    Option("constrained", bool, default=False, order=175, column=Column(rank=3),
           help="decode answers under a constraint onto the legal actions (a label, a "
           "button, a move), by each provider's own mechanism (a grammar, a JSON schema, an "
           "enum, a forced tool); a model that cannot is played unconstrained, "
           "and the run says so"),
    Option("answer_match", choices=ANSWER_MATCHES, default="lenient", order=170,
           column=Column(rank=1),
           help="lenient (default): read answers with the task's parser (any case, SAN "
           "without +); exact: only an answer spelled exactly as one of the legal actions "
           "is legal, as in the reference code"),
    # A dataset of one's own: the classification task it makes.
    Option("dataset", Path, metavar="PATH", group=DATASET, order=300, configures=False,
           help="a JSONL or CSV file of labelled texts: the stream episodes draw from"),
    Option("held_out", Path, metavar="PATH", group=DATASET, order=310, configures=False,
           help="held-out examples (demonstrations, --eval-every); default: the --dataset "
           "file"),
    Option("text_field", default="text", group=DATASET, order=320, configures=False,
           help="default: %(default)s"),
    Option("label_field", default="label", group=DATASET, order=330, configures=False,
           help="default: %(default)s"),
    Option("unsemantic_labels", bool, default=False, group=DATASET, order=340,
           configures=False,
           help="replace the labels by meaningless ids (L01, L02 … in sorted order)"),
    # How the run is carried out.
    Option("context_window", int, least=1, most=INT_LIMIT, scope=MODEL, order=400,
           help="the model's context window in tokens (local models: the KV cache size; "
           "default: the model's own)"),
    Option("threads", int, least=1, most=1024, scope=MODEL, order=410,
           help="CPU threads for local models (default: all)"),
    Option("max_connections", int, least=1, most=10_000, scope=PROCESS, order=420,
           help="requests in flight at once, which is also the number of episodes played "
           "at once (default: the provider's: 16 OpenAI, 8 Anthropic and Gemini, "
           "16 OpenAI-compatible, 1 local)"),
    Option("max_cost", float, positive=True, scope=PROCESS, order=425, metavar="USD",
           help="spend at most this on model calls (USD, at the catalog's prices or "
           "--input-price/--output-price): a call that could pass it is not sent, and the "
           "run (or sweep) stops, saying what it spent; rerun with a higher cap to finish"),
    Option("max_time", float, positive=True, scope=PROCESS, order=426, metavar="S",
           help="send no model call after this many seconds from the first; the run stops "
           "as at --max-cost"),
    Option("log_to", multiple=True, scope=PROCESS, order=427, metavar="TRACKER",
           help=lambda: "log each run to an experiment tracker: "
           f"{' or '.join(tracker_names()) or 'none installed'} (a plug-in's too: the "
           "`lmact.trackers` entry points); repeat it or separate names by commas for "
           "several. Logged: the run's configuration, each episode's return with the "
           "running mean, normalized score, tokens and cost, and the run's summary; a "
           "sweep's runs as one group. Each tracker reads its own settings "
           "(WANDB_PROJECT, WANDB_MODE, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME …) and "
           'needs its extra: pip install "lmact[wandb]" (see docs/trackers.md)'),
    Option("dry_run", bool, default=False, scope=COMMAND, order=430,
           help="call no model: print the calls, tokens and estimated cost of the run, "
           "with the expert playing the episodes"),
    Option("json", bool, default=False, scope=COMMAND, order=440,
           help="print one JSON object"),
    Option("restart", bool, default=False, scope=COMMAND, order=450,
           help="discard the run's stored episodes and play them afresh (the call cache is "
           "kept); needed when the demonstrations changed since the run started"),
    # Networked models.
    Option("base_url", multiple=True, scope=MODEL, group=NETWORKED, order=500,
           help="the API's base URL (openai-compatible: required here or in "
           "$OPENAI_COMPATIBLE_BASE_URL; others: a gateway or proxy). openai-compatible "
           "takes it more than once: servers of the same model, asked in turn"),
    Option("completions", bool, default=False, target="chat", negated=True, scope=MODEL,
           group=NETWORKED, order=510,
           help="openai-compatible: use the completions endpoint with the plain prompt, for "
           "base models without a chat template"),
    Option("timeout", float, least=0, positive=True, target="timeout_s", metavar="S",
           scope=MODEL, group=NETWORKED, order=520,
           help="seconds one attempt may take (default: 120)"),
    Option("max_retries", int, default=6, least=0, most=1000, scope=MODEL, group=NETWORKED,
           order=530,
           help="further attempts after a rate limit, overload, 5xx, timeout or dropped "
           "connection (default: %(default)s)"),
    Option("max_wait", float, default=DEFAULT_MAX_WAIT_S, least=0, positive=True,
           target="max_wait_s", metavar="S", scope=MODEL, group=NETWORKED, order=540,
           help="the longest a server's Retry-After (or a backoff) may pause the run, in "
           "seconds; a longer wait is cut to this (default: %(default)g)"),
    Option("max_images", int, least=1, most=INT_LIMIT, scope=MODEL, group=NETWORKED,
           order=550, help="images one request may hold (default: the catalog's)"),
    Option("reasoning_budget", int, least=1, most=INT_LIMIT, metavar="T", scope=MODEL,
           group=NETWORKED, order=560,
           help="tokens a reasoning model may think for (OpenAI reasoning models: 4096 "
           "unless given; Anthropic and Gemini: turns thinking on)"),
    Option("input_price", float, least=0, scope=MODEL, group=NETWORKED, order=570,
           help="USD per million prompt tokens (default: the catalog's)"),
    Option("output_price", float, least=0, scope=MODEL, group=NETWORKED, order=580,
           help="USD per million completion tokens (default: the catalog's)"),
    # Where the process keeps things.
    # No default here: one not given is $LMACT_STORE's, else DEFAULT_STORE (`store_location`).
    Option("store", Path, scope=PROCESS, order=600, convert=store_location, metavar="STORE",
           help="the run store: a SQLite file (one host), or a PostgreSQL database that "
           "workers on many hosts share, postgresql://USER@HOST:PORT/DB (default: "
           f"$LMACT_STORE, else {DEFAULT_STORE})"),
    Option("cache_dir", Path, scope=PROCESS, order=610,
           help=lambda: "where demonstrations are kept (default: $LMACT_CACHE_DIR or "
           f"{default_cache_dir()})"),
    Option("workers", int, least=1, most=1024, metavar="N", scope=PROCESS, order=620,
           help="processes that generate demonstrations when the expert is slow (a first "
           "episode of 1 s or more; default: one per CPU)"),
)  # fmt: skip


def _declared() -> dict[str, Option]:
    options = {option.name: option for option in COMMON}
    for name, option in REGIME_OPTIONS.items():
        if options.setdefault(name, option) is not option:
            owners = [r.name for r in REGIMES.values() if option in r.options]
            # A plug-in's clash is the user's to fix (uninstall it): one line, not a traceback.
            raise LmactError(
                f"option {name} is declared by lmact and by regime {', '.join(owners)}: "
                "a regime may not declare an option of lmact's own"
            )
    return {option.name: option for option in in_help_order(list(options.values()))}


# Every option of a run, by name, in the order `lmact run --help` lists them.
OPTIONS: dict[str, Option] = _declared()


def names(*scopes: Scope) -> frozenset[str]:
    """The names of the options of these scopes (of every scope: none given)."""
    return frozenset(o.name for o in OPTIONS.values() if not scopes or o.scope in scopes)


# --- Reading options ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessOptions:
    """The options of the process that plays runs; None where not given."""

    store: StoreLocation | None = None
    cache_dir: Path | None = None
    workers: int | None = None
    max_connections: int | None = None
    max_cost: float | None = None  # USD
    max_time: float | None = None  # seconds
    log_to: tuple[str, ...] = ()  # the experiment trackers' names (`lmact.trackers`)
    model: ModelOptions = field(default_factory=ModelOptions)

    def budget(self) -> Budget:
        """The caps on this process's model calls (`--max-cost`, `--max-time`)."""
        return Budget(self.max_cost, self.max_time)


@dataclass(frozen=True)
class RunOptions:
    """A run, read: its configuration and episodes, the process's options, and what the
    command does with it."""

    config: RegimeConfig
    episodes: int
    process: ProcessOptions
    dry_run: bool = False
    restart: bool = False


def close_name(name: str, known: Collection[str]) -> str:
    """A hint at the name meant, when one is close to `name`."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]}?" if close else ""


def checked(values: Mapping[str, Any]) -> dict[str, Any]:
    """The options given, each checked against its declaration; those given as None (not
    given) left out. An unknown name is refused with the name it resembles."""
    given = {}
    for name, value in values.items():
        if name not in OPTIONS:
            raise OptionError(f"unrecognized argument {name} (not an option of a run)"
                              f"{close_name(name, OPTIONS)}")  # fmt: skip
        value = OPTIONS[name].check(value)
        if value is not None:
            given[name] = value
    return given


def read_run(values: Mapping[str, Any], stated: Collection[str] | None = None) -> RunOptions:
    """A run from its options by name (see the module's docstring). A preset among them
    gives the options not `stated` (None: those not given, as None or at all)."""
    given = checked(apply_preset(values, stated))
    for option in OPTIONS.values():
        if option.required and option.name not in given:
            raise OptionError(Named(option.name), " is required")
    name = given.get("regime", DEFAULT_REGIME)
    if name in BROKEN_REGIMES:
        raise LmactError(BROKEN_REGIMES[name])
    regime = REGIMES[name]
    _check_regime_takes(regime.name, given, {o.name for o in regime.options})
    _check_exclusive(given)
    task = _task_of(given)
    fields = {
        option.keyword: _value(option, given)
        for option in (*COMMON, *regime.options)
        if option.scope is RUN and option.configures
    }
    config = regime.configure(task, **fields)
    episodes = given.get("episodes") or get_task(task).episodes
    return RunOptions(
        config, episodes, read_process(given), given.get("dry_run", False),
        given.get("restart", False),
    )  # fmt: skip


def _value(option: Option, given: Mapping[str, Any]) -> Any:
    """The option's value as its target takes it: given, else its default."""
    value = given.get(option.name, option.default)
    return not value if option.negated else value


def _check_regime_takes(regime: str, given: Mapping[str, Any], takes: Collection[str]) -> None:
    """An option that only other regimes take, given a value of its own, is refused."""
    for name, option in REGIME_OPTIONS.items():
        if name not in takes and option.given(given.get(name)):
            raise OptionError(Named(name), " does not apply to ", Named("regime"), f" {regime}")


def _check_exclusive(given: Mapping[str, Any]) -> None:
    chosen: dict[str, str] = {}
    for name, value in given.items():
        option = OPTIONS[name]
        if option.exclusive is None or not option.given(value):
            continue
        first = chosen.setdefault(option.exclusive, name)
        if first != name:
            raise OptionError("give either ", Named(first), " or ", Named(name), ", not both")


def _task_of(given: Mapping[str, Any]) -> str:
    """The task's name; with `dataset` or `unsemantic_labels`, of the classification task
    they make (registered in this process)."""
    task = given["task"]
    if "dataset" in given:
        fields = (given.get("text_field", "text"), given.get("label_field", "label"))
        task = dataset_task(get_task(task), given["dataset"], given.get("held_out"), *fields).name
    elif "held_out" in given:
        raise OptionError(Named("held_out"), " needs ", Named("dataset"))
    if given.get("unsemantic_labels"):
        task = unsemantic_task(get_task(task)).name
    return task


def read_process(values: Mapping[str, Any]) -> ProcessOptions:
    """The process's options among `values` (checked; other names are passed over)."""
    given = checked({k: v for k, v in values.items() if k in names(MODEL, PROCESS)})
    return ProcessOptions(
        store=given.get("store"),
        cache_dir=given.get("cache_dir"),
        workers=given.get("workers"),
        max_connections=given.get("max_connections"),
        max_cost=given.get("max_cost"),
        max_time=given.get("max_time"),
        log_to=_trackers_named(given.get("log_to", ())),
        model=model_options(given),
    )


def _trackers_named(values: Iterable[str]) -> tuple[str, ...]:
    """`log_to`'s tracker names, each given once or comma-separated, in order, each once;
    one not installed is refused, naming those that are."""
    named = [name.strip() for value in values for name in value.split(",") if name.strip()]
    known = tracker_names()
    for name in named:
        if name not in known:
            accepted = ", ".join(known) or "none installed"
            raise OptionError("unknown ", Named("log_to"), f" tracker {name!r}; accepted: "
                              f"{accepted}{close_name(name, known)}")  # fmt: skip
    return tuple(dict.fromkeys(named))


def model_options(given: Mapping[str, Any]) -> ModelOptions:
    """The model client options among `given` (checked), each as its `target`."""
    fields = {o.keyword: _value(o, given) for o in OPTIONS.values() if o.scope is MODEL}
    urls = fields.pop("base_url") or ()  # several: servers of one model, asked in turn
    return ModelOptions(**fields, base_url=urls[0] if urls else None, more_base_urls=urls[1:])


def model_options_given(values: Mapping[str, Any]) -> list[str]:
    """The names of the model client options that `values` gives (not as None)."""
    return [name for name in names(MODEL) if values.get(name) is not None]


# --- What the report shows of options --------------------------------------------------------


def report_columns(place: str) -> list[Option]:
    """The options shown as report columns in `place` ("run": before the scores, "setting":
    after them), in column order."""
    placed = [o for o in OPTIONS.values() if o.column is not None and o.column.place == place]
    return sorted(placed, key=lambda o: o.column.rank if o.column is not None else 0)


def column_labels(options: Iterable[Option]) -> list[str]:
    return [option.label for option in options if option.label is not None]


def measure_columns() -> list[str]:
    """The regimes' measures that the report's tables show, in declaration order."""
    return [measure.name for measure in MEASURES if measure.column]


def in_run_id(name: str, regime: str) -> bool:
    """Whether option `name` enters a run's id in `regime`: its target is a field of the
    regime's configuration that the configuration does not leave out of the id (its
    `not_in_id`; an `added_fields` value leaves only that value out)."""
    config_type = REGIMES[regime].config_type
    target = OPTIONS[name].keyword
    return target in config_type.model_fields and target not in config_type.not_in_id
