"""A third-party provider, installed as a package, is found through the `lmact.models`
entry-point group and runs like a built-in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugin_example"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin built and installed into a directory of its own."""
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(PLUGIN)],
        check=True,
    )  # fmt: skip
    assert (site / "lmact_echo_plugin.py").is_file()
    return site


def lmact(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "lmact.cli", *args], env=env, capture_output=True, text=True
    )


def test_the_plugin_is_listed(plugin_site: Path) -> None:
    listing = lmact(plugin_site, "models")
    assert listing.returncode == 0, listing.stderr
    assert "echo/<model>" in listing.stdout.splitlines()


def test_a_run_through_the_plugin(plugin_site: Path, tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    args = ["run", "--task", "tic_tac_toe", "--model", "echo/b2", "--episodes", "3"]
    result = lmact(plugin_site, *args, "--demos", "1", "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == "echo/b2" and summary["episodes"] == 3
    # Episodes that share an opening share prompts: those calls come from the cache.
    assert summary["calls_made"] + summary["calls_cached"] == summary["steps"] > 0
    assert summary["calls_made"] > 0
    assert summary["prompt_tokens"] > 0


def test_without_the_plugin_the_name_is_unknown(tmp_path: Path) -> None:
    result = lmact(tmp_path, "run", "--task", "tic_tac_toe", "--model", "echo/b2")
    assert result.returncode == 2
    assert "unknown model 'echo/b2'" in result.stderr
