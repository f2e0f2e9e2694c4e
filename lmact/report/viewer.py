"""The episode viewer: one self-contained HTML page per run, step by step.

For each step the page shows the observation as the model saw it (text, or the image), the
model's raw completion, the extracted answer and its kind, the executed action (marked when
it replaced the answer), the reward, tokens, latency and whether the call came from the
cache; each episode's return and how it ended; a list of the run's episodes to move
between; and, on demand, the demonstrations (or an in-context RL step's context).

How the page knows what the model saw. The run store keeps each step's prompt hash, not its
prompt or observation. Storing prompts would repeat the demonstrations at every step and
change the store's layout, which must stay readable by and from earlier releases
(`tests/test_store_migration.py`); recording observations from now on would show nothing
of the runs already stored, and would still not prove what the prompt was. Instead the
viewer replays every stored episode offline through the run's own regime (`Regime.prepare`
and `Regime.play`, so `lmact.episode.play_step`), with a policy that answers each step with
the completion stored for it and keeps the request it was given. Everything above the
model is deterministic given the seed, so the replay rebuilds the very requests that were
sent; each is checked against the stored prompt hash, and only a matching one is presented
as what the model saw. Demonstrations and in-context RL contexts are the request's stable
prefix, so they come with it.

When a step cannot be rebuilt or its rebuild does not match (the task or its spec changed,
an engine is missing, the environment is not deterministic, the demonstration cache
changed), the page still shows the stored record and says what could not be verified and
why, instead of failing.

Every piece of text on the page is escaped, the page loads nothing (its Content-Security-
Policy forbids it; images are `data:` URIs) and its one script runs by its hash; nothing a
model wrote is evaluated.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from lmact.demos import DemoStore
from lmact.envs.base import Observation, classify_answer
from lmact.episode import LiveSituation
from lmact.errors import LmactError
from lmact.models.base import (
    ImagePart,
    ModelClient,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    estimate_tokens,
)
from lmact.models.registry import resolve_model
from lmact.policies import Policy, Situation
from lmact.prompting import PLAIN_ANSWER, AnswerForm
from lmact.records import StepRecord, UnitKey, UnitKind
from lmact.regimes import regime_of
from lmact.regimes.base import Regime, RegimeConfig, RunContext
from lmact.report.serve import make_server, serve_page
from lmact.report.tables import readable_config, resolve_run
from lmact.report.viewer_page import (
    CONTENT_SECURITY_POLICY,
    KIND_COLOURS,
    Asked,
    ViewedEpisode,
    ViewedRun,
    ViewedStep,
    page_html,
)
from lmact.store import RunRecord, RunStore, StoreLocation

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "KIND_COLOURS",
    "make_server",
    "render_viewer",
    "serve_page",
    "view_path",
]

# --- Which run ----------------------------------------------------------------------------


def view_path(store: StoreLocation, run_id: str) -> Path:
    """Where `lmact view` writes a run's page by default: beside the run store's file, or
    in the working folder for a store on a server."""
    folder = store.parent if isinstance(store, Path) else Path()
    return folder / f"view-{run_id}.html"


# --- Replaying the stored episodes --------------------------------------------------------


class _ReplayStopped(Exception):
    """The replay asked for a step the run did not store: it went another way."""


def _after_observation(parts: Sequence[Part], observation: Observation) -> str | None:
    """The text of `parts` after `observation`, if they end with it and that text."""
    if observation.image_png is not None:
        if len(parts) >= 2 and isinstance(parts[-1], TextPart):
            image = parts[-2]
            if isinstance(image, ImagePart) and image.png == observation.image_png:
                return parts[-1].text
        return None
    last = parts[-1] if parts else None
    if isinstance(last, TextPart) and observation.text:
        at = last.text.rfind(observation.text)
        if at >= 0:
            return last.text[at + len(observation.text) :]
    return None


class StoredAnswers(Policy):
    """Answers every step with the completion the run stored for it, and keeps each request.

    It counts tokens as the run's model did where the prompt depends on counts (`counter`),
    and otherwise with the documented estimate, as scripted policies do."""

    name = "stored-answers"
    accepts_images = True

    def __init__(
        self,
        observation: str,
        exact_answers: bool,
        counter: ModelClient | None,
        answer_form: AnswerForm = PLAIN_ANSWER,
    ) -> None:
        super().__init__()
        self.observation = observation
        self.exact_answers = exact_answers
        self.answer_form = answer_form
        self.counter = counter
        self.stored: Sequence[StepRecord] = ()
        self.asked: list[Asked] = []

    @property
    def context_window(self) -> int | None:
        return self.counter.context_window if self.counter is not None else None

    @property
    def max_images(self) -> int | None:
        return self.counter.max_images if self.counter is not None else None

    def count_tokens(self, parts: Sequence[Part]) -> int:
        return self.counter.count_tokens(parts) if self.counter else estimate_tokens(parts)

    def start(self, stored: Sequence[StepRecord]) -> None:
        """Answer the steps of one stored episode from here on."""
        self.stored, self.asked = stored, []

    async def act(self, request: ModelRequest, situation: Situation) -> ModelResponse:
        index = len(self.asked)
        if index >= len(self.stored):
            raise _ReplayStopped(f"the replay went on past the {len(self.stored)} stored steps")
        completion = self.stored[index].completion
        observation, after, named = None, None, None
        if isinstance(situation, LiveSituation):  # every regime's steps are live ones
            env = situation.env
            # Rendering and parsing read the state only: the step is played unchanged.
            observation = env.render(self.observation)
            after = _after_observation(request.parts, observation)
            # A copy of the policy stream: a distribution's draw, as the step will draw it.
            stream = copy.deepcopy(situation.rng)
            answer = self.answer_form.read(
                completion, env.legal_actions, lambda: stream, bool(request.choices)
            )
            named = classify_answer(env, answer, self.exact_answers).action
        prefix = request.parts[: request.stable_prefix_parts]
        # Where the observation does not end the prompt (a scenario's question follows the
        # history), the page shows the rest of the prompt as it was.
        rest = request.parts[request.stable_prefix_parts :] if after is None else None
        self.asked.append(Asked(prefix, observation, after, named, request.system, rest))
        return ModelResponse(text=completion, stop_reason=self.stored[index].stop_reason)


@dataclass
class _Replay:
    """What replaying a run's episodes gave: per unit, its steps as asked and as replayed."""

    steps: dict[UnitKey, list[tuple[Asked, StepRecord]]] = field(default_factory=dict)
    notes: dict[UnitKey, str] = field(default_factory=dict)  # why a unit's replay fell short
    run_notes: list[str] = field(default_factory=list)


