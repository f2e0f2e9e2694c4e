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
import http.server
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmact.demos import DemoStore
from lmact.envs.base import AnswerKind, Observation, classify_answer
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
from lmact.prompting import extract_answer
from lmact.records import EpisodeRecord, StepRecord, UnitKey, UnitKind
from lmact.regimes import regime_of
from lmact.regimes.base import Regime, RegimeConfig, RunContext
from lmact.report.page import content_security_policy, counted, data_uri, document, escape
from lmact.report.tables import readable_config, resolve_run
from lmact.store import RunRecord, RunStore

__all__ = [
    "KIND_COLOURS",
    "make_server",
    "render_viewer",
    "serve_page",
    "view_path",
]

# The colour of each answer kind on the page (badges, step borders), as RGB.
KIND_COLOURS: dict[AnswerKind, tuple[int, int, int]] = {
    AnswerKind.VALID: (26, 127, 55),
    AnswerKind.ILLEGAL: (188, 76, 0),
    AnswerKind.INVALID: (207, 34, 46),
    AnswerKind.EMPTY: (110, 119, 129),
}
_REPLACED_BECAUSE = {
    AnswerKind.ILLEGAL: "the answer is not a legal action here",
    AnswerKind.INVALID: "the answer is not of the action format",
    AnswerKind.EMPTY: "there was no answer",
}


# --- Which run ----------------------------------------------------------------------------


def view_path(store_path: Path, run_id: str) -> Path:
    """Where `lmact view` writes a run's page by default: beside the run store."""
    return store_path.parent / f"view-{run_id}.html"


# --- Replaying the stored episodes --------------------------------------------------------


class _ReplayStopped(Exception):
    """The replay asked for a step the run did not store: it went another way."""


@dataclass(frozen=True)
class _Asked:
    """What the replaying policy was asked at one step: of the request, only what the page
    shows (a whole prompt repeats the episode so far, and kept at every step would grow as
    the square of an episode's length); the prefix's parts are shared between steps."""

    prefix: tuple[Part, ...]  # the stable prefix: preamble and demonstrations, or context
    observation: Observation | None  # rendered from the step's environment, if it has one
    # What the prompt holds after the observation (legal actions, the instruction); None if
    # the observation is not at the prompt's end, where steps put it.
    after_observation: str | None
    answered_action: str | None  # the action the stored answer names there, if valid


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

    def __init__(self, observation: str, exact_answers: bool, counter: ModelClient | None) -> None:
        super().__init__()
        self.observation = observation
        self.exact_answers = exact_answers
        self.counter = counter
        self.stored: Sequence[StepRecord] = ()
        self.asked: list[_Asked] = []

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
            named = classify_answer(env, extract_answer(completion), self.exact_answers).action
        prefix = request.parts[: request.stable_prefix_parts]
        self.asked.append(_Asked(prefix, observation, after, named))
        return ModelResponse(text=completion, stop_reason=self.stored[index].stop_reason)


@dataclass
class _Replay:
    """What replaying a run's episodes gave: per unit, its steps as asked and as replayed."""

    steps: dict[UnitKey, list[tuple[_Asked, StepRecord]]] = field(default_factory=dict)
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
    else:
        order = regime_of(config).in_play_order(config, finished)
    return order if limit is None else order[:limit]


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
    policy = StoredAnswers(config.observation, exact, counter)
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


# --- What the page shows -------------------------------------------------------------------


@dataclass(frozen=True)
class ViewedStep:
    stored: StepRecord
    asked: _Asked | None = None
    replayed: StepRecord | None = None
    context: str | None = None  # what its context held, as its regime says (in-context RL)

    @property
    def verified(self) -> bool:
        """The rebuilt prompt is the one sent: its hash is the stored one."""
        return self.replayed is not None and self.replayed.prompt_hash == self.stored.prompt_hash

    @property
    def replaced(self) -> bool:
        """The executed action is not the one the answer named."""
        if self.asked is not None and self.replayed is not None:
            return self.asked.answered_action != self.stored.action
        return self.stored.kind != AnswerKind.VALID

    @property
    def after_observation(self) -> str | None:
        return self.asked.after_observation if self.asked is not None else None

    def problems(self) -> list[str]:
        """What keeps this step's rebuild from being what the run saw, in words."""
        stored, replayed = self.stored, self.replayed
        if replayed is None:
            return ["not rebuilt: the observation and the prompt are not known"]
        found = []
        if not self.verified:
            found.append(
                f"the rebuilt prompt differs from the one sent (hash {replayed.prompt_hash[:12]}, "
                f"stored {stored.prompt_hash[:12]}): what is shown is the rebuild, not "
                "necessarily what the model saw"
            )
        if replayed.action != stored.action or replayed.kind != stored.kind:
            found.append(
                f"the replay read the answer as {replayed.kind.value} and executed "
                f"{replayed.action!r}; the run: {stored.kind.value}, {stored.action!r}"
            )
        if self.after_observation is None:
            found.append("the observation shown is not where the prompt's current one stands")
        return found


