"""A third-party regime, installed as a package, is found through the `lmact.regimes`
entry-point group: `lmact run --help` lists it and its option, it runs, is reported and
viewed like a built-in one, with no edit inside lmact/; a plug-in that cannot be a regime
is one line naming it when it is asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugin_regime_example"
HINT = "Think of the corners first."


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example regime built and installed into a directory of its own."""
    site = tmp_path_factory.mktemp("regime-plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(PLUGIN)],
        check=True,
    )  # fmt: skip
    return site


def lmact(site: Path | None, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site) if site else ""}
    return subprocess.run(
        [sys.executable, "-m", "lmact.cli", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_run_help_lists_the_plugin_regime_and_its_option(plugin_site: Path, tmp_path: Path) -> None:
    shown = lmact(plugin_site, ["run", "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "{imitation,replay,icrl,hinted}" in shown.stdout
    assert "--hint HINT" in shown.stdout and "hinted (--regime hinted, a plug-in)" in shown.stdout
    without = lmact(None, ["run", "--help"], tmp_path)
    assert "hinted" not in without.stdout and "--hint" not in without.stdout


def test_the_plugin_regime_runs_is_reported_and_viewed(plugin_site: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "runs.sqlite")
    run = ["run", "--regime", "hinted", "--task", "tic_tac_toe", "--episodes", "2"]
    for model in ("expert", "random"):
        done = lmact(plugin_site, [*run, "--model", model, "--hint", HINT, "--store", store,
                                   "--json"], tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert (summary["regime"], summary["model"], summary["episodes"]) == ("hinted", model, 2)
    report = lmact(plugin_site, ["report", "--store", store, "--format", "json"], tmp_path)
    assert report.returncode == 0, report.stderr
    rows = {row["model"]: row for row in json.loads(report.stdout) if row["regime"] == "hinted"}
    assert {"expert", "random"} <= set(rows)
    assert rows["expert"]["normalized_score"] == 1.0
    # The viewer rebuilds each step's prompt through the plug-in and proves it by its hash.
    page = lmact(plugin_site, ["view", summary["run_id"], "--out", "-", "--store", store,
                               "--cache-dir", str(tmp_path)], tmp_path)  # fmt: skip
    assert page.returncode == 0, page.stderr
    assert HINT in page.stdout


def test_without_the_plugin_its_regime_is_unknown(tmp_path: Path) -> None:
    refused = lmact(None, ["run", "--regime", "hinted", "--task", "tic_tac_toe"], tmp_path)
    assert "hinted" in one_line_error(refused)


def broken_plugin(site: Path, name: str, target: str, module: str) -> Path:
    """A package whose `lmact.regimes` entry point `name` names `target`, with `module`
    as the text of its module `broken_regime`."""
    site.mkdir(parents=True)
    (site / "broken_regime.py").write_text(module)
    info = site / "broken_regime-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-regime\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lmact.regimes]\n{name} = {target}\n")
    return site


@pytest.mark.parametrize(
    ("module", "target", "why"),
    [
        ("raise RuntimeError('no GPU here')\n", "broken_regime:Nope", "cannot be loaded"),
        ("class NotARegime:\n    name = 'broken'\n", "broken_regime:NotARegime", "not a Regime"),
    ],
)
def test_a_plugin_that_cannot_be_a_regime_is_one_line_naming_it(
    tmp_path: Path, module: str, target: str, why: str
) -> None:
    site = broken_plugin(tmp_path / "site", "broken", target, module)
    refused = lmact(site, ["run", "--regime", "broken", "--task", "tic_tac_toe"], tmp_path)
    line = one_line_error(refused)
    assert "broken-regime" in line and why in line
    # Every other regime still works.
    fine = lmact(site, ["run", "--task", "tic_tac_toe", "--model", "random", "--episodes", "1",
                        "--store", str(tmp_path / "s.sqlite")], tmp_path)  # fmt: skip
    assert fine.returncode == 0, fine.stderr


def test_a_regime_name_claimed_twice_is_refused_naming_the_plugin(tmp_path: Path) -> None:
    """As for environment families: a plug-in taking a built-in's name makes that name an
    error that names the plug-in (rather than either winning silently); others still run."""
    module = "from lmact.regimes.replay import ReplayRegime as Copy\n"
    site = broken_plugin(tmp_path / "site", "replay", "broken_regime:Copy", module)
    refused = lmact(site, ["run", "--regime", "replay", "--task", "grid_world"], tmp_path)
    line = one_line_error(refused)
    assert "broken-regime" in line and "taken" in line
    fine = lmact(site, ["run", "--regime", "icrl", "--task", "bandit_easy", "--model", "ucb1",
                        "--episodes", "5", "--replicates", "1", "--store",
                        str(tmp_path / "s.sqlite")], tmp_path)  # fmt: skip
    assert fine.returncode == 0, fine.stderr
