"""The environment interface, and how a model's answer becomes an action.

An environment is small, in the manner of gymnasium's `Env`: `reset(seed)`, `step(action)`,
`legal_actions()`, one `render(fmt)` per observation format, a strict `parse_action`, and an
`expert_action()`. Everything an environment does is deterministic given the seed of `reset`.
It is played through an `EpisodeGuard`, which checks the order of resets and steps and the
step limit once for every family, so an environment may assume that order.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from lmact.resources import data_dir

# Seeds from here up draw demonstrations; test episodes use seeds below. Environments whose
# initial states come from a committed pool (chess openings, crossword puzzles) split the
# pool at the same line, so that no demonstration starts where a test episode does.
DEMO_SEED_BASE = 1_000_000_000

PoolEntry = TypeVar("PoolEntry")


class InvalidActionError(ValueError):
    """The answer is not of the action format at all (e.g. `z9` in tic-tac-toe)."""


class IllegalActionError(ValueError):
    """The answer is a well-formed action that is not legal in the current state."""


@dataclass(frozen=True)
class Observation:
    """One rendering of a state: text, or an image as PNG bytes (never both)."""

    text: str | None = None
    image_png: bytes | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image_png is None):
            raise ValueError("an Observation holds exactly one of text or image_png")

    @property
    def is_image(self) -> bool:
        return self.image_png is not None


@dataclass(frozen=True)
class StepOutcome:
    reward: float
    done: bool


def strip_answer(answer: str) -> str:
    """An answer without surrounding whitespace and one trailing period, before parsing."""
    return answer.strip().removesuffix(".")


def named_action(answer: str, names: Sequence[str]) -> str:
    """The one of `names` (a fixed action vocabulary) that `answer` spells, in any case.

    Raises InvalidActionError for anything else. Only ASCII answers match, so that look-alike
    letters (the Kelvin sign lower-cases to k) are not read as a name.
    """
    text = strip_answer(answer)
    if text.isascii():
        for name in names:
            if name.lower() == text.lower():
                return name
    raise InvalidActionError(f"{answer!r} is not one of {', '.join(names)}")


def integer_option(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """A task-spec option that must be an integer in [minimum, maximum]."""
    # bool is a subclass of int, but `size = true` is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"option {name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"option {name} must be {bounds}, got {value}")
    return value


def pool_entry(
    seed: int, tests: Sequence[PoolEntry], demonstrations: Sequence[PoolEntry]
) -> PoolEntry:
    """The initial state that `seed` draws from a pool split into test and demonstration parts.

    Test seeds (below DEMO_SEED_BASE) take the test part in order and demonstration seeds the
    other part, each cycling when a run asks for more episodes than its part holds.
    """
    if seed < 0:
        raise ValueError(f"seeds are non-negative, got {seed}")
    is_test = seed < DEMO_SEED_BASE
    part, index = (tests, seed) if is_test else (demonstrations, seed - DEMO_SEED_BASE)
    if not part:
        raise ValueError(f"the pool holds no {'test' if is_test else 'demonstration'} entries")
    return part[index % len(part)]


def choice_option(name: str, value: object, choices: Sequence[str]) -> str:
    """A task-spec option that must be one of `choices` (the first is usually the default)."""
    if not isinstance(value, str) or value not in choices:
        accepted = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"option {name} must be one of {accepted}, got {value!r}")
    return value


def file_option(name: str, value: object) -> Path:
    """A task-spec option naming a data file: absolute, or relative to the shipped tasks/ folder."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"option {name} must be a file path, got {value!r}")
    path = Path(value)
    if not path.is_absolute():
        path = data_dir("tasks") / path
    if not path.is_file():
        raise ValueError(f"option {name}: no such file {path}")
    return path.resolve()