@dataclass(frozen=True)
class ViewedEpisode:
    record: EpisodeRecord
    label: str
    steps: list[ViewedStep]
    note: str | None = None


@dataclass(frozen=True)
class ViewedRun:
    run: RunRecord
    config: RegimeConfig | None
    episodes: list[ViewedEpisode]
    notes: list[str]
    finished: int  # the run's finished episodes: `episodes` may be the first of them only


def view_run(
    store: RunStore,
    run: RunRecord,
    demo_store: DemoStore | None = None,
    max_episodes: int | None = None,
) -> ViewedRun:
    """The finished episodes of `run` (all, or the first `max_episodes` in the order they
    are played), their steps rebuilt where they can be."""
    finished = store.finished_episodes(run.run_id)
    steps_of = store.finished_steps(run.run_id)  # one query, shared by all that reads steps
    config = readable_config(run)
    order = _shown_units(config, list(finished), max_episodes)
    if config is None:
        replay = _Replay(run_notes=["this run's configuration is not one this lmact reads"])
    else:
        replay = _replay(steps_of, run, config, demo_store or DemoStore(), order)
    shown, episodes = set(order), []
    for unit, record in finished.items():
        if unit not in shown:
            continue
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
    return ViewedRun(run, config, episodes, replay.run_notes, len(finished))


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


def _anchor(unit: UnitKey) -> str:
    """A unit's name in the page's ids and links: its index alone for an episode of chain 0
    (every unit of a regime whose units stand alone), else with its chain and kind."""
    name = str(unit.index) if unit.kind is UnitKind.EPISODE else f"eval{unit.index}"
    return name if not unit.chain else f"c{unit.chain}-{name}"


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
    finished = store.finished_episodes(run.run_id)
    config = readable_config(run)
    if chosen is not None and chosen not in finished:
        raise LmactError(
            f"run {run.run_id} has no finished {_unit_label(config, chosen)}; "
            f"its finished episodes: {_some(config, sorted(finished))}"
        )
    view = view_run(store, run, demo_store, max_episodes)
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


# --- The page ------------------------------------------------------------------------------


class _Prefixes:
    """The distinct stable prefixes of the run's prompts (demonstrations, contexts), each
    written once as an inert <template>; their images once each, in a JSON table."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._templates: list[str] = []
        self.images: dict[str, str] = {}

    def ref(self, parts: Sequence[Part]) -> int:
        key = ModelRequest(parts=tuple(parts)).prompt_hash
        if key not in self._index:
            self._index[key] = len(self._templates)
            self._templates.append(self._parts_html(parts))
        return self._index[key]

    def _parts_html(self, parts: Sequence[Part]) -> str:
        shown = []
        for part in parts:
            if isinstance(part, TextPart):
                shown.append(f'<pre class="prompt">{escape(part.text)}</pre>')
            else:
                self.images.setdefault(part.sha256, data_uri(part.png))
                shown.append(f'<img class="prompt-image" data-ref="{part.sha256}" alt="image">')
        return "".join(shown)

    def html(self) -> str:
        templates = "".join(
            f'<template id="prefix-{index}">{content}</template>'
            for index, content in enumerate(self._templates)
        )
        # "<" escaped: no text inside the data block can end it.
        table = json.dumps(self.images).replace("<", "\\u003c")
        return f'{templates}<script type="application/json" id="prompt-images">{table}</script>'


def _prefix_of(step: ViewedStep) -> tuple[Part, ...] | None:
    return (step.asked.prefix or None) if step.asked is not None else None


def _prefix_label(step: ViewedStep, run: RunRecord) -> str:
    parts = _prefix_of(step) or ()
    chars = sum(len(p.text) for p in parts if isinstance(p, TextPart))
    images = sum(isinstance(p, ImagePart) for p in parts)
    size = f"{chars:,} characters" + (f", {images} images" if images else "")
    if step.context is not None:
        return f"{step.context} · {size}"
    demos = _demonstrations(run)
    count = f"{counted(demos, 'demonstration')} · " if demos is not None else ""
    return f"preamble and demonstrations · {count}{size}"


def _demonstrations(run: RunRecord) -> int | None:
    """How many demonstrations the run's prompts held, where its regime stored it."""
    demos = run.facts.get("demos")
    return demos if isinstance(demos, int) and not isinstance(demos, bool) else None


