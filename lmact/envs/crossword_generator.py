"""Crossword puzzles from WordNet: the vocabulary, its clues, and 7x7 grids.

The crossword task ships a committed pool of puzzles (`tasks/data/crossword_puzzles.jsonl`)
and the word list its actions are checked against (`tasks/data/crossword_words.txt`), both
written by `scripts/make_crosswords.py` through this module. Everything here is deterministic:
the same WordNet files, seed and parameters give byte-identical output.

Vocabulary. A word is a WordNet lemma of 3 to 7 ASCII letters (no spaces, hyphens, digits or
apostrophes) that is sense-tagged at least once in the SemCor corpus in some part of speech
(tagsense_cnt > 0 in its index line), which keeps common words and drops rare ones. Proper
nouns are dropped: a lemma whose word form is capitalized in every synset it belongs to
("Iran", "Poland"); a lemma with some lowercase sense ("march", "bill") stays.

Clues. A word's senses are taken part of speech by part of speech, the part in which the word
has the most tagged senses first (ties in the order noun, verb, adjective, adverb), and within
a part in WordNet's own order, which is by decreasing frequency. A sense's candidate clue is the
definition part of its gloss: the text before the first semicolon, with the quoted usage
examples removed and whitespace normalized. The clue is the first candidate that does not
contain the answer (case-insensitively) and is at most MAX_CLUE_CHARS long; failing that, the
first candidate that does not contain the answer, whatever its length. A word with no such
candidate has no clue: it stays in the word list but is never an answer.

Grids. Words are placed across (left to right) or down (top to bottom). A grid is valid when
every maximal run of two or more adjacent letters, in either direction, is exactly one placed
word, crossing words agree on their shared letter, all words form one connected group, and no
answer is used twice; cells without a letter are black. Puzzles are built greedily: a random
first word, then, repeatedly, a word crossing the letters already placed, until nothing fits;
each puzzle keeps the best of several such fills.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRID_SIZE = 7
BLACK = "#"
MIN_WORD_LENGTH = 3
MAX_WORD_LENGTH = 7
MAX_CLUE_CHARS = 120
# A puzzle needs this many words, and this many in each direction.
MIN_WORDS = 6
MIN_WORDS_PER_DIRECTION = 2
# Fills per puzzle; the one with the most letters (then the most words) is kept.
DEFAULT_RESTARTS = 12

ACROSS = "across"
DOWN = "down"
DIRECTIONS = (ACROSS, DOWN)
_DIRECTION_LETTER = {ACROSS: "A", DOWN: "D"}

# WordNet's file suffixes, in the order that breaks ties between parts of speech.
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")

_LEMMA = re.compile(rf"[a-z]{{{MIN_WORD_LENGTH},{MAX_WORD_LENGTH}}}")
# A quoted usage example, or an unterminated one running to the end of the gloss.
_QUOTED = re.compile(r'"[^"]*(?:"|$)')
# Adjectives in data.adj may carry a syntactic marker: `galore(ip)`, `outback(a)`.
_ADJECTIVE_MARKER = re.compile(r"\([a-z]+\)$")
_WHITESPACE = re.compile(r"\s+")


# --- the vocabulary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """The word list (uppercase, sorted) and the clue of every word that can be an answer."""

    words: tuple[str, ...]
    clues: dict[str, str]

    @property
    def answers(self) -> tuple[str, ...]:
        """The words that have a clue, sorted."""
        return tuple(word for word in self.words if word in self.clues)


@dataclass(frozen=True)
class _Sense:
    synset_forms: tuple[str, ...]  # the synset's word forms, as spelt in the data file
    gloss: str


def gloss_definition(gloss: str) -> str:
    """The definition part of a WordNet gloss: before the first `;`, without quoted examples."""
    without_examples = _QUOTED.sub(" ", gloss)
    definition = without_examples.split(";", 1)[0]
    return _WHITESPACE.sub(" ", definition).strip(" ,:")


def _index_lines(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  ") or not line.strip():
                continue  # the license header
            yield line.split()


def _read_synsets(path: Path, wanted: Collection[str]) -> dict[str, _Sense]:
    """The synsets of a data file whose offsets are in `wanted`, by offset."""
    synsets: dict[str, _Sense] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  "):
                continue
            offset = line.split(" ", 1)[0]
            if offset not in wanted:
                continue
            head, _, gloss = line.partition("|")
            fields = head.split()
            word_count = int(fields[3], 16)
            forms = tuple(
                _ADJECTIVE_MARKER.sub("", form) for form in fields[4 : 4 + 2 * word_count : 2]
            )
            synsets[offset] = _Sense(forms, gloss.strip())
    return synsets


def _is_proper_noun(lemma: str, senses: Sequence[_Sense]) -> bool:
    """Whether `lemma` is capitalized in every synset that holds it."""
    spellings = [[form for form in sense.synset_forms if form.lower() == lemma] for sense in senses]
    spellings = [forms for forms in spellings if forms]
    return bool(spellings) and all(all(form[0].isupper() for form in forms) for forms in spellings)


def choose_clue(answer: str, glosses: Iterable[str]) -> str | None:
    """The clue for `answer` from its senses' glosses, in sense order (see the module doc)."""
    fallback = None
    for gloss in glosses:
        definition = gloss_definition(gloss)
        if not definition or answer.lower() in definition.lower():
            continue
        if len(definition) <= MAX_CLUE_CHARS:
            return definition
        fallback = fallback or definition
    return fallback