def _token_counter(config: RegimeConfig) -> ModelClient | None:
    """The run's model, to count tokens as the run did where the prompt depends on counts: a
    token budget, or in-context RL's context cut to the model's window. Elsewhere counts only
    check that a prompt fits, and no model is loaded. A scripted policy or a client made in
    Python does not resolve: those runs counted with the estimate too."""
    if getattr(config, "token_budget", None) is None and config.regime != "icrl":
        return None
    try:
        return resolve_model(config.model)
    except LmactError:
        return None


def _reason(error: BaseException) -> str:
    if isinstance(error, LmactError | _ReplayStopped):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _shown_units(
    config: RegimeConfig | None, finished: Sequence[UnitKey], limit: int | None
) -> list[UnitKey]:
    """The finished units a page shows, in the order they are replayed (the runner's,
    `Regime.in_play_order`): all of them, or the first `limit` of that order. A chain's
    units are replayed first to last, so a page cut short still holds each shown unit's
    earlier units (in-context RL reads its context from them)."""
    if config is None:
        order = sorted(finished)
        return order if limit is None else order[:limit]
    return regime_of(config).in_play_order(config, finished, limit)


def _replay(
    steps_of: Callable[[UnitKey], list[StepRecord]], run: RunRecord, config: RegimeConfig,
    demo_store: DemoStore, order: Sequence[UnitKey],
) -> _Replay:  # fmt: skip
    """Replay the finished units `order` of `run`, in that order, offline with their
    stored completions (`steps_of`: the run's stored steps of a unit)."""
    regime = regime_of(config)
    stored = {unit: steps_of(unit) for unit in order}
    counter = _token_counter(config)
    exact = getattr(config, "answer_match", "lenient") == "exact"
    policy = StoredAnswers(config.observation, exact, counter, regime.answer_form(config))
    replay = _Replay()
    try:
        context = RunContext(demo_store, _no_progress, steps_of)
        prepared = regime.prepare(config, policy, context, order)
        asyncio.run(_replay_units(regime, prepared, policy, order, stored, replay))
    except Exception as error:  # whatever stops the rebuild, the stored record still shows
        replay.run_notes.append(f"the episodes could not be rebuilt: {_reason(error)}")
        return replay
    finally:
        if counter is not None:
            counter.close()
    facts = prepared.facts
    for name, what in facts.pinned.items():  # what its episodes were played under
        now, played = facts.stored.get(name), run.facts.get(name)
        if now is not None and played is not None and now != played:
            replay.run_notes.append(
                f"the run was played with other {what}: its {name} was {played}, now {now}"
            )
    return replay


async def _replay_units(
    regime: Regime[Any, Any],
    prepared: Any,
    policy: StoredAnswers,
    order: Sequence[UnitKey],
    stored: dict[UnitKey, list[StepRecord]],
    replay: _Replay,
) -> None:
    for unit in order:
        policy.start(stored[unit])
        replayed: list[StepRecord] = []
        try:
            await regime.play(prepared, policy, unit, replayed.append)
        except Exception as error:  # one unit's failure leaves the others to show
            replay.notes[unit] = f"the replay stopped at step {len(replayed)}: {_reason(error)}"
        else:
            if len(replayed) < len(stored[unit]):
                replay.notes[unit] = (
                    f"the replay ended after {len(replayed)} of the {len(stored[unit])} "
                    "stored steps"
                )
        replay.steps[unit] = list(zip(policy.asked, replayed, strict=False))