def _prefix_details(ref: int, label: str) -> str:
    return (
        f'<details class="prefix" data-prefix="{ref}"><summary>{escape(label)}</summary></details>'
    )


def _step_head(step: ViewedStep) -> str:
    stored, usage = step.stored, step.stored.usage
    cached = f", {usage.cached_tokens} cached" if usage.cached_tokens else ""
    reasoning = f", {usage.reasoning_tokens} reasoning" if usage.reasoning_tokens else ""
    items = [
        f'<span class="step-no">step {stored.step}</span>',
        f'<span class="kind kind-{stored.kind.value}">{escape(stored.kind.value)}</span>',
        f"<span>reward {stored.reward:g}</span>",
        f"<span>tokens {usage.prompt_tokens} in / {usage.completion_tokens} out"
        f"{cached}{reasoning}</span>",
        f"<span>{stored.latency_s:.2f} s</span>",
        '<span class="cache">from the cache</span>'
        if stored.from_cache
        else "<span>new call</span>",
    ]
    if stored.stop_reason != "stop":
        items.append(f"<span>stopped by {escape(stored.stop_reason.value)}</span>")
    if stored.cost_usd:
        items.append(f"<span>${stored.cost_usd:.5f}</span>")
    if step.verified:
        items.append(
            '<span class="check ok" title="its hash is the stored one">prompt verified</span>'
        )
    else:
        items.append('<span class="check warn">not verified</span>')
    return f'<div class="step-head">{"".join(items)}</div>'


def _observation_html(step: ViewedStep) -> str:
    observation = step.asked.observation if step.asked is not None else None
    if observation is None:
        shown = '<p class="missing">not available (see the note below)</p>'
    elif observation.image_png is not None:
        shown = (
            f'<img class="obs-image" src="{data_uri(observation.image_png)}" '
            f'alt="observation at step {step.stored.step}">'
        )
    else:
        shown = f'<pre class="obs">{escape(observation.text)}</pre>'
    return f'<div class="observation"><h3>observation</h3>{shown}</div>'


def _answer_html(step: ViewedStep) -> str:
    stored = step.stored
    completion = (
        f'<pre class="completion">{escape(stored.completion)}</pre>'
        if stored.completion
        else '<p class="none">(no text)</p>'
    )
    answer = (
        f"<code>{escape(stored.answer)}</code>"
        if stored.answer
        else '<span class="none">nothing</span>'
    )
    executed = f'<code class="action">{escape(stored.action)}</code>'
    if step.replaced:
        why = _REPLACED_BECAUSE.get(stored.kind, "the regime executes another action")
        executed = (
            f'<dd class="executed replaced">{executed} <strong class="replaced-mark">'
            f"⟲ replaced the answer</strong> <span>({escape(why)})</span></dd>"
        )
    else:
        executed = f'<dd class="executed">{executed}</dd>'
    return (
        f'<div class="answer"><h3>completion</h3>{completion}<dl>'
        f"<dt>answer</dt><dd>{answer}</dd><dt>executed</dt>{executed}</dl></div>"
    )


