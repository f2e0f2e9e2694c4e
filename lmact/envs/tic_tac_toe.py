"""Tic-tac-toe against an opponent that plays uniformly random legal moves.

The agent plays whichever side is to move after a short random opening, so that episodes
start from varied positions and the agent plays both `x` and `o`. Cells are named by row
letter and column digit: `a1` is the top-left cell, `c3` the bottom-right one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmact.envs.base import (
    Environment,
    IllegalActionError,
    InvalidActionError,
    Observation,
    StepOutcome,
    choice_option,
    integer_option,
    strip_answer,
)
from lmact.envs.drawing import draw_centered, png_bytes

EMPTY = " "
MARKS = ("x", "o")
CELL_NAMES: tuple[str, ...] = tuple(f"{row}{column}" for row in "abc" for column in "123")
_CELL_INDEX = {name: index for index, name in enumerate(CELL_NAMES)}
_WINNING_LINES = (
    (0, 1, 2),
    (3, 4, 5),
    (6, 7, 8),
    (0, 3, 6),
    (1, 4, 7),
    (2, 5, 8),
    (0, 4, 8),
    (2, 4, 6),
)
_CELL_PATTERN = re.compile(r"[abc][123]", re.IGNORECASE)
# A win needs five plies, so an opening of at most four random plies never ends the game.
_MAX_OPENING_PLIES = 4
# The line between the txt rendering's rows: lmact's nine dashes (the default), or the LMAct
# reference code's ten, the only way its text differs from lmact's.
SEPARATORS: tuple[str, ...] = ("-" * 9, "-" * 10)
_MIN_IMAGE_SIZE = 32
_MAX_IMAGE_SIZE = 4096

Board = tuple[str, ...]


def other_mark(mark: str) -> str:
    return "o" if mark == "x" else "x"


def winner(board: Board) -> str | None:
    """The mark with three in a row on `board`, if any."""
    for first, second, third in _WINNING_LINES:
        if board[first] != EMPTY and board[first] == board[second] == board[third]:
            return board[first]
    return None


def empty_cells(board: Board) -> list[int]:
    return [index for index, cell in enumerate(board) if cell == EMPTY]


def _with_mark(board: Board, index: int, mark: str) -> Board:
    return (*board[:index], mark, *board[index + 1 :])


def move_value(board: Board, mark: str, index: int) -> int:
    """The game value for `mark` of playing `index` on an undecided `board`, both sides perfect.

    A win scores 1 + the number of cells still empty after it, so faster wins score higher and,
    through negation, slower losses score higher than faster ones. A draw scores 0.
    """
    after = _with_mark(board, index, mark)
    empty_after = after.count(EMPTY)
    if winner(after) == mark:
        return 1 + empty_after
    if empty_after == 0:
        return 0
    return -_negamax(after, other_mark(mark))


@functools.cache
def _negamax(board: Board, mark: str) -> int:
    """The value of undecided `board` for `mark`, who is to move."""
    return max(move_value(board, mark, index) for index in empty_cells(board))


class TicTacToe(Environment):
    """Tic-tac-toe; reward +1 for a win, -1 for a loss, 0 for a draw, at the end of the game.

    Options:
        coordinates: in the png rendering, label rows a-c at the left and columns 1-3 at the
            top, in a margin of `image_size // 8` pixels that is part of the image.
        image_size: the side of the square png rendering in pixels, margin included.
        opening_plies: the most uniformly random plies (0 to 4) played before the agent's first
            move; the actual number is uniform in 0..opening_plies.
        separator: the line between rows in the txt rendering: `---------` (nine dashes) or
            `----------` (ten, as the LMAct reference code writes it).
    """

    observation_formats: ClassVar[tuple[str, ...]] = ("txt", "png")
    image_formats: ClassVar[frozenset[str]] = frozenset({"png"})

    def __init__(
        self,
        *,
        coordinates: bool = False,
        image_size: int = 256,
        opening_plies: int = 2,
        separator: str = SEPARATORS[0],
    ) -> None:
        if not isinstance(coordinates, bool):
            raise ValueError(f"option coordinates must be true or false, got {coordinates!r}")
        self.coordinates = coordinates
        self.image_size = integer_option("image_size", image_size, _MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE)
        self.opening_plies = integer_option("opening_plies", opening_plies, 0, _MAX_OPENING_PLIES)
        self.separator = choice_option("separator", separator, SEPARATORS)
        self._started = False
        self._board: Board = (EMPTY,) * 9
        self._agent_mark = "x"
        self._done = False
        self._opponent_rng = np.random.default_rng(0)
        self._expert_rng = np.random.default_rng(0)

    # --- state -------------------------------------------------------------------------------

    @property
    def board(self) -> Board:
        """The nine cells in row-major order, each "x", "o" or " "."""
        self._require_started()
        return self._board

    @property
    def agent_mark(self) -> str:
        """The agent's mark, "x" or "o"."""
        self._require_started()
        return self._agent_mark

    def reset(self, seed: int) -> None:
        opening_rng, self._opponent_rng, self._expert_rng = np.random.default_rng(
            np.random.SeedSequence(seed)
        ).spawn(3)
        board: Board = (EMPTY,) * 9
        plies = int(opening_rng.integers(0, self.opening_plies + 1))
        mark = "x"
        for _ in range(plies):
            empties = empty_cells(board)
            board = _with_mark(board, empties[int(opening_rng.integers(len(empties)))], mark)
            mark = other_mark(mark)
        self._board = board
        self._agent_mark = mark
        self._done = False
        self._started = True

    def _set_position(self, board: Sequence[str], agent_mark: str, seed: int = 0) -> None:
        """Test hook: play `agent_mark` from `board` (9 cells, row-major), rngs from `seed`.

        The position is taken as given; it is done when someone has won or the board is full.
        """
        if len(board) != 9 or any(cell not in (*MARKS, EMPTY) for cell in board):
            raise ValueError(f"a board is 9 cells of 'x', 'o' or ' ', got {board!r}")
        if agent_mark not in MARKS:
            raise ValueError(f"agent_mark must be 'x' or 'o', got {agent_mark!r}")
        self.reset(seed)
        self._board = tuple(board)
        self._agent_mark = agent_mark
        self._done = winner(self._board) is not None or EMPTY not in self._board

    def step(self, action: str) -> StepOutcome:
        if action not in self.legal_actions():
            raise ValueError(f"illegal action {action!r}; legal: {', '.join(self.legal_actions())}")
        self._board = _with_mark(self._board, _CELL_INDEX[action], self._agent_mark)
        if winner(self._board) == self._agent_mark:
            return self._finish(1.0)
        if EMPTY not in self._board:
            return self._finish(0.0)

        empties = empty_cells(self._board)
        reply = empties[int(self._opponent_rng.integers(len(empties)))]
        self._board = _with_mark(self._board, reply, other_mark(self._agent_mark))
        if winner(self._board) is not None:
            return self._finish(-1.0)
        if EMPTY not in self._board:
            return self._finish(0.0)
        return StepOutcome(reward=0.0, done=False)

    def _finish(self, reward: float) -> StepOutcome:
        self._done = True
        self._ended_by = {1.0: "win", -1.0: "loss"}.get(reward, "draw")
        return StepOutcome(reward=reward, done=True)

    def legal_actions(self) -> list[str]:
        if self._done:
            return []
        return [CELL_NAMES[index] for index in empty_cells(self._board)]

    # --- answers and the expert ----------------------------------------------------------------

    def parse_action(self, answer: str) -> str:
        text = strip_answer(answer)
        if not _CELL_PATTERN.fullmatch(text):
            raise InvalidActionError(f"{answer!r} is not a cell a1-c3")
        cell = text.lower()
        if cell not in self.legal_actions():
            raise IllegalActionError(f"cell {cell} is not free")
        return cell

    def expert_action(self) -> str:
        """A minimax-optimal move for the agent, ties broken at random by the expert's rng."""
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; there is no expert action")
        values = {
            index: move_value(self._board, self._agent_mark, index)
            for index in empty_cells(self._board)
        }
        best_value = max(values.values())
        best = [index for index, value in values.items() if value == best_value]
        return CELL_NAMES[best[int(self._expert_rng.integers(len(best)))]]

    # --- renderings ---------------------------------------------------------------------------

    def render(self, fmt: str) -> Observation:
        if fmt == "txt":
            return Observation(text=self._render_text())
        if fmt == "png":
            return Observation(image_png=self._render_png())
        raise ValueError(f"unknown observation format {fmt!r}; accepted: txt, png")

    def _render_text(self) -> str:
        rows = [" | ".join(self._board[row * 3 : row * 3 + 3]) for row in range(3)]
        return f"\n{self.separator}\n".join(rows)

    def _render_png(self) -> bytes:
        size = self.image_size
        margin = size // 8 if self.coordinates else 0
        cell = (size - margin) / 3
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)

        grid_width = max(1, round(size / 64))
        for line in (1, 2):
            offset = round(margin + line * cell)
            draw.line([(offset, margin), (offset, size - 1)], fill="black", width=grid_width)
            draw.line([(margin, offset), (size - 1, offset)], fill="black", width=grid_width)

        mark_width = max(1, round(size / 40))
        padding = cell * 0.22
        for index, mark in enumerate(self._board):
            if mark == EMPTY:
                continue
            row, column = divmod(index, 3)
            left = margin + column * cell + padding
            top = margin + row * cell + padding
            right = margin + (column + 1) * cell - padding
            bottom = margin + (row + 1) * cell - padding
            if mark == "x":
                draw.line([(left, top), (right, bottom)], fill="black", width=mark_width)
                draw.line([(left, bottom), (right, top)], fill="black", width=mark_width)
            else:
                draw.ellipse([(left, top), (right, bottom)], outline="black", width=mark_width)

        if self.coordinates:
            font = ImageFont.load_default(size=max(8, margin * 0.6))
            for line, (letter, digit) in enumerate(zip("abc", "123", strict=True)):
                center = margin + (line + 0.5) * cell
                draw_centered(draw, letter, (margin / 2, center), font)
                draw_centered(draw, digit, (center, margin / 2), font)

        return png_bytes(image)
