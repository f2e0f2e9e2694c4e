"""The regime protocol: what a setting (imitation, replay, in-context RL) tells the runner.

A regime says what its configuration is, how a run is prepared (before any model call),
what its units of work are (each a `UnitKey`: one test episode, or an evaluation that is
not scored; a regime may chain units, to be played in order, one after another), how one
unit is played, which scripted runs score it, and which of its facts a summary and a report
show and the store keeps. The runner schedules units, resumes, isolates failures and shows
progress; it knows no regime by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from lmact.declarations import Measure, Option
from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.policies import Policy
from lmact.prompting import PLAIN_ANSWER, STRICT_ANSWER, AnswerForm
from lmact.records import EpisodeRecord, StepRecord, UnitKey, UnitKind
from lmact.regimes.headline import Headline
from lmact.scoring import EpisodeResult
from lmact.store import MAX_EPISODES, RunRecord
from lmact.tasks import TaskSpec, get_task

# Baseline policies every regime scores against, by default: (value - random) / (expert - random).
BASELINE_POLICIES = ("random", "expert")
# A measure name a reader wants (`Regime.measures`) that stands for the curves a report's
# figures draw of the run's kind of task, and only those: a figure of a bandit draws no
# learning curve, and computing one for 1,000 replicates cost a report its time.
DRAWN_CURVES = "drawn_curves"
# The units a regime's score counts, by default (`Regime.is_scored`): a report then sums
# them in the store.
SCORED_KINDS = (UnitKind.EPISODE,)


class RegimeConfig(BaseModel):
    """What every regime's configuration holds; its hash is the run's id.

    The number of episodes is not part of it: asking for more episodes later extends the
    same run, since unit i always starts from the same seed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    regime: str
    task: str
    spec_hash: str
    observation: str
    model: str
    seed: int = Field(0, ge=0)

    # Fields added after a release, with the value that keeps that release's behaviour: at
    # that value they stay out of the run id, so that an earlier run keeps its id.
    added_fields: ClassVar[dict[str, Any]] = {}
    # Fields that do not change what is played (where templates were read from).
    not_in_id: ClassVar[frozenset[str]] = frozenset()

    @property
    def run_id(self) -> str:
        added = self.added_fields
        values = {
            key: value
            for key, value in self.model_dump().items()
            if key not in self.not_in_id and not (key in added and value == added[key])
        }
        payload = json.dumps(values, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def task_spec(self) -> TaskSpec:
        """The task, checked to be the one this configuration was made for."""
        task = get_task(self.task)
        if task.spec_hash != self.spec_hash:
            raise LmactError(f"task {task.name}'s spec changed since this configuration was made")
        return task


Config = TypeVar("Config", bound=RegimeConfig)
Plan = TypeVar("Plan")
# Opens a progress bar: total, description, unit; its `update(n)` counts work done.
ProgressBar = Callable[[int, str, str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class RunFacts:
    """What a prepared run's prompt context is made of, and what of it the store keeps."""

    demonstrations: int | None = None  # shown (or replayed) per episode
    demonstrations_hash: str | None = None  # of those shown, or of the pool drawn from
    prefix_tokens: int | None = None  # of the part of the prompt shared by every step
    demonstrations_loaded: int = 0  # made or read to prepare it (a dry run makes them)
    details: dict[str, Any] = field(default_factory=dict)  # the regime's own, for summaries
    # What the store keeps with the run (`runs.facts`, read back as `RunRecord.facts`): a
    # JSON object, for the reports that read a run without preparing it again.
    stored: dict[str, Any] = field(default_factory=dict)
    # Of `stored`, those a run that has episodes must keep, each with what it stands for
    # (named when they differ): its episodes were played under them, so resuming it with
    # other values is refused.
    pinned: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedRun(Generic[Config, Plan]):
    config: Config
    policy: Policy
    facts: RunFacts
    plan: Plan  # what the regime's units need, made once per run


@dataclass(frozen=True)
class RunContext:
    """What a regime may use to prepare a run. `Regime.prepare` runs on a worker thread
    (the runner's event loop goes on meanwhile): it may read the demonstration store, but
    `stored_steps` is for the units' play, on the loop's thread."""

    demo_store: DemoStore
    progress_bar: ProgressBar
    # The stored steps of one of the run's units (a regime that learns across units reads
    # back what an earlier attempt of the run played).
    stored_steps: Callable[[UnitKey], list[StepRecord]]


class StepColumns(Protocol):
    """What a regime's `measures` read of a run's stored steps: only some of their columns
    (`lmact.store.RunStore.step_values`), or their records, as a stream, of the units of some
    kinds (each unit's first step only, with `first_step`), unit by unit in order; a measure
    keeps those of the episodes it is given. `lmact.store.StoredSteps`."""

    def values(
        self,
        columns: Sequence[str],
        kinds: Collection[UnitKind] | None = None,
        first_step: bool = False,
    ) -> Iterable[tuple[Any, ...]]: ...

    def records(
        self, kinds: Collection[UnitKind] | None = None, first_step: bool = False
    ) -> Iterable[StepRecord]: ...

    def first_step_groups(
        self, columns: Sequence[str], summed: str, kinds: Collection[UnitKind]
    ) -> Iterable[tuple[Any, ...]]:
        """The first steps of the run's finished units of `kinds`, grouped by `columns`:
        each group's values, its count of steps, the sum of their `summed` column and the
        first chain it holds a step of."""
        ...

    def read_facts(self, text: str, where: str) -> dict[str, Any]:
        """A step's facts from their stored text (`values` of `FACTS_TEXT`)."""
        ...


def check_episodes(episodes: int) -> None:
    if episodes <= 0:
        raise LmactError(f"--episodes must be positive, not {episodes}")
    if episodes > MAX_EPISODES:
        raise LmactError(f"--episodes must be at most {MAX_EPISODES}, not {episodes}")


class Regime(ABC, Generic[Config, Plan]):
    """One setting. Subclasses live in `lmact/regimes/<name>.py` and are listed in
    `lmact.regimes.REGIMES`."""

    name: ClassVar[str]
    config_type: ClassVar[type[RegimeConfig]]
    help: ClassVar[str] = ""  # what it is, in a few words, for `lmact run --help`
    # The options it takes besides the common ones (`lmact.options`), declared next to its
    # configuration; `configure` receives them by their `keyword`.
    options: ClassVar[tuple[Option, ...]] = ()
    # Its measures (`measures`) that a run's summary and the report's tables show by name.
    measures_shown: ClassVar[tuple[Measure, ...]] = ()
    # What a report's first table shows of this regime's runs (None: the mean return).
    headline: ClassVar[Headline | None] = None

    def configure(self, task: str, **fields: Any) -> Config:
        """A configuration of `task` from checked option values, by keyword: the common
        run options' and this regime's own (`lmact.options.read_run` checks them first);
        the task's defaults filled in."""
        raise NotImplementedError(f"regime {self.name} is not configured from options")

    @abstractmethod
    def prepare(
        self, config: Config, policy: Policy, context: RunContext, units: Sequence[UnitKey]
    ) -> PreparedRun[Config, Plan]:
        """Everything a run needs before its first call; fails before any model work.
        `units` are those to play, first first (none: the run is read back)."""

    def is_scored(self, config: Config, unit: UnitKey) -> bool:
        """Whether a unit is an episode of the run's score: an evaluation (an in-context RL
        held-out one) is read by a measure only."""
        return unit.kind in SCORED_KINDS

    def unit_label(self, config: Config, unit: UnitKey) -> str:
        """A unit as people name it, for pages that show one."""
        return f"episode {unit.index}"

    @abstractmethod
    def unit_seed(self, config: Config, unit: UnitKey) -> int:
        """The seed unit `unit` starts from (stored with it); LmactError if out of range."""

    def units(self, config: Config, episodes: int) -> list[UnitKey]:
        """The units of a run of `episodes`, checked before any work: by default episodes
        0 … episodes-1, each standing alone (chain 0)."""
        check_episodes(episodes)
        self.unit_seed(config, UnitKey(0, episodes - 1))
        return [UnitKey(0, index) for index in range(episodes)]

    def chains(self, config: Config, episodes: int) -> Iterator[list[UnitKey]]:
        """The units as chains, one at a time (a reader of the first few makes only those):
        a chain's units are played in order, one after another (each may learn from those
        before it); chains run concurrently. By default every unit is a chain of its own.
        Their units' chain indices never fall from one chain to the next: a viewer of the
        first units played reads the first chains' units only."""
        return ([unit] for unit in self.units(config, episodes))

    def run_length(self, config: Config, unit: UnitKey) -> int:
        """The fewest episodes of a run whose units include `unit`."""
        return unit.index + 1

    def in_play_order(
        self, config: Config, units: Iterable[UnitKey], limit: int | None = None
    ) -> list[UnitKey]:
        """Stored units in the order the runner plays them (`chains`), for a reader that
        replays them: each unit after the earlier units of its chain, whose play it may
        need; the first `limit` of them, if given. The run is taken as long as its stored
        units say (`run_length`)."""
        wanted = set(units)
        episodes = max((self.run_length(config, unit) for unit in wanted), default=1)
        order: list[UnitKey] = []
        with contextlib.suppress(LmactError):  # a length the configuration refuses
            for chain in self.chains(config, episodes):
                order += [unit for unit in chain if unit in wanted]
                if limit is not None and len(order) >= limit:
                    return order[:limit]
        order += sorted(wanted - set(order))
        return order if limit is None else order[:limit]

    @abstractmethod
    async def play(
        self,
        prepared: PreparedRun[Config, Plan],
        policy: Policy,
        unit: UnitKey,
        on_step: Callable[[StepRecord], None],
    ) -> EpisodeRecord:
        """Play one unit to its end, reporting every step as it is played."""

    def baselines(self, config: Config) -> dict[str, Config]:
        """The scripted runs (same units) that normalize this run's score, by policy."""
        return {policy: self.baseline(config, policy) for policy in BASELINE_POLICIES}

    @abstractmethod
    def baseline(self, config: Config, policy: str) -> Config:
        """The same units played by a scripted policy."""

    def summary_fields(self, config: Config, facts: RunFacts) -> dict[str, Any]:
        """The facts of a run that its summary and report rows carry for this regime."""
        return dict(facts.details)

    def measures(
        self,
        config: Config,
        episodes: Sequence[EpisodeResult],
        steps: StepColumns,
        baselines: dict[str, Sequence[EpisodeResult]],
        wanted: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """Measures of a run beyond its mean return (learning curves …), from its scored
        episodes (records, or what a report reads of them: `EpisodeResult`), their stored
        steps (as streams of some columns: a run's steps are not held at once) and the
        baselines' episodes (by policy); JSON values. `wanted`: the names of the measures
        asked for (None: all); those not named may be left out, and should be where they
        cost much (a table shows no learning curve)."""
        return {}

    def report_fields(self, config: Config, run: RunRecord) -> dict[str, Any]:
        """A stored run's facts for `lmact report` (from its configuration and record)."""
        return {}

    def context_label(self, config: Config, step: StepRecord) -> str | None:
        """What a stored step's prompt context held, in words, for pages that show it
        (in-context RL: the earlier episodes); None: nothing beyond the run's own prefix."""
        return None

    def answer_form(self, config: Config) -> AnswerForm:
        """Where a completion's answer is: after `Action:` (read strictly under exact answer
        matching), unless the regime says otherwise."""
        return STRICT_ANSWER if getattr(config, "answer_match", "") == "exact" else PLAIN_ANSWER

    def describe(self, facts: RunFacts) -> str:
        """A few words on what a run's prompt holds, for the line above its summary."""
        return ""
