"""The episode viewer's page: what it shows of a replayed run (`ViewedRun`, made by
`lmact.report.viewer.view_run`) as one self-contained HTML document, its style and its
script. Every piece of text is escaped; the page loads nothing and its one script runs by its
hash."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lmact.envs.base import AnswerKind, Observation
from lmact.models.base import (
    ImagePart,
    ModelRequest,
    Part,
    TextPart,
    TurnStart,
)
from lmact.records import NO_PROMPT, EpisodeRecord, StepRecord, UnitKey, UnitKind
from lmact.regimes.base import RegimeConfig
from lmact.report.page import content_security_policy, counted, data_uri, document, escape
from lmact.store import RunRecord

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


@dataclass(frozen=True)
class Asked:
    """What the replaying policy was asked at one step: of the request, only what the page
    shows (a whole prompt repeats the episode so far, and kept at every step would grow as
    the square of an episode's length); the prefix's parts are shared between steps."""

    prefix: tuple[Part, ...]  # the stable prefix: preamble and demonstrations, or context
    observation: Observation | None  # rendered from the step's environment, if it has one
    # What the prompt holds after the observation (legal actions, the instruction); None if
    # the observation is not at the prompt's end, where steps put it.
    after_observation: str | None
    answered_action: str | None  # the action the stored answer names there, if valid
    system: str = ""  # the request's system message
    rest: tuple[Part, ...] | None = None  # the prompt after the prefix, where not shown else


# --- What the page shows -------------------------------------------------------------------


@dataclass(frozen=True)
class ViewedStep:
    stored: StepRecord
    asked: Asked | None = None
    replayed: StepRecord | None = None
    context: str | None = None  # what its context held, as its regime says (in-context RL)

    @property
    def verified(self) -> bool:
        """The rebuilt prompt is the one sent: its hash is the stored one."""
        return self.replayed is not None and self.replayed.prompt_hash == self.stored.prompt_hash

    @property
    def prompt_verified(self) -> bool | None:
        """`verified`, or None at a step of a policy that reads no prompt (a scripted one)."""
        return None if self.stored.prompt_hash == NO_PROMPT else self.verified

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
        if stored.prompt_hash == NO_PROMPT:
            found.append(
                "played by a scripted policy, which is shown no prompt: what is shown is the "
                "prompt a model would have been shown"
            )
        elif not self.verified:
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
        if self.after_observation is None and (self.asked is None or self.asked.rest is None):
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


def unit_anchor(unit: UnitKey) -> str:
    """A unit's name in the page's ids and links: its index alone for an episode of chain 0
    (every unit of a regime whose units stand alone), else with its chain and kind."""
    name = str(unit.index) if unit.kind is UnitKind.EPISODE else f"eval{unit.index}"
    return name if not unit.chain else f"c{unit.chain}-{name}"


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
            self._templates.append(self.parts_html(parts))
        return self._index[key]

    def parts_html(self, parts: Sequence[Part]) -> str:
        shown = []
        for part in parts:
            if isinstance(part, TextPart):
                shown.append(f'<pre class="prompt">{escape(part.text)}</pre>')
            elif isinstance(part, TurnStart):  # a conversation's turn: who speaks from here
                shown.append(f'<div class="turn">{escape(part.role)}</div>')
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
    extras += _system_and_rest(step, prefixes)
    prefix = _prefix_of(step)
    if own_prefix and prefix is not None:
        extras += _prefix_details(prefixes.ref(prefix), _prefix_label(step, run))
    return (
        f'<li class="step kind-{step.stored.kind.value}" id="e{episode}-s{step.stored.step}">'
        f'{_step_head(step)}<div class="step-body">{_observation_html(step)}'
        f"{_answer_html(step)}</div>{notes}{extras}</li>"
    )


def _system_and_rest(step: ViewedStep, prefixes: _Prefixes) -> str:
    """The request's system message, and the prompt after its prefix where the observation
    does not end it (a scenario's history and question), as they were sent."""
    asked, shown = step.asked, ""
    if asked is None:
        return ""
    if asked.system:
        shown += (
            '<details class="after"><summary>the system message</summary>'
            f'<pre class="prompt">{escape(asked.system)}</pre></details>'
        )
    if asked.rest is not None:
        shown += (
            '<details class="after"><summary>the prompt after its context</summary>'
            f"{prefixes.parts_html(asked.rest)}</details>"
        )
    return shown


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
    unit = unit_anchor(episode.record.unit)
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
        unit = unit_anchor(record.unit)
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
.turn { margin: 8px 0 0; padding-top: 2px; border-top: 1px solid #d0d7de; color: #57606a;
  font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.finder { position: sticky; top: 0; z-index: 1; background: #f6f8fa; padding: 8px 0;
  display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.finder input[type=search] { width: 320px; padding: 4px 6px; }
.finder .keys { color: #57606a; font-size: 12px; }
li.step.focused { outline: 3px solid #0969da; outline-offset: 2px; }
li.step[hidden] { display: none; }
nav a.no-match { opacity: .4; }
.matches { color: #0969da; margin-left: 4px; font-size: 12px; }
"""
)

# Search, the filter to answers that were replaced, and the keys (handled by `_SCRIPT`).
_FINDER = (
    '<div class="finder"><input type="search" id="find" placeholder="search completions and '
    'observations" aria-label="search completions and observations">'
    '<label><input type="checkbox" id="flagged"> only illegal, invalid or empty answers</label>'
    '<button type="button" id="first-flagged">first such step</button>'
    '<span id="found" role="status"></span>'
    '<span class="keys">keys: / search · f filter · j/k step · n/p episode</span></div>'
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

  // Search and filter: a step is shown if its text holds the search and, with the filter,
  // its answer was replaced; each episode's matches are counted in the list.
  const find = document.getElementById("find");
  const flagged = document.getElementById("flagged");
  const found = document.getElementById("found");
  const stepsOf = (section) => Array.from(section.querySelectorAll("li.step"));
  const replaced = (step) => !step.classList.contains("kind-valid");
  function matches(step, query) {
    return (!flagged.checked || replaced(step))
      && (!query || step.textContent.toLowerCase().includes(query));
  }
  function refilter() {
    const query = find.value.trim().toLowerCase();
    const filtering = Boolean(query) || flagged.checked;
    let total = 0;
    for (const section of sections) {
      let count = 0;
      for (const step of stepsOf(section)) {
        const shown = matches(step, query);
        step.hidden = !shown;
        count += shown ? 1 : 0;
      }
      total += count;
      const link = links.find((a) => a.dataset.episode === section.dataset.episode);
      if (!link) continue;
      link.classList.toggle("no-match", filtering && count === 0);
      let badge = link.querySelector(".matches");
      if (!badge) {
        badge = document.createElement("span");
        badge.className = "matches";
        link.appendChild(badge);
      }
      badge.textContent = filtering ? "(" + count + ")" : "";
    }
    found.textContent = filtering ? total + " steps found" : "";
  }
  find.addEventListener("input", refilter);
  flagged.addEventListener("change", refilter);

  // The step in focus, in the episode on screen: moved with j/k, or to the first step
  // whose answer was replaced.
  const shownSection = () => sections.find((section) => !section.hidden);
  function focusStep(step) {
    for (const other of document.querySelectorAll("li.step.focused")) {
      other.classList.remove("focused");
    }
    if (!step) return;
    step.classList.add("focused");
    step.scrollIntoView({block: "center"});
  }
  function moveStep(by) {
    const section = shownSection();
    if (!section) return;
    const visible = stepsOf(section).filter((step) => !step.hidden);
    const at = visible.findIndex((step) => step.classList.contains("focused"));
    focusStep(visible[Math.min(Math.max(at + by, 0), visible.length - 1)]);
  }
  function moveEpisode(by) {
    const at = sections.findIndex((section) => !section.hidden);
    const next = sections[at + by];
    if (next) window.location.hash = "#episode-" + next.dataset.episode;
  }
  document.getElementById("first-flagged").addEventListener("click", () => {
    const section = shownSection();
    if (section) focusStep(stepsOf(section).find(replaced));
  });
  document.addEventListener("keydown", (event) => {
    if (event.target === find) {
      if (event.key === "Escape") find.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const actions = {
      "/": () => find.focus(), "f": () => { flagged.click(); },
      "j": () => moveStep(1), "k": () => moveStep(-1),
      "n": () => moveEpisode(1), "p": () => moveEpisode(-1),
    };
    if (actions[event.key]) {
      event.preventDefault();
      actions[event.key]();
    }
  });
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
        f"<main>{_run_header(view)}{_FINDER}{sections}</main></div>{prefixes.html()}"
    )
    return document(f"lmact · run {view.run.run_id}", _CSS, body, _SCRIPT)