def read_vocabulary(wordnet_dir: Path | str) -> Vocabulary:
    """The crossword vocabulary and clues from a WordNet 3.0 `dict` folder (index.*, data.*)."""
    wordnet_dir = Path(wordnet_dir)
    # lemma -> [(part of speech, tagged sense count, synset offsets in WordNet order)]
    parts: dict[str, list[tuple[str, int, list[str]]]] = defaultdict(list)
    for pos in PARTS_OF_SPEECH:
        for fields in _index_lines(wordnet_dir / f"index.{pos}"):
            lemma = fields[0]
            if not _LEMMA.fullmatch(lemma):
                continue
            pointer_count = int(fields[3])
            tagged = int(fields[5 + pointer_count])
            parts[lemma].append((pos, tagged, fields[6 + pointer_count :]))

    common = sorted(lemma for lemma, entries in parts.items() if any(e[1] > 0 for e in entries))
    synsets = {
        pos: _read_synsets(
            wordnet_dir / f"data.{pos}",
            {
                offset
                for lemma in common
                for p, _, offsets in parts[lemma]
                if p == pos
                for offset in offsets
            },
        )
        for pos in PARTS_OF_SPEECH
    }

    words: list[str] = []
    clues: dict[str, str] = {}
    for lemma in common:
        # Most-tagged part of speech first; sorted() is stable, so ties keep noun-verb-adj-adv.
        ordered = sorted(parts[lemma], key=lambda entry: -entry[1])
        senses = [synsets[pos][offset] for pos, _, offsets in ordered for offset in offsets]
        if _is_proper_noun(lemma, senses):
            continue
        word = lemma.upper()
        words.append(word)
        clue = choose_clue(word, (sense.gloss for sense in senses))
        if clue is not None:
            clues[word] = clue
    return Vocabulary(tuple(words), clues)


# --- puzzles -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClueEntry:
    """One word of a puzzle: its id (`A1`, `D2`), where it starts, its answer and its clue."""

    id: str
    direction: str
    row: int
    column: int
    answer: str
    clue: str

    def cells(self) -> list[tuple[int, int]]:
        """The (row, column) of each letter of the answer."""
        row_step, column_step = (0, 1) if self.direction == ACROSS else (1, 0)
        return [
            (self.row + i * row_step, self.column + i * column_step)
            for i in range(len(self.answer))
        ]


