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
from lmact.envs import entry_point_origin, plugin_entry_points
from lmact.regimes.base import Regime, RegimeConfig
from lmact.regimes.icrl import IcrlRegime
from lmact.regimes.imitation import ImitationRegime
from lmact.regimes.replay import ReplayRegime

ENTRY_POINT_GROUP = "lmact.regimes"
BUILTIN_REGIMES: dict[str, Regime[Any, Any]] = {
    regime.name: regime for regime in (ImitationRegime(), ReplayRegime(), IcrlRegime())
}
DEFAULT_REGIME = "imitation"


def _plugin_problem(name: str, target: object, taken: dict[str, Regime[Any, Any]]) -> str | None:
    """Why an entry point's target cannot be a regime of that name, or None."""
    if not (isinstance(target, type) and issubclass(target, Regime)):
        return "it is not a Regime subclass"
    if getattr(target, "name", None) != name:
        return f"its class's name is {getattr(target, 'name', None)!r}, not {name!r}"
    if name in taken:
        return "that name is taken (built-in regimes and earlier plug-ins keep theirs)"
    config = getattr(target, "config_type", None)
    if not (isinstance(config, type) and issubclass(config, RegimeConfig)):
        return "its config_type is not a RegimeConfig subclass"
    if config.model_fields.get("regime") is None or config.model_fields["regime"].default != name:
        return f"its configuration's regime field does not default to {name!r}"
    # (An option of lmact's own, `lmact.options`, is checked there: it imports this.)
    declared = {o.name: o for regime in taken.values() for o in regime.options}
    clash = [o.name for o in target.options if declared.get(o.name, o) is not o]
    if clash:
        return f"it declares options another regime declares already: {', '.join(clash)}"
    return None


def _with_plugins() -> tuple[dict[str, Regime[Any, Any]], dict[str, str]]:
    """The built-in regimes and those installed under the entry-point group
    `lmact.regimes` (name = "module:RegimeClass"); a plug-in that cannot be one is left out,
    and why is kept (by its name) for the one line that says so when it is asked for."""
    regimes, broken = dict(BUILTIN_REGIMES), {}
    for entry_point in plugin_entry_points(ENTRY_POINT_GROUP):
        origin = entry_point_origin(entry_point)
        try:
            target = entry_point.load()
        except Exception as error:  # a plug-in's import may fail in any way
            broken[entry_point.name] = f"regime plug-in {origin} cannot be loaded: {error}"
            continue
        problem = _plugin_problem(entry_point.name, target, regimes)
        if problem is not None:
            broken[entry_point.name] = f"regime plug-in {origin} is refused: {problem}"
        else:
            regimes[entry_point.name] = target()
    return regimes, broken


REGIMES, BROKEN_REGIMES = _with_plugins()
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
