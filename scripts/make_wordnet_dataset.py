"""Build the `classification` task's dataset from WordNet 3.0 (Debian's `wordnet-base`).

Each example is a synset's gloss (its definition, without the quoted usage examples, which
often name the word; definitions that several synsets share are left out) labelled by the
synset's lexicographer file (`noun.animal`,
`verb.motion` …). Twelve labels; per label the first synsets in a fixed hash order go to
the test split and the next to the train stream, and each split is ordered by the same
hash, so the files are the same bytes on every machine:

    python scripts/make_wordnet_dataset.py [--wordnet DIR] [--out DIR]

(defaults: /usr/share/wordnet and tasks/data/wordnet_glosses)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

# WordNet 3.0's lexicographer files by number (lexnames(5)); the labels used here.
LEXICOGRAPHER_FILES = {
    5: "noun.animal",
    6: "noun.artifact",
    8: "noun.body",
    13: "noun.food",
    15: "noun.location",
    18: "noun.person",
    20: "noun.plant",
    27: "noun.substance",
    32: "verb.communication",
    34: "verb.consumption",
    37: "verb.emotion",
    38: "verb.motion",
}
TRAIN_PER_LABEL = 150
TEST_PER_LABEL = 40
MIN_GLOSS_CHARS = 12


def glosses(data_file: Path) -> list[tuple[str, str, str]]:
    """(offset, label, definition) of every synset of a kept lexicographer file."""
    found = []
    for line in data_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        label = LEXICOGRAPHER_FILES.get(int(fields[1]))
        definition = gloss.split('; "')[0].strip().rstrip(";").strip()
        if label and len(definition) >= MIN_GLOSS_CHARS:
            found.append((fields[0] + fields[2], label, definition))
    return found


def _order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def build(wordnet: Path) -> dict[str, list[dict[str, str]]]:
    entries = [entry for name in ("data.noun", "data.verb") for entry in glosses(wordnet / name)]
    # A definition that two synsets share could fall in both splits, or carry two labels.
    counts: dict[str, int] = {}
    for _, _, text in entries:
        counts[text] = counts.get(text, 0) + 1
    by_label: dict[str, list[tuple[str, str, str]]] = {}
    for entry in entries:
        if counts[entry[2]] == 1:
            by_label.setdefault(entry[1], []).append(entry)
    splits: dict[str, list[tuple[str, str, str]]] = {"train": [], "test": []}
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda entry: _order(entry[0]))
        if len(ordered) < TRAIN_PER_LABEL + TEST_PER_LABEL:
            raise SystemExit(f"{label}: only {len(ordered)} glosses")
        splits["test"] += ordered[:TEST_PER_LABEL]
        splits["train"] += ordered[TEST_PER_LABEL : TEST_PER_LABEL + TRAIN_PER_LABEL]
    return {
        split: [
            {"text": text, "label": label}
            for _, label, text in sorted(entries, key=lambda entry: _order("mix" + entry[0]))
        ]
        for split, entries in splits.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=Path("tasks/data/wordnet_glosses"))
    args = parser.parse_args()
    if not (args.wordnet / "data.noun").is_file():
        print(
            f"no WordNet data under {args.wordnet}: apt-get install wordnet-base", file=sys.stderr
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in build(args.wordnet).items():
        lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        (args.out / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        print(f"{split}: {len(rows)} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
