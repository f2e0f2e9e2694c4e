"""A conformance check of an environment family, after gymnasium's `check_env`.

The harness relies on a few properties that no type checker sees: that the same seed and the
same actions give the same episode (results are cached and resumed on that), that every
declared observation format renders, that a legal action parses back to itself (a model that
writes it is counted as valid), that `random_action` (the baseline, and what replaces an
invalid answer) is legal, that an episode says when and why it ended, and that the expert
plays the same demonstration for a seed. `check_environment` plays a few short episodes and
raises a ConformanceError naming the first property that fails.
"""

from __future__ import annotations

import enum
import io
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from lmact.envs import environment_class
from lmact.envs.base import (
    DEMO_SEED_BASE,
    Environment,
    IllegalActionError,
    InvalidActionError,
    Observation,
    StepOutcome,
)
from lmact.errors import LmactError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Property(enum.StrEnum):
    """What `check_environment` checks; a ConformanceError names the one that failed."""

    RUNS = "reset, step and legal_actions run without error"
    RESET_DETERMINISM = "reset is deterministic for a seed"
    STEP_DETERMINISM = "step is deterministic for a seed and the same actions"
    RENDERING = "every declared observation format renders"
    ACTION_ROUND_TRIP = "legal actions parse back to themselves"
    RANDOM_ACTION = "random_action is legal"
    EPISODE_END = "an episode ends consistently or is cut by the step limit"
    EXPERT_LEGAL = "the expert plays legal actions"
    EXPERT_DETERMINISM = "the expert is deterministic for a seed"


class ConformanceError(LmactError):
    """An environment family lacks a property the harness relies on."""

    def __init__(self, environment: str, failed: Property, detail: str) -> None:
        self.environment = environment
        self.failed = failed
        self.detail = detail
        super().__init__(f"environment {environment} fails the check that {failed.value}: {detail}")


@dataclass(frozen=True)
class _Moment:
    """What an episode shows at one point: after a reset (reward None) or after a step."""

    renderings: tuple[str | bytes | None, ...]  # one per format; None once the episode is over
    legal: tuple[str, ...]
    reward: float | None
    done: bool


def check_environment(
    environment: str | type[Environment],
    options: Mapping[str, Any] | None = None,
    *,
    max_steps: int = 100,
    seeds: Sequence[int] = (0, DEMO_SEED_BASE),
    steps: int = 8,
    expert_steps: int = 3,
    skip: Collection[Property] = (),
) -> None:
    """Check an environment family (a registered name, or a class) built with `options`.

    For each seed (by default one test seed and one demonstration seed): random play up to
    `max_steps` steps, the first `steps` of them replayed after a second reset and on a second
    environment and compared, and `expert_steps` expert steps played three times and compared.
    Properties in `skip` are not checked (a chess expert with a time limit is not
    deterministic, by design). Raises ConformanceError naming the first failure; an
    environment that cannot be built with `options` is a plain LmactError.
    """
    env_class = environment_class(environment) if isinstance(environment, str) else environment
    name = environment if isinstance(environment, str) else env_class.__name__

    def build() -> Environment:
        try:
            return env_class(**dict(options or {}))
        except (TypeError, ValueError) as error:
            raise LmactError(
                f"environment {name}: cannot be built with {options}: {error}"
            ) from None

    checker = _Checker(name, env_class, max_steps, steps, expert_steps, frozenset(skip))
    checker.check_declarations()
    first = build()
    try:
        second = build()
        try:
            for seed in seeds:
                checker.check_seed(first, second, seed)
        finally:
            second.close()
    finally:
        first.close()


