"""The regimes (settings) lmact plays, by name, and the union of their configurations.

A new regime is a module here implementing `lmact.regimes.base.Regime`, listed in `REGIMES`
and in `RunConfig`; the runner, the store and the report need no edit.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from lmact.regimes.base import Regime, RegimeConfig
from lmact.regimes.icrl import IcrlConfig, IcrlRegime
from lmact.regimes.imitation import ImitationConfig, ImitationRegime
from lmact.regimes.replay import ReplayConfig, ReplayRegime

REGIMES: dict[str, Regime[Any, Any]] = {
    regime.name: regime for regime in (ImitationRegime(), ReplayRegime(), IcrlRegime())
}
AnyConfig = ImitationConfig | ReplayConfig | IcrlConfig
# Every regime's configuration, told apart by its `regime` field.
RunConfig = Annotated[AnyConfig, Field(discriminator="regime")]
_RUN_CONFIG: TypeAdapter[AnyConfig] = TypeAdapter(RunConfig)


def parse_config(values: object) -> AnyConfig:
    """A stored configuration read back (pydantic's ValidationError if it is not one)."""
    return _RUN_CONFIG.validate_python(values)


def regime_of(config: RegimeConfig) -> Regime[Any, Any]:
    return REGIMES[config.regime]
