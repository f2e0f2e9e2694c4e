"""The wheel carries the task specs and prompt templates: an installed lmact works outside
the checkout. Builds the wheel offline (hatchling from the dev extra) and installs it into a
new, empty virtual environment whose only other content is a path to the dependencies."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[1]


def test_installed_wheel_works_outside_the_checkout(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
            str(CHECKOUT),
        ],
        check=True,
    )
    [wheel] = (tmp_path / "dist").glob("lmact-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("tasks/tic_tac_toe.toml", "tasks/grid_world.toml", "prompts/instruction.txt"):
        assert f"lmact/_data/{data}" in names

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Dependencies come from this test's environment; lmact itself (installed there as an
    # editable checkout) stays invisible, because .pth files on an added path are not read.
    (packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        check=True,
    )

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [python, "-c", "import lmact; print(lmact.__file__)"],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(environment))
    lmact = environment / "bin" / "lmact"
    tasks = subprocess.run([lmact, "tasks"], cwd=work, capture_output=True, text=True)
    assert tasks.returncode == 0 and "tic_tac_toe:" in tasks.stdout, tasks.stderr
    run = subprocess.run(
        [lmact, "run", "--task", "grid_world", "--model", "expert", "--episodes", "2", "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["normalized_score"] == 1.0
    assert (work / "results" / "lmact.sqlite").exists()