class Environment(ABC):
    """A task's rules, renderings, action grammar and expert.

    Subclasses set `observation_formats` (every format `render` accepts) and
    `image_formats` (the subset rendered as images). Constructor keyword arguments come
    from the `[options]` table of the task spec.

    `rendering_version` is part of the folder where demonstrations are stored: bump it in a
    subclass whenever a change in its renderings or in its expert changes what a stored
    demonstration would hold, so that demonstrations from before the change are never reused
    (they are generated afresh in a new folder).
    """

    observation_formats: ClassVar[tuple[str, ...]]
    image_formats: ClassVar[frozenset[str]] = frozenset()
    rendering_version: ClassVar[int] = 1
    # Set by a subclass's reset() whose own state accessors call _require_started() first
    # (the interface methods need no such check: an EpisodeGuard makes it for every family).
    _started: bool = False
    # Why it ended, set by a subclass with _done when the reason is more than "ended".
    _ended_by: str = "ended"
    # Set by a subclass when its episode ends (a win, a loss, the game over ...).
    _done: bool = False

    @abstractmethod
    def reset(self, seed: int) -> None:
        """Start a new episode whose initial state (and any opponent) is drawn from `seed`."""

    @abstractmethod
    def step(self, action: str) -> StepOutcome:
        """Apply a legal action (as returned by `parse_action` or `legal_actions`)."""

    @abstractmethod
    def legal_actions(self) -> list[str]:
        """The legal actions now, in a fixed order, in their canonical spelling."""

    @abstractmethod
    def render(self, fmt: str) -> Observation:
        """The current state in observation format `fmt`."""

    @abstractmethod
    def parse_action(self, answer: str) -> str:
        """The canonical action that `answer` names.

        Raises InvalidActionError when `answer` is not of the action format and
        IllegalActionError when it is well formed but not legal now.
        """

    @abstractmethod
    def expert_action(self) -> str:
        """The expert's action in the current state."""

    def random_action(self, rng: np.random.Generator) -> str:
        """A uniformly random legal action drawn from `rng`: the `random` baseline's move, and
        what replaces an answer that is not a valid action. Continuous action spaces draw
        from the space itself rather than from a listed stand-in."""
        actions = self.legal_actions()
        return actions[int(rng.integers(len(actions)))]

    def legal_actions_description(self) -> str | None:
        """A phrase that stands for the legal actions in a prompt (`--legal-actions`) where
        listing them is not possible (a continuous space); None: list them."""
        return None

    @property
    def done(self) -> bool:
        """Whether the episode has ended (no action is legal any more)."""
        return self._done

    def end_reason(self) -> str | None:
        """Why the episode ended, in a word or two ("win", "checkmate", "solved"); None while
        it goes on. Stored with every finished episode."""
        return self._ended_by if self._done else None

    def _require_started(self) -> None:
        """For a family's own state accessors (`board`, `physics` …), which `EpisodeGuard`
        does not see: the methods above are checked by the guard."""
        if not self._started:
            raise RuntimeError("call reset(seed) before using the environment")

    def distinct_starts(self, demonstrations: bool = False) -> int | None:
        """How many different starts the test seeds (or the demonstration seeds) give
        before they repeat one (a dataset's examples, cycled); None: they never repeat."""
        return None

    def close(self) -> None:  # noqa: B027 - most environments hold no resources
        """Release resources (engines, emulators); the default holds none."""


class EpisodeOrderError(RuntimeError):
    """An environment used out of order: read or stepped before reset(seed) (or after
    close()), or stepped after its episode ended or reached its step limit."""


