"""check_environment: every shipped task passes it, and an environment that breaks one of the
properties the harness relies on fails it with that property named."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from lmact.envs import BUILTIN_ENVIRONMENTS
from lmact.envs.base import Observation, StepOutcome
from lmact.envs.check import ConformanceError, Property, check_environment
from lmact.envs.grid_world import GridWorld
from lmact.errors import LmactError, UnknownNameError
from lmact.tasks import check_task, get_task, task_specs

SLOW_TASKS = {"cheetah", "phoenix"}  # a simulator or an emulator, and a planning expert: ~3-5 s


@pytest.mark.parametrize(
    "task",
    [pytest.param(t, marks=pytest.mark.slow) if t in SLOW_TASKS else t for t in task_specs()],
)
def test_every_shipped_task_passes(task: str) -> None:
    spec = get_task(task)
    if spec.environment == "chess":
        # The shipped expert thinks 50 ms a move, which no machine repeats exactly (documented);
        # searching a fixed number of nodes instead makes it deterministic, so check that.
        spec = spec.model_copy(update={"options": {**spec.options, "expert_nodes": 2000}})
    check_task(spec)


def test_every_builtin_family_has_a_shipped_task() -> None:
    assert {spec.environment for spec in task_specs().values()} >= set(BUILTIN_ENVIRONMENTS)


def test_a_step_limit_cuts_an_episode_cleanly() -> None:
    check_environment("grid_world", {"size": 12}, max_steps=2, steps=2)


def test_unknown_families_and_bad_options_are_not_conformance_failures() -> None:
    with pytest.raises(UnknownNameError):
        check_environment("no_such_family")
    with pytest.raises(LmactError) as caught:
        check_environment("grid_world", {"size": 1})
    assert not isinstance(caught.value, ConformanceError)


# --- broken environments: a small correct one (GridWorld), each with one property broken ---


class ResetsDiffer(GridWorld):
    """Each reset starts elsewhere: the seed no longer decides the initial state."""

    resets = 0

    def reset(self, seed: int) -> None:
        ResetsDiffer.resets += 1
        super().reset(seed + ResetsDiffer.resets)


class StepsDiffer(GridWorld):
    """After every second reset of an environment, the player no longer moves."""

    def __init__(self, **options: int) -> None:
        super().__init__(**options)
        self.resets = 0

    def reset(self, seed: int) -> None:
        self.resets += 1
        super().reset(seed)

    def step(self, action: str) -> StepOutcome:
        if self.resets % 2 == 0:
            return StepOutcome(reward=0.0, done=False)
        return super().step(action)


class ListsWhatItCannotParse(GridWorld):
    def legal_actions(self) -> list[str]:
        return [*super().legal_actions(), "jump"]


class ParsesToAnotherSpelling(GridWorld):
    def parse_action(self, answer: str) -> str:
        return super().parse_action(answer).upper()


class RandomActionIsIllegal(GridWorld):
    def random_action(self, rng: np.random.Generator) -> str:
        return "diagonal"


class ImageFormatGivesText(GridWorld):
    def render(self, fmt: str) -> Observation:
        return Observation(text="a picture") if fmt == "png" else super().render(fmt)


class EndsWithoutAReason(GridWorld):
    def end_reason(self) -> str | None:
        return None


class DoneDisagrees(GridWorld):
    """Says an episode ended when it did not."""

    def step(self, action: str) -> StepOutcome:
        return StepOutcome(reward=super().step(action).reward, done=True)


class RunsOutOfActions(GridWorld):
    def legal_actions(self) -> list[str]:
        return []


class StepRaises(GridWorld):
    def step(self, action: str) -> StepOutcome:
        raise KeyError(action)


class ExpertChangesItsMind(GridWorld):
    """Its first move depends on how many episodes the environment has played."""

    def __init__(self, **options: int) -> None:
        super().__init__(**options)
        self.resets = 0

    def reset(self, seed: int) -> None:
        self.resets += 1
        super().reset(seed)

    def expert_action(self) -> str:
        return ("left", "right")[self.resets % 2]


class ExpertIsIllegal(GridWorld):
    def expert_action(self) -> str:
        return "teleport"


BROKEN: list[tuple[Callable[..., GridWorld], Property]] = [
    (ResetsDiffer, Property.RESET_DETERMINISM),
    (StepsDiffer, Property.STEP_DETERMINISM),
    (ListsWhatItCannotParse, Property.ACTION_ROUND_TRIP),
    (ParsesToAnotherSpelling, Property.ACTION_ROUND_TRIP),
    (RandomActionIsIllegal, Property.RANDOM_ACTION),
    (ImageFormatGivesText, Property.RENDERING),
    (EndsWithoutAReason, Property.EPISODE_END),
    (DoneDisagrees, Property.EPISODE_END),
    (RunsOutOfActions, Property.EPISODE_END),
    (StepRaises, Property.RUNS),
    (ExpertChangesItsMind, Property.EXPERT_DETERMINISM),
    (ExpertIsIllegal, Property.EXPERT_LEGAL),
]


@pytest.mark.parametrize(("broken", "failed"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_a_broken_environment_fails_with_the_property_named(
    broken: type[GridWorld], failed: Property
) -> None:
    with pytest.raises(ConformanceError) as caught:
        check_environment(broken, {"size": 5, "cell_pixels": 8}, max_steps=30)
    assert caught.value.failed is failed
    assert caught.value.environment == broken.__name__
    assert len(str(caught.value).splitlines()) == 1


def test_the_correct_environment_they_break_passes() -> None:
    check_environment(GridWorld, {"size": 5, "cell_pixels": 8}, max_steps=30)


@pytest.mark.parametrize(
    ("broken", "skip"),
    [
        (ExpertChangesItsMind, [Property.EXPERT_DETERMINISM]),
        # Its expert, walking from where the player stands, differs with the steps.
        (StepsDiffer, [Property.STEP_DETERMINISM, Property.EXPERT_DETERMINISM]),
    ],
)
def test_a_skipped_property_is_not_checked(broken: type[GridWorld], skip: list[Property]) -> None:
    check_environment(broken, {"size": 5, "cell_pixels": 8}, max_steps=30, skip=skip)
