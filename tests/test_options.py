"""Options declared once (lmact/declarations.py, lmact/options.py, each regime's `options`):
the API, the command line, sweep files and the report all take them from the
declarations; the one reader checks names, types, bounds and regimes, and its errors name
fields, which the command line says as flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmact import api
from lmact.cli import build_parser, say
from lmact.cli import run as run_command
from lmact.cli.arguments import Parser, flag_of, given, stated
from lmact.declarations import Option, OptionError, Scope
from lmact.errors import LmactError
from lmact.options import COMMON, OPTIONS, in_run_id, read_run
from lmact.regimes import REGIME_OPTIONS, REGIMES
from lmact.report.compare import SETTINGS
from lmact.report.tables import COLUMNS, CURVE_RUN_COLUMNS
from lmact.resources import data_dir


def regime_taking(option: Option) -> str:
    """A regime that takes the option (the default regime for the common ones)."""
    if option.name not in REGIME_OPTIONS:
        return "imitation"
    return next(name for name, r in REGIMES.items() if option in r.options)


# The options that shape a --scenario prompt, given with one.
_SCENARIO_FACTORS = ("framing", "returns", "reinforced_cot", "prompt_horizon")


def sample(option: Option, folder: Path) -> tuple[dict[str, Any], Any]:
    """A value the option takes, and the other options it needs: (options, value)."""
    if option.name == "preset":  # its own regime (icrl); the task given wins: a bandit's
        return {"task": "bandit_easy"}, "krishnamurthy-easy"
    needs: dict[str, Any] = {"regime": regime_taking(option)}
    special: dict[str, Any] = {
        "regime": "replay", "task": "grid_world", "model": "expert", "observation": "png",
        "prompts": data_dir("prompts"), "store": folder / "s.sqlite", "cache_dir": folder,
        "base_url": ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"],
        "text_field": "q", "label_field": "intent", "history": "summary",
        "demo_draw": "per-episode", "task_option": ["opening_plies=1"],
        "log_to": ("wandb", "mlflow"),
    }  # fmt: skip
    classification = ("dataset", "held_out", "text_field", "label_field", "unsemantic_labels")
    if option.name in (*classification, "eval_every", "reset", "labels"):
        needs["task"] = "classification"
    if option.name in ("history", "buttons", "scenario", *_SCENARIO_FACTORS):
        needs["task"] = "bandit_easy"
    if option.name in _SCENARIO_FACTORS:
        needs["scenario"] = "buttons"
    if option.name == "demo_pool":
        needs["demo_draw"] = "per-episode"
    if option.name == "ucb_c":
        needs["model"] = "ucb"
    if option.name in ("dataset", "held_out", "text_field", "label_field"):
        data = folder / "intents.jsonl"
        rows = [{"q": "play jazz", "intent": "music"}, {"q": "wake me", "intent": "alarm"}]
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        needs |= {"dataset": data, "held_out": data, "text_field": "q", "label_field": "intent"}
    if option.name in special:
        value = special[option.name]
    elif option.type is bool:
        value = True
    elif option.choices is not None:
        value = [c for c in option.choices if c != option.default][-1]
    elif option.type is int:
        value = 3 if option.least is None or option.least <= 3 else int(option.least)
    elif option.type is float:
        value = 0.5
    else:
        value = needs.get(option.name, folder / "x")
    return needs, value


def landed(read: Any, option: Option, value: Any) -> bool:
    """Whether the value given reached what the option decides."""
    process, config = read.process, read.config
    if option.scope is Scope.MODEL:
        got = getattr(process.model, option.keyword)
        if option.multiple:
            return (got, *process.model.more_base_urls) == tuple(value)
        return got == (not value if option.negated else value)
    if option.scope is Scope.PROCESS:
        return getattr(process, option.name) == value
    if option.name in ("dry_run", "restart"):
        return getattr(read, option.name) is True
    if option.name == "json":
        return True  # the API returns what --json prints, whatever it says
    if option.name == "preset":
        return config.regime == "icrl" and read.episodes == 100 and config.temperature == 0
    if option.name == "buttons":  # drawn: the absent field of runs made before the option
        return config.buttons == (None if value == "drawn" else value)
    if option.name == "episodes":
        return read.episodes == value
    if option.name == "task_option":  # KEY=VALUE texts, read as TOML values
        return config.task_options == {"opening_plies": 1}
    if option.name in ("task", "regime"):
        return getattr(config, option.name) == value
    if option.name in ("dataset", "held_out", "text_field", "label_field"):
        return config.task.startswith("classification-intents-")
    if option.name == "unsemantic_labels":
        return config.task.endswith("-unsemantic")
    got = getattr(config, option.keyword)
    if option.name == "prompts":
        return got == str(Path(value).resolve())
    return got == (not value if option.negated else value)


def test_every_option_of_lmact_run_is_a_keyword_of_api_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[Any] = []
    monkeypatch.setattr(api, "play", lambda options, **_: read.append(options) or _Played())
    run_arguments = Parser()
    run_command.arguments(run_arguments)
    flags = {flag for action in run_arguments._actions for flag in action.option_strings}
    assert len(OPTIONS) > 40
    for option in OPTIONS.values():
        needs, value = sample(option, tmp_path)
        options = {"task": "tic_tac_toe", **needs, option.name: value}
        api.run(**options)
        assert landed(read[-1], option, value), option.name
        assert flag_of(option) in flags  # `lmact run` takes it, by its name with dashes


class _Played:
    def to_dict(self) -> dict[str, Any]:
        return {}


def test_the_command_line_reads_each_option_as_the_api_does() -> None:
    args = build_parser().parse_args(["run", "--task", "tic_tac_toe"])
    values = given(args)
    assert values.keys() == OPTIONS.keys()  # one argument per declaration, by its name
    assert all(values[name] == option.default for name, option in OPTIONS.items() if name != "task")
    prompts = str(data_dir("prompts"))
    words = ["run", "--task", "tic_tac_toe", "--demos", "3", "--no-past-actions", "--cot",
             "--legal-actions", "--prompts", prompts, "--timeout", "7"]  # fmt: skip
    args = build_parser().parse_args(words)
    by_flags = read_run(given(args), stated(args))
    by_names = read_run({"task": "tic_tac_toe", "demos": 3, "no_past_actions": True, "cot": True,
                         "legal_actions": True, "prompts": prompts,
                         "timeout": 7})  # fmt: skip
    assert by_flags.config == by_names.config and by_flags.process.model == by_names.process.model
    assert by_names.config.past_actions is False and by_names.process.model.timeout_s == 7.0


@pytest.mark.parametrize(
    ("options", "message", "flagged"),
    [
        ({"episodes": 0}, "episodes must be positive, not 0", "--episodes must be positive, not 0"),
        ({"demos": -1}, "demos must be at least 0, not -1", "--demos must be at least 0"),
        ({"timeout": float("nan")}, "timeout must be a finite number, not nan", "--timeout must"),
        ({"timeout": 10**400}, "timeout must be a finite number, not inf", "--timeout must"),
        ({"p_keep": 0.0, "regime": "icrl"}, "p_keep must be positive", "--p-keep must be positive"),
        ({"max_connections": -1}, "max_connections must be positive, not -1",
         "--max-connections must be positive, not -1"),
        ({"variant": "stochastic"}, "variant does not apply to regime imitation",
         "--variant does not apply to --regime imitation"),
        ({"regime": "icrl", "demos": 2}, "demos does not apply to regime icrl",
         "--demos does not apply to --regime icrl"),
        ({"regime": "replay", "demo_draw": "per-episode"},
         "demo_draw does not apply to regime replay", "--demo-draw does not apply"),
        ({"demos": 1, "token_budget": 900}, "give either demos or token_budget, not both",
         "give either --demos or --token-budget, not both"),
        ({"demos": 8, "demo_draw": "per-episode", "demo_pool": 5},
         "demos 8 cannot be drawn from a pool of 5; give demo_pool 8 or more, or demo_draw shared",
         "--demos 8 cannot be drawn from a pool of 5; give --demo-pool 8 or more, or --demo-draw"),
        ({"demo_pool": 5}, "demo_pool needs demo_draw per-episode",
         "--demo-pool needs --demo-draw per-episode"),
        ({"held_out": "x.jsonl"}, "held_out needs dataset", "--held-out needs --dataset"),
        ({"regime": "icrl", "history": "summary"}, "history summary summarizes bandit rounds",
         "--history summary summarizes"),
        ({"answer_match": "fuzzy"}, "unknown answer_match 'fuzzy'; accepted: lenient, exact",
         "unknown --answer-match 'fuzzy'"),
        ({"regime": "bandit"}, "unknown regime 'bandit'; accepted: imitation, replay, icrl",
         "unknown --regime 'bandit'"),
        ({"seed": 1.5}, "seed takes an integer, not 1.5", "--seed takes an integer"),
        ({"cot": "yes"}, "cot takes true or false, not 'yes'", "--cot takes true or false"),
        ({"episode": 3}, "unrecognized argument episode (not an option of a run); did you mean "
         "episodes?", "unrecognized argument episode"),
    ],
)  # fmt: skip
def test_errors_name_fields_and_the_command_line_says_them_as_flags(
    options: dict[str, Any], message: str, flagged: str
) -> None:
    with pytest.raises(LmactError) as refused:
        read_run({"task": "tic_tac_toe", "model": "random", **options})
    assert message in str(refused.value)
    assert flagged in say(refused.value)
    assert "\n" not in say(refused.value)


def test_an_option_error_is_said_either_way_and_stays_an_lmact_error() -> None:
    from lmact.declarations import Named

    error = OptionError(Named("max_steps"), " and ", Named("base_url"), " {braces} kept")
    assert str(error) == "max_steps and base_url {braces} kept"
    assert say(error) == "--max-steps and --base-url {braces} kept"
    assert say(LmactError("--episodes as written")) == "--episodes as written"


def test_out_of_range_options_fail_before_any_work(tmp_path: Path) -> None:
    store = tmp_path / "results" / "r.sqlite"
    for options, message in [
        ({"max_connections": -1}, "max_connections must be positive, not -1"),
        ({"timeout": float("nan")}, "timeout must be a finite number, not nan"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"input_price": float("nan")}, "input_price must be a finite number"),
        ({"output_price": float("inf")}, "output_price must be a finite number"),
        ({"input_price": -1}, "input_price must be at least 0"),
        ({"max_wait": -5}, "max_wait must be positive"),
        ({"demos": 1_000_000_000}, "demos must be at most 100000"),
        ({"episodes": 999_999_999}, "episodes must be at most 100000"),
        ({"seed": 999_999_999_999}, "seed must be at most"),
        ({"workers": 0}, "workers must be positive"),
        ({"max_tokens": 10**30}, "max_tokens must be at most"),
    ]:
        with pytest.raises(OptionError, match=message):
            api.run("tic_tac_toe", **{"model": "random", "episodes": 2, "store": store, **options})
    assert not store.parent.exists()  # nothing was started


def test_each_regime_option_is_a_field_of_the_regimes_configuration() -> None:
    for regime in REGIMES.values():
        fields = regime.config_type.model_fields
        options = (*COMMON, *regime.options)
        configured = [o for o in options if o.scope is Scope.RUN and o.configures]
        assert all(option.keyword in fields for option in configured), regime.name
    assert in_run_id("seed", "imitation") and in_run_id("variant", "icrl")
    assert not in_run_id("replicates", "icrl") and not in_run_id("episodes", "icrl")
    assert not in_run_id("prompts", "imitation") and in_run_id("prompts", "replay")


def test_the_report_takes_its_option_columns_from_the_declarations() -> None:
    labels = [o.label for o in OPTIONS.values() if o.label is not None]
    assert set(labels) <= set(COLUMNS) and set(SETTINGS) <= set(labels)
    assert COLUMNS[:7] == ["run_id", "task", "regime", "observation", "model", "demos",
                           "token_budget"]  # fmt: skip
    assert CURVE_RUN_COLUMNS == ["run_id", "task", "model", "variant", "history", "layout",
                                 "scenario", "framing", "returns"]  # fmt: skip
    assert "past_actions" in COLUMNS and "no_past_actions" not in COLUMNS


def test_api_run_with_a_dry_run_returns_what_the_command_prints(tmp_path: Path) -> None:
    from helpers import lmact

    options = {"model": "random", "demos": 2, "episodes": 3, "store": tmp_path / "r.sqlite",
               "cache_dir": tmp_path / "cache"}  # fmt: skip
    estimate = api.run("tic_tac_toe", dry_run=True, json=True, **options)
    words = ["run", "--task", "tic_tac_toe", "--model", "random", "--demos", "2", "--episodes",
             "3", "--dry-run", "--json", "--store", "r.sqlite", "--cache-dir", "cache"]  # fmt: skip
    printed = lmact(*words, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    command = json.loads(printed.stdout)
    # The API's dry run generated the demonstrations and the command's read them: only what
    # that generation took differs.
    assert estimate["demonstrations_generated"] == 2 and command["demonstrations_generated"] == 0
    made = ("demonstrations_generated", "demonstration_workers", "demonstrations_generation_s",
            "demonstrations_forecast_s")  # fmt: skip
    assert {k: v for k, v in command.items() if k not in made} == {
        k: v for k, v in estimate.items() if k not in made
    }
    assert set(command) == set(estimate) and estimate["dry_run"] is True
    assert estimate["episodes_todo"] == 3 and estimate["demonstrations_needed"] == 2
    with pytest.raises(OptionError, match="give model_options or timeout, not both"):
        api.run("tic_tac_toe", model_options=api.ModelOptions(), timeout=3, **options)