class EpisodeGuard(Environment):
    """An environment whose use is checked, once for every family, as gymnasium's
    `OrderEnforcing` and `TimeLimit` wrappers check it: nothing but reset(seed) before the
    first reset (or after close); no step, and no expert action, once the episode has ended
    (`done`) or, with `max_steps`, been cut by the step limit (`truncated`). Everything
    that plays an episode goes through one (`lmact.episode`, the demonstrations), so an
    environment may assume it is used in that order.
    """

    def __init__(self, env: Environment, max_steps: int | None = None) -> None:
        self.env = env
        self.max_steps = max_steps
        self.steps = 0  # since the last reset
        # The wrapped family's declarations, for code that reads them off an instance.
        self.observation_formats = env.observation_formats
        self.image_formats = env.image_formats
        self.rendering_version = env.rendering_version
        self._started = False
        self._ended = False  # the episode ended by its own rules (not by the step limit)

    @property
    def unwrapped(self) -> Environment:
        """The environment itself, for its family's own accessors (`board`, `physics` …)."""
        return self.env

    @property
    def truncated(self) -> bool:
        """Whether the step limit cut the episode (it had not ended by its own rules)."""
        return not self._ended and self.max_steps is not None and self.steps >= self.max_steps

    @property
    def over(self) -> bool:
        """Whether the episode ended or was cut: no step is taken any more until a reset."""
        return self._ended or self.truncated

    def reset(self, seed: int) -> None:
        self.env.reset(seed)
        self._started, self.steps = True, 0
        self._ended = self.env.done  # a position may be over from the start

    def step(self, action: str) -> StepOutcome:
        self._check("step", acting=True)
        outcome = self.env.step(action)
        self.steps += 1
        self._ended = outcome.done
        return outcome

    def legal_actions(self) -> list[str]:
        self._check("legal_actions")
        return self.env.legal_actions()

    def render(self, fmt: str) -> Observation:
        self._check("render")
        return self.env.render(fmt)

    def parse_action(self, answer: str) -> str:
        self._check("parse_action")
        return self.env.parse_action(answer)

    def expert_action(self) -> str:
        self._check("expert_action", acting=True)
        return self.env.expert_action()

    def random_action(self, rng: np.random.Generator) -> str:
        self._check("random_action")
        return self.env.random_action(rng)

    def legal_actions_description(self) -> str | None:
        self._check("legal_actions_description")
        return self.env.legal_actions_description()

    @property
    def done(self) -> bool:
        self._check("done")
        return self.env.done

    def end_reason(self) -> str | None:
        self._check("end_reason")
        return self.env.end_reason()

    def close(self) -> None:
        self._started = False
        self.env.close()

    def _check(self, use: str, acting: bool = False) -> None:
        """Refuse `use` before a reset, and an action (`acting`) once the episode is over."""
        if not self._started:
            raise EpisodeOrderError(f"{use} before reset(seed): call reset(seed) first")
        if acting and self.over:
            why = "ended" if self._ended else f"reached its step limit ({self.max_steps})"
            raise EpisodeOrderError(
                f"{use} after the episode {why}: call reset(seed) to start another"
            )


class AnswerKind(enum.StrEnum):
    """How an answer was classified.

    The kinds nest for counting, as in LMAct: every empty answer is also invalid, and every
    invalid answer is also illegal.
    """

    VALID = "valid"
    ILLEGAL = "illegal"
    INVALID = "invalid"
    EMPTY = "empty"


@dataclass(frozen=True)
class ParsedAnswer:
    kind: AnswerKind
    action: str | None  # the canonical action when VALID, else None


def classify_answer(env: Environment, answer: str, exact: bool = False) -> ParsedAnswer:
    """Classify an answer (already extracted from the completion) against `env`'s state.

    `exact` (the reference protocol's rule): only an answer that is, without surrounding
    whitespace, one of the legal actions as listed is valid; any other well-formed answer
    (`Bb5` for `Bb5+`, `A1` for `a1`) is illegal, and the parser still tells invalid ones.
    """
    if not answer.strip():
        return ParsedAnswer(AnswerKind.EMPTY, None)
    # Actions described, not listed (the cheetah's torques): any well-formed one is legal.
    exact = exact and not env.legal_actions_description()
    if exact and answer.strip() in env.legal_actions():
        return ParsedAnswer(AnswerKind.VALID, answer.strip())
    try:
        action = env.parse_action(answer)
    except IllegalActionError:
        return ParsedAnswer(AnswerKind.ILLEGAL, None)
    except InvalidActionError:
        return ParsedAnswer(AnswerKind.INVALID, None)
    if exact:
        return ParsedAnswer(AnswerKind.ILLEGAL, None)  # well formed, not as listed
    return ParsedAnswer(AnswerKind.VALID, action)
