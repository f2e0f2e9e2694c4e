"""A K-armed Bernoulli bandit shown as coloured buttons: one step per episode (a round).

As in Krishnamurthy et al. ("Can large language models explore in-context?"): the best arm
pays 1 with probability 0.5 + gap/2, every other arm with 0.5 - gap/2. An episode is one
round: the agent presses one button and gets 1 or 0.

A seed holds two things: its quotient by `ROUND_STRIDE` is the instance seed, which draws
which button is best (and, with `buttons = "drawn"`, the buttons' colours and order); its
remainder is the round, whose reward draw it seeds. So the rounds of one instance are seeds
`instance * ROUND_STRIDE + round`.

`buttons = "fixed"` names the buttons as the paper does, always the same and in the same
order (blue, green, red, yellow, purple, …); `"drawn"` (the default of a spec that says
nothing, as lmact's first specs did) draws K of the 20 colours in a random order.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np

from lmact.envs.base import (
    Environment,
    IllegalActionError,
    InvalidActionError,
    Observation,
    StepOutcome,
    strip_answer,
)

ROUND_STRIDE = 2**16  # rounds per instance seed
BUTTON_NAMINGS = ("fixed", "drawn")
COLOURS = (
    "blue", "green", "red", "yellow", "purple", "orange", "pink", "brown", "grey", "cyan",
    "magenta", "teal", "olive", "navy", "maroon", "lime", "violet", "indigo", "gold", "silver",
)  # fmt: skip


class Bandit(Environment):
    observation_formats: ClassVar[tuple[str, ...]] = ("txt",)

    def __init__(self, arms: int = 4, gap: float = 0.5, buttons: str = "drawn") -> None:
        if isinstance(arms, bool) or not isinstance(arms, int) or not 2 <= arms <= len(COLOURS):
            raise ValueError(f"option arms must be a whole number in 2 … {len(COLOURS)}")
        if isinstance(gap, bool) or not isinstance(gap, int | float) or not 0 < gap <= 1:
            raise ValueError("option gap must be a number in (0, 1]")
        if buttons not in BUTTON_NAMINGS:
            raise ValueError(f"option buttons must be one of {', '.join(BUTTON_NAMINGS)}")
        self.arms = arms
        self.gap = float(gap)
        self.naming = buttons
        self.buttons: list[str] = []
        self.best = ""
        self._round_seed = 0

    def reset(self, seed: int) -> None:
        instance, _ = divmod(seed, ROUND_STRIDE)
        buttons, self.best = _instance_layout(instance, self.arms, self.naming)
        self.buttons = list(buttons)
        self._round_seed = seed
        self._done = False

    def success_probability(self, button: str) -> float:
        return 0.5 + self.gap / 2 if button == self.best else 0.5 - self.gap / 2

    def step(self, action: str) -> StepOutcome:
        # The round's own stream, drawn from once: made here, not at every reset.
        draw = np.random.default_rng([self._round_seed, 0x9E3779B9]).random()
        reward = float(draw < self.success_probability(action))
        self._done, self._ended_by = True, "pressed"
        return StepOutcome(reward=reward, done=True)

    def legal_actions(self) -> list[str]:
        return [] if self._done else list(self.buttons)

    def render(self, fmt: str) -> Observation:
        if fmt != "txt":
            raise ValueError(f"unknown observation format {fmt!r}")
        return Observation(text=f"Buttons: {', '.join(self.buttons)}.")

    def parse_action(self, answer: str) -> str:
        word = strip_answer(answer).lower().removesuffix(" button").strip()
        if word in self.buttons:
            if self._done:
                raise IllegalActionError("the round is over")
            return word
        if word in COLOURS:
            raise IllegalActionError(f"there is no {word} button")
        raise InvalidActionError("not a button colour")

    def expert_action(self) -> str:
        """The best arm: what an agent that knew the instance would press."""
        return self.best


@functools.lru_cache(maxsize=4096)
def _instance_layout(instance: int, arms: int, naming: str) -> tuple[tuple[str, ...], str]:
    """An instance's buttons, in order, and its best one: drawn once per instance, not at
    every round (a replicate's rounds share them)."""
    draw = np.random.default_rng([instance, 0xBA7D17])
    if naming == "fixed":
        buttons = COLOURS[:arms]
    else:
        chosen = draw.choice(len(COLOURS), size=arms, replace=False)
        buttons = tuple(COLOURS[int(i)] for i in chosen)
    return buttons, buttons[int(draw.integers(arms))]
