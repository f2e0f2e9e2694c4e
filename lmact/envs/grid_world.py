"""A grid world walled at its border: the agent walks to a target.

Positions are (row, column) with row 0 at the top. The agent moves one cell per action;
moving into a wall leaves it in place. Reaching the target gives reward +1 and ends the episode.
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

from lmact.envs.base import (
    Environment,
    Observation,
    StepOutcome,
    choice_option,
    integer_option,
    named_action,
)
from lmact.envs.drawing import png_bytes

Position = tuple[int, int]

ACTIONS: tuple[str, ...] = ("left", "right", "up", "down")
_MOVES: dict[str, Position] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
_MIN_SIZE = 4
_MIN_CELL_PIXELS = 8
_MAX_CELL_PIXELS = 256
# Layouts of the txt and coords renderings: lmact's own first (the default), then the LMAct
# reference code's, for runs that must show a model exactly what the paper's models saw.
TEXT_LAYOUTS: tuple[str, ...] = ("words", "boxed")
COORDS_LAYOUTS: tuple[str, ...] = ("json", "dict")
# The reference code's boxed table centres each cell's word in this many characters.
_BOXED_CELL_WIDTH = 8
# Sprites are drawn this many times larger and scaled down, which smooths their edges.
_SUPERSAMPLING = 4

_FLOOR_COLOR = (222, 205, 168)
_GROUT_COLOR = (200, 182, 145)
_MORTAR_COLOR = (88, 86, 84)
_BRICK_COLOR = (150, 148, 152)


def _moved(position: Position, action: str) -> Position:
    row_step, column_step = _MOVES[action]
    return (position[0] + row_step, position[1] + column_step)


class GridWorld(Environment):
    """Walk to the target on a `size` x `size` grid whose border cells are walls.

    Options:
        size: the side of the grid in cells, border walls included (at least 4).
        cell_pixels: the side of one cell in the rgb/png rendering (8 to 256).
        text_layout: the txt rendering: `words` (a row of space-separated words a line) or
            `boxed` (the LMAct reference code's table: each word centred in 8 characters
            between `|`, a line of dashes above the first row and below every row).
        coords_layout: the coords rendering: `json` (`{"player": [r, c], "target": [r, c]}`)
            or `dict` (the reference code's Python dict, `{'player': [r, c], ...}`).
    """

    observation_formats: ClassVar[tuple[str, ...]] = ("txt", "rgb", "png", "coords")
    image_formats: ClassVar[frozenset[str]] = frozenset({"rgb", "png"})

    def __init__(
        self,
        *,
        size: int = 12,
        cell_pixels: int = 16,
        text_layout: str = "words",
        coords_layout: str = "json",
    ) -> None:
        self.size = integer_option("size", size, _MIN_SIZE)
        self.cell_pixels = integer_option(
            "cell_pixels", cell_pixels, _MIN_CELL_PIXELS, _MAX_CELL_PIXELS
        )
        self.text_layout = choice_option("text_layout", text_layout, TEXT_LAYOUTS)
        self.coords_layout = choice_option("coords_layout", coords_layout, COORDS_LAYOUTS)
        self._border_walls = frozenset(
            (row, column)
            for row in range(self.size)
            for column in range(self.size)
            if row in (0, self.size - 1) or column in (0, self.size - 1)
        )
        self._walls = self._border_walls
        self._started = False
        self._player: Position = (1, 1)
        self._target: Position = (1, 2)
        self._done = False
        self._expert_rng = np.random.default_rng(0)

    # --- state -------------------------------------------------------------------------------

    @property
    def player(self) -> Position:
        self._require_started()
        return self._player

    @property
    def target(self) -> Position:
        self._require_started()
        return self._target

    @property
    def walls(self) -> frozenset[Position]:
        return self._walls

    def _free_cells(self) -> list[Position]:
        return [
            (row, column)
            for row in range(self.size)
            for column in range(self.size)
            if (row, column) not in self._walls
        ]

    def reset(self, seed: int) -> None:
        # Spawned like tic-tac-toe's (initial state, expert) so the same seed means the same
        # kind of stream in every environment.
        initial_rng, self._expert_rng = np.random.default_rng(np.random.SeedSequence(seed)).spawn(2)
        self._walls = self._border_walls  # drops any walls a test hook added
        free = self._free_cells()
        player_index, target_index = initial_rng.choice(len(free), size=2, replace=False)
        self._player = free[int(player_index)]
        self._target = free[int(target_index)]
        self._done = False
        self._started = True

    def _set_state(
        self,
        player: Position,
        target: Position,
        extra_walls: Iterable[Position] = (),
        seed: int = 0,
    ) -> None:
        """Test hook: place the player and target and add interior walls; rngs from `seed`."""
        self.reset(seed)
        self._walls = self._walls | frozenset(extra_walls)
        for name, position in (("player", player), ("target", target)):
            row, column = position
            if not (0 <= row < self.size and 0 <= column < self.size) or position in self._walls:
                raise ValueError(f"{name} {position} is not a free cell")
        if player == target:
            raise ValueError("player and target must differ")
        self._player = (int(player[0]), int(player[1]))
        self._target = (int(target[0]), int(target[1]))

    def step(self, action: str) -> StepOutcome:
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; call reset() to start another")
        if action not in _MOVES:
            raise ValueError(f"unknown action {action!r}; legal: {', '.join(ACTIONS)}")
        destination = _moved(self._player, action)
        if destination not in self._walls:
            self._player = destination
        if self._player == self._target:
            self._done = True
            self._ended_by = "target reached"
            return StepOutcome(reward=1.0, done=True)
        return StepOutcome(reward=0.0, done=False)

    def legal_actions(self) -> list[str]:
        return list(ACTIONS)

    # --- answers and the expert ----------------------------------------------------------------

    def parse_action(self, answer: str) -> str:
        return named_action(answer, ACTIONS)

    def expert_action(self) -> str:
        """A first move of a shortest path to the target, ties broken by the expert's rng."""
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; there is no expert action")
        distances = self._distances_to_target()
        if self._player not in distances:
            raise ValueError(f"the target {self._target} cannot be reached from {self._player}")
        # A move is on a shortest path exactly when it gets one step closer to the target.
        wanted = distances[self._player] - 1
        best = [
            action for action in ACTIONS if distances.get(_moved(self._player, action)) == wanted
        ]
        return best[int(self._expert_rng.integers(len(best)))]

    def _distances_to_target(self) -> dict[Position, int]:
        """Steps from every reachable free cell to the target, by breadth-first search.

        Moves are reversible, so searching outward from the target gives every cell's distance
        (the player's included) in one pass.
        """
        distances = {self._target: 0}
        frontier = collections.deque([self._target])
        while frontier:
            position = frontier.popleft()
            for action in ACTIONS:
                neighbour = _moved(position, action)
                row, column = neighbour
                if (
                    0 <= row < self.size
                    and 0 <= column < self.size
                    and neighbour not in self._walls
                    and neighbour not in distances
                ):
                    distances[neighbour] = distances[position] + 1
                    frontier.append(neighbour)
        return distances

    # --- renderings ---------------------------------------------------------------------------

    def render(self, fmt: str) -> Observation:
        if fmt == "txt":
            return Observation(text=self._render_text())
        if fmt == "coords":
            return Observation(text=self._render_coords())
        if fmt in self.image_formats:
            return Observation(image_png=self._render_png())
        raise ValueError(
            f"unknown observation format {fmt!r}; accepted: {', '.join(self.observation_formats)}"
        )

    def _cell_kind(self, position: Position) -> str:
        if position in self._walls:
            return "wall"
        if position == self._player:
            return "player"
        if position == self._target:
            return "target"
        return "tile"

    def _render_text(self) -> str:
        rows = [
            [self._cell_kind((row, column)) for column in range(self.size)]
            for row in range(self.size)
        ]
        if self.text_layout == "words":
            return "\n".join(" ".join(words) for words in rows)
        lines = [
            "|" + "".join(word.center(_BOXED_CELL_WIDTH) + "|" for word in words) for words in rows
        ]
        rule = "-" * len(lines[0])
        return "\n".join([rule, *(part for line in lines for part in (line, rule))])

    def _render_coords(self) -> str:
        # Both layouts give (row, column) from the top-left, as the reference's numpy [y, x];
        # they differ only in quoting (JSON's double quotes, Python's str() of a dict).
        state = {"player": list(self._player), "target": list(self._target)}
        return json.dumps(state) if self.coords_layout == "json" else str(state)

    def _render_png(self) -> bytes:
        sprites = _sprites(self.cell_pixels)
        side = self.size * self.cell_pixels
        image = Image.new("RGB", (side, side))
        for row in range(self.size):
            for column in range(self.size):
                sprite = sprites[self._cell_kind((row, column))]
                image.paste(sprite, (column * self.cell_pixels, row * self.cell_pixels))
        return png_bytes(image)


# --- sprites -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _sprites(cell_pixels: int) -> dict[str, Image.Image]:
    """The four cell sprites at `cell_pixels`, drawn once per size."""
    drawers = {
        "wall": _draw_wall,
        "tile": _draw_floor,
        "player": _draw_player,
        "target": _draw_apple,
    }
    big = cell_pixels * _SUPERSAMPLING
    sprites = {}
    for kind, drawer in drawers.items():
        image = Image.new("RGB", (big, big))
        drawer(ImageDraw.Draw(image), big)
        sprites[kind] = image.resize((cell_pixels, cell_pixels), Image.Resampling.LANCZOS)
    return sprites


def _draw_floor(draw: ImageDraw.ImageDraw, side: int) -> None:
    # A thin grout line at the bottom and right edges makes adjacent tiles read as a floor.
    draw.rectangle([(0, 0), (side - 1, side - 1)], fill=_GROUT_COLOR)
    grout = max(1, side // 24)
    draw.rectangle([(0, 0), (side - 1 - grout, side - 1 - grout)], fill=_FLOOR_COLOR)


def _draw_wall(draw: ImageDraw.ImageDraw, side: int) -> None:
    """Four courses of stone bricks in running bond, on mortar."""
    draw.rectangle([(0, 0), (side - 1, side - 1)], fill=_MORTAR_COLOR)
    courses = 4
    brick_height = side / courses
    brick_width = side / 2
    mortar = max(1, side // 16)
    for course in range(courses):
        top = course * brick_height
        # Alternate courses shift by half a brick, as in a real wall.
        shift = brick_width / 2 if course % 2 else 0.0
        left = -shift
        while left < side:
            draw.rectangle(
                [(left + mortar, top + mortar), (left + brick_width - 1, top + brick_height - 1)],
                fill=_BRICK_COLOR,
            )
            left += brick_width


def _draw_player(draw: ImageDraw.ImageDraw, side: int) -> None:
    """A little figure with a round head, a blue shirt and dark trousers, on the floor."""
    _draw_floor(draw, side)
    # Bold proportions, so that the figure still reads at 8-16 pixels a cell.
    limb = max(1, round(side * 0.13))
    skin = (240, 195, 150)
    shirt = (30, 80, 210)
    trousers = (40, 40, 60)
    outline = (70, 45, 30)

    def at(x: float, y: float) -> tuple[float, float]:
        return (x * side, y * side)

    draw.line([at(0.41, 0.66), at(0.36, 0.95)], fill=trousers, width=limb)
    draw.line([at(0.59, 0.66), at(0.64, 0.95)], fill=trousers, width=limb)
    draw.line([at(0.32, 0.42), at(0.16, 0.64)], fill=shirt, width=limb)
    draw.line([at(0.68, 0.42), at(0.84, 0.64)], fill=shirt, width=limb)
    draw.rounded_rectangle([at(0.3, 0.34), at(0.7, 0.7)], radius=side * 0.08, fill=shirt)
    draw.ellipse(
        [at(0.33, 0.03), at(0.67, 0.37)], fill=skin, outline=outline, width=max(1, side // 24)
    )


def _draw_apple(draw: ImageDraw.ImageDraw, side: int) -> None:
    """A red apple with a brown stem and a green leaf, lying on the floor."""
    _draw_floor(draw, side)

    def at(x: float, y: float) -> tuple[float, float]:
        return (x * side, y * side)

    draw.line([at(0.5, 0.35), at(0.56, 0.1)], fill=(110, 70, 30), width=max(1, side // 14))
    draw.ellipse([at(0.57, 0.1), at(0.8, 0.24)], fill=(60, 160, 50))
    draw.ellipse([at(0.16, 0.28), at(0.84, 0.9)], fill=(205, 30, 35))
    draw.ellipse([at(0.3, 0.38), at(0.42, 0.52)], fill=(245, 130, 130))