@dataclass(frozen=True)
class Puzzle:
    """A grid (rows of letters and `#` for black squares) and its clues, across then down."""

    grid: tuple[str, ...]
    clues: tuple[ClueEntry, ...]

    def to_json(self, index: int, split: str) -> str:
        """One line of the puzzles file."""
        record = {
            "index": index,
            "split": split,
            "grid": list(self.grid),
            "clues": [
                {
                    "id": entry.id,
                    "direction": entry.direction,
                    "row": entry.row,
                    "column": entry.column,
                    "answer": entry.answer,
                    "clue": entry.clue,
                }
                for entry in self.clues
            ],
        }
        return json.dumps(record, ensure_ascii=False)

    @classmethod
    def from_record(cls, record: dict) -> Puzzle:
        return cls(
            grid=tuple(record["grid"]),
            clues=tuple(
                ClueEntry(
                    id=clue["id"],
                    direction=clue["direction"],
                    row=clue["row"],
                    column=clue["column"],
                    answer=clue["answer"],
                    clue=clue["clue"],
                )
                for clue in record["clues"]
            ),
        )


@dataclass(frozen=True)
class Slot:
    """A maximal run of two or more letters in a grid, numbered as crosswords number them."""

    number: int
    direction: str
    row: int
    column: int
    length: int

    @property
    def id(self) -> str:
        return f"{_DIRECTION_LETTER[self.direction]}{self.number}"


def grid_slots(grid: Sequence[str]) -> list[Slot]:
    """Every run of two or more letters, across runs then down runs, each by number.

    Numbering scans rows top to bottom and cells left to right; a cell takes the next number
    when it starts an across run or a down run.
    """
    rows, columns = len(grid), len(grid[0]) if grid else 0

    def letter(row: int, column: int) -> bool:
        return 0 <= row < rows and 0 <= column < columns and grid[row][column] != BLACK

    def run_length(row: int, column: int, row_step: int, column_step: int) -> int:
        length = 0
        while letter(row + length * row_step, column + length * column_step):
            length += 1
        return length

    across: list[Slot] = []
    down: list[Slot] = []
    number = 0
    for row in range(rows):
        for column in range(columns):
            if not letter(row, column):
                continue
            across_length = 0 if letter(row, column - 1) else run_length(row, column, 0, 1)
            down_length = 0 if letter(row - 1, column) else run_length(row, column, 1, 0)
            if across_length < 2 and down_length < 2:
                continue
            number += 1
            if across_length >= 2:
                across.append(Slot(number, ACROSS, row, column, across_length))
            if down_length >= 2:
                down.append(Slot(number, DOWN, row, column, down_length))
    return across + down


