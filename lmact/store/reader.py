"""Reading a finished run's steps without holding them all: a unit's steps when asked for,
or only some columns of every step as a stream (`RunStore.step_values`)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lmact.models.base import TOKEN_FIELDS
from lmact.records import StepRecord, UnitKey, UnitKind, Usage, column_names
from lmact.store.base import read_facts

if TYPE_CHECKING:
    from lmact.store.reads import StoreReads as RunStore

_TOKENS = frozenset(TOKEN_FIELDS)


class StoredSteps:
    """A finished run's stored steps, for its regime's measures and pages. A unit's steps as
    records (`reader(unit)`): read a stretch of its chain at a time when first asked for,
    so that a page of a run's first 20 episodes reads those, not the run's. All of them,
    as a stream: only some columns (`values`), or records (`records`)."""

    STRETCH = 64  # units read at once

    def __init__(self, store: RunStore, run_id: str) -> None:
        self._store, self._run_id = store, run_id
        self._read: dict[UnitKey, list[StepRecord]] = {}

    def __call__(self, unit: UnitKey) -> list[StepRecord]:
        if unit not in self._read:
            stretch = range(unit.index, unit.index + self.STRETCH)
            self._read.update({UnitKey(unit.chain, i, unit.kind): [] for i in stretch})
            for step in self._store.steps(self._run_id, unit, self.STRETCH):
                self._read[step.unit].append(step)
        return self._read[unit]

    def values(
        self,
        columns: Sequence[str],
        kinds: Collection[UnitKind] | None = None,
        first_step: bool = False,
    ) -> Iterator[tuple[Any, ...]]:
        """`RunStore.step_values` of the run."""
        return self._store.step_values(self._run_id, columns, kinds, first_step)

    def first_step_groups(
        self, columns: Sequence[str], summed: str, kinds: Collection[UnitKind]
    ) -> list[tuple[Any, ...]]:
        """`RunStore.first_step_groups` of the run."""
        return self._store.first_step_groups(self._run_id, columns, summed, kinds)

    def read_facts(self, text: str, where: str) -> dict[str, Any]:
        """A step's facts from their stored text; a damaged text is a one-line StoreError
        naming the store and `where` it is."""
        return read_facts(text, where, self._store.path)

    def records(
        self, kinds: Collection[UnitKind] | None = None, first_step: bool = False
    ) -> Iterator[StepRecord]:
        """The records of the steps `values` gives, one at a time."""
        names = column_names(StepRecord)
        for row in self.values(names, kinds, first_step):
            values = dict(zip(names, row, strict=True))
            plain = {name: value for name, value in values.items() if name not in _TOKENS}
            yield StepRecord(**plain, usage=Usage.from_columns(values))
