"""Text classification as a one-step task (a contextual bandit): an input is shown with the
labels to choose from, the agent names one, and the reward is 1 if it is right, else 0.

Examples come from JSONL (one object per line) or CSV (a header row) files, read once per
process. Test seeds (below DEMO_SEED_BASE) draw from the `stream` file in order (cycling,
where a regime allows it: in-context RL refuses a run that would repeat an input);
demonstration seeds from the `held_out` file, so no demonstration is a test input.
`unsemantic_labels` replaces each label by a meaningless id (L01, L02 … in sorted order).
"""

from __future__ import annotations

import csv
import io
import json
from functools import cache
from pathlib import Path
from typing import ClassVar

from lmact.envs.base import (
    Environment,
    IllegalActionError,
    InvalidActionError,
    Observation,
    StepOutcome,
    file_option,
    pool_entry,
    strip_answer,
)

MAX_EXAMPLES = 1_000_000


def _rows(path: Path, content: str) -> list[dict[str, object]]:
    """The rows of a CSV file (by its header) or a JSONL file (one object a line). Lines end
    at a newline only: str.splitlines would also cut at U+2028, U+0085 … which a JSON string
    written with ensure_ascii=False, or a quoted CSV field, may hold."""
    if path.suffix == ".csv":
        try:
            return list(csv.DictReader(io.StringIO(content, newline="")))
        except csv.Error as error:  # e.g. a field over the csv module's size limit
            raise ValueError(f"dataset {path} is not CSV ({error})") from None
    rows = []
    for number, line in enumerate(content.split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: a line nested too deep
                raise ValueError(f"dataset {path} line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise ValueError(f"dataset {path} line {number} is not a JSON object")
            rows.append(row)
    return rows


@cache
def load_examples(path: Path, text_field: str, label_field: str) -> tuple[tuple[str, str], ...]:
    """The (text, label) pairs of a JSONL or CSV file; ValueError naming the first problem."""
    try:  # utf-8-sig: Excel's "CSV UTF-8" (and some editors) start the file with a BOM
        content = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"dataset {path} cannot be read ({error})") from None
    rows = _rows(path, content)
    examples = []
    for number, row in enumerate(rows, 1):
        text, label = row.get(text_field), row.get(label_field)
        if (
            not isinstance(text, str)
            or not text.strip()
            or isinstance(label, bool)
            or not isinstance(label, str | int)
            or not str(label).strip()
        ):
            raise ValueError(
                f"dataset {path} example {number} lacks a text {text_field!r} or a label "
                f"{label_field!r}"
            )
        examples.append((" ".join(text.split()), str(label).strip()))
    if not examples or len(examples) > MAX_EXAMPLES:
        raise ValueError(f"dataset {path} must hold 1 … {MAX_EXAMPLES} examples")
    return tuple(examples)


class Classification(Environment):
    observation_formats: ClassVar[tuple[str, ...]] = ("txt",)

    def __init__(
        self,
        stream: str = "data/wordnet_glosses/train.jsonl",
        held_out: str = "data/wordnet_glosses/test.jsonl",
        text_field: str = "text",
        label_field: str = "label",
        unsemantic_labels: bool = False,
        list_labels: bool = True,
    ) -> None:
        self.stream = load_examples(file_option("stream", stream), text_field, label_field)
        self.held_out = load_examples(file_option("held_out", held_out), text_field, label_field)
        names = sorted({label for _, label in self.stream + self.held_out})
        self.names = (
            {name: f"L{index:02d}" for index, name in enumerate(names, 1)}
            if unsemantic_labels
            else {name: name for name in names}
        )
        self.labels = sorted(self.names.values())
        # False: the input alone, as Monea et al. show it (the labels are learned from the
        # context, or held by a constraint).
        self.list_labels = list_labels
        self.text, self.gold = "", ""

    def distinct_starts(self, demonstrations: bool = False) -> int | None:
        return len(self.held_out if demonstrations else self.stream)

    def reset(self, seed: int) -> None:
        text, label = pool_entry(seed, self.stream, self.held_out)
        self.text, self.gold = text, self.names[label]
        self._done = False

    def step(self, action: str) -> StepOutcome:
        self._done, self._ended_by = True, "right" if action == self.gold else "wrong"
        return StepOutcome(reward=float(action == self.gold), done=True)

    def legal_actions(self) -> list[str]:
        return [] if self._done else list(self.labels)

    def render(self, fmt: str) -> Observation:
        if fmt not in self.observation_formats:
            raise ValueError(f"unknown observation format {fmt!r}")
        if not self.list_labels:
            return Observation(text=f"Text: {self.text}")
        return Observation(text=f"Text: {self.text}\nLabels: {', '.join(self.labels)}")

    def parse_action(self, answer: str) -> str:
        word = strip_answer(answer)
        for label in self.labels:
            if word.lower() == label.lower():
                if self._done:
                    raise IllegalActionError("the example is answered")
                return label
        raise InvalidActionError("not one of the labels")

    def expert_action(self) -> str:
        """The gold label."""
        return self.gold