def check_puzzle(puzzle: Puzzle, words: Collection[str] | None = None) -> list[str]:
    """Everything wrong with `puzzle`, as readable problems; an empty list means it is valid.

    Checks the grid's shape and alphabet, that the answers written at their positions rebuild
    the grid exactly (crossings agree, no stray letters), that the clue ids and positions are
    the grid's own numbering with one clue per run of two or more letters, that the words are
    connected and distinct, the minimum word counts, and that every clue is non-empty and does
    not give its answer away. With `words`, every answer must also be in that word list.
    """
    problems: list[str] = []
    grid = puzzle.grid
    if len(grid) != GRID_SIZE or any(len(row) != GRID_SIZE for row in grid):
        return [f"the grid is not {GRID_SIZE}x{GRID_SIZE}: {grid!r}"]
    if any(not re.fullmatch(rf"[A-Z{BLACK}]+", row) for row in grid):
        problems.append(f"the grid holds characters other than A-Z and {BLACK}: {grid!r}")

    rebuilt = [[BLACK] * GRID_SIZE for _ in range(GRID_SIZE)]
    for entry in puzzle.clues:
        if entry.direction not in DIRECTIONS:
            problems.append(f"{entry.id}: unknown direction {entry.direction!r}")
            continue
        if not re.fullmatch(rf"[A-Z]{{{MIN_WORD_LENGTH},{MAX_WORD_LENGTH}}}", entry.answer):
            problems.append(f"{entry.id}: answer {entry.answer!r} is not 3-7 letters A-Z")
        for row, column in entry.cells():
            if not (0 <= row < GRID_SIZE and 0 <= column < GRID_SIZE):
                problems.append(f"{entry.id}: {entry.answer} runs off the grid")
                break
        else:
            for (row, column), letter in zip(entry.cells(), entry.answer, strict=True):
                if rebuilt[row][column] not in (BLACK, letter):
                    problems.append(f"{entry.id}: {letter} at ({row}, {column}) clashes")
                rebuilt[row][column] = letter
        if not entry.clue.strip():
            problems.append(f"{entry.id}: the clue is empty")
        elif entry.answer.lower() in entry.clue.lower():
            problems.append(f"{entry.id}: the clue contains the answer {entry.answer}")
        if words is not None and entry.answer not in words:
            problems.append(f"{entry.id}: {entry.answer} is not in the word list")
    if tuple("".join(row) for row in rebuilt) != tuple(grid):
        problems.append("the answers at their positions do not rebuild the grid")

    expected = [
        (slot.id, slot.direction, slot.row, slot.column, slot.length) for slot in grid_slots(grid)
    ]
    actual = [(e.id, e.direction, e.row, e.column, len(e.answer)) for e in puzzle.clues]
    if actual != expected:
        problems.append(f"the clues {actual} are not the grid's runs {expected}")

    answers = [entry.answer for entry in puzzle.clues]
    if len(set(answers)) != len(answers):
        problems.append(f"an answer is used twice: {sorted(answers)}")
    if len(answers) < MIN_WORDS:
        problems.append(f"{len(answers)} words, fewer than {MIN_WORDS}")
    for direction in DIRECTIONS:
        count = sum(entry.direction == direction for entry in puzzle.clues)
        if count < MIN_WORDS_PER_DIRECTION:
            problems.append(f"{count} {direction} words, fewer than {MIN_WORDS_PER_DIRECTION}")
    if puzzle.clues and not _connected(puzzle.clues):
        problems.append("the words do not form one connected group")
    return problems


def _connected(clues: Sequence[ClueEntry]) -> bool:
    """Whether every word is reachable from the first through words that share a cell."""
    cells = [set(entry.cells()) for entry in clues]
    reached = {0}
    frontier = [0]
    while frontier:
        current = frontier.pop()
        for other, other_cells in enumerate(cells):
            if other not in reached and cells[current] & other_cells:
                reached.add(other)
                frontier.append(other)
    return len(reached) == len(clues)


def number_puzzle(placed: Iterable[tuple[str, int, int, str]], clues: dict[str, str]) -> Puzzle:
    """The puzzle of words placed as (direction, row, column, answer), numbered and clued."""
    rebuilt = [[BLACK] * GRID_SIZE for _ in range(GRID_SIZE)]
    starts: dict[tuple[str, int, int], str] = {}
    for direction, row, column, answer in placed:
        starts[direction, row, column] = answer
        row_step, column_step = (0, 1) if direction == ACROSS else (1, 0)
        for i, letter in enumerate(answer):
            rebuilt[row + i * row_step][column + i * column_step] = letter
    grid = tuple("".join(row) for row in rebuilt)
    entries = []
    for slot in grid_slots(grid):
        answer = starts.get((slot.direction, slot.row, slot.column), "")
        entries.append(
            ClueEntry(slot.id, slot.direction, slot.row, slot.column, answer, clues.get(answer, ""))
        )
    return Puzzle(grid, tuple(entries))


# --- the generator -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GridSlot:
    """A place a word could go, with the cells (0..48, row-major) that decide whether it fits."""

    direction: str
    row: int
    column: int
    cells: tuple[int, ...]
    ends: tuple[int, ...]  # the cells just before and after the word, when on the grid
    sides: tuple[tuple[int, ...], ...]  # per cell, its neighbours across the word's direction


