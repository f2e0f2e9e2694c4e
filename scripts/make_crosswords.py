"""Regenerate the crossword task's data: the puzzle pool and the word list.

    python scripts/make_crosswords.py

reads WordNet 3.0 (Debian's `wordnet-base` installs it at /usr/share/wordnet) and writes

- `tasks/data/crossword_words.txt`: the vocabulary, one uppercase word per line, sorted; the
  crossword environment accepts only these words as answers;
- `tasks/data/crossword_puzzles.jsonl`: one 7x7 puzzle per line. The committed file was made
  with the defaults: seed 0, 1000 puzzles, the first 200 of them the test split and the rest
  the demonstration split.

The output depends only on the WordNet files and the options, so rerunning the command
reproduces the committed files byte for byte, and `--count k` writes the first k puzzles of
the full set. See `lmact/envs/crossword_generator.py` for how words, clues and grids are made.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from lmact.envs.crossword_generator import (
    generate_puzzles,
    puzzle_lines,
    read_vocabulary,
)

REPO_DIR = Path(__file__).resolve().parent.parent
PUZZLES_FILE = "crossword_puzzles.jsonl"
WORDS_FILE = "crossword_words.txt"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Regenerate the crossword puzzles and word list from WordNet.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0, help="the generation's seed (>= 0)")
    parser.add_argument("--count", type=int, default=1000, help="puzzles to generate")
    parser.add_argument(
        "--tests",
        type=int,
        default=200,
        help="how many of the first puzzles form the test split (all, if more than --count)",
    )
    parser.add_argument(
        "--wordnet-dir",
        type=Path,
        default=Path("/usr/share/wordnet"),
        help="WordNet 3.0's folder of index.* and data.* files",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_DIR / "tasks" / "data", help="the folder to write to"
    )
    arguments = parser.parse_args(argv)
    if arguments.seed < 0:
        parser.error("--seed must be non-negative")
    if arguments.count < 1:
        parser.error("--count must be at least 1")
    if arguments.tests < 0:
        parser.error("--tests must be non-negative")
    if not (arguments.wordnet_dir / "index.noun").is_file():
        parser.error(
            f"no WordNet index files in {arguments.wordnet_dir} (apt-get install wordnet-base)"
        )
    return arguments


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    vocabulary = read_vocabulary(arguments.wordnet_dir)
    print(
        f"{len(vocabulary.words)} words, {len(vocabulary.clues)} with a clue",
        file=sys.stderr,
    )
    with tqdm(total=arguments.count, unit="puzzle", file=sys.stderr) as bar:
        puzzles = generate_puzzles(
            vocabulary, arguments.seed, arguments.count, progress=lambda: bar.update()
        )

    arguments.out.mkdir(parents=True, exist_ok=True)
    words_path = arguments.out / WORDS_FILE
    puzzles_path = arguments.out / PUZZLES_FILE
    words_path.write_text("".join(f"{word}\n" for word in vocabulary.words), encoding="utf-8")
    lines = puzzle_lines(puzzles, arguments.tests)
    puzzles_path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    word_counts = [len(puzzle.clues) for puzzle in puzzles]
    print(
        f"wrote {words_path} and {puzzles_path}: {len(puzzles)} puzzles "
        f"({min(arguments.tests, len(puzzles))} test), "
        f"{statistics.mean(word_counts):.1f} words per puzzle "
        f"(min {min(word_counts)}, max {max(word_counts)}), "
        f"in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
