"""The LMAct prompt, built from the templates in `prompts/`, and token-budget packing.

A prompt is: preamble · demonstrations · the current episode so far · (legal actions) ·
instruction. Every step is written `Observation:` … `Action:` …, images inline where their
observation is. The preamble and demonstrations form the stable prefix: the same bytes at
every step of a run, so that llama.cpp's KV cache and providers' prompt caches reuse them;
the current episode only grows, so step t+1's prompt starts with step t's prompt up to the
legal actions and instruction.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from itertools import islice
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from lmact.envs.base import Observation
from lmact.errors import LmactError
from lmact.models.base import ImagePart, ModelRequest, Part, TextPart, merge_text_parts
from lmact.resources import data_dir

if TYPE_CHECKING:
    import numpy as np

OBSERVATION_LABEL = "Observation:"
ACTION_LABEL = "Action:"
REASONING_LABEL = "Reasoning:"

# One step of an episode: what was observed, and the action taken.
Step = tuple[Observation, str]


# Every template, with the placeholders it is filled with.
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "preamble_with_demos": frozenset(),
    "preamble_without_demos": frozenset(),
    "current_episode": frozenset(),
    "legal_actions": frozenset({"actions"}),
    "instruction": frozenset({"evidence"}),
    "instruction_cot": frozenset({"evidence"}),
}


def prompts_folder(folder: Path | str | None = None) -> Path:
    """The templates' folder: `folder` (a user's --prompts), else the shipped one."""
    return Path(folder) if folder is not None else data_dir("prompts")


@cache
def template(name: str, folder: Path | None = None) -> Template:
    """A prompt template by file stem, from `folder` or the shipped templates."""
    path = prompts_folder(folder) / f"{name}.txt"
    try:
        return Template(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        reason = "missing" if isinstance(error, FileNotFoundError) else "unreadable"
        raise LmactError(f"prompt template {path} is {reason}") from None


def check_templates(
    folder: Path | str | None = None,
    names: dict[str, frozenset[str]] = TEMPLATE_FIELDS,
) -> None:
    """Every template of `names` present and filled by exactly its placeholders (as
    listed there): one-line errors. The shipped templates are checked once a process."""
    shipped = frozenset(names.items()) if folder is None else None
    if shipped in _SHIPPED_CHECKED:
        return
    base = prompts_folder(folder)
    if not base.is_dir():
        raise LmactError(f"--prompts {base} is not a folder of templates")
    for name, fields in names.items():
        text = template(name, base if folder is not None else None)
        try:
            text.substitute({field: "x" for field in fields})
        except (KeyError, ValueError) as error:
            problem = f"unknown placeholder ${error}" if isinstance(error, KeyError) else error
            raise LmactError(
                f"prompt template {base / (name + '.txt')}: {problem}; it may use "
                + (", ".join(f"${f}" for f in sorted(fields)) or "no placeholder")
                + " ($$ writes a dollar sign)"
            ) from None
    if shipped is not None:
        _SHIPPED_CHECKED.add(shipped)


# Which sets of the shipped templates were checked: they do not change while lmact runs,
# and a report of thousands of runs makes a configuration (so checks them) for each.
_SHIPPED_CHECKED: set[frozenset[tuple[str, frozenset[str]]]] = set()


def templates_fingerprint(folder: Path | str | None = None) -> str:
    """The templates' text, for run identities: a new wording is a new run. The shipped
    templates' is read once a process (a folder a user gives is read every time: it may
    be edited between runs)."""
    if folder is None:
        return _shipped_fingerprint()
    return _fingerprint(folder)


@cache
def _shipped_fingerprint() -> str:
    return _fingerprint(None)


def _fingerprint(folder: Path | str | None) -> str:
    digest = hashlib.sha256()
    for path in sorted(prompts_folder(folder).glob("*.txt")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


# How a step's observation is laid out (`--inline-observations`): lmact's block, the
# label on a line of its own; or inline, as the LMAct reference code writes one-line
# observations (`Observation: X Action: a` for positions, coordinates and images; the
# action on the next line for other one-line texts); multi-line texts stay blocks.
BLOCK, INLINE_SAME_LINE, INLINE_NEXT_LINE = "block", "inline-same-line", "inline-next-line"


def observation_parts(observation: Observation, layout: str = BLOCK) -> list[Part]:
    inline = layout != BLOCK
    after = " " if layout == INLINE_SAME_LINE else "\n"
    if observation.image_png is not None:
        opening = f"{OBSERVATION_LABEL} " if inline else f"{OBSERVATION_LABEL}\n"
        return [TextPart(opening), ImagePart(observation.image_png), TextPart(after)]
    if inline and "\n" not in observation.text:
        return [TextPart(f"{OBSERVATION_LABEL} {observation.text}{after}")]
    return [TextPart(f"{OBSERVATION_LABEL}\n{observation.text}\n")]


def episode_parts(
    steps: Sequence[Step], with_actions: bool = True, layout: str = BLOCK
) -> list[Part]:
    parts: list[Part] = []
    for observation, action in steps:
        parts += observation_parts(observation, layout)
        if with_actions:
            parts.append(TextPart(f"{ACTION_LABEL} {action}\n"))
    return parts


@dataclass(frozen=True)
class PromptSettings:
    show_legal_actions: bool = False
    chain_of_thought: bool = False
    # False: the current episode shows its past observations only, not the actions taken
    # (the reference protocol's `include_past_actions`); demonstrations keep theirs.
    past_actions: bool = True
    prompts: Path | None = None  # a folder of templates replacing the shipped ones
    observation_layout: str = BLOCK  # see `observation_parts`


# Between demonstrations. One object for all: a part made per demonstration of each
# per-episode prefix is garbage the collector then scans the run's demonstrations for.
_BLANK_LINE = TextPart("\n")


class PromptBuilder:
    """Builds the request for one step from the demonstrations and the episode so far."""

    def __init__(self, settings: PromptSettings) -> None:
        self.settings = settings

    def template(self, name: str) -> Template:
        return template(name, self.settings.prompts)

    def prefix(self, demonstrations: Sequence[Sequence[Step]]) -> tuple[Part, ...]:
        """Preamble and demonstrations: the stable prefix of every prompt of a run."""
        layout = self.settings.observation_layout
        return self.rendered_prefix([episode_parts(d, layout=layout) for d in demonstrations])

    def rendered_prefix(self, episodes: Sequence[Sequence[Part]]) -> tuple[Part, ...]:
        """`prefix` of demonstrations already rendered (each one's `episode_parts`, joined or
        not: the result is the same)."""
        if not episodes:
            return (TextPart(self.template("preamble_without_demos").substitute()),)
        parts: list[Part] = [TextPart(self.template("preamble_with_demos").substitute())]
        for episode in episodes:
            parts += episode
            parts.append(_BLANK_LINE)
        return merge_text_parts(parts)

    def tail(self, legal_actions: Sequence[str], with_demonstrations: bool) -> str:
        """What follows the current observation: the legal actions and the instruction."""
        text = "\n"
        if self.settings.show_legal_actions:
            text += self.template("legal_actions").substitute(actions=", ".join(legal_actions))
        evidence = (
            "the demonstrations and the episode so far"
            if with_demonstrations
            else "the episode so far"
        )
        name = "instruction_cot" if self.settings.chain_of_thought else "instruction"
        return text + self.template(name).substitute(evidence=evidence)

    def request(
        self,
        prefix: tuple[Part, ...],
        trajectory: Sequence[Step],
        observation: Observation,
        legal_actions: Sequence[str],
        *,
        with_demonstrations: bool,
        max_tokens: int,
        seed: int = 0,
    ) -> ModelRequest:
        episode: list[Part] = [TextPart(self.template("current_episode").substitute())]
        layout = self.settings.observation_layout
        episode += episode_parts(trajectory, self.settings.past_actions, layout)
        episode += observation_parts(observation, layout)
        episode.append(TextPart(self.tail(legal_actions, with_demonstrations)))
        cot = self.settings.chain_of_thought
        return ModelRequest(
            parts=prefix + merge_text_parts(episode),
            stable_prefix_parts=len(prefix),
            answer_prefix=(REASONING_LABEL if cot else ACTION_LABEL),
            # A completion model writes the answer line and stops; with reasoning it stops
            # before it would invent the next observation.
            stop=(f"\n{OBSERVATION_LABEL}", "\n\n") if cot else ("\n",),
            max_tokens=max_tokens,
            seed=seed,
        )


_ACTION_MARKER = re.compile(re.escape(ACTION_LABEL), re.IGNORECASE)
# Markdown and quoting that chat models wrap answers in; stripped from both ends only.
_WRAPPERS = "`*\"' \t"


def extract_answer(completion: str, strict: bool = False) -> str:
    """The action text of a completion: after the last `Action:` if there is one, first line.
    `strict` (exact answer matching, as the reference code reads answers): the text after
    the last `Action:` (or the whole completion), trimmed of whitespace, and nothing else.

    A plain grammar, never evaluation: the environment's parser then decides whether the
    text is a valid, invalid or illegal action.
    """
    if strict:
        return completion.rpartition(ACTION_LABEL)[2].strip()
    markers = list(_ACTION_MARKER.finditer(completion))
    text = completion[markers[-1].end() :] if markers else completion
    for line in text.splitlines():
        if line.strip():
            return line.strip().strip(_WRAPPERS)
    return ""


class PackingStop(StrEnum):
    """What kept the next demonstration out of a prompt packed to a budget."""

    TOKEN_BUDGET = "token budget"
    CONTEXT_WINDOW = "context window"
    IMAGE_LIMIT = "image limit"


@dataclass(frozen=True)
class Packing:
    """The demonstrations a prompt holds and what their prefix costs."""

    demonstrations: tuple[Sequence[Step], ...]
    prefix: tuple[Part, ...]
    prefix_tokens: int
    reserve_tokens: int  # estimated tokens of the current episode, tail and answer
    # Under a budget, what kept the next demonstration out; None when every candidate fit
    # or the number was given.
    stopped_by: PackingStop | None = None


def count_images(parts: Sequence[Part]) -> int:
    return sum(1 for part in parts if isinstance(part, ImagePart))


@dataclass(frozen=True)
class RenderedDemonstration:
    """A demonstration as a prefix shows it (its parts joined) and what it costs: rendered
    and counted once per run, however many prefixes hold it (per-episode draws)."""

    steps: Sequence[Step]
    parts: tuple[Part, ...]
    tokens: int
    images: int


@dataclass(frozen=True)
class _Limits:
    """What the demonstrations of one prompt must fit."""

    builder: PromptBuilder
    count_tokens: Callable[[Sequence[Part]], int]
    context_window: int | None
    max_images: int | None
    tail_tokens: int  # the legal actions and instruction after the current observation
    answer_tokens: int
    preamble_tokens: int

    def reserve(self, episode_tokens: int) -> int:
        """Tokens kept for the current episode (as long as `episode_tokens`) and the answer."""
        return episode_tokens + self.tail_tokens + self.answer_tokens


class DemonstrationPacker:
    """Packs the demonstrations of one run's prompts: the prompt settings, the model's token
    counter and its limits are fixed, so the tail and the preamble are counted once and each
    demonstration once, when rendered (`render`; a caller keeps what it renders to pack it
    again).

    Token counts: a demonstration's tokens are counted on its own, and a prefix's candidates
    are chosen by the sum of their counts, one token added for each blank line between
    them. A tokenizer may count a text whole differently from the sum of its parts where they
    meet, so the chosen prefix is then counted once as a whole: that count is the one
    reported and checked against the budget and the context window. Should it exceed the
    budget, the last demonstration is dropped and the rest counted again, until it fits.
    For the counters lmact has the sum is not below the whole (the four-characters estimate
    rounds each part up; llama.cpp counts a BOS token per call; each demonstration ends in a
    newline that BPE merges with the blank line after it; measured with tiktoken's
    encodings and gemma's tokenizer on tic-tac-toe, grid world, chess and crossword), so the
    prefix is counted once and packing is linear in the tokens packed.
    """

    def __init__(
        self,
        builder: PromptBuilder,
        count_tokens: Callable[[Sequence[Part]], int],
        *,
        context_window: int | None = None,
        answer_tokens: int = 16,
        max_images: int | None = None,
    ) -> None:
        tail_tokens = count_tokens([TextPart(builder.tail(["a"] * 8, True))]) + 16
        preamble = TextPart(builder.template("preamble_with_demos").substitute())
        self.limits = _Limits(builder, count_tokens, context_window, max_images, tail_tokens,
                              answer_tokens, count_tokens([preamble]))  # fmt: skip

    def render(self, steps: Sequence[Step]) -> RenderedDemonstration:
        layout = self.limits.builder.settings.observation_layout
        parts = merge_text_parts(episode_parts(steps, layout=layout))
        tokens = self.limits.count_tokens(parts)
        return RenderedDemonstration(steps, parts, tokens, count_images(parts))

    def pack(
        self,
        candidates: Iterable[RenderedDemonstration],
        *,
        exact: int | None = None,
        budget: int | None = None,
    ) -> Packing:
        """`pack_demonstrations` of rendered candidates (taken from the iterable as needed)."""
        if (exact is None) == (budget is None):
            raise ValueError("give exactly one of exact and budget")
        if exact is not None:
            return _pack_exactly(self.limits, candidates, exact)
        assert budget is not None
        return _pack_to_budget(self.limits, candidates, budget)


def pack_demonstrations(
    builder: PromptBuilder,
    candidates: Iterable[Sequence[Step]],
    count_tokens: Callable[[Sequence[Part]], int],
    *,
    exact: int | None = None,
    budget: int | None = None,
    context_window: int | None = None,
    answer_tokens: int = 16,
    max_images: int | None = None,
) -> Packing:
    """Choose the demonstrations: exactly `exact` of them, or as many whole ones (in order) as
    fit `budget` prefix tokens. Fails with a clear LmactError if they cannot fit the context
    or the model's limit on images per request.

    The current episode is not known in advance: the longest chosen demonstration stands in
    for it when checking the context window and the image limit. How tokens are counted:
    `DemonstrationPacker`.
    """
    if (exact is None) == (budget is None):
        raise ValueError("give exactly one of exact and budget")
    packer = DemonstrationPacker(builder, count_tokens, context_window=context_window,
                                 answer_tokens=answer_tokens, max_images=max_images)  # fmt: skip
    rendered = (packer.render(steps) for steps in candidates)
    return packer.pack(rendered, exact=exact, budget=budget)


def _pack_exactly(
    limits: _Limits, candidates: Iterable[RenderedDemonstration], exact: int
) -> Packing:
    chosen: list[RenderedDemonstration] = []
    longest = most_images = 0  # the longest demonstration, in tokens and in images
    running = limits.preamble_tokens
    window = limits.context_window
    for demonstration in islice(candidates, exact):
        chosen.append(demonstration)
        longest = max(longest, demonstration.tokens)
        most_images = max(most_images, demonstration.images)
        running += demonstration.tokens + 1
        # Checked as they come, so that an impossible count stops the generation early.
        if window is not None and running + limits.reserve(longest) > window:
            raise LmactError(
                f"{exact} demonstrations do not fit: the first {len(chosen)} take about "
                f"{running} tokens; with the current episode (~{limits.reserve(longest)}) that "
                f"exceeds the model's context window of {window} tokens; use "
                "fewer --demos or a --token-budget"
            )
    if len(chosen) < exact:
        raise LmactError(f"only {len(chosen)} demonstrations are available, {exact} asked")
    prefix = limits.builder.rendered_prefix([d.parts for d in chosen])
    prefix_tokens = limits.count_tokens(prefix)
    if window is not None and prefix_tokens + limits.reserve(longest) > window:
        raise LmactError(
            f"{exact} demonstrations take {prefix_tokens} tokens; with the current episode "
            f"(~{limits.reserve(longest)}) that exceeds the model's context window of "
            f"{window} tokens; use fewer --demos or a --token-budget"
        )
    images = count_images(prefix)
    if limits.max_images is not None and images + most_images > limits.max_images:
        raise LmactError(
            f"{exact} demonstrations hold {images} images; with the current episode "
            f"(~{most_images}) that exceeds the model's limit of {limits.max_images} images "
            "per request; use fewer --demos, a --token-budget or a text observation"
        )
    steps = tuple(d.steps for d in chosen)
    return Packing(steps, prefix, prefix_tokens, limits.reserve(longest))


def _pack_to_budget(
    limits: _Limits, candidates: Iterable[RenderedDemonstration], budget: int
) -> Packing:
    chosen: list[RenderedDemonstration] = []
    longest = most_images = 0  # the longest demonstration chosen, in tokens and in images
    running, running_images = limits.preamble_tokens, 0
    first_need: int | None = None
    stopped_by: PackingStop | None = None
    window, max_images = limits.context_window, limits.max_images
    for demonstration in candidates:
        cost = demonstration.tokens + 1  # +1: the blank line after it
        images = demonstration.images
        if first_need is None:
            first_need = running + cost
        longest_if_added = max(longest, cost)
        most_images_if_added = max(most_images, images)
        if running + cost > budget:
            stopped_by = PackingStop.TOKEN_BUDGET
        elif window is not None and running + cost + limits.reserve(longest_if_added) > window:
            stopped_by = PackingStop.CONTEXT_WINDOW
        elif max_images is not None and running_images + images + most_images_if_added > max_images:
            stopped_by = PackingStop.IMAGE_LIMIT
        if stopped_by:
            break
        chosen.append(demonstration)
        running += cost
        running_images += images
        longest, most_images = longest_if_added, most_images_if_added
    # The sum of the parts' counts may differ from the whole's (see DemonstrationPacker).
    while chosen:
        prefix = limits.builder.rendered_prefix([d.parts for d in chosen])
        prefix_tokens = limits.count_tokens(prefix)
        if prefix_tokens <= budget:
            steps = tuple(d.steps for d in chosen)
            return Packing(steps, prefix, prefix_tokens, limits.reserve(longest), stopped_by)
        chosen.pop()
        stopped_by = PackingStop.TOKEN_BUDGET
    if first_need is None:
        raise LmactError("no demonstrations are available to pack")
    if stopped_by is PackingStop.IMAGE_LIMIT:
        raise LmactError(
            f"one demonstration and the current episode need more than the model's limit of "
            f"{max_images} images per request; choose a text observation"
        )
    shown = f"; the model's context window is {window}" if window else ""
    raise LmactError(
        f"token budget {budget} is too small for one demonstration: the preamble and the "
        f"first demonstration need about {first_need} tokens{shown}"
    )


ANSWER_TAG = "Answer"
_TAGGED = re.compile(r"<\s*answer\s*>(.*?)<\s*/\s*answer\s*>", re.IGNORECASE | re.DOTALL)
# One "name: probability" entry of a distribution; the name may hold spaces and hyphens,
# the probability a fraction or a percentage.
_WEIGHT = re.compile(r"([^\s:=,;][^:=,;\n]*?)\s*[:=]\s*(\d+(?:\.\d+)?|\.\d+)\s*(%?)")
# How far from 1 a distribution's probabilities may add up before it is not one.
DISTRIBUTION_TOLERANCE = 0.05


def tagged_answer(completion: str) -> str | None:
    """The text inside the last <Answer>…</Answer> of a completion (stripped), or None."""
    found = _TAGGED.findall(completion)
    return found[-1].strip().strip(_WRAPPERS) if found else None


def read_distribution(text: str, legal: Sequence[str]) -> dict[str, float] | None:
    """The probabilities `text` gives the legal actions ("blue: 0.3, green: 0.7", any case,
    percentages allowed), or None when it is not a distribution over them: an unknown or
    repeated name, or probabilities that do not add up to 1 (within 0.05)."""
    names = {action.lower(): action for action in legal}
    weights: dict[str, float] = {}
    for name, number, percent in _WEIGHT.findall(text):
        key = name.strip().strip(_WRAPPERS).lower().removesuffix(" button")
        if key not in names or names[key] in weights:
            return None
        weights[names[key]] = float(number) / (100 if percent else 1)
    total = sum(weights.values())
    if not weights or abs(total - 1) > DISTRIBUTION_TOLERANCE:
        return None
    return {action: weight / total for action, weight in weights.items()}


@dataclass(frozen=True)
class AnswerForm:
    """How a step's answer is read from a completion. By default after its last `Action:`;
    `tagged`: inside <Answer>…</Answer> (a constrained answer, the choice alone, needs no
    tag); `distribution`: the tag holds probabilities over the legal actions, and the
    action is drawn from them with the episode's policy stream (Krishnamurthy et al.'s
    distribution answers)."""

    tagged: bool = False
    distribution: bool = False
    strict: bool = False  # exact answer matching: see `extract_answer`

    def read(
        self,
        completion: str,
        legal: Callable[[], Sequence[str]],
        rng: Callable[[], np.random.Generator],
        constrained: bool = False,
    ) -> str:
        """The answer text the environment parses. `legal` and `rng` are called only for a
        distribution; what is not a distribution is returned as written (then invalid)."""
        if not self.tagged:
            return extract_answer(completion, self.strict)
        inside = tagged_answer(completion)
        if inside is None:
            return extract_answer(completion) if constrained else ""
        if not self.distribution:
            return inside.splitlines()[0].strip() if inside else ""
        distribution = read_distribution(inside, legal())
        if distribution is None:
            return inside
        actions = list(distribution)
        draw = rng().random()
        cumulative = 0.0
        for action in actions:
            cumulative += distribution[action]
            if draw < cumulative:
                return action
        return actions[-1]


PLAIN_ANSWER = AnswerForm()  # after the last `Action:`, lmact's own form
STRICT_ANSWER = AnswerForm(strict=True)  # the same, read as exact matching reads it
