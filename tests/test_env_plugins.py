"""A third-party environment family and its task, installed as a package, are found through
the `lmact.envs` and `lmact.tasks` entry-point groups and run like built-in ones; a name
claimed twice or a plug-in that cannot be loaded is one line naming it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmact.envs import BUILTIN_ENVIRONMENTS, environment_class, installed_entry_points
from lmact.envs.grid_world import GridWorld
from lmact.errors import LmactError
from lmact.tasks import check_task, get_task, task_specs

PLUGIN = Path(__file__).parent / "plugin_env_example"
LINE_WALK = "lmact_line_walk:LineWalk"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plug-in built and installed into a directory of its own."""
    site = tmp_path_factory.mktemp("env-plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(PLUGIN)],
        check=True,
    )  # fmt: skip
    assert (site / "lmact_line_walk" / "tasks" / "line_walk.toml").is_file()
    return site


def lmact(*sites: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, sites))}
    return subprocess.run(
        [sys.executable, "-m", "lmact.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


# --- the example plug-in, installed --------------------------------------------------------


def test_the_plugin_task_is_listed(plugin_site: Path, tmp_path: Path) -> None:
    listing = lmact(plugin_site, args=["tasks"], cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    names = [line.split(":")[0] for line in listing.stdout.splitlines() if line[:1].strip()]
    assert "line_walk" in names and "tic_tac_toe" in names


def test_the_plugin_task_runs_and_is_reported(plugin_site: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "runs.sqlite")
    for model in ("expert", "random"):
        args = ["run", "--task", "line_walk", "--model", model, "--episodes", "2"]
        result = lmact(plugin_site, args=[*args, "--store", store, "--json"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert (summary["task"], summary["model"], summary["episodes"]) == ("line_walk", model, 2)
        if model == "expert":  # the expert walks straight to the goal, within the step limit
            assert summary["mean_return"] == 1.0
    report = lmact(plugin_site, args=["report", "--store", store, "--format", "json"], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = json.loads(report.stdout)
    assert {(row["task"], row["model"]) for row in rows} >= {
        ("line_walk", "expert"),
        ("line_walk", "random"),
    }


def test_the_plugin_passes_the_conformance_check(plugin_site: Path, tmp_path: Path) -> None:
    code = "from lmact.tasks import check_task, get_task; check_task(get_task('line_walk'))"
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_without_the_plugin_the_task_is_unknown(tmp_path: Path) -> None:
    result = lmact(tmp_path, args=["run", "--task", "line_walk", "--model", "expert"], cwd=tmp_path)
    assert "unknown task 'line_walk'" in one_line_error(result)


# --- plug-ins declared by hand-made distributions, in this process ---------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for fake distributions; the example plug-in's source importable."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(folder))
    installed_entry_points.cache_clear()
    yield folder
    installed_entry_points.cache_clear()


def distribution(site: Path, name: str, entry_points: str, **modules: str) -> None:
    """A hand-made installed distribution: its metadata, entry points and modules."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    importlib.invalidate_caches()
    installed_entry_points.cache_clear()


def test_a_plugin_family_and_task_resolve_in_process(site: Path) -> None:
    entries = (
        f"[lmact.envs]\nline_walk = {LINE_WALK}\n[lmact.tasks]\nline = lmact_line_walk.tasks\n"
    )
    distribution(site, "line-walk", entries)
    assert environment_class("line_walk").__name__ == "LineWalk"
    spec = get_task("line_walk")
    assert spec.environment == "line_walk" and spec.options == {"length": 15}
    check_task(spec)


def test_a_plugin_cannot_shadow_a_builtin(site: Path) -> None:
    distribution(site, "shadow-plugin", f"[lmact.envs]\ngrid_world = {LINE_WALK}\n")
    with pytest.raises(LmactError) as caught:
        environment_class("grid_world")
    message = str(caught.value)
    assert BUILTIN_ENVIRONMENTS["grid_world"] in message and "shadow-plugin" in message
    assert environment_class("tic_tac_toe").__name__ == "TicTacToe"  # others still resolve


def test_two_plugins_cannot_claim_one_name(site: Path) -> None:
    distribution(site, "walk-one", f"[lmact.envs]\nwalk = {LINE_WALK}\n")
    distribution(site, "walk-two", f"[lmact.envs]\nwalk = {LINE_WALK}\n")
    with pytest.raises(LmactError, match="walk-one") as caught:
        environment_class("walk")
    assert "walk-two" in str(caught.value)


def test_a_plugin_that_is_not_an_environment(site: Path) -> None:
    distribution(site, "not-env", "[lmact.envs]\nnot_env = lmact_line_walk:ACTIONS\n")
    with pytest.raises(LmactError, match="not-env"):
        environment_class("not_env")
    distribution(site, "no-formats", "[lmact.envs]\nno_formats = no_formats_env:NoFormats\n",
                 no_formats_env="from lmact.envs.base import Environment\n"
                 "class NoFormats(Environment):\n    pass\n")  # fmt: skip
    with pytest.raises(LmactError, match="no-formats"):
        environment_class("no_formats")


def test_a_plugin_that_fails_to_import(site: Path) -> None:
    distribution(site, "raising-env", "[lmact.envs]\nraising = raising_env:Env\n",
                 raising_env="raise RuntimeError('first line\\nsecond line')\n")  # fmt: skip
    with pytest.raises(LmactError, match="raising-env") as caught:
        environment_class("raising")
    assert "\n" not in str(caught.value)
    assert environment_class("grid_world") is GridWorld  # only the broken name fails


def test_a_task_plugin_must_name_an_importable_package(site: Path) -> None:
    for package, entry in (
        ("bad-tasks", "no_such_package_for_lmact_tests"),
        ("attr-tasks", "lmact_line_walk:ACTIONS"),
        ("module-tasks", "lmact.errors"),  # a module, not a package with a folder
    ):
        distribution(site, package, f"[lmact.tasks]\nmine = {entry}\n")
        with pytest.raises(LmactError, match=package):
            task_specs()
        (site / f"{package}-0.1.dist-info" / "entry_points.txt").write_text("")


def test_a_broken_plugin_is_one_line_at_the_command_line(site: Path, tmp_path: Path) -> None:
    distribution(site, "gone-env", "[lmact.envs]\ngone = no_such_module_for_lmact_tests:Env\n")
    spec = tmp_path / "gone_task.toml"
    spec.write_text(
        'name = "gone_task"\nenvironment = "gone"\nobservations = ["txt"]\n'
        'default_observation = "txt"\n'
    )
    run = lmact(site, args=["run", "--task", str(spec), "--model", "random"], cwd=tmp_path)
    error = one_line_error(run)
    assert "gone-env" in error and str(spec) in error
    listing = lmact(site, args=["tasks"], cwd=tmp_path)  # no listed task names it
    assert listing.returncode == 0, listing.stderr
    distribution(site, "gone-tasks", "[lmact.tasks]\ngone = no_such_module_for_lmact_tests\n")
    assert "gone-tasks" in one_line_error(lmact(site, args=["tasks"], cwd=tmp_path))
