"""The regimes (settings) lmact plays, by name, and the union of their configurations.

A new regime is a module here implementing `lmact.regimes.base.Regime`, listed in
`REGIMES`; its `config_type` joins the union that stored configurations are read with, and
the runner, the store and the report need no edit.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from lmact.regimes.base import Regime, RegimeConfig
from lmact.regimes.icrl import IcrlRegime
from lmact.regimes.imitation import ImitationRegime
from lmact.regimes.replay import ReplayRegime

REGIMES: dict[str, Regime[Any, Any]] = {
    regime.name: regime for regime in (ImitationRegime(), ReplayRegime(), IcrlRegime())
}
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
