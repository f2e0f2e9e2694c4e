"""Tests for the crossword generator: vocabulary and clues from WordNet, grids, determinism."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from lmact.envs.crossword_generator import (
    MAX_CLUE_CHARS,
    ClueEntry,
    Puzzle,
    Vocabulary,
    check_puzzle,
    choose_clue,
    generate_puzzles,
    gloss_definition,
    grid_slots,
    puzzle_lines,
    read_vocabulary,
)
from lmact.resources import data_dir

REPO_DIR = Path(__file__).resolve().parent.parent
WORDNET_DIR = Path("/usr/share/wordnet")
LICENSE_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"

# --- a tiny WordNet, written in WordNet 3.0's file format -----------------------------------

# (part of speech, word forms as the data file spells them, gloss)
SYNSETS: list[tuple[str, list[str], str]] = [
    ("noun", ["cat", "true_cat"], 'feline mammal with soft fur; "cats purr"'),
    ("noun", ["cat"], "a spiteful woman gossip"),
    ("verb", ["run"], "move fast by using one's feet; \"don't run\""),
    ("noun", ["run"], "a score in baseball made by a runner touching all four bases"),
    ("noun", ["dog", "domestic_dog"], 'a member of the genus Canis; "the dog barked"'),
    ("noun", ["Iran"], "a theocratic Islamic republic in the Middle East"),
    ("noun", ["Poland"], "a republic in central Europe"),
    ("noun", ["March", "Mar"], "the month following February"),
    ("verb", ["march"], "walk ceremoniously"),
    ("noun", ["ox"], "an adult castrated bull"),
    ("noun", ["elephant"], "five-ton mammal with a trunk"),
    ("noun", ["t-shirt"], "a collarless shirt"),
    ("noun", ["a4"], "a paper size"),
    ("noun", ["don't"], "an imperative"),
    ("noun", ["obscure"], "a word nobody tags"),
    ("adj", ["happy"], 'enjoying or showing joy; "a happy smile"'),
    ("adj", ["ready(p)"], "completely prepared"),
    ("adv", ["soon"], "in the near future"),
    ("noun", ["box"], "a box-shaped container"),  # every gloss holds the answer: no clue
    ("noun", ["lamp"], "a source of light " + "made of glass and metal " * 8),
    ("noun", ["lamp"], "a light"),
    ("noun", ["desk"], "a piece of furniture " + "with a writing surface and drawers " * 6),
    ("noun", ["stone"], '"no definition, only an example"'),
    ("noun", ["stone"], "a lump of rock"),
]
# Tagged sense counts (tagsense_cnt) by (lemma, part of speech); 1 when not listed.
TAGGED = {
    ("obscure", "noun"): 0,
    ("run", "noun"): 2,
    ("run", "verb"): 9,
}


def write_wordnet(folder: Path) -> Path:
    """Index and data files for SYNSETS; offsets are line numbers, which the reader accepts."""
    data: dict[str, list[str]] = {pos: [LICENSE_HEADER] for pos in ("noun", "verb", "adj", "adv")}
    index: dict[str, dict[str, list[str]]] = {pos: {} for pos in data}
    for number, (pos, forms, gloss) in enumerate(SYNSETS):
        offset = f"{number + 1:08d}"
        words = " ".join(f"{form} 0" for form in forms)
        ss_type = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}[pos]
        data[pos].append(f"{offset} 03 {ss_type} {len(forms):02x} {words} 000 | {gloss}  \n")
        for form in forms:
            lemma = form.split("(")[0].lower()
            index[pos].setdefault(lemma, []).append(offset)
    for pos, lines in data.items():
        (folder / f"data.{pos}").write_text("".join(lines))
        entries = [LICENSE_HEADER]
        for lemma, offsets in sorted(index[pos].items()):
            tagged = TAGGED.get((lemma, pos), 1)
            pointers = "2 @ ~" if pos == "noun" else "0"
            entries.append(
                f"{lemma} {pos[0]} {len(offsets)} {pointers} {len(offsets)} {tagged} "
                f"{' '.join(offsets)}  \n"
            )
        (folder / f"index.{pos}").write_text("".join(entries))
    return folder


@pytest.fixture(scope="module")
def tiny_vocabulary(tmp_path_factory: pytest.TempPathFactory) -> Vocabulary:
    return read_vocabulary(write_wordnet(tmp_path_factory.mktemp("wordnet")))


def test_vocabulary_keeps_common_alphabetic_words_of_three_to_seven_letters(
    tiny_vocabulary: Vocabulary,
) -> None:
    assert tiny_vocabulary.words == tuple(sorted(tiny_vocabulary.words))
    assert set(tiny_vocabulary.words) == {
        "CAT",
        "RUN",
        "DOG",
        "MARCH",
        "HAPPY",
        "READY",
        "SOON",
        "BOX",
        "LAMP",
        "DESK",
        "STONE",
    }
    # Dropped: OX and ELEPHANT (length), T-SHIRT, A4 and DON'T (not letters), OBSCURE (never
    # tagged), IRAN and POLAND (capitalized in every synset), compounds like TRUE_CAT.


def test_clue_is_the_first_definition_without_the_answer_or_examples(
    tiny_vocabulary: Vocabulary,
) -> None:
    clues = tiny_vocabulary.clues
    # "cat" is in the first example only, which is dropped with the rest of the examples.
    assert clues["CAT"] == "feline mammal with soft fur"
    assert clues["DOG"] == "a member of the genus Canis"
    # The verb has more tagged senses than the noun, so the verb sense comes first.
    assert clues["RUN"] == "move fast by using one's feet"
    # March keeps its lowercase verb sense, yet its first (noun) sense is the clue.
    assert clues["MARCH"] == "the month following February"
    assert clues["READY"] == "completely prepared"
    assert clues["HAPPY"] == "enjoying or showing joy"
    # A gloss that is only an example gives no clue; the next sense does.
    assert clues["STONE"] == "a lump of rock"


def test_clue_skips_glosses_holding_the_answer_and_long_ones(tiny_vocabulary: Vocabulary) -> None:
    assert "BOX" not in tiny_vocabulary.clues
    assert "BOX" in tiny_vocabulary.words
    assert "BOX" not in tiny_vocabulary.answers
    # The long first gloss gives way to a short second one...
    assert tiny_vocabulary.clues["LAMP"] == "a light"
    # ... but stays when no other sense qualifies.
    assert tiny_vocabulary.clues["DESK"].startswith("a piece of furniture with a writing")
    assert len(tiny_vocabulary.clues["DESK"]) > MAX_CLUE_CHARS


@pytest.mark.parametrize(
    ("gloss", "definition"),
    [
        ('a cat; "cats purr"; "a tom"', "a cat"),
        ("first part; second part", "first part"),
        ('  spaced   out\ttext ; "x"', "spaced out text"),
        ('"only an example"', ""),
        ('before "an unterminated example', "before"),
        ("ends with a colon: ", "ends with a colon"),
    ],
)
def test_gloss_definition(gloss: str, definition: str) -> None:
    assert gloss_definition(gloss) == definition


def test_choose_clue_is_case_insensitive_about_the_answer() -> None:
    assert choose_clue("CAT", ["A Cat-like animal", "a small pet"]) == "a small pet"
    assert choose_clue("CAT", ["concatenate things", "x"]) == "x"
    assert choose_clue("CAT", ["the CAT", '"a cat"']) is None


# --- the validity check ----------------------------------------------------------------------

# A valid hand-made puzzle: two corners joined by COWER, DARTS and RAILS.
GOOD_GRID = (
    "CAT#DOG",
    "O#A#A#O",
    "WAR#RAT",
    "E###T##",
    "RAILS##",
    "#######",
    "#######",
)


def good_puzzle() -> Puzzle:
    entries = [
        ("A1", "across", 0, 0, "CAT"),
        ("A3", "across", 0, 4, "DOG"),
        ("A5", "across", 2, 0, "WAR"),
        ("A6", "across", 2, 4, "RAT"),
        ("A7", "across", 4, 0, "RAILS"),
        ("D1", "down", 0, 0, "COWER"),
        ("D2", "down", 0, 2, "TAR"),
        ("D3", "down", 0, 4, "DARTS"),
        ("D4", "down", 0, 6, "GOT"),
    ]
    return Puzzle(
        GOOD_GRID,
        tuple(ClueEntry(i, d, r, c, a, f"clue for number {i}") for i, d, r, c, a in entries),
    )


def test_a_hand_made_puzzle_is_valid() -> None:
    assert check_puzzle(good_puzzle()) == []
    all_but_rails = {"CAT", "DOG", "WAR", "RAT", "COWER", "TAR", "DARTS", "GOT"}
    assert check_puzzle(good_puzzle(), words=all_but_rails) == ["A7: RAILS is not in the word list"]


def test_grid_slots_number_like_a_crossword() -> None:
    slots = [(s.id, s.row, s.column, s.length) for s in grid_slots(GOOD_GRID)]
    assert slots == [
        ("A1", 0, 0, 3),
        ("A3", 0, 4, 3),
        ("A5", 2, 0, 3),
        ("A6", 2, 4, 3),
        ("A7", 4, 0, 5),
        ("D1", 0, 0, 5),
        ("D2", 0, 2, 3),
        ("D3", 0, 4, 5),
        ("D4", 0, 6, 3),
    ]


def replaced(puzzle: Puzzle, index: int, **changes: object) -> Puzzle:
    clues = list(puzzle.clues)
    clues[index] = dataclasses.replace(clues[index], **changes)
    return Puzzle(puzzle.grid, tuple(clues))


def with_stray_letter(puzzle: Puzzle) -> Puzzle:
    return Puzzle((*puzzle.grid[:6], "######X"), puzzle.clues)


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        (lambda p: replaced(p, 0, clue="a CAT"), "contains the answer"),
        (lambda p: replaced(p, 0, clue="  "), "empty"),
        (lambda p: replaced(p, 5, answer="COTER"), "clashes"),
        (lambda p: replaced(p, 2, answer="RAT"), "clashes"),
        (lambda p: replaced(p, 5, answer="CAWER"), "rebuild"),
        (lambda p: replaced(p, 1, id="A4"), "runs"),
        (lambda p: replaced(p, 0, answer="CA", clue="x"), "3-7 letters"),
        (lambda p: Puzzle(p.grid, p.clues[:-1]), "rebuild"),
        (with_stray_letter, "rebuild"),
        (lambda p: Puzzle(p.grid[:6], p.clues), "7x7"),
    ],
)
def test_check_puzzle_finds_broken_puzzles(
    broken: Callable[[Puzzle], Puzzle], problem: str
) -> None:
    problems = check_puzzle(broken(good_puzzle()))
    assert any(problem in text for text in problems), problems


def test_check_puzzle_rejects_accidental_runs_and_disconnected_words() -> None:
    # Two across words on adjacent rows form accidental two-letter down runs.
    stacked = Puzzle(
        ("CAT####", "DOG####", *["#######"] * 5),
        (
            ClueEntry("A1", "across", 0, 0, "CAT", "a pet"),
            ClueEntry("A4", "across", 1, 0, "DOG", "another pet"),
        ),
    )
    assert any("runs" in text for text in check_puzzle(stacked))
    # Two words far apart, each a valid run, but not connected.
    apart = Puzzle(
        ("CAT####", "#######", "#######", "####DOG", *["#######"] * 3),
        (
            ClueEntry("A1", "across", 0, 0, "CAT", "a pet"),
            ClueEntry("A2", "across", 3, 4, "DOG", "another pet"),
        ),
    )
    assert any("connected" in text for text in check_puzzle(apart))
    assert any("fewer than" in text for text in check_puzzle(apart))


def test_check_puzzle_rejects_a_repeated_answer() -> None:
    grid = ("CAT#CAT", "O#A#O#O", "WAR#WAR", *["#######"] * 4)
    entries = [
        ("A1", "across", 0, 0, "CAT"),
        ("A3", "across", 0, 4, "CAT"),
        ("A5", "across", 2, 0, "WAR"),
        ("A6", "across", 2, 4, "WAR"),
        ("D1", "down", 0, 0, "COW"),
        ("D2", "down", 0, 2, "TAR"),
        ("D3", "down", 0, 4, "COW"),
        ("D4", "down", 0, 6, "TOR"),
    ]
    puzzle = Puzzle(grid, tuple(ClueEntry(i, d, r, c, a, "some clue") for i, d, r, c, a in entries))
    assert any("twice" in text for text in check_puzzle(puzzle))


# --- generation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def word_list_vocabulary() -> Vocabulary:
    """The committed word list with made-up clues: real words, without needing WordNet."""
    words = tuple((data_dir("tasks") / "data" / "crossword_words.txt").read_text().split())
    return Vocabulary(words, {word: f"clue {i}" for i, word in enumerate(words)})


def test_generated_puzzles_are_valid_distinct_and_use_the_vocabulary(
    word_list_vocabulary: Vocabulary,
) -> None:
    puzzles = generate_puzzles(word_list_vocabulary, seed=5, count=12)
    assert len(puzzles) == 12
    assert len({puzzle.grid for puzzle in puzzles}) == 12
    for puzzle in puzzles:
        assert check_puzzle(puzzle, words=word_list_vocabulary.words) == []
        for entry in puzzle.clues:
            assert entry.clue == word_list_vocabulary.clues[entry.answer]


def test_generation_is_deterministic_and_seeded(word_list_vocabulary: Vocabulary) -> None:
    first = puzzle_lines(generate_puzzles(word_list_vocabulary, seed=3, count=4), tests=2)
    again = puzzle_lines(generate_puzzles(word_list_vocabulary, seed=3, count=4), tests=2)
    other = puzzle_lines(generate_puzzles(word_list_vocabulary, seed=4, count=4), tests=2)
    assert first == again
    assert not set(first) & set(other)
    assert ['"split": "test"' in line for line in first] == [True, True, False, False]


def test_a_shorter_generation_is_a_prefix_of_a_longer_one(
    word_list_vocabulary: Vocabulary,
) -> None:
    short = generate_puzzles(word_list_vocabulary, seed=8, count=3)
    long = generate_puzzles(word_list_vocabulary, seed=8, count=7)
    assert long[:3] == short


# --- the committed data ----------------------------------------------------------------------


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_crosswords", REPO_DIR / "scripts" / "make_crosswords.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_reproduces_the_committed_data_from_wordnet(tmp_path: Path) -> None:
    """With the committed parameters, a 3-puzzle run gives the committed first 3 lines."""
    assert (WORDNET_DIR / "index.noun").is_file(), "install wordnet-base (apt-get)"
    load_script().main(["--count", "3", "--out", str(tmp_path)])
    committed = data_dir("tasks") / "data"
    assert (tmp_path / "crossword_words.txt").read_bytes() == (
        committed / "crossword_words.txt"
    ).read_bytes()
    generated = (tmp_path / "crossword_puzzles.jsonl").read_text().splitlines()
    assert len(generated) == 3
    assert generated == (committed / "crossword_puzzles.jsonl").read_text().splitlines()[:3]


def test_the_script_rejects_bad_arguments(tmp_path: Path) -> None:
    script = load_script()
    for arguments in (["--count", "0"], ["--tests", "-1"], ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            script.parse_arguments([*arguments, "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.parse_arguments(["--wordnet-dir", str(tmp_path)])