def _all_grid_slots() -> tuple[_GridSlot, ...]:
    slots = []
    for direction in DIRECTIONS:
        for length in range(MIN_WORD_LENGTH, MAX_WORD_LENGTH + 1):
            for line in range(GRID_SIZE):
                for start in range(GRID_SIZE - length + 1):
                    if direction == ACROSS:
                        positions = [(line, start + i) for i in range(length)]
                        before, after = (line, start - 1), (line, start + length)
                    else:
                        positions = [(start + i, line) for i in range(length)]
                        before, after = (start - 1, line), (start + length, line)
                    sides = []
                    for row, column in positions:
                        neighbours = (
                            [(row - 1, column), (row + 1, column)]
                            if direction == ACROSS
                            else [(row, column - 1), (row, column + 1)]
                        )
                        sides.append(tuple(_flat(cell) for cell in neighbours if _on_grid(cell)))
                    row, column = positions[0]
                    slots.append(
                        _GridSlot(
                            direction,
                            row,
                            column,
                            tuple(_flat(cell) for cell in positions),
                            tuple(_flat(cell) for cell in (before, after) if _on_grid(cell)),
                            tuple(sides),
                        )
                    )
    return tuple(slots)


def _on_grid(cell: tuple[int, int]) -> bool:
    return 0 <= cell[0] < GRID_SIZE and 0 <= cell[1] < GRID_SIZE


def _flat(cell: tuple[int, int]) -> int:
    return cell[0] * GRID_SIZE + cell[1]


_GRID_SLOTS = _all_grid_slots()


class WordIndex:
    """The answers by length, and which of them have a given letter at a given position."""

    def __init__(self, answers: Iterable[str]) -> None:
        by_length: dict[int, list[str]] = defaultdict(list)
        for answer in sorted(set(answers)):
            by_length[len(answer)].append(answer)
        self.by_length = {length: tuple(words) for length, words in by_length.items()}
        having: dict[tuple[int, int, str], set[int]] = defaultdict(set)
        for length, words in self.by_length.items():
            for number, word in enumerate(words):
                for position, letter in enumerate(word):
                    having[length, position, letter].add(number)
        self._having = {key: frozenset(numbers) for key, numbers in having.items()}

    def matching(self, length: int, fixed: Sequence[tuple[int, str]]) -> list[str]:
        """The answers of `length` with each (position, letter) of `fixed`, sorted."""
        sets = sorted(
            (
                self._having.get((length, position, letter), frozenset())
                for position, letter in fixed
            ),
            key=len,
        )
        numbers = set(sets[0]).intersection(*sets[1:])
        words = self.by_length[length]
        return [words[number] for number in sorted(numbers)]


def _fill(index: WordIndex, rng: random.Random) -> list[tuple[str, int, int, str]]:
    """One randomized greedy fill: words placed as (direction, row, column, answer)."""
    letters = [""] * (GRID_SIZE * GRID_SIZE)
    owned = {ACROSS: [False] * len(letters), DOWN: [False] * len(letters)}
    used: set[str] = set()
    placed: list[tuple[str, int, int, str]] = []

    def place(slot: _GridSlot, word: str) -> None:
        for cell, letter in zip(slot.cells, word, strict=True):
            letters[cell] = letter
            owned[slot.direction][cell] = True
        used.add(word)
        placed.append((slot.direction, slot.row, slot.column, word))

    long_slots = [slot for slot in _GRID_SLOTS if len(slot.cells) >= MAX_WORD_LENGTH - 2]
    first = rng.choice(long_slots)
    place(first, rng.choice(index.by_length[len(first.cells)]))

    while True:
        options: list[tuple[_GridSlot, list[str]]] = []
        weights: list[float] = []
        for slot in _GRID_SLOTS:
            fixed = _fixed_letters(slot, letters, owned[slot.direction])
            if fixed is None:
                continue
            candidates = [
                word for word in index.matching(len(slot.cells), fixed) if word not in used
            ]
            if candidates:
                options.append((slot, candidates))
                # Crossings make the grid dense and long words fill it: favour both.
                weights.append(len(fixed) ** 2 * len(slot.cells))
        if not options:
            return placed
        slot, candidates = rng.choices(options, weights)[0]
        place(slot, rng.choice(candidates))