@contextlib.contextmanager
def _no_progress(total: int, description: str, unit: str) -> Iterator[Any]:
    class _Bar:
        def update(self, count: int = 1) -> None:
            pass

    yield _Bar()


def view_run(
    store: RunStore,
    run: RunRecord,
    demo_store: DemoStore | None = None,
    max_episodes: int | None = None,
    finished: FinishedUnits | None = None,
) -> ViewedRun:
    """The finished episodes of `run` (all, or the first `max_episodes` in the order they
    are played), their steps rebuilt where they can be; `finished`: the run's finished
    units, if the caller has read them already."""
    if finished is None:
        finished = _finished_units(store, run.run_id, max_episodes)
    steps_of = store.finished_steps(run.run_id)  # one reader, shared by all that reads steps
    config = readable_config(run)
    order = _shown_units(config, finished.keys, max_episodes)
    if config is None:
        replay = _Replay(run_notes=["this run's configuration is not one this lmact reads"])
    else:
        replay = _replay(steps_of, run, config, demo_store or DemoStore(), order)
    episodes = []
    # Only the shown units' records are read: a page of 20 of 100,000 reads 20.
    for unit, record in store.finished_episodes(run.run_id, order).items():
        rebuilt = replay.steps.get(unit, [])
        steps = [
            ViewedStep(
                stored,
                *(rebuilt[index] if index < len(rebuilt) else (None, None)),
                _context_label(config, stored),
            )
            for index, stored in enumerate(steps_of(unit))
        ]
        episodes.append(
            ViewedEpisode(record, _unit_label(config, unit), steps, replay.notes.get(unit))
        )
    return ViewedRun(run, config, episodes, replay.run_notes, finished.count)


class FinishedUnits(NamedTuple):
    """A run's finished units as a page reads them: their keys, all of them or enough for
    the page, and how many there are."""

    keys: list[UnitKey]
    count: int


def _finished_units(store: RunStore, run_id: str, enough: int | None = None) -> FinishedUnits:
    """The keys of a run's finished units, in the store's order (no record is built): all,
    or, for a page of its first `enough` units, those of its first `enough` chains where
    they are as many (a chain's units are played first to last, so the first units played
    are there; a run of 1,000 replicates so reads 20 chains' keys, not 100,000)."""
    if enough is not None:
        keys = store.finished_unit_keys(run_id, chains=enough)
        if len(keys) >= enough:
            return FinishedUnits(keys, store.finished_count(run_id))
    keys = store.finished_unit_keys(run_id)
    return FinishedUnits(keys, len(keys))


def _unit_label(config: RegimeConfig | None, unit: UnitKey) -> str:
    """A unit as people name it (in-context RL numbers units by replicate)."""
    if config is None:
        chain = f"chain {unit.chain} · " if unit.chain else ""
        return f"{chain}{unit.kind.value} {unit.index}"
    return regime_of(config).unit_label(config, unit)


def _context_label(config: RegimeConfig | None, step: StepRecord) -> str | None:
    """What a step's context held, as its regime says; None where it says nothing (or
    cannot: a damaged record is shown, not fatal)."""
    if config is None:
        return None
    try:
        return regime_of(config).context_label(config, step)
    except LmactError as error:
        return f"context not readable: {error}"


def render_viewer(
    store: RunStore,
    run_id: str,
    episode: int | UnitKey | None = None,
    *,
    demo_store: DemoStore | None = None,
    max_episodes: int | None = None,
) -> str:
    """The whole self-contained page of one run: all its finished episodes (or the first
    `max_episodes` in the order they are played, which is what replaying costs), `episode`
    (a unit, or the number of an episode of the first chain; default the first) shown
    first. `run_id` may be a prefix."""
    run = resolve_run(store, run_id)
    chosen = UnitKey(0, episode) if isinstance(episode, int) else episode
    finished = _finished_units(store, run.run_id, max_episodes if chosen is None else None)
    config = readable_config(run)
    if chosen is not None and chosen not in set(finished.keys):
        raise LmactError(
            f"run {run.run_id} has no finished {_unit_label(config, chosen)}; "
            f"its finished episodes: {_some(config, sorted(finished.keys))}"
        )
    view = view_run(store, run, demo_store, max_episodes, finished)
    shown = [viewed.record.unit for viewed in view.episodes]
    if chosen is not None and chosen not in shown:
        raise LmactError(f"{_unit_label(config, chosen)} of run {run.run_id} is not among "
                         f"the {len(shown)} shown ({_some(config, shown)})")  # fmt: skip
    if chosen is None and shown:
        chosen = shown[0]
    return page_html(view, chosen)


def _some(config: RegimeConfig | None, units: Sequence[UnitKey]) -> str:
    """Units named in a message: by number where all are episodes of the first chain."""
    if not units:
        return "none yet"
    plain = all(unit.chain == 0 and unit.kind is UnitKind.EPISODE for unit in units)
    names = [str(unit.index) if plain else _unit_label(config, unit) for unit in units]
    if len(names) <= 8:
        return ", ".join(names)
    return f"{', '.join(names[:6])}, … {names[-1]} ({len(names)} in all)"
