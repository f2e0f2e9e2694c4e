"""Atari Phoenix through gymnasium and ale-py, with a planning expert on emulator snapshots.

The agent sees the 210x160 screen and names one of Phoenix's eight joystick actions. The reward
of a step is the game score it gained; the episode ends when the game is over. Episodes start
from the seeded emulator after a seeded number of NOOP steps, as Atari evaluations do, since
the emulator is otherwise deterministic and every episode would open alike.

The expert plans on snapshots of the emulator: it tries action sequences from the current
state, scores them by the reward they collect, penalizes a sequence in which the ship gets hit,
and plays the first action of the best. The planning never changes the episode: the emulator is
restored to the real state afterwards.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from lmact.envs.base import (
    Environment,
    Observation,
    StepOutcome,
    integer_option,
    named_action,
)
from lmact.envs.drawing import png_bytes
from lmact.errors import LmactError

# Phoenix's minimal action set, in the emulator's order (checked against the game at start).
ACTIONS: tuple[str, ...] = (
    "NOOP",
    "FIRE",
    "RIGHT",
    "LEFT",
    "DOWN",
    "RIGHTFIRE",
    "LEFTFIRE",
    "DOWNFIRE",
)
_ACTION_INDEX = {name: index for index, name in enumerate(ACTIONS)}
GAME_ID = "ALE/Phoenix-v5"
# The probability that the emulator repeats the previous action instead of the new one, when
# sticky actions are on (the value of Machado et al. 2018 and of the v5 environments).
STICKY_ACTION_PROBABILITY = 0.25
SCREEN_HEIGHT, SCREEN_WIDTH = 210, 160
_MAX_FRAME_SKIP = 16
_MAX_NOOP_STARTS = 1000
_MAX_FRAME_STACK = 8

# RAM byte 15 rises above 128 the moment the ship is hit and stays there while it explodes;
# the life counter drops only some 40 agent steps later, too late for a planner to react.
HIT_RAM_INDEX = 15
HIT_RAM_THRESHOLD = 128

# The planner: this many candidate sequences of this many agent steps per decision. When no
# candidate scores, the horizon grows by _HORIZON_GROWTH so that the search reaches the next
# enemies. A hit costs far more than any reward a horizon can hold.
PLAN_SEQUENCES = 16
PLAN_HORIZON = 20
_HORIZON_GROWTH = 4
_HIT_PENALTY = 100_000.0
# Of the candidates besides the kept plan, this many are mutations of it; the rest are fresh.
_MUTATIONS = 7
_MUTATION_RATE = 0.25

_INSTALL_HINT = 'the phoenix task needs gymnasium and ale-py: pip install "lmact[atari]"'


def _make_gymnasium_env(frame_skip: int, repeat_action_probability: float) -> Any:
    """The gymnasium Phoenix environment, or a clear error when the atari extra is missing."""
    try:
        import ale_py
        import gymnasium
    except ImportError as error:
        raise LmactError(_INSTALL_HINT) from error
    # The emulator's banner and ROM notes would land in every command's stderr.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    gymnasium.register_envs(ale_py)
    return gymnasium.make(
        GAME_ID,
        obs_type="rgb",
        frameskip=frame_skip,
        repeat_action_probability=repeat_action_probability,
        full_action_space=False,
    )


def ship_is_hit(ram: np.ndarray) -> bool:
    """Whether the ship has been hit (and is exploding), read from the console RAM."""
    return int(ram[HIT_RAM_INDEX]) > HIT_RAM_THRESHOLD


class Phoenix(Environment):
    """Atari Phoenix; the reward of a step is the game score it gained.

    Options:
        frame_skip: emulator frames per agent step, the action repeated on each (1 to 16).
        sticky_actions: when true, the emulator repeats the previous action instead of the new
            one with probability 0.25 on every frame (Machado et al. 2018); off by default.
        max_noop_starts: the most NOOP steps played after the reset; the actual number is
            uniform in 0..max_noop_starts, drawn from the seed (0 to 1000).
        frame_stack: the rgb/png rendering shows the last `frame_stack` screens side by side,
            oldest at the left (1 to 8); at the start of an episode the first screen repeats.
    """

    observation_formats: ClassVar[tuple[str, ...]] = ("rgb", "png")
    image_formats: ClassVar[frozenset[str]] = frozenset({"rgb", "png"})

    def __init__(
        self,
        *,
        frame_skip: int = 4,
        sticky_actions: bool = False,
        max_noop_starts: int = 30,
        frame_stack: int = 1,
    ) -> None:
        self.frame_skip = integer_option("frame_skip", frame_skip, 1, _MAX_FRAME_SKIP)
        if not isinstance(sticky_actions, bool):
            raise ValueError(f"option sticky_actions must be true or false, got {sticky_actions!r}")
        self.sticky_actions = sticky_actions
        self.max_noop_starts = integer_option(
            "max_noop_starts", max_noop_starts, 0, _MAX_NOOP_STARTS
        )
        self.frame_stack = integer_option("frame_stack", frame_stack, 1, _MAX_FRAME_STACK)
        self.repeat_action_probability = STICKY_ACTION_PROBABILITY if sticky_actions else 0.0
        # One emulator for the life of the environment: creating it costs far more than a reset.
        self._gym_env = _make_gymnasium_env(self.frame_skip, self.repeat_action_probability)
        meanings = tuple(self._gym_env.unwrapped.get_action_meanings())
        if meanings != ACTIONS:
            raise RuntimeError(f"unexpected Phoenix action set {meanings}; expected {ACTIONS}")
        self._ale = self._gym_env.unwrapped.ale
        self._action_ids = list(self._ale.getMinimalActionSet())
        self._started = False
        self._done = False
        self._frames: collections.deque[np.ndarray] = collections.deque(maxlen=self.frame_stack)
        self._expert_rng = np.random.default_rng(0)
        self._plan: list[int] = []

    # --- state -------------------------------------------------------------------------------

    @property
    def lives(self) -> int:
        self._require_started()
        return int(self._ale.lives())

    def ram(self) -> np.ndarray:
        """A copy of the console's 128 bytes of RAM now."""
        self._require_started()
        return np.array(self._ale.getRAM(), dtype=np.uint8)

    def ship_is_hit(self) -> bool:
        """Whether the ship is hit now (long before the life counter shows it)."""
        return ship_is_hit(self.ram())

    def frame(self) -> np.ndarray:
        """The latest screen, a 210x160x3 uint8 array."""
        self._require_started()
        return self._frames[-1].copy()

    def reset(self, seed: int) -> None:
        if self._gym_env is None:
            raise RuntimeError("the environment is closed")
        # Spawned like the other environments' (initial state, expert) streams.
        start_rng, self._expert_rng = np.random.default_rng(np.random.SeedSequence(seed)).spawn(2)
        observation, _ = self._gym_env.reset(seed=seed)
        self._done = False
        noops = int(start_rng.integers(0, self.max_noop_starts, endpoint=True))
        for _ in range(noops):
            observation, _, terminated, truncated, _ = self._gym_env.step(_ACTION_INDEX["NOOP"])
            if terminated or truncated:  # never within 1000 steps of a new game, but be safe
                observation, _ = self._gym_env.reset()
        self._frames.clear()
        for _ in range(self.frame_stack):
            self._frames.append(np.array(observation, dtype=np.uint8))
        self._plan = []
        self._started = True

    def step(self, action: str) -> StepOutcome:
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; call reset() to start another")
        if action not in _ACTION_INDEX:
            raise ValueError(f"unknown action {action!r}; legal: {', '.join(ACTIONS)}")
        observation, reward, terminated, truncated, _ = self._gym_env.step(_ACTION_INDEX[action])
        self._frames.append(np.array(observation, dtype=np.uint8))
        self._done = bool(terminated or truncated)
        self._ended_by = "game over" if terminated else "emulator time limit"
        return StepOutcome(reward=float(reward), done=self._done)

    def legal_actions(self) -> list[str]:
        # Every joystick action is always possible in an Atari game.
        return list(ACTIONS)

    # --- answers and the expert ----------------------------------------------------------------

    def parse_action(self, answer: str) -> str:
        return named_action(answer, ACTIONS)

    def expert_action(self) -> str:
        """The first action of the best sequence a short random-shooting search finds.

        Candidates are the best sequence of the previous decision (shifted by one step),
        mutations of it, and fresh random sequences; each is played from a snapshot of the
        emulator and scored by `_rollout_score`. When no candidate collects any reward, the
        search runs again over horizons `_HORIZON_GROWTH` times longer.
        """
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; there is no expert action")
        # With sticky actions, the snapshot includes the emulator's RNG so that every rollout,
        # and the restore afterwards, replays exactly.
        root = self._ale.cloneState(include_rng=True)
        try:
            horizon = PLAN_HORIZON
            best, best_score = self._search(root, horizon)
            if best_score == 0.0:
                horizon *= _HORIZON_GROWTH
                longer, longer_score = self._search(root, horizon)
                if longer_score > best_score:
                    best = longer
        finally:
            self._ale.restoreState(root)
        self._plan = best[1:]
        return ACTIONS[best[0]]

    def _search(self, root: Any, horizon: int) -> tuple[list[int], float]:
        """The best candidate sequence of `horizon` steps from `root`, and its score."""
        kept = self._plan[:horizon]
        kept += self._random_actions(horizon - len(kept))
        candidates = [kept]
        for _ in range(_MUTATIONS):
            mutated = list(kept)
            for index in np.flatnonzero(self._expert_rng.random(horizon) < _MUTATION_RATE):
                mutated[index] = int(self._expert_rng.integers(len(ACTIONS)))
            candidates.append(mutated)
        while len(candidates) < PLAN_SEQUENCES:
            candidates.append(self._random_actions(horizon))
        scores = [self._rollout_score(root, candidate) for candidate in candidates]
        # The first best wins ties, so the kept plan stays unless something beats it.
        best_index = int(np.argmax(scores))
        return candidates[best_index], scores[best_index]

    def _random_actions(self, count: int) -> list[int]:
        return [int(action) for action in self._expert_rng.integers(len(ACTIONS), size=count)]

    def _rollout_score(self, root: Any, actions: Sequence[int]) -> float:
        """The reward `actions` collect from `root`, less a penalty if the ship gets hit.

        The penalty is larger the sooner the hit comes, so that when every candidate runs into
        a hit the planner still prefers the one that puts it off longest. A hit under way at
        `root` (the ship already exploding) is not the candidates' doing and costs nothing.
        """
        self._ale.restoreState(root)
        already_hit = ship_is_hit(self._ale.getRAM())
        score = 0.0
        for step, action in enumerate(actions):
            action_id = self._action_ids[action]
            for _ in range(self.frame_skip):
                score += self._ale.act(action_id)
            hit = ship_is_hit(self._ale.getRAM())
            if hit and not already_hit:
                return score - _HIT_PENALTY * (len(actions) - step) / len(actions)
            already_hit = hit
            if self._ale.game_over():
                break
        return score

    # --- renderings ---------------------------------------------------------------------------

    def render(self, fmt: str) -> Observation:
        self._require_started()
        if fmt in self.image_formats:
            # Both formats are the screen as PNG; "rgb" names the content, as in grid world.
            return Observation(image_png=png_bytes(Image.fromarray(np.hstack(self._frames))))
        raise ValueError(
            f"unknown observation format {fmt!r}; accepted: {', '.join(self.observation_formats)}"
        )

    def close(self) -> None:
        """Release the emulator: gymnasium's close() keeps the ALE alive, and one still alive at
        interpreter exit is reported as leaked by ale-py's bindings, on stderr."""
        if self._gym_env is not None:
            self._gym_env.close()
        self._gym_env = self._ale = None
        self._started = False