def _step_html(
    step: ViewedStep, episode: str, prefixes: _Prefixes, run: RunRecord, own_prefix: bool
) -> str:
    notes = "".join(f'<p class="note">⚠ {escape(problem)}</p>' for problem in step.problems())
    after = step.after_observation
    extras = ""
    if after is not None and after.strip():
        extras += (
            '<details class="after"><summary>the prompt after the observation</summary>'
            f'<pre class="prompt">{escape(after)}</pre></details>'
        )
    prefix = _prefix_of(step)
    if own_prefix and prefix is not None:
        extras += _prefix_details(prefixes.ref(prefix), _prefix_label(step, run))
    return (
        f'<li class="step kind-{step.stored.kind.value}" id="e{episode}-s{step.stored.step}">'
        f'{_step_head(step)}<div class="step-body">{_observation_html(step)}'
        f"{_answer_html(step)}</div>{notes}{extras}</li>"
    )


def _episode_facts(record: EpisodeRecord) -> str:
    ending = "terminated" if record.terminated else "truncated"
    usage = record.usage
    cost = f" · ${record.cost_usd:.4f}" if record.cost_usd else ""
    unreadable = f" · {record.unreadable} unreadable" if record.unreadable else ""
    return (
        f'<p class="facts">return <b>{record.total_return:g}</b> · {record.steps} steps · '
        f"ended: <b>{escape(record.end_reason or ending)}</b> ({ending}) · seed {record.seed}</p>"
        f'<p class="facts">valid {record.valid} · illegal {record.illegal} · invalid '
        f"{record.invalid} · empty {record.empty}{unreadable} · tokens {usage.prompt_tokens} in / "
        f"{usage.completion_tokens} out ({usage.cached_tokens} cached){cost}</p>"
    )


def _episode_html(episode: ViewedEpisode, run: RunRecord, prefixes: _Prefixes, shown: bool) -> str:
    unit = _anchor(episode.record.unit)
    prefixes_seen = {_prefix_of(step) for step in episode.steps}
    shared = len(prefixes_seen) == 1 and None not in prefixes_seen
    head = f"<h2>{escape(episode.label)}</h2>{_episode_facts(episode.record)}"
    if episode.note:
        head += f'<p class="note">⚠ {escape(episode.note)}</p>'
    if shared:
        first = episode.steps[0]
        head += _prefix_details(prefixes.ref(_prefix_of(first) or ()), _prefix_label(first, run))
    steps = "".join(_step_html(step, unit, prefixes, run, not shared) for step in episode.steps)
    hidden = "" if shown else " hidden"
    return (
        f'<section class="episode" id="episode-{unit}" data-episode="{unit}"{hidden}>'
        f'<header class="episode-head">{head}</header><ol class="steps">{steps}</ol></section>'
    )


def _nav_html(episodes: Sequence[ViewedEpisode], chosen: UnitKey | None, finished: int) -> str:
    items = []
    for episode in episodes:
        record = episode.record
        unit = _anchor(record.unit)
        current = ' class="current"' if record.unit == chosen else ""
        flag = "" if all(s.verified for s in episode.steps) else ' <span class="flag">⚠</span>'
        items.append(
            f'<li><a href="#episode-{unit}" data-episode="{unit}"{current}>{escape(episode.label)}'
            f'<span class="nav-facts">return {record.total_return:g} · '
            f"{escape(record.end_reason or '')}</span>{flag}</a></li>"
        )
    count = f"{len(episodes)} of {finished}" if finished > len(episodes) else str(len(episodes))
    return f"<nav><h2>episodes ({count})</h2><ol>{''.join(items)}</ol></nav>"


def _verification(view: ViewedRun) -> str:
    steps = [step for episode in view.episodes for step in episode.steps]
    verified = sum(step.verified for step in steps)
    if steps and verified == len(steps):
        text = (
            f"All {len(steps)} steps were rebuilt offline and every prompt hashes to the one "
            "stored: the observations and prompts shown are what the model was sent."
        )
        return f'<p class="verify ok">✓ {text}</p>'
    text = (
        f"{verified} of {len(steps)} steps were rebuilt with the very prompt the model was "
        "sent; the others are marked, with the reason."
    )
    notes = "".join(f'<p class="note">⚠ {escape(note)}</p>' for note in view.notes)
    return f'<p class="verify warn">{escape(text)}</p>{notes}'


