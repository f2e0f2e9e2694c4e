"""A run store written by release 0.1 (tests/fixtures/store-0.1.sqlite, made by
scripts/make_store_fixture.py) still opens, reports, and resumes its unfinished run without
a new model call, given the options that keep 0.1's behaviour (`--demo-draw shared`)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "store-0.1.sqlite"


def fixture_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_store_fixture", ROOT / "scripts" / "make_store_fixture.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def lmact(args: list[str], store: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmact.cli", *args, "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LMACT_CACHE_DIR": str(cache)},
    )


def test_an_old_store_reports_and_resumes_without_a_new_call(tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite"
    shutil.copyfile(FIXTURE, store)
    with sqlite3.connect(store) as db:
        runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        unfinished = db.execute("SELECT COUNT(*) FROM episodes WHERE status = 'running'")
        assert unfinished.fetchone() == (1,)
    db.close()

    report = lmact(["report", "--format", "csv"], store, tmp_path / "cache")
    assert report.returncode == 0, report.stderr
    assert len(report.stdout.strip().splitlines()) == 1 + runs  # a header and every run

    script = fixture_script()
    # 0.1 showed every episode the same demonstrations: --demo-draw shared keeps that.
    old_behaviour = ["--demo-draw", "shared", "--json"]
    resumed = lmact([*script.UNFINISHED_RUN, *old_behaviour], store, tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["episodes"] == 2 and summary["calls_made"] == 0
    assert summary["calls_cached"] >= 1
    for finished in script.FINISHED_RUNS:
        again = lmact([*finished, *old_behaviour], store, tmp_path / "cache")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["calls_made"] == 0
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM episodes WHERE status != 'done'").fetchone() == (0,)


def test_a_store_of_every_regime_reports_and_resumes_without_a_new_call(tmp_path: Path) -> None:
    """store-0.2.sqlite: imitation, replay and in-context RL runs as the store wrote them
    before it stopped knowing regimes, and an in-context RL run killed mid-replicate."""
    store = tmp_path / "store.sqlite"
    shutil.copyfile(ROOT / "tests" / "fixtures" / "store-0.2.sqlite", store)
    with sqlite3.connect(store) as db:
        runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    db.close()
    report = lmact(["report", "--format", "csv"], store, tmp_path / "cache")
    assert report.returncode == 0, report.stderr
    assert len(report.stdout.strip().splitlines()) == 1 + runs

    fixture = fixture_script().FIXTURES["0.2"]
    resumed = lmact([*fixture.unfinished, "--json"], store, tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["calls_made"] == 0 and summary["calls_cached"] >= 1
    for finished in fixture.finished:
        again = lmact([*finished, "--json"], store, tmp_path / "cache")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["calls_made"] == 0
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM episodes WHERE status != 'done'").fetchone() == (0,)
        # The killed replicate is whole again: 2 replicates of 4 episodes.
        run_episodes = db.execute(
            "SELECT COUNT(*) FROM episodes e JOIN runs r USING (run_id) "
            f"WHERE {fixture.unfinished_run}"
        ).fetchone()
        assert run_episodes == (8,)
