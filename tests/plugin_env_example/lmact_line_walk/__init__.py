"""A third-party lmact environment: walk along a line of cells to the goal.

`txt` shows the line (`..A...G..`: A the agent, G the goal); `coords` the two positions.
Actions are `left` and `right`; walking off an end leaves the agent where it is. Reaching
the goal pays +1 and ends the episode.
"""

from typing import ClassVar

import numpy as np

from lmact.envs.base import Environment, Observation, StepOutcome, integer_option, named_action

ACTIONS = ("left", "right")


class LineWalk(Environment):
    observation_formats: ClassVar[tuple[str, ...]] = ("txt", "coords")

    def __init__(self, *, length: int = 9) -> None:  # keyword options: the spec's [options]
        self.length = integer_option("length", length, 2)
        self._agent = self._goal = 0

    def reset(self, seed: int) -> None:
        # Everything an episode does follows from its seed.
        agent, goal = np.random.default_rng(seed).choice(self.length, size=2, replace=False)
        self._agent, self._goal = int(agent), int(goal)
        self._started, self._done = True, False

    def step(self, action: str) -> StepOutcome:
        self._require_started()
        if self._done:
            raise ValueError("the episode is over")
        move = -1 if action == "left" else 1
        self._agent = min(max(self._agent + move, 0), self.length - 1)
        if self._agent == self._goal:
            self._done, self._ended_by = True, "goal reached"
            return StepOutcome(reward=1.0, done=True)
        return StepOutcome(reward=0.0, done=False)

    def legal_actions(self) -> list[str]:
        self._require_started()
        return [] if self._done else list(ACTIONS)

    def render(self, fmt: str) -> Observation:
        self._require_started()
        if fmt == "txt":
            cells = ["."] * self.length
            cells[self._goal], cells[self._agent] = "G", "A"
            return Observation(text="".join(cells))
        if fmt == "coords":
            return Observation(text=f"agent {self._agent}, goal {self._goal}")
        raise ValueError(f"unknown observation format {fmt!r}")

    def parse_action(self, answer: str) -> str:
        return named_action(answer, ACTIONS)  # InvalidActionError for anything else

    def expert_action(self) -> str:
        self._require_started()
        return "left" if self._goal < self._agent else "right"
