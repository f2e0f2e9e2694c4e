"""Task variants by `include`: a spec file includes another (by path or by task name) and
overrides fields, its `[options]` merged key by key; cycles and missing includes are one line
naming the file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmact.tasks
from lmact.errors import LmactError
from lmact.tasks import get_task, task_specs


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Specs given by path stay registered in the process: each test starts without them.
    monkeypatch.setattr(lmact.tasks, "_specs_from_files", {})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_variant_overrides_max_steps_and_one_option(tmp_path: Path) -> None:
    base = get_task("tic_tac_toe")
    variant = get_task(
        str(
            write(
                tmp_path / "ttt_short.toml",
                'include = "tic_tac_toe"\nname = "ttt_short"\nmax_steps = 7\n\n'
                "[options]\nopening_plies = 0\n",
            )
        )
    )
    assert variant.name == "ttt_short" and variant.max_steps == 7
    assert variant.options == {**base.options, "opening_plies": 0}  # the rest inherited
    assert variant.options["coordinates"] is base.options["coordinates"]
    assert (variant.observations, variant.environment) == (base.observations, base.environment)
    assert variant.spec_hash != base.spec_hash
    # The resolved spec decides the hash: the same fields written out in full hash alike.
    full = base.model_copy(update={"name": "ttt_short", "max_steps": 7, "options": variant.options})
    assert variant.spec_hash == full.spec_hash


def test_a_variant_of_a_variant_by_relative_path(tmp_path: Path) -> None:
    write(
        tmp_path / "bases" / "walk_small.toml",
        'include = "grid_world"\nname = "walk_small"\nmax_steps = 20\n\n[options]\nsize = 6\n',
    )
    path = write(
        tmp_path / "mine" / "walk_small_coords.toml",
        'include = "../bases/walk_small.toml"\nname = "walk_small_coords"\n'
        'default_observation = "coords"\n\n[options]\ncell_pixels = 8\n',
    )
    spec = get_task(str(path))
    assert spec.max_steps == 20 and spec.default_observation == "coords"
    assert spec.options == {"size": 6, "cell_pixels": 8}
    assert spec.make_environment().size == 6
    hashes = {spec.spec_hash, get_task(str(tmp_path / "bases" / "walk_small.toml")).spec_hash}
    assert len(hashes) == 2


def test_variants_in_a_task_folder_are_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "ttt_open.toml", 'include = "tic_tac_toe"\nname = "ttt_open"\n'
          "[options]\nopening_plies = 4\n")  # fmt: skip
    write(tmp_path / "ttt_open_png.toml", 'include = "ttt_open"\nname = "ttt_open_png"\n'
          'default_observation = "png"\n')  # fmt: skip
    monkeypatch.setenv("LMACT_TASKS_PATH", str(tmp_path))
    specs = task_specs()
    assert specs["ttt_open_png"].options["opening_plies"] == 4
    assert specs["ttt_open_png"].default_observation == "png"
    assert specs["ttt_open"].default_observation == "txt"


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"a.toml": 'include = "b.toml"\n', "b.toml": 'include = "a.toml"\n'}, ["cycle"]),
        ({"a.toml": 'include = "a"\nname = "a"\n'}, ["cycle"]),
        ({"a.toml": 'include = "missing.toml"\n'}, ["missing.toml"]),
        ({"a.toml": 'include = "no_such_task"\n'}, ["no_such_task"]),
        ({"a.toml": "include = 3\n"}, ["include"]),
    ],
    ids=["cycle", "self-by-name", "missing-file", "missing-task", "not-a-string"],
)
def test_a_bad_include_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], words: list[str]
) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    monkeypatch.setenv("LMACT_TASKS_PATH", str(tmp_path))  # `include = "a"` finds a.toml here
    with pytest.raises(LmactError) as caught:
        get_task(str(tmp_path / "a.toml"))
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "a.toml") in message
    assert all(word in message for word in words)


def test_a_variant_must_name_itself(tmp_path: Path) -> None:
    path = write(tmp_path / "copy.toml", 'include = "tic_tac_toe"\n')
    with pytest.raises(LmactError, match=re.escape(str(path))):
        get_task(str(path))


def test_a_bad_include_at_the_command_line(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'include = "b.toml"\nname = "a"\n')
    write(tmp_path / "b.toml", 'include = "a.toml"\nname = "b"\n')
    result = subprocess.run(
        [sys.executable, "-m", "lmact.cli", "run", "--task", str(tmp_path / "a.toml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "a.toml") in result.stderr
