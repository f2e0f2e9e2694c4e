"""The regimes (settings) lmact plays, by name, the union of their configurations, and the
options and measures they declare.

A new regime is a module here implementing `lmact.regimes.base.Regime`, listed in
`REGIMES`; its `config_type` joins the union that stored configurations are read with, its
`options` join those of `lmact run`, the API and sweep files (`lmact.options`), and the
runner, the store and the report need no edit.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from lmact.declarations import Measure, Option
from lmact.regimes.base import Regime, RegimeConfig
from lmact.regimes.icrl import IcrlRegime
from lmact.regimes.imitation import ImitationRegime
from lmact.regimes.replay import ReplayRegime

REGIMES: dict[str, Regime[Any, Any]] = {
    regime.name: regime for regime in (ImitationRegime(), ReplayRegime(), IcrlRegime())
}
DEFAULT_REGIME = "imitation"
# Every regime's configuration, told apart by its `regime` field.
RunConfig = Annotated[
    Union[tuple(regime.config_type for regime in REGIMES.values())],  # noqa: UP007
    Field(discriminator="regime"),
]
_RUN_CONFIG: TypeAdapter[RegimeConfig] = TypeAdapter(RunConfig)


def parse_config(values: object) -> RegimeConfig:
    """A stored configuration read back (pydantic's ValidationError if it is not one)."""
    return _RUN_CONFIG.validate_python(values)


def regime_of(config: RegimeConfig) -> Regime[Any, Any]:
    return REGIMES[config.regime]


def _collected() -> dict[str, Option]:
    """The options the regimes declare, by name: an option several regimes take is one
    declaration (the same object) that each lists."""
    options: dict[str, Option] = {}
    for regime in REGIMES.values():
        for option in regime.options:
            if options.setdefault(option.name, option) is not option:
                raise TypeError(f"option {option.name} is declared twice (regime {regime.name})")
    return options


# Every option that some regime takes, by name, in the order the regimes declare them.
REGIME_OPTIONS = _collected()
# The measures the regimes show by name, in the order they declare them.
MEASURES: tuple[Measure, ...] = tuple(
    {m.name: m for regime in REGIMES.values() for m in regime.measures_shown}.values()
)