def _run_header(view: ViewedRun) -> str:
    run, config = view.run, view.run.config
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.created))
    line = " · ".join(
        str(config.get(key, "?")) for key in ("task", "observation", "model", "regime")
    )
    count = _demonstrations(run)
    demos = f" · {counted(count, 'demonstration')}" if count is not None else ""
    rows = "".join(
        f"<tr><th>{escape(key)}</th><td>{escape(json.dumps(value))}</td></tr>"
        for key, value in sorted(config.items())
    )
    shown = len(view.episodes)
    cut = (
        f'<p class="cut">This page shows the first {shown} of the run\'s {view.finished} '
        f"finished episodes; <code>lmact view {escape(run.run_id)}</code> shows every one.</p>"
        if view.finished > shown
        else ""
    )
    return (
        f'<header class="run"><h1>run <code>{escape(run.run_id)}</code></h1>'
        f"<p>{escape(line)}{escape(demos)} · created {created}</p>{cut}{_verification(view)}"
        f"<details><summary>configuration</summary><table>{rows}</table></details></header>"
    )


_KIND_VARIABLES = " ".join(
    f"--{kind.value}: rgb{colour};".replace(" ", "") for kind, colour in KIND_COLOURS.items()
)
_CSS = (
    f":root {{ color-scheme: light; {_KIND_VARIABLES} }}"
    + """
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: #1f2328; background: #f6f8fa; }
.layout { display: grid; grid-template-columns: 260px 1fr; min-height: 100vh; }
nav { background: #fff; border-right: 1px solid #d0d7de; padding: 12px; position: sticky;
  top: 0; height: 100vh; overflow-y: auto; }
nav h2 { font-size: 14px; margin: 0 0 8px; }
nav ol { list-style: none; margin: 0; padding: 0; }
nav a { display: block; padding: 4px 6px; border-radius: 4px; color: #0969da;
  text-decoration: none; }
nav a.current { background: #ddf4ff; font-weight: 600; }
.nav-facts { display: block; color: #57606a; font-size: 12px; font-weight: 400; }
.flag { color: var(--illegal); }
main { padding: 16px 24px; min-width: 0; }
header.run h1 { font-size: 20px; margin: 0 0 4px; }
.verify.ok { color: var(--valid); }
.verify.warn, .note { color: var(--illegal); }
.note, .cut { margin: 6px 0; }
table { border-collapse: collapse; font-size: 12px; }
th, td { text-align: left; padding: 2px 8px; border-bottom: 1px solid #eaeef2; }
td { font-family: ui-monospace, monospace; }
.episode-head h2 { margin: 16px 0 4px; font-size: 18px; }
.facts { margin: 2px 0; color: #424a53; }
ol.steps { list-style: none; padding: 0; margin: 12px 0; }
.step { background: #fff; border: 1px solid #d0d7de; border-left: 6px solid var(--empty);
  border-radius: 6px; margin: 0 0 12px; padding: 8px 12px; }
.step.kind-valid { border-left-color: var(--valid); }
.step.kind-illegal { border-left-color: var(--illegal); }
.step.kind-invalid { border-left-color: var(--invalid); }
.step-head { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center;
  color: #57606a; font-size: 13px; }
.step-no { font-weight: 600; color: #1f2328; }
.kind { color: #fff; border-radius: 10px; padding: 1px 9px; font-weight: 600; }
.kind-valid .kind, .kind.kind-valid { background: var(--valid); }
.kind.kind-illegal { background: var(--illegal); }
.kind.kind-invalid { background: var(--invalid); }
.kind.kind-empty { background: var(--empty); }
.check.ok { color: var(--valid); }
.check.warn { color: var(--illegal); font-weight: 600; }
.step-body { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 16px;
  margin-top: 6px; }
h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #57606a;
  margin: 4px 0; }
pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px;
  white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; padding: 6px 8px;
  background: #f6f8fa; border-radius: 4px; }
.obs-image, .prompt-image { image-rendering: pixelated; max-width: 100%; width: 288px;
  border: 1px solid #d0d7de; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 10px; margin: 8px 0 0; }
dt { color: #57606a; }
dd { margin: 0; }
code { font-family: ui-monospace, monospace; background: #eaeef2; padding: 0 4px;
  border-radius: 3px; }
.executed.replaced { background: #fff1e5; border: 2px solid var(--illegal); border-radius: 4px;
  padding: 2px 6px; }
.replaced-mark { color: var(--illegal); }
.none, .missing { color: #8c959f; font-style: italic; margin: 0; }
details { margin-top: 6px; }
summary { cursor: pointer; color: #0969da; }
details.prefix > pre, details.prefix > img, details.after > pre { margin-top: 4px; }
"""
)

