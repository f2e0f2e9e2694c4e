"""DeepMind Control's cheetah `run` task, with a model-predictive-control expert.

A planar cheetah is rewarded at every step for forward speed: `speed / 10`, capped at 1 from
10 m/s (dm_control's tolerance on the torso's subtree velocity). Episodes start from the task's
own seeded reset (random joint angles, then 200 steps of settling), so `reset(seed)` gives the
same start as `dm_control.suite.load("cheetah", "run", task_kwargs={"random": seed})`.

Actions are six torques in [-1, 1], written as a list: `[0.5, -1, 0, 0.25, 1, -0.3]`. The
canonical spelling has two decimals (`[0.50, -1.00, 0.00, 0.25, 1.00, -0.30]`), and the
environment executes the action rounded to those decimals. The action space is continuous, so
no action is illegal. The random fallback and the `random` baseline draw six torques uniformly
from [-1, 1] (`random_action`), and prompts describe the space in one phrase
(`legal_actions_description`); `legal_actions()` is a finite stand-in, the 3**6 = 729 vectors
with components in {-1, 0, 1}.

The expert plans on the exact simulator: the cross-entropy method over action sequences, each
rolled out with `mujoco.rollout` from a copy of the current state, scored with the task's own
reward, and warm-started from the previous step's plan shifted by one step.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import functools
import importlib.util
import itertools
import logging
import os
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from lmact.envs.base import (
    Environment,
    InvalidActionError,
    Observation,
    StepOutcome,
    choice_option,
    integer_option,
    strip_answer,
)
from lmact.envs.drawing import png_bytes
from lmact.errors import LmactError


def _headless_backend() -> str | None:
    """EGL where its library exists (no display needed), else OSMesa (software), else None."""
    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            return backend
    return None


# dm_control chooses its OpenGL backend when first imported, so it is set before the import;
# a value the user set (non-empty) wins.
if not os.environ.get("MUJOCO_GL") and (_backend := _headless_backend()):
    os.environ["MUJOCO_GL"] = _backend

# Imported by the first episode (`_control`), not with this module: every reading of the
# task specs imports each environment's module, and dm_control's import takes a quarter
# of a second. Whether it is there is known without importing it.
_IMPORT_ERROR: ImportError | None = (
    None
    if all(importlib.util.find_spec(name) for name in ("mujoco", "dm_control"))
    else ImportError("dm_control or mujoco is not installed")
)


@functools.cache
def _control() -> tuple[Any, Any, Any]:
    """MuJoCo, dm_control's suite and MuJoCo's rollout module, imported once."""
    try:
        import mujoco
        from dm_control import suite
        from mujoco import rollout
    except ImportError as error:  # found, but broken
        raise LmactError(INSTALL_HINT) from error
    return mujoco, suite, rollout


INSTALL_HINT = 'the cheetah task needs dm_control: pip install "lmact[control]"'

ACTION_SIZE = 6
# Decimals of the proprio observation and of an action's canonical spelling. Two keep a step
# near 150 tokens of the default local model (which spells digits one by one), so that one
# 100-step demonstration and a 100-step episode fit its 32k-token context; three do not.
DECIMALS = 2
CAMERAS = ("side", "back")
# Layouts of the proprio rendering: lmact's JSON at DECIMALS decimals (the default), or the
# LMAct reference code's str() of a dict of full-precision lists.
STATE_LAYOUTS: tuple[str, ...] = ("json", "dict")
# The task's reward: full at this forward speed (m/s) and above, falling linearly to 0 at 0.
RUN_SPEED = 10.0
# dm_control seeds the task with a numpy RandomState, which takes seeds below 2**32.
_MAX_SEED = 2**32 - 1
_MAX_IMAGE_HEIGHT = 480  # the model's offscreen buffer (MuJoCo's default 640x480)
_MAX_IMAGE_WIDTH = 640
_MIN_IMAGE_SIDE = 16
# The cross-entropy method's sampling spread at every step's start, and its lower bound, so
# that the search never collapses onto one sequence.
_INITIAL_STD = 0.5
_MIN_STD = 0.05

# A plain decimal number: optional sign, digits with an optional fraction (or a bare fraction).
# No exponents, so nothing like `1e400`, `inf`, `nan` or `0x1` gets in; ASCII digits only,
# since `float` also reads other scripts' digits and underscores.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
# Answers are a few dozen characters; anything far longer is not an action.
_MAX_ANSWER_CHARS = 400

_SPEED_SENSOR = "torso_subtreelinvel"


def format_number(value: float) -> str:
    """`value` with DECIMALS decimals, never as negative zero, so equal roundings read alike."""
    text = f"{value:.{DECIMALS}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_action(values: np.ndarray | list[float]) -> str:
    """The canonical spelling of an action: `[a, b, c, d, e, f]` with DECIMALS decimals."""
    return "[" + ", ".join(format_number(float(value)) for value in values) + "]"


def action_values(action: str) -> np.ndarray:
    """The six torques an action's spelling names (brackets optional), or InvalidActionError.

    The grammar: an optional `[` ... `]` pair around six plain decimal numbers separated by
    commas; whitespace is free around every number. Every number must lie in [-1, 1]: torques
    outside are not silently clipped, they are not actions.
    """
    text = strip_answer(action)
    if len(text) > _MAX_ANSWER_CHARS:
        raise InvalidActionError(f"an action is six numbers, got {len(text)} characters")
    if text.startswith("[") != text.endswith("]"):
        raise InvalidActionError(f"{action!r} has unbalanced brackets")
    if text.startswith("["):
        text = text[1:-1]
    fields = [field.strip() for field in text.split(",")]
    if len(fields) != ACTION_SIZE:
        raise InvalidActionError(
            f"{action!r} is not a list of {ACTION_SIZE} comma-separated numbers"
        )
    values = []
    for field in fields:
        if not _NUMBER.fullmatch(field):
            raise InvalidActionError(f"{field!r} in {action!r} is not a plain decimal number")
        value = float(field)
        if not -1.0 <= value <= 1.0:
            raise InvalidActionError(f"{field} in {action!r} is outside [-1, 1]")
        values.append(value)
    return np.array(values)


def run_reward(speed: np.ndarray) -> np.ndarray:
    """The cheetah run reward for forward speeds `speed`, computed as dm_control computes it.

    dm_control's `tolerance(speed, bounds=(10, inf), margin=10, sigmoid="linear")`, spelled
    out with the same floating-point operations, so planned returns equal the real ones.
    """
    distance = (RUN_SPEED - speed) / RUN_SPEED
    below = np.where(np.abs(distance) < 1, 1 - distance, 0.0)
    return np.where(speed >= RUN_SPEED, 1.0, below)


# The stand-in for the continuous action space: every vector with components in {-1, 0, 1}.
GRID_ACTIONS: tuple[str, ...] = tuple(
    format_action(list(values)) for values in itertools.product((-1, 0, 1), repeat=ACTION_SIZE)
)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Silence absl's warnings while dm_control compiles its model.

    The cheetah's XML uses an attribute newer MuJoCo deprecates; the warning says nothing a
    user of this task can act on, and would land in every run's output.
    """
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class Cheetah(Environment):
    """dm_control's cheetah `run`: reward `min(speed / 10, 1)` every step; never ends early.

    dm_control ends an episode after 1,000 steps (10 simulated seconds); the harness's step
    limit (the task's `max_steps`) usually ends it long before.

    Options:
        image_height, image_width: the size of the rgb/png rendering in pixels (16 to 480 and
            16 to 640, MuJoCo's offscreen buffer).
        camera: `side` (follows the cheetah from the side) or `back` (behind and above).
        state_layout: the proprio rendering: `json` (`{"position": [...], "velocity": [...]}`,
            two decimals) or `dict` (the LMAct reference code's Python dict of full-precision
            floats, `{'position': [...], 'velocity': [...]}`).
        planning_horizon: the expert plans action sequences of this many steps.
        planning_samples: sequences the expert rolls out per iteration of the cross-entropy
            method.
        planning_iterations: iterations of the cross-entropy method per step.
        planning_elites: the best sequences that the next iteration samples around.
    """

    observation_formats: ClassVar[tuple[str, ...]] = ("proprio", "rgb", "png")
    image_formats: ClassVar[frozenset[str]] = frozenset({"rgb", "png"})

    def __init__(
        self,
        *,
        image_height: int = 240,
        image_width: int = 320,
        camera: str = "side",
        state_layout: str = "json",
        planning_horizon: int = 20,
        planning_samples: int = 128,
        planning_iterations: int = 3,
        planning_elites: int = 12,
    ) -> None:
        if _IMPORT_ERROR is not None:
            raise LmactError(INSTALL_HINT) from _IMPORT_ERROR
        self.image_height = integer_option(
            "image_height", image_height, _MIN_IMAGE_SIDE, _MAX_IMAGE_HEIGHT
        )
        self.image_width = integer_option(
            "image_width", image_width, _MIN_IMAGE_SIDE, _MAX_IMAGE_WIDTH
        )
        if camera not in CAMERAS:
            raise ValueError(f"option camera must be one of {', '.join(CAMERAS)}, got {camera!r}")
        self.camera = camera
        self.state_layout = choice_option("state_layout", state_layout, STATE_LAYOUTS)
        self.planning_horizon = integer_option("planning_horizon", planning_horizon, 1, 1000)
        self.planning_samples = integer_option("planning_samples", planning_samples, 2, 100_000)
        self.planning_iterations = integer_option("planning_iterations", planning_iterations, 1)
        self.planning_elites = integer_option(
            "planning_elites", planning_elites, 1, self.planning_samples
        )
        # Loaded by the first reset, so that constructing an environment to check a task spec
        # costs nothing.
        self._env: Any = None
        self._rollout: Any = None
        self._rollout_data: Any = None
        self._speed_index = 0
        self._started = False
        self._done = False
        self._observation: dict[str, np.ndarray] = {}
        self._plan = np.zeros((self.planning_horizon, ACTION_SIZE))
        self._expert_rng = np.random.default_rng(0)

    # --- state -------------------------------------------------------------------------------

    @property
    def physics(self) -> Any:
        """The live dm_control physics (for tests and tools; stepping it bypasses the task)."""
        self._require_started()
        return self._env.physics

    def physics_state(self) -> np.ndarray:
        """The full physics state (time, positions, velocities, ...) as MuJoCo's state vector."""
        self._require_started()
        mujoco, _, _ = _control()
        model, data = self._env.physics.model.ptr, self._env.physics.data.ptr
        full = mujoco.mjtState.mjSTATE_FULLPHYSICS
        state = np.empty(mujoco.mj_stateSize(model, full))
        mujoco.mj_getState(model, data, state, full)
        return state

    def _load(self) -> None:
        mujoco, suite, rollout = _control()
        with _quiet_absl():
            self._env = suite.load("cheetah", "run")
        model = self._env.physics.model.ptr
        self._rollout = rollout.Rollout(nthread=0)  # plans on the calling thread
        self._rollout_data = mujoco.MjData(model)
        self._speed_index = int(model.sensor(_SPEED_SENSOR).adr[0])  # its x component

    def reset(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
            raise ValueError(f"seeds are integers from 0 to {_MAX_SEED}, got {seed!r}")
        if self._env is None:
            self._load()
        # Reseeding the task's generator in place gives exactly the start that loading the
        # task with random=seed gives, without compiling the model again.
        self._env.task.random.seed(seed)
        timestep = self._env.reset()
        self._observation = timestep.observation
        # Spawned like the other environments' (initial state, expert) streams; the initial
        # state comes from dm_control's own generator instead of the first.
        _, self._expert_rng = np.random.default_rng(np.random.SeedSequence(seed)).spawn(2)
        self._plan = np.zeros((self.planning_horizon, ACTION_SIZE))
        self._done = False
        self._started = True

    def step(self, action: str) -> StepOutcome:
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; call reset() to start another")
        values = action_values(action)
        if format_action(values) != action:
            raise ValueError(f"{action!r} is not an action's canonical spelling")
        timestep = self._env.step(values)
        self._observation = timestep.observation
        # The plan's first action is spent: the rest starts the next step's search.
        self._plan = np.concatenate([self._plan[1:], self._plan[-1:]])
        self._done = bool(timestep.last())
        self._ended_by = "time limit"  # dm_control's own limit, 1,000 steps
        return StepOutcome(reward=float(timestep.reward), done=self._done)

    def legal_actions(self) -> list[str]:
        """The 729 vectors with components in {-1, 0, 1}: a finite stand-in for [-1, 1]**6.

        Every action in [-1, 1]**6 is legal; these are the ones that can be listed (random
        actions are drawn from the whole space, see `random_action`).
        """
        return list(GRID_ACTIONS)

    # --- answers and the expert ----------------------------------------------------------------

    def parse_action(self, answer: str) -> str:
        return format_action(action_values(answer))

    def random_action(self, rng: np.random.Generator) -> str:
        """Six torques drawn uniformly from [-1, 1], as the reference code draws them (not
        from the 729-vector grid of `legal_actions`)."""
        return format_action(rng.uniform(-1.0, 1.0, size=ACTION_SIZE))

    def legal_actions_description(self) -> str:
        return (
            f"any {ACTION_SIZE} torques, each a decimal number from -1 to 1, written like "
            "[0.5, -1, 0, 0.25, 1, -0.3]"
        )

    def expert_action(self) -> str:
        """The first action of a plan found by the cross-entropy method on the exact simulator.

        Each iteration samples sequences around the current plan (the plan itself among them),
        rolls them all out from the current state and refits the plan to the best ones.
        """
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; there is no expert action")
        physics = self._env.physics
        initial_state = self.physics_state()
        warmstart = physics.data.qacc_warmstart.copy()
        shape = (self.planning_samples, self.planning_horizon, ACTION_SIZE)
        mean = self._plan
        spread = np.full(mean.shape, _INITIAL_STD)
        for _ in range(self.planning_iterations):
            samples = mean + spread * self._expert_rng.standard_normal(shape)
            samples[0] = mean
            samples = np.clip(samples, -1.0, 1.0)
            returns = self.planned_rewards(initial_state, warmstart, samples).sum(axis=1)
            # Stable, so that ties keep sample order and plans do not depend on the sort.
            elites = samples[np.argsort(-returns, kind="stable")[: self.planning_elites]]
            mean = elites.mean(axis=0)
            spread = np.maximum(elites.std(axis=0), _MIN_STD)
        self._plan = mean
        return format_action(mean[0])

    def planned_rewards(
        self, initial_state: np.ndarray, warmstart: np.ndarray, sequences: np.ndarray
    ) -> np.ndarray:
        """Each action sequence's rewards, step by step, as the task would pay them.

        The sequences are simulated on copies (the episode is untouched), one row of rewards
        per sequence. `initial_state` is a `physics_state()`, `warmstart` the solver's
        `qacc_warmstart` then (it seeds the constraint solver, so the rollout repeats the real
        step exactly), and `sequences` has shape (sequences, steps, 6).

        The speed sensor a step's rollout records is read before that step moves the
        simulation, so the reward for reaching state k is in row k: roll out one step more
        (its action changes nothing read here) and read rows 1 to horizon.
        """
        self._require_started()
        controls = np.concatenate([sequences, sequences[:, -1:]], axis=1)
        count = len(sequences)
        _, sensordata = self._rollout.rollout(
            self._env.physics.model.ptr,
            self._rollout_data,
            np.repeat(initial_state[None], count, axis=0),
            controls,
            initial_warmstart=np.repeat(warmstart[None], count, axis=0),
        )
        return run_reward(sensordata[:, 1:, self._speed_index])

    # --- renderings ---------------------------------------------------------------------------

    def render(self, fmt: str) -> Observation:
        self._require_started()
        if fmt == "proprio":
            return Observation(text=self._render_proprio())
        if fmt in self.image_formats:
            pixels = self._env.physics.render(
                height=self.image_height, width=self.image_width, camera_id=self.camera
            )
            return Observation(image_png=png_bytes(Image.fromarray(pixels)))
        raise ValueError(
            f"unknown observation format {fmt!r}; accepted: {', '.join(self.observation_formats)}"
        )

    def _render_proprio(self) -> str:
        """Joint positions (all but the horizontal one) and velocities, DECIMALS decimals."""
        if self.state_layout == "dict":
            # The reference code's text: every observation key in dm_control's order
            # (position, velocity), each value's floats at full precision (their repr).
            return str({key: value.tolist() for key, value in self._observation.items()})
        parts = []
        for key in ("position", "velocity"):
            numbers = ", ".join(format_number(float(value)) for value in self._observation[key])
            parts.append(f'"{key}": [{numbers}]')
        return "{" + ", ".join(parts) + "}"

    def close(self) -> None:
        """Free the simulator, its rendering contexts and the planner's rollout resources."""
        if self._rollout is not None:
            self._rollout.close()
        if self._env is not None:
            self._env.physics.free()
        self._env = self._rollout = self._rollout_data = None
        self._started = False
