"""Tests for the crossword environment and its committed puzzle pool."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from helpers import decode
from PIL import Image

from lmact.envs.base import DEMO_SEED_BASE, IllegalActionError, InvalidActionError
from lmact.envs.crossword import Crossword
from lmact.envs.crossword_generator import check_puzzle
from lmact.resources import data_dir
from lmact.tasks import get_task

DATA_DIR = data_dir("tasks") / "data"
TEST_PUZZLES = 200  # the generator's --tests, as documented in scripts/make_crosswords.py
SIZE = 7


@cache
def committed_records() -> tuple[dict, ...]:
    lines = (DATA_DIR / "crossword_puzzles.jsonl").read_text(encoding="utf-8").splitlines()
    return tuple(json.loads(line) for line in lines)


@cache
def committed_words() -> frozenset[str]:
    return frozenset((DATA_DIR / "crossword_words.txt").read_text(encoding="utf-8").split())


# --- an independent reading of a grid, written without the generator's helpers ----------------


def letter_at(grid: list[str], row: int, column: int) -> bool:
    return 0 <= row < SIZE and 0 <= column < SIZE and grid[row][column] != "#"


def runs(grid: list[str]) -> dict[tuple[str, int, int], str]:
    """Every maximal run of 2+ letters, keyed by (direction, start row, start column)."""
    found = {}
    for direction, (dr, dc) in (("across", (0, 1)), ("down", (1, 0))):
        for row in range(SIZE):
            for column in range(SIZE):
                if not letter_at(grid, row, column) or letter_at(grid, row - dr, column - dc):
                    continue
                letters = ""
                r, c = row, column
                while letter_at(grid, r, c):
                    letters += grid[r][c]
                    r, c = r + dr, c + dc
                if len(letters) >= 2:
                    found[direction, row, column] = letters
    return found


def numbers(grid: list[str]) -> dict[tuple[int, int], int]:
    starts = sorted({(row, column) for _, row, column in runs(grid)})
    return {start: number for number, start in enumerate(starts, start=1)}


# --- the committed data -------------------------------------------------------------------------


def test_the_pool_is_large_split_as_documented_and_without_repeats() -> None:
    records = committed_records()
    assert len(records) >= 600
    assert [record["index"] for record in records] == list(range(len(records)))
    splits = [record["split"] for record in records]
    assert splits == ["test"] * TEST_PUZZLES + ["demonstration"] * (len(records) - TEST_PUZZLES)
    grids = [tuple(record["grid"]) for record in records]
    assert len(set(grids)) == len(grids)
    test_grids = set(grids[:TEST_PUZZLES])
    assert not test_grids & set(grids[TEST_PUZZLES:])


def test_the_word_list_is_sorted_uppercase_words_of_three_to_seven_letters() -> None:
    lines = (DATA_DIR / "crossword_words.txt").read_text(encoding="utf-8").splitlines()
    assert lines == sorted(set(lines))
    assert len(lines) > 5000
    assert all(line.isascii() and line.isalpha() and line.isupper() for line in lines)
    assert {len(line) for line in lines} == {3, 4, 5, 6, 7}


def test_every_committed_puzzle_is_consistent() -> None:
    words = committed_words()
    for record in committed_records():
        grid, clues = record["grid"], record["clues"]
        assert len(grid) == SIZE and all(len(row) == SIZE for row in grid)

        # The answers written at their positions give the grid back, crossings agreeing.
        rebuilt = [["#"] * SIZE for _ in range(SIZE)]
        for clue in clues:
            dr, dc = (0, 1) if clue["direction"] == "across" else (1, 0)
            for i, letter in enumerate(clue["answer"]):
                cell = rebuilt[clue["row"] + i * dr][clue["column"] + i * dc]
                assert cell in ("#", letter), record["index"]
                rebuilt[clue["row"] + i * dr][clue["column"] + i * dc] = letter
        assert ["".join(row) for row in rebuilt] == grid

        # Each run of 2+ letters is exactly one clue, numbered as crosswords are numbered.
        grid_runs = runs(grid)
        by_start = {(c["direction"], c["row"], c["column"]): c for c in clues}
        assert set(by_start) == set(grid_runs)
        numbering = numbers(grid)
        for key, letters in grid_runs.items():
            clue = by_start[key]
            assert clue["answer"] == letters
            assert clue["id"] == f"{key[0][0].upper()}{numbering[key[1], key[2]]}"
        ids = [c["id"] for c in clues]
        assert ids == sorted(ids, key=lambda i: (i[0], int(i[1:])))  # across first, by number
        across = sum(c["direction"] == "across" for c in clues)
        assert across >= 2 and len(clues) - across >= 2 and len(clues) >= 6

        # Clues are present and do not give their answers away; answers are known words.
        answers = [c["answer"] for c in clues]
        assert len(set(answers)) == len(answers)
        for clue in clues:
            assert clue["clue"].strip()
            assert clue["answer"].lower() not in clue["clue"].lower()
            assert clue["answer"] in words
            assert 3 <= len(clue["answer"]) <= 7

        # The words form one group: every word is reachable through shared cells.
        cells = []
        for c in clues:
            dr, dc = (0, 1) if c["direction"] == "across" else (1, 0)
            cells.append(
                {(c["row"] + i * dr, c["column"] + i * dc) for i in range(len(c["answer"]))}
            )
        reached, frontier = {0}, [0]
        while frontier:
            current = frontier.pop()
            for other in range(len(cells)):
                if other not in reached and cells[current] & cells[other]:
                    reached.add(other)
                    frontier.append(other)
        assert len(reached) == len(clues), record["index"]


def test_the_library_check_agrees_that_every_committed_puzzle_is_valid() -> None:
    env = Crossword()
    words = committed_words()
    for seed in [*range(TEST_PUZZLES), *range(DEMO_SEED_BASE, DEMO_SEED_BASE + 800)]:
        env.reset(seed)
        assert check_puzzle(env.puzzle, words) == []


def test_the_oracle_solves_every_puzzle_one_word_per_step() -> None:
    env = Crossword()
    seeds = [*range(TEST_PUZZLES), *range(DEMO_SEED_BASE, DEMO_SEED_BASE + 800)]
    for seed in seeds:
        env.reset(seed)
        word_count = len(env.puzzle.clues)
        total, steps = 0.0, 0
        while not env.done:
            outcome = env.step(env.expert_action())
            total += outcome.reward
            steps += 1
        assert steps == word_count
        assert total == word_count
        assert env.solved == {clue.id for clue in env.puzzle.clues}


# --- a small hand-made puzzle, for exact renderings and rewards --------------------------------

GRID = ["CAT#DOG", "O#A#A#O", "WAR#RAT", "E###T##", "RAILS##", "#######", "#######"]
CLUES = [
    ("A1", "across", 0, 0, "CAT", "a small pet"),
    ("A3", "across", 0, 4, "DOG", "a loyal pet"),
    ("A5", "across", 2, 0, "WAR", "armed conflict"),
    ("A6", "across", 2, 4, "RAT", "a rodent"),
    ("A7", "across", 4, 0, "RAILS", "what trains run on"),
    ("D1", "down", 0, 0, "COWER", "crouch in fear"),
    ("D2", "down", 0, 2, "TAR", "a black sticky substance"),
    ("D3", "down", 0, 4, "DARTS", "pub game"),
    ("D4", "down", 0, 6, "GOT", "obtained"),
]
EXTRA_WORDS = ["ANT", "BEE", "OWL", "HORSE", "MOUSE", "ZEBRA", "EEL"]


def small_puzzle_files(folder: Path) -> dict[str, str]:
    record = {
        "grid": GRID,
        "clues": [
            {"id": i, "direction": d, "row": r, "column": c, "answer": a, "clue": text}
            for i, d, r, c, a, text in CLUES
        ],
    }
    lines = [
        json.dumps({"index": 0, "split": "test", **record}),
        json.dumps({"index": 1, "split": "demonstration", **record}),
    ]
    puzzles = folder / "puzzles.jsonl"
    puzzles.write_text("\n".join(lines) + "\n")
    words = folder / "words.txt"
    words.write_text("\n".join(sorted({c[4] for c in CLUES} | set(EXTRA_WORDS))) + "\n")
    return {"puzzles_file": str(puzzles), "words_file": str(words)}


@pytest.fixture
def small(tmp_path: Path) -> Crossword:
    env = Crossword(**small_puzzle_files(tmp_path))
    env.reset(0)
    return env


def test_text_rendering_of_a_fresh_and_a_partly_solved_puzzle(small: Crossword) -> None:
    black_row = "|###|###|###|###|###|###|###|"
    fresh = "\n".join(
        [
            "|1 _|  _|2 _|###|3 _|  _|4 _|",
            "|  _|###|  _|###|  _|###|  _|",
            "|5 _|  _|  _|###|6 _|  _|  _|",
            "|  _|###|###|###|  _|###|###|",
            "|7 _|  _|  _|  _|  _|###|###|",
            black_row,
            black_row,
            "",
            "Across:",
            "A1. a small pet (3)",
            "A3. a loyal pet (3)",
            "A5. armed conflict (3)",
            "A6. a rodent (3)",
            "A7. what trains run on (5)",
            "",
            "Down:",
            "D1. crouch in fear (5)",
            "D2. a black sticky substance (3)",
            "D3. pub game (5)",
            "D4. obtained (3)",
        ]
    )
    assert small.render("txt").text == fresh

    small.step("A1: CAT")
    small.step("D3: DARTS")
    solved = small.render("txt").text.splitlines()
    assert solved[:5] == [
        "|1 C|  A|2 T|###|3 D|  _|4 _|",
        "|  _|###|  _|###|  A|###|  _|",
        "|5 _|  _|  _|###|6 R|  _|  _|",
        "|  _|###|###|###|  T|###|###|",
        "|7 _|  _|  _|  _|  S|###|###|",
    ]
    assert "A1. a small pet (3) = CAT" in solved
    assert "D3. pub game (5) = DARTS" in solved
    assert "D1. crouch in fear (5)" in solved


def test_rendering_is_the_same_for_the_same_state(tmp_path: Path) -> None:
    first = Crossword(**small_puzzle_files(tmp_path))
    second = Crossword(**small_puzzle_files(tmp_path))
    for env in (first, second):
        env.reset(0)
        env.step("D1: COWER")
    assert first.render("txt") == second.render("txt")
    assert first.render("png") == second.render("png")


# --- rewards --------------------------------------------------------------------------------------


def test_a_right_word_scores_one_and_fills_its_letters(small: Crossword) -> None:
    outcome = small.step("A7: RAILS")
    assert (outcome.reward, outcome.done) == (1.0, False)
    assert small.solved == {"A7"}
    assert "\n|7 R|  A|  I|  L|  S|###|###|\n" in small.render("txt").text


def test_a_wrong_word_of_the_right_length_scores_zero_and_goes_on(small: Crossword) -> None:
    outcome = small.step("A1: DOG")
    assert (outcome.reward, outcome.done) == (0.0, False)
    outcome = small.step("a1: zzz")  # not even a word: still the right length
    assert (outcome.reward, outcome.done) == (0.0, False)
    assert small.solved == frozenset()


def test_a_repeated_word_scores_zero_and_goes_on(small: Crossword) -> None:
    assert small.step("D4: GOT").reward == 1.0
    outcome = small.step("D4: GOT")
    assert (outcome.reward, outcome.done) == (0.0, False)
    assert small.solved == {"D4"}


@pytest.mark.parametrize("action", ["A1: CATS", "D1: COW", "A2: CAT", "D9: GOT"])
def test_a_wrong_length_or_unknown_clue_scores_minus_one_and_ends(
    small: Crossword, action: str
) -> None:
    small.step("A1: CAT")
    outcome = small.step(action)
    assert (outcome.reward, outcome.done) == (-1.0, True)
    assert small.done
    assert small.legal_actions() == []
    with pytest.raises(ValueError):
        small.step("A3: DOG")
    with pytest.raises(ValueError):
        small.expert_action()


def test_solving_the_last_clue_ends_the_episode(small: Crossword) -> None:
    rewards = []
    for clue_id, *_rest, answer, _text in CLUES:
        outcome = small.step(f"{clue_id}: {answer}")
        rewards.append(outcome.reward)
        assert outcome.done == (len(rewards) == len(CLUES))
    assert rewards == [1.0] * len(CLUES)
    assert small.done
    with pytest.raises(ValueError):
        small.step("A1: CAT")


def test_step_rejects_malformed_actions(small: Crossword) -> None:
    for action in ("hello", "A1 CAT", "A1: C4T", ""):
        with pytest.raises(InvalidActionError):
            small.step(action)
    assert not small.done


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "action"),
    [
        ("A1: CAT", "A1: CAT"),
        ("a1: cat", "A1: CAT"),
        ("A1: Cat", "A1: CAT"),
        ("d2:tar", "D2: TAR"),
        ("D2 :TAR", "D2: TAR"),
        ("  D3  :  darts  ", "D3: DARTS"),
        ("A7: RAILS.", "A7: RAILS"),
        ("A01: CAT", "A1: CAT"),
        ("A3: OWL", "A3: OWL"),  # wrong but legal: a known word of the right length
    ],
)
def test_parse_accepts_any_case_and_spacing(small: Crossword, answer: str, action: str) -> None:
    assert small.parse_action(answer) == action


@pytest.mark.parametrize(
    "answer",
    [
        "hello",
        "CAT",
        "A: CAT",
        "X1: CAT",
        "1A: CAT",
        "A 1: CAT",
        "A1 CAT",
        "A1:",
        "A1: ",
        "A1: C4T",
        "A1: CAT DOG",
        "A1: C-T",
        "A1: \u212aAT",  # the Kelvin sign, which case-insensitive matching would take for K
        "A1: CAT..",
        "Across 1: CAT",
        "",
        "   ",
    ],
)
def test_parse_rejects_answers_not_of_the_action_format(small: Crossword, answer: str) -> None:
    with pytest.raises(InvalidActionError):
        small.parse_action(answer)


@pytest.mark.parametrize("answer", ["A2: CAT", "D7: CAT", "A0: CAT", "A1: CATS", "A1: XYZ"])
def test_parse_reports_well_formed_but_illegal_answers(small: Crossword, answer: str) -> None:
    with pytest.raises(IllegalActionError):
        small.parse_action(answer)


def test_parse_reports_a_solved_clue_as_illegal(small: Crossword) -> None:
    assert small.parse_action("A1: CAT") == "A1: CAT"
    small.step("A1: CAT")
    for answer in ("A1: CAT", "a1: dog"):
        with pytest.raises(IllegalActionError):
            small.parse_action(answer)


# --- legal actions, seeds and the expert ------------------------------------------------------


def test_legal_actions_are_the_known_words_of_each_unsolved_clue(small: Crossword) -> None:
    words = sorted({c[4] for c in CLUES} | set(EXTRA_WORDS))
    expected = [
        f"{clue_id}: {word}"
        for clue_id, _d, _r, _c, answer, _t in CLUES
        for word in words
        if len(word) == len(answer)
    ]
    assert small.legal_actions() == expected
    small.step("A3: DOG")
    assert small.legal_actions() == [a for a in expected if not a.startswith("A3:")]
    for action in small.legal_actions():
        assert small.parse_action(action) == action


def test_legal_actions_on_committed_puzzles_match_the_word_list() -> None:
    by_length: dict[int, int] = {}
    for word in committed_words():
        by_length[len(word)] = by_length.get(len(word), 0) + 1
    env = Crossword()
    for seed in (0, 17, DEMO_SEED_BASE + 5):
        env.reset(seed)
        actions = env.legal_actions()
        assert len(actions) == sum(by_length[len(c.answer)] for c in env.puzzle.clues)
        assert len(set(actions)) == len(actions)
        expert = env.expert_action()
        assert expert in actions
        clue = next(c for c in env.puzzle.clues if expert.startswith(f"{c.id}:"))
        env.step(expert)
        assert len(env.legal_actions()) == len(actions) - by_length[len(clue.answer)]


def test_seeds_draw_test_and_demonstration_puzzles_from_their_splits() -> None:
    records = committed_records()
    env = Crossword()
    for k in (0, 1, 57, TEST_PUZZLES - 1):
        env.reset(k)
        assert list(env.puzzle.grid) == records[k]["grid"]
        env.reset(DEMO_SEED_BASE + k)
        assert list(env.puzzle.grid) == records[TEST_PUZZLES + k]["grid"]
    # Each part cycles when a run asks for more episodes than it holds.
    env.reset(TEST_PUZZLES)
    assert list(env.puzzle.grid) == records[0]["grid"]


def test_the_same_seed_gives_the_same_puzzle_and_expert() -> None:
    first, second = Crossword(), Crossword()

    def expert_episode(env: Crossword, seed: int) -> list[str]:
        env.reset(seed)
        actions = []
        while not env.done:
            actions.append(env.expert_action())
            env.step(actions[-1])
        return actions

    orders = set()
    for seed in (3, 3 + TEST_PUZZLES, 3 + 2 * TEST_PUZZLES):
        # Seeds that share a puzzle give it the same way, but the expert's order follows the seed.
        assert expert_episode(first, seed) == expert_episode(second, seed)
        orders.add(tuple(expert_episode(first, seed)))
    assert len(orders) > 1


def test_the_expert_picks_clues_uniformly_at_random(tmp_path: Path) -> None:
    env = Crossword(**small_puzzle_files(tmp_path))
    first_choices = set()
    for seed in range(200):
        env.reset(seed)
        first_choices.add(env.expert_action())
    assert first_choices == {f"{c[0]}: {c[4]}" for c in CLUES}


def test_the_environment_needs_reset_first() -> None:
    env = Crossword()
    with pytest.raises(RuntimeError):
        env.legal_actions()
    with pytest.raises(RuntimeError):
        env.render("txt")


# --- png ------------------------------------------------------------------------------------------


def ink_in_cell(image: Image.Image, cell: int, row: int, column: int) -> int:
    """Non-white pixels inside a grid cell, away from its border and its number."""
    margin = cell // 2
    left, top = margin + column * cell, margin + row * cell
    count = 0
    for x in range(left + cell // 4, left + cell - cell // 8):
        for y in range(top + cell // 3, top + cell - cell // 8):
            if image.getpixel((x, y)) != (255, 255, 255):
                count += 1
    return count


@pytest.mark.parametrize("cell", [24, 48])
def test_png_rendering_decodes_and_keeps_its_size_while_solving(tmp_path: Path, cell: int) -> None:
    env = Crossword(**small_puzzle_files(tmp_path), cell_pixels=cell)
    env.reset(0)
    before = env.render("png")
    assert before.is_image
    image = decode(before.image_png)
    assert image.format == "PNG"
    assert image.mode == "RGB"
    # The grid is on the left and the clues beside it, so the image is wider than the grid.
    assert image.size[0] > SIZE * cell + cell
    assert image.size[1] >= SIZE * cell + cell // 2 * 2
    for clue_id, *_rest, answer, _text in CLUES[:-1]:
        env.step(f"{clue_id}: {answer}")
        assert decode(env.render("png").image_png).size == image.size


def test_png_shows_black_squares_and_found_letters(small: Crossword) -> None:
    cell = small.cell_pixels
    image = decode(small.render("png").image_png)
    margin = cell // 2
    centre_of_black = (margin + 3 * cell + cell // 2, margin + cell // 2)
    assert image.getpixel(centre_of_black) == (0, 0, 0)
    assert ink_in_cell(image, cell, 4, 2) == 0
    before = small.render("png").image_png
    small.step("A7: RAILS")
    after = decode(small.render("png").image_png)
    assert small.render("png").image_png != before
    assert ink_in_cell(after, cell, 4, 2) > 0  # the I of RAILS
    assert ink_in_cell(after, cell, 2, 0) == 0  # WAR is not found yet


def test_png_of_a_committed_puzzle_changes_when_a_word_is_solved() -> None:
    env = Crossword()
    env.reset(11)
    before = env.render("png").image_png
    env.step(env.expert_action())
    assert env.render("png").image_png != before


def test_render_rejects_unknown_formats(small: Crossword) -> None:
    with pytest.raises(ValueError):
        small.render("rgb")


# --- options and the task spec ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "bad_name"),
    [
        ({"cell_pixels": 8}, "cell_pixels"),
        ({"cell_pixels": 500}, "cell_pixels"),
        ({"cell_pixels": True}, "cell_pixels"),
        ({"puzzles_file": "data/missing.jsonl"}, "puzzles_file"),
        ({"puzzles_file": 3}, "puzzles_file"),
        ({"words_file": ""}, "words_file"),
    ],
)
def test_constructor_rejects_bad_options(options: dict[str, object], bad_name: str) -> None:
    with pytest.raises(ValueError, match=bad_name):
        Crossword(**options)


def test_a_puzzle_whose_answers_are_not_in_the_word_list_is_rejected(tmp_path: Path) -> None:
    files = small_puzzle_files(tmp_path)
    Path(files["words_file"]).write_text("CAT\nDOG\n")
    with pytest.raises(ValueError, match="missing"):
        Crossword(**files)


def test_the_task_spec_builds_the_environment_with_its_defaults() -> None:
    spec = get_task("crossword")
    assert spec.environment == "crossword"
    assert spec.observations == ["txt", "png"]
    env = spec.make_environment()
    assert isinstance(env, Crossword)
    assert spec.is_image_observation("png") and not spec.is_image_observation("txt")
    assert spec.options == {
        "puzzles_file": "data/crossword_puzzles.jsonl",
        "words_file": "data/crossword_words.txt",
        "cell_pixels": 48,
    }
    assert spec.max_steps == 100
