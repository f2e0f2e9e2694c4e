"""Crossword: fill a 7x7 crossword one word at a time, from its clues.

Each episode is one puzzle of a committed pool (`tasks/data/crossword_puzzles.jsonl`, made
by `scripts/make_crosswords.py` from WordNet). An action names a clue and a word, `A3: WORD`
(across 3) or `D1: WORD` (down 1). The word list the answers are checked against
(`tasks/data/crossword_words.txt`) is the generator's whole vocabulary, so that a legal action
is any known word of the clue's length, not only the answers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmact.envs.base import (
    Environment,
    IllegalActionError,
    InvalidActionError,
    Observation,
    StepOutcome,
    file_option,
    integer_option,
    pool_entry,
    strip_answer,
)
from lmact.envs.crossword_generator import ACROSS, BLACK, ClueEntry, Puzzle, read_puzzles
from lmact.envs.drawing import Font, draw_centered, png_bytes

# A clue id (direction letter and number), a colon, and a word of ASCII letters. The classes
# are spelt out rather than matched case-insensitively, since IGNORECASE would also let
# non-ASCII look-alikes (the Kelvin sign, a long s) through as letters.
_ACTION = re.compile(r"([AaDd])([0-9]{1,3})\s*:\s*([A-Za-z]+)", re.ASCII)
_WORD = re.compile(r"[A-Z]+")
_MIN_CELL_PIXELS = 16
_MAX_CELL_PIXELS = 128
# The png's clue column is this many cells wide.
_CLUE_COLUMN_CELLS = 12
_TEXT_CELL_WIDTH = 3
_TEXT_BLACK = "#" * _TEXT_CELL_WIDTH


def split_action(action: str) -> tuple[str, str]:
    """The canonical clue id (`A3`) and uppercase word of an action in any case and spacing.

    Raises InvalidActionError when `action` is not of the form `A3: WORD` / `D1: WORD`.
    """
    match = _ACTION.fullmatch(strip_answer(action))
    if match is None:
        raise InvalidActionError(f"{action!r} is not a clue and a word, like 'A1: WORD'")
    direction, number, word = match.groups()
    return f"{direction.upper()}{int(number)}", word.upper()


@dataclass(frozen=True)
class _TaskData:
    tests: tuple[Puzzle, ...]
    demonstrations: tuple[Puzzle, ...]
    words: frozenset[str]
    words_by_length: dict[int, tuple[str, ...]]


@functools.cache
def _load_task_data(puzzles_path: Path, words_path: Path) -> _TaskData:
    """The puzzle pool and word list, read once per process."""
    lines = words_path.read_text(encoding="utf-8").splitlines()
    bad = [line for line in lines if not _WORD.fullmatch(line)]
    if bad:
        raise ValueError(f"{words_path}: not uppercase words: {bad[:3]}")
    words = frozenset(lines)
    by_length: dict[int, list[str]] = {}
    for word in sorted(words):
        by_length.setdefault(len(word), []).append(word)

    pool = read_puzzles(puzzles_path)
    unknown = sorted({c.answer for _, p in pool for c in p.clues} - words)
    if unknown:
        raise ValueError(f"{puzzles_path}: answers missing from {words_path}: {unknown[:5]}")
    splits = {split for split, _ in pool} - {"test", "demonstration"}
    if splits:
        raise ValueError(f"{puzzles_path}: unknown splits {sorted(splits)}")
    return _TaskData(
        tests=tuple(puzzle for split, puzzle in pool if split == "test"),
        demonstrations=tuple(puzzle for split, puzzle in pool if split == "demonstration"),
        words=words,
        words_by_length={length: tuple(group) for length, group in by_length.items()},
    )


class Crossword(Environment):
    """Solve a crossword: +1 for each new correct word; done when every clue is solved.

    Rewards follow LMAct: a clue's answer while it is unsolved scores +1 and fills in its
    letters. A word of the clue's length that is not its answer (or a solved clue's answer
    again) scores 0 and the episode goes on. Anything else (an unknown clue id, a word of the
    wrong length) scores -1 and ends the episode. Through the harness only legal actions reach
    `step` (an illegal answer is replaced by a random legal action, and legal actions are
    always of the right length for an unsolved clue), so the -1 ending happens only when
    `step` is called directly.

    Options:
        puzzles_file: the puzzle pool (JSON lines), absolute or relative to the tasks/ folder.
            Puzzles whose `split` is "test" serve test seeds, the others demonstration seeds.
        words_file: the word list (one uppercase word per line) that legal answers come from.
        cell_pixels: the side of one grid cell in the png rendering (16 to 128); the clue
            list beside the grid scales with it.
    """

    observation_formats: ClassVar[tuple[str, ...]] = ("txt", "png")
    image_formats: ClassVar[frozenset[str]] = frozenset({"png"})

    def __init__(
        self,
        *,
        puzzles_file: str = "data/crossword_puzzles.jsonl",
        words_file: str = "data/crossword_words.txt",
        cell_pixels: int = 48,
    ) -> None:
        self.cell_pixels = integer_option(
            "cell_pixels", cell_pixels, _MIN_CELL_PIXELS, _MAX_CELL_PIXELS
        )
        self._data = _load_task_data(
            file_option("puzzles_file", puzzles_file), file_option("words_file", words_file)
        )
        self._started = False
        self._puzzle = Puzzle(grid=(), clues=())
        self._clues_by_id: dict[str, ClueEntry] = {}
        self._solved: set[str] = set()
        self._done = False
        self._expert_rng = np.random.default_rng(0)
        # Legal actions per (clue id, length), which repeat across puzzles.
        self._clue_actions: dict[tuple[str, int], tuple[str, ...]] = {}

    # --- state -------------------------------------------------------------------------------

    @property
    def puzzle(self) -> Puzzle:
        self._require_started()
        return self._puzzle

    @property
    def solved(self) -> frozenset[str]:
        """The ids of the clues solved so far."""
        self._require_started()
        return frozenset(self._solved)

    @property
    def words(self) -> frozenset[str]:
        """The word list that legal answers come from."""
        return self._data.words

    def reset(self, seed: int) -> None:
        self._puzzle = pool_entry(seed, self._data.tests, self._data.demonstrations)
        self._clues_by_id = {entry.id: entry for entry in self._puzzle.clues}
        self._solved = set()
        self._done = False
        self._expert_rng = np.random.default_rng(np.random.SeedSequence(seed))
        self._started = True

    def step(self, action: str) -> StepOutcome:
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; call reset() to start another")
        clue_id, word = split_action(action)
        entry = self._clues_by_id.get(clue_id)
        if entry is None or len(word) != len(entry.answer):
            self._done = True
            self._ended_by = "impossible answer"
            return StepOutcome(reward=-1.0, done=True)
        if clue_id in self._solved or word != entry.answer:
            return StepOutcome(reward=0.0, done=False)
        self._solved.add(clue_id)
        self._done = len(self._solved) == len(self._puzzle.clues)
        self._ended_by = "solved"
        return StepOutcome(reward=1.0, done=self._done)

    def legal_actions(self) -> list[str]:
        """Every word of the right length for every unsolved clue, clue by clue, words sorted."""
        self._require_started()
        if self._done:
            return []
        actions: list[str] = []
        for entry in self._unsolved():
            actions.extend(self._actions_for(entry.id, len(entry.answer)))
        return actions

    def _actions_for(self, clue_id: str, length: int) -> tuple[str, ...]:
        key = (clue_id, length)
        if key not in self._clue_actions:
            words = self._data.words_by_length.get(length, ())
            self._clue_actions[key] = tuple(f"{clue_id}: {word}" for word in words)
        return self._clue_actions[key]

    def _unsolved(self) -> list[ClueEntry]:
        return [entry for entry in self._puzzle.clues if entry.id not in self._solved]

    # --- answers and the expert ----------------------------------------------------------------

    def parse_action(self, answer: str) -> str:
        clue_id, word = split_action(answer)
        if self._done:
            raise IllegalActionError("the episode is over; no action is legal")
        entry = self._clues_by_id.get(clue_id)
        if entry is None:
            raise IllegalActionError(f"this puzzle has no clue {clue_id}")
        if clue_id in self._solved:
            raise IllegalActionError(f"clue {clue_id} is already solved")
        if len(word) != len(entry.answer):
            raise IllegalActionError(
                f"{word} has {len(word)} letters; clue {clue_id} needs {len(entry.answer)}"
            )
        if word not in self._data.words:
            raise IllegalActionError(f"{word} is not in the word list")
        return f"{clue_id}: {word}"

    def expert_action(self) -> str:
        """The oracle: a uniformly random unsolved clue (by the expert's rng), answered right."""
        self._require_started()
        if self._done:
            raise ValueError("the episode is over; there is no expert action")
        unsolved = self._unsolved()
        entry = unsolved[int(self._expert_rng.integers(len(unsolved)))]
        return f"{entry.id}: {entry.answer}"

    # --- renderings ---------------------------------------------------------------------------

    def render(self, fmt: str) -> Observation:
        self._require_started()
        if fmt == "txt":
            return Observation(text=self._render_text())
        if fmt == "png":
            return Observation(image_png=self._render_png())
        raise ValueError(f"unknown observation format {fmt!r}; accepted: txt, png")

    def _filled_letters(self) -> dict[tuple[int, int], str]:
        """The letters of the solved words, by (row, column)."""
        letters = {}
        for entry in self._puzzle.clues:
            if entry.id in self._solved:
                letters.update(zip(entry.cells(), entry.answer, strict=True))
        return letters

    def _cell_numbers(self) -> dict[tuple[int, int], int]:
        return {(entry.row, entry.column): int(entry.id[1:]) for entry in self._puzzle.clues}

    def _clue_line(self, entry: ClueEntry) -> str:
        """`A1. clue (5)`, followed by `= WORD` once the clue is solved."""
        line = f"{entry.id}. {entry.clue} ({len(entry.answer)})"
        return f"{line} = {entry.answer}" if entry.id in self._solved else line

    def _render_text(self) -> str:
        """The grid, one line per row, then the across and down clues.

        A cell is three characters between bars: its number (if any) left-aligned in two
        characters, then its letter, or `_` while it is not found; `###` is a black square.
        One line per row keeps each observation near 250 tokens, so that a 100-step episode
        with a few demonstrations fits a 32k context. Each clue line ends with the answer's
        length and, once solved, `= ANSWER`.
        """
        letters = self._filled_letters()
        numbers = self._cell_numbers()
        lines = []
        for row, cells in enumerate(self._puzzle.grid):
            shown = []
            for column, cell in enumerate(cells):
                if cell == BLACK:
                    shown.append(_TEXT_BLACK)
                    continue
                number = numbers.get((row, column))
                label = "" if number is None else str(number)
                shown.append(label.ljust(_TEXT_CELL_WIDTH - 1) + letters.get((row, column), "_"))
            lines.append("|" + "|".join(shown) + "|")
        for title, direction in (("Across:", ACROSS), ("Down:", "down")):
            lines += ["", title]
            lines += [self._clue_line(e) for e in self._puzzle.clues if e.direction == direction]
        return "\n".join(lines)

    def _render_png(self) -> bytes:
        """The grid (numbers top-left, found letters centred) and the clue list beside it."""
        cell = self.cell_pixels
        margin = cell // 2
        size = len(self._puzzle.grid)
        number_font = ImageFont.load_default(size=max(7, round(cell * 0.28)))
        letter_font = ImageFont.load_default(size=max(8, round(cell * 0.6)))
        clue_font = ImageFont.load_default(size=max(8, round(cell * 0.3)))
        line_height = round(clue_font.size * 1.35) if hasattr(clue_font, "size") else 12

        column_left = 2 * margin + size * cell
        column_width = _CLUE_COLUMN_CELLS * cell
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        layout = _clue_layout(self._puzzle.clues, measure, clue_font, column_width)
        width = column_left + column_width + margin
        height = max(2 * margin + size * cell, 2 * margin + len(layout) * line_height)

        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        letters = self._filled_letters()
        numbers = self._cell_numbers()
        line_width = max(1, cell // 24)
        for row, cells in enumerate(self._puzzle.grid):
            for column, value in enumerate(cells):
                left, top = margin + column * cell, margin + row * cell
                box = [(left, top), (left + cell, top + cell)]
                fill = "black" if value == BLACK else "white"
                draw.rectangle(box, fill=fill, outline="black", width=line_width)
                if (row, column) in numbers:
                    corner = (left + line_width + 2, top + line_width + 1)
                    draw.text(corner, str(numbers[row, column]), fill="black", font=number_font)
                if (row, column) in letters:
                    centre = (left + cell / 2, top + cell * 0.58)
                    draw_centered(draw, letters[row, column], centre, letter_font)

        for index, (text, entry, last) in enumerate(layout):
            if entry is not None and last and entry.id in self._solved:
                text = f"{text} = {entry.answer}"
            colour = "gray" if entry is not None and entry.id in self._solved else "black"
            draw.text(
                (column_left, margin + index * line_height), text, fill=colour, font=clue_font
            )

        return png_bytes(image)


def _clue_layout(
    clues: Sequence[ClueEntry], draw: ImageDraw.ImageDraw, font: Font, width: int
) -> list[tuple[str, ClueEntry | None, bool]]:
    """The clue column's lines: (text, its clue or None for a heading, whether it is the
    clue's last line). Each clue wraps as if its answer were already appended, so that the
    layout, and so the image size, stays the same while the puzzle is being solved.
    """
    lines: list[tuple[str, ClueEntry | None, bool]] = []
    for title, direction in (("Across:", ACROSS), ("Down:", "down")):
        if lines:
            lines.append(("", None, False))
        lines.append((title, None, False))
        for entry in clues:
            if entry.direction != direction:
                continue
            tokens = [f"{entry.id}.", *entry.clue.split(), f"({len(entry.answer)})"]
            reserved = draw.textlength(" = " + "W" * len(entry.answer), font=font)
            wrapped: list[str] = []
            current = ""
            for position, token in enumerate(tokens):
                candidate = f"{current} {token}" if current else token
                budget = width - (reserved if position == len(tokens) - 1 else 0)
                if current and draw.textlength(candidate, font=font) > budget:
                    wrapped.append(current)
                    current = f"  {token}"
                else:
                    current = candidate
            if draw.textlength(current, font=font) + reserved > width:
                wrapped.append(current)
                current = " "
            wrapped.append(current)
            lines += [(text, entry, i == len(wrapped) - 1) for i, text in enumerate(wrapped)]
    return lines
