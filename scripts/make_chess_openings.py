"""Regenerate the chess task's pool of openings (tasks/data/chess_openings.jsonl).

    python scripts/make_chess_openings.py            # the committed pool: seed 0, 1000, 200 tests

Needs Stockfish (`apt-get install stockfish`). The pool is deterministic for a seed and a
Stockfish version; the committed one was made with Debian's Stockfish 15.1. Using the task
needs only the committed file, not this script.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tqdm import tqdm

from lmact.envs.chess import close_engines, generate_openings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--count", type=int, default=1000, help="openings in all (default 1000)")
    parser.add_argument(
        "--tests", type=int, default=200, help="how many of them, first, are test openings"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "tasks" / "data" / "chess_openings.jsonl",
        help="output file (default: the committed pool)",
    )
    args = parser.parse_args()
    with tqdm(total=args.count, desc="openings", unit="opening") as bar:
        openings = generate_openings(args.count, args.tests, args.seed, progress=bar.update)
    close_engines()
    temporary = args.out.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(opening) + "\n" for opening in openings))
    os.replace(temporary, args.out)
    print(f"wrote {len(openings)} openings ({args.tests} for tests) to {args.out}")


if __name__ == "__main__":
    main()
