"""What a regime's runs are reported by first: the value (and interval) the report's pivot
table shows, and along which axis (`lmact.report.pivot` draws it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Headline:
    """A regime's headline: `value`, a report column, with its interval (the columns
    `<interval>_low` and `<interval>_high`), one table column per distinct value of the
    column `across`; or, with `measures`, those report columns side by side."""

    title: str
    value: str
    interval: str | None = None
    across: str | None = None
    across_label: str = ""
    measures: tuple[str, ...] = ()