def _fixed_letters(
    slot: _GridSlot, letters: Sequence[str], owned: Sequence[bool]
) -> list[tuple[int, str]] | None:
    """The letters a word in `slot` must have, or None when no word can go there now.

    A word fits when it would not run into a letter at either end, crosses at least one
    letter already placed (which no word of its own direction holds), and each of its new
    letters has no letter beside it across its direction, so that no accidental run forms.
    """
    if any(letters[cell] for cell in slot.ends):
        return None
    fixed = []
    for position, (cell, sides) in enumerate(zip(slot.cells, slot.sides, strict=True)):
        letter = letters[cell]
        if letter:
            if owned[cell]:
                return None
            fixed.append((position, letter))
        elif any(letters[side] for side in sides):
            return None
    if not fixed or len(fixed) == len(slot.cells):
        return None
    return fixed


def generate_puzzle(
    index: WordIndex, clues: dict[str, str], rng: random.Random, restarts: int = DEFAULT_RESTARTS
) -> Puzzle | None:
    """The best of `restarts` fills (most letters, then most words), or None if it is too thin."""
    best: list[tuple[str, int, int, str]] = []
    best_score = (-1, -1)
    for _ in range(restarts):
        placed = _fill(index, rng)
        # Overlapping words share cells, so count the grid's letters rather than word lengths.
        score = (len(_cells_of(placed)), len(placed))
        if score > best_score:
            best, best_score = placed, score
    puzzle = number_puzzle(best, clues)
    if not _is_full_enough(puzzle):
        return None
    problems = check_puzzle(puzzle)
    if problems:
        raise RuntimeError(f"the generator built an invalid puzzle: {problems}")
    return puzzle


def _is_full_enough(puzzle: Puzzle) -> bool:
    across = sum(entry.direction == ACROSS for entry in puzzle.clues)
    down = len(puzzle.clues) - across
    return len(puzzle.clues) >= MIN_WORDS and min(across, down) >= MIN_WORDS_PER_DIRECTION


def _cells_of(placed: Iterable[tuple[str, int, int, str]]) -> set[tuple[int, int]]:
    cells = set()
    for direction, row, column, word in placed:
        for i in range(len(word)):
            cells.add((row, column + i) if direction == ACROSS else (row + i, column))
    return cells


def candidate_rng(seed: int, candidate: int) -> random.Random:
    """The random stream of the `candidate`-th puzzle attempt of a generation with `seed`."""
    state = np.random.SeedSequence([seed, candidate]).generate_state(4, dtype=np.uint32)
    return random.Random(int.from_bytes(state.tobytes(), "little"))


def generate_puzzles(
    vocabulary: Vocabulary,
    seed: int,
    count: int,
    restarts: int = DEFAULT_RESTARTS,
    progress: Callable[[], None] | None = None,
) -> list[Puzzle]:
    """`count` distinct puzzles, each from its own stream derived from (seed, attempt number).

    Attempts run in order and an attempt that is too thin, or repeats an earlier grid, is
    skipped; so the first k puzzles of any generation are the puzzles of a generation of k.
    `progress` is called once per puzzle kept.
    """
    if seed < 0 or count < 0:
        raise ValueError(f"seed and count must be non-negative, got {seed} and {count}")
    index = WordIndex(vocabulary.answers)
    puzzles: list[Puzzle] = []
    grids: set[tuple[str, ...]] = set()
    candidate = 0
    while len(puzzles) < count:
        puzzle = generate_puzzle(index, vocabulary.clues, candidate_rng(seed, candidate), restarts)
        candidate += 1
        if puzzle is None or puzzle.grid in grids:
            continue
        grids.add(puzzle.grid)
        puzzles.append(puzzle)
        if progress is not None:
            progress()
    return puzzles


def puzzle_lines(puzzles: Sequence[Puzzle], tests: int) -> list[str]:
    """The puzzles file's lines: the first `tests` puzzles are the test split."""
    return [
        puzzle.to_json(index, "test" if index < tests else "demonstration")
        for index, puzzle in enumerate(puzzles)
    ]


def read_puzzles(path: Path | str) -> list[tuple[str, Puzzle]]:
    """The (split, puzzle) pairs of a puzzles file, in order."""
    entries = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                entries.append((record["split"], Puzzle.from_record(record)))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a puzzle record ({error})") from None
    return entries