class _Checker:
    def __init__(
        self,
        name: str,
        env_class: type[Environment],
        max_steps: int,
        steps: int,
        expert_steps: int,
        skip: frozenset[Property],
    ) -> None:
        self.name = name
        self.formats = tuple(env_class.observation_formats)
        self.image_formats = frozenset(env_class.image_formats)
        self.max_steps = max_steps
        self.steps = min(steps, max_steps)
        self.expert_steps = min(expert_steps, max_steps)
        self.skip = skip

    def fail(self, failed: Property, detail: str) -> NoReturn:
        raise ConformanceError(self.name, failed, detail)

    @contextmanager
    def checking(self, failed: Property, where: str) -> Iterator[None]:
        """An exception raised by the environment inside is a failure of `failed`."""
        try:
            yield
        except ConformanceError:
            raise
        except Exception as error:  # whatever the environment raises is reported
            self.fail(failed, f"{where}: raised {type(error).__name__}: {error}")

    def check_declarations(self) -> None:
        if not self.formats or not all(isinstance(f, str) and f for f in self.formats):
            self.fail(Property.RENDERING, f"observation_formats is {self.formats!r}")
        if not self.image_formats <= set(self.formats):
            extra = sorted(self.image_formats - set(self.formats))
            self.fail(Property.RENDERING, f"image formats {extra} are not observation formats")

    def check_seed(self, first: Environment, second: Environment, seed: int) -> None:
        actions, trace = self.random_play(first, seed)
        if (
            Property.RESET_DETERMINISM not in self.skip
            or Property.STEP_DETERMINISM not in self.skip
        ):
            self.replay(first, seed, actions, trace, "a second reset")
            self.replay(second, seed, actions, trace, "a second environment")
        plays = [self.expert_play(first, seed)]
        if Property.EXPERT_DETERMINISM not in self.skip:
            for env, how in ((first, "a second reset"), (second, "a second environment")):
                again = self.expert_play(env, seed)
                if again != plays[0]:
                    self.fail(
                        Property.EXPERT_DETERMINISM,
                        f"seed {seed}: the expert played {_actions(plays[0])}, "
                        f"then {_actions(again)} after {how}",
                    )

    # --- random play -----------------------------------------------------------------------

    def random_play(self, env: Environment, seed: int) -> tuple[list[str], list[_Moment]]:
        """Random actions up to the step limit, every step checked; the actions taken and the
        moments of the first `steps` steps."""
        rng = np.random.default_rng(seed)
        with self.checking(Property.RUNS, f"seed {seed}: reset"):
            env.reset(seed)
        trace = [self.moment(env, None, f"seed {seed}, after reset")]
        actions: list[str] = []
        for step in range(self.max_steps):
            where = f"seed {seed}, step {step + 1}"
            self.check_going_on(env, where)
            if step < self.steps:
                self.check_round_trip(env, rng, where)
            with self.checking(Property.RANDOM_ACTION, where):
                action = env.random_action(rng)
            self.check_legal(env, action, Property.RANDOM_ACTION, "random_action", where)
            with self.checking(Property.RUNS, f"{where}: step({action!r})"):
                outcome = env.step(action)
            actions.append(action)
            self.check_outcome(env, outcome, where)
            if step < self.steps:
                trace.append(self.moment(env, outcome, where))
            if outcome.done:
                break
        else:
            self.check_going_on(env, f"seed {seed}, cut after {self.max_steps} steps")
        return actions, trace

    def check_going_on(self, env: Environment, where: str) -> None:
        """An episode that has not ended says so, and has legal actions."""
        with self.checking(Property.EPISODE_END, where):
            done, reason, legal = env.done, env.end_reason(), env.legal_actions()
        if done or reason is not None:
            self.fail(
                Property.EPISODE_END,
                f"{where}: done={done}, end_reason={reason!r} before any step said done",
            )
        if not legal:
            self.fail(Property.EPISODE_END, f"{where}: no legal action while the episode goes on")

    def check_outcome(self, env: Environment, outcome: StepOutcome, where: str) -> None:
        reward = outcome.reward
        if isinstance(reward, bool) or not isinstance(reward, int | float):
            self.fail(Property.EPISODE_END, f"{where}: the reward {reward!r} is not a number")
        if not math.isfinite(reward):
            self.fail(Property.EPISODE_END, f"{where}: the reward {reward!r} is not finite")
        with self.checking(Property.EPISODE_END, where):
            done, reason = env.done, env.end_reason()
        if done != outcome.done:
            self.fail(
                Property.EPISODE_END, f"{where}: step said done={outcome.done}, env.done is {done}"
            )
        if outcome.done and not (isinstance(reason, str) and reason.strip()):
            self.fail(
                Property.EPISODE_END, f"{where}: the episode ended with end_reason {reason!r}"
            )

    # --- actions ---------------------------------------------------------------------------

    def check_round_trip(self, env: Environment, rng: np.random.Generator, where: str) -> None:
        """A sample of the legal actions (at most 32: crossword lists thousands) parse back."""
        with self.checking(Property.RUNS, f"{where}: legal_actions"):
            legal = env.legal_actions()
        if len(set(legal)) != len(legal):
            self.fail(Property.ACTION_ROUND_TRIP, f"{where}: the legal actions repeat one")
        sample = legal if len(legal) <= 32 else [legal[i] for i in rng.choice(len(legal), 32)]
        for action in sample:
            self.check_legal(env, action, Property.ACTION_ROUND_TRIP, "the legal action", where)

    def check_legal(
        self, env: Environment, action: object, failed: Property, who: str, where: str
    ) -> None:
        """`action` parses to itself and, where the actions are listed, is one of them."""
        if not isinstance(action, str):
            self.fail(failed, f"{where}: {who} {action!r} is not a string")
        try:
            parsed = env.parse_action(action)
        except (InvalidActionError, IllegalActionError) as error:
            self.fail(
                failed,
                f"{where}: {who} {action!r} does not parse ({type(error).__name__}: {error})",
            )
        except Exception as error:  # whatever the parser raises is reported
            self.fail(
                failed, f"{where}: parsing {who} {action!r} raised {type(error).__name__}: {error}"
            )
        if parsed != action:
            self.fail(failed, f"{where}: {who} {action!r} parses as {parsed!r}")
        # A continuous space (a description stands for it) lists only a stand-in grid.
        if env.legal_actions_description() is None and action not in env.legal_actions():
            self.fail(failed, f"{where}: {who} {action!r} is not among the legal actions")

    # --- observations and replays ------------------------------------------------------------

    def moment(self, env: Environment, outcome: StepOutcome | None, where: str) -> _Moment:
        done = outcome is not None and outcome.done
        # The harness renders only states it acts in: a finished episode need not render.
        renderings = tuple(None if done else self.render(env, f, where) for f in self.formats)
        with self.checking(Property.RUNS, f"{where}: legal_actions"):
            legal = tuple(env.legal_actions())
        return _Moment(renderings, legal, None if outcome is None else outcome.reward, done)

    def render(self, env: Environment, fmt: str, where: str) -> str | bytes:
        with self.checking(Property.RENDERING, f"{where}: render({fmt!r})"):
            observation = env.render(fmt)
        if not isinstance(observation, Observation):
            self.fail(
                Property.RENDERING, f"{where}: render({fmt!r}) gave {type(observation).__name__}"
            )
        if fmt in self.image_formats:
            if observation.image_png is None or not observation.image_png.startswith(
                _PNG_SIGNATURE
            ):
                self.fail(Property.RENDERING, f"{where}: image format {fmt} gave no PNG")
            with self.checking(Property.RENDERING, f"{where}: the {fmt} PNG"):
                Image.open(io.BytesIO(observation.image_png)).verify()
            return observation.image_png
        if not (observation.text and observation.text.strip()):
            self.fail(Property.RENDERING, f"{where}: text format {fmt} gave no text")
        return observation.text

    def replay(
        self, env: Environment, seed: int, actions: list[str], trace: list[_Moment], how: str
    ) -> None:
        """The recorded actions again: every moment must be as recorded."""
        with self.checking(Property.RUNS, f"seed {seed}: reset after {how}"):
            env.reset(seed)
        got = self.moment(env, None, f"seed {seed}, after reset")
        if (difference := _difference(trace[0], got, self.formats)) is not None:
            if Property.RESET_DETERMINISM in self.skip:
                return  # steps from another initial state cannot be compared
            self.fail(Property.RESET_DETERMINISM, f"seed {seed}: {difference} differs after {how}")
        for step, (action, expected) in enumerate(zip(actions, trace[1:], strict=False), 1):
            where = f"seed {seed}, step {step}"
            with self.checking(Property.STEP_DETERMINISM, f"{where}: step({action!r}) after {how}"):
                outcome = env.step(action)
            got = self.moment(env, outcome, where)
            if (difference := _difference(expected, got, self.formats)) is not None:
                if Property.STEP_DETERMINISM in self.skip:
                    return  # the recorded actions may not even be legal from here
                self.fail(
                    Property.STEP_DETERMINISM,
                    f"{where} ({action!r}): {difference} differs after {how}",
                )

    # --- the expert --------------------------------------------------------------------------

    def expert_play(self, env: Environment, seed: int) -> list[tuple[str, float]]:
        """The expert's first steps from `seed`: its actions and their rewards."""
        with self.checking(Property.RUNS, f"seed {seed}: reset"):
            env.reset(seed)
        played: list[tuple[str, float]] = []
        for step in range(1, self.expert_steps + 1):
            where = f"seed {seed}, expert step {step}"
            with self.checking(Property.EXPERT_LEGAL, f"{where}: expert_action"):
                action = env.expert_action()
            self.check_legal(env, action, Property.EXPERT_LEGAL, "the expert's action", where)
            with self.checking(Property.RUNS, f"{where}: step({action!r})"):
                outcome = env.step(action)
            played.append((action, outcome.reward))
            if outcome.done:
                break
        return played


def _difference(expected: _Moment, got: _Moment, formats: Sequence[str]) -> str | None:
    """What first differs between two moments, in words; None if nothing does."""
    for fmt, a, b in zip(formats, expected.renderings, got.renderings, strict=True):
        if a != b:
            return f"the {fmt} rendering"
    checks: list[tuple[str, Callable[[_Moment], object]]] = [
        ("the legal actions", lambda m: m.legal),
        ("the reward", lambda m: m.reward),
        ("whether the episode is over", lambda m: m.done),
    ]
    for what, field in checks:
        if field(expected) != field(got):
            return what
    return None


def _actions(played: list[tuple[str, float]]) -> str:
    return ", ".join(action for action, _ in played) or "nothing"