_SCRIPT = """
(() => {
  "use strict";
  const table = document.getElementById("prompt-images");
  const images = table ? JSON.parse(table.textContent) : {};
  const sections = Array.from(document.querySelectorAll("section.episode"));
  const links = Array.from(document.querySelectorAll("nav a[data-episode]"));
  function show(episode) {
    const target = sections.find((section) => section.dataset.episode === episode);
    if (!target) return;
    for (const section of sections) section.hidden = section !== target;
    for (const link of links) link.classList.toggle("current", link.dataset.episode === episode);
    target.scrollIntoView();
  }
  function fromHash() {
    const match = /^#episode-([a-z0-9-]+)$/.exec(window.location.hash);
    if (match) show(match[1]);
  }
  function expand(details) {
    if (!details.open || details.dataset.filled) return;
    const template = document.getElementById("prefix-" + details.dataset.prefix);
    if (!template) return;
    const content = template.content.cloneNode(true);
    for (const image of content.querySelectorAll("img[data-ref]")) {
      image.src = images[image.dataset.ref] || "";
    }
    details.appendChild(content);
    details.dataset.filled = "yes";
  }
  document.addEventListener("toggle", (event) => {
    if (event.target instanceof HTMLDetailsElement && event.target.dataset.prefix) {
      expand(event.target);
    }
  }, true);
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""


# Nothing may load from anywhere: images are inline data, the one style and the one script
# run by their hashes (an injected one would not), no form or base URL.
CONTENT_SECURITY_POLICY = content_security_policy(_CSS, _SCRIPT)


def page_html(view: ViewedRun, chosen: UnitKey | None) -> str:
    """The page of a viewed run, unit `chosen` shown (and listed) first."""
    prefixes = _Prefixes()
    ordered = sorted(view.episodes, key=lambda episode: episode.record.unit != chosen)
    sections = "".join(
        _episode_html(episode, view.run, prefixes, episode.record.unit == chosen)
        for episode in ordered
    )
    if not sections:
        sections = '<p class="none">This run has no finished episode yet.</p>'
    body = (
        f'<div class="layout">{_nav_html(view.episodes, chosen, view.finished)}'
        f"<main>{_run_header(view)}{sections}</main></div>{prefixes.html()}"
    )
    return document(f"lmact · run {view.run.run_id}", _CSS, body, _SCRIPT)


# --- Serving it ----------------------------------------------------------------------------


# The names the page answers to: a DNS-rebinding page (evil.example resolved to 127.0.0.1)
# sends its own Host, so refusing every other name keeps a run away from other sites.
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _is_loopback_host(host: str | None, port: int) -> bool:
    """Whether a request's Host header names this server on loopback (with or without its
    port); a missing Host (HTTP/1.0) is not."""
    if not host:
        return False
    host = host.strip().lower()
    return any(host in (name, f"{name}:{port}") for name in _LOOPBACK_HOSTS)


class _PageServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:  # socketserver's name
        """A client gone mid-request (a reload, a closed tab) is not an error; anything else
        is one line, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        print(f"lmact: serving {client_address[0]}: {error!r}", file=sys.stderr, flush=True)


def make_server(page: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:`port` (0: any free port) that serves `page` at `/` to
    requests naming a loopback host."""
    body = page.encode("utf-8")

    class PageHandler(http.server.BaseHTTPRequestHandler):
        timeout = 60  # a client that connects and sends nothing does not hold a thread forever

        def do_GET(self) -> None:  # the name http.server calls
            if not _is_loopback_host(self.headers.get("Host"), self.server.server_address[1]):
                self.send_error(403, "this server answers only to localhost")
                return
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a page view is not worth a line on the terminal

    try:
        return _PageServer(("127.0.0.1", port), PageHandler)
    except OSError as error:
        raise LmactError(f"cannot serve on 127.0.0.1:{port} ({error.strerror})") from None


def serve_page(page: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve `page` on 127.0.0.1 until Ctrl-C (or SIGTERM); `announce` gets its URL."""
    server = make_server(page, port)
    try:
        announce(f"http://127.0.0.1:{server.server_address[1]}/")
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # how serving is meant to end
    finally:
        server.server_close()
