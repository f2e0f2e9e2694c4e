"""A demonstration store with corrupt records: each bad record is found, said once, regenerated."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from lmact.demos import DEMO_SEED_BASE, DemoStore
from lmact.envs.tic_tac_toe import TicTacToe
from lmact.tasks import get_task

SECOND_SEED = DEMO_SEED_BASE + 1


def episodes_file(store: DemoStore, task: str, observation: str) -> Path:
    return store.directory(get_task(task), observation) / "episodes.jsonl"


def replace_line(path: Path, index: int, line: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[index] = line
    path.write_bytes(b"\n".join(lines))


def edited_record(path: Path, index: int, edit: dict[str, object]) -> bytes:
    """Line `index` of `path` with some top-level fields replaced (None: removed)."""
    record = json.loads(path.read_bytes().split(b"\n")[index])
    for key, value in edit.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record).encode()


def warnings(err: str) -> list[str]:
    return err.strip().splitlines()


def expect_one_warning(err: str, folder: Path, episode: int, reason: str) -> None:
    [line] = warnings(err)
    pattern = (
        f"lmact: warning: demonstration store {re.escape(str(folder))}: episode {episode} "
        rf"is corrupt \(.*{reason}.*\); regenerating from there"
    )
    assert re.fullmatch(pattern, line), line


def stored_seeds(path: Path) -> list[int]:
    return [json.loads(line)["seed"] for line in path.read_bytes().splitlines()]


TEXT_CORRUPTIONS = {
    "invalid utf-8": (b'{"seed": \xff\xfe}', "not UTF-8"),
    "not an object": (b"[1,2,3]", "not an object of seed, return and steps"),
    "blank line": (b"", "not JSON"),
    "missing field": ({"return": None}, "not an object of seed, return and steps"),
    "extra field": ({"note": "hi"}, "not an object of seed, return and steps"),
    "seed as text": ({"seed": str(SECOND_SEED)}, "seed '1000000001' where 1000000001 belongs"),
    "inconsistent seed": ({"seed": SECOND_SEED + 5}, "seed 1000000006 where 1000000001 belongs"),
    "seed as bool": ({"seed": True}, "seed True where"),
    "return as text": ({"return": "1"}, "return '1' is not a finite number"),
    "return NaN": ({"return": float("nan")}, "return nan is not a finite number"),
    "steps not a list": ({"steps": {}}, "no steps"),
    "no steps": ({"steps": []}, "no steps"),
    "action not a string": (
        {"steps": [{"observation": {"text": "x"}, "action": {"x": 1}}]},
        r"step 0: action \{'x': 1\} is not a string",
    ),
    "observation not a text": (
        {"steps": [{"observation": {"text": 3}, "action": "a1"}]},
        "step 0: the observation is not a text",
    ),
    "image in a text store": (
        {"steps": [{"observation": {"image": "images/x.png", "image_sha256": "0" * 64}}]},
        "step 0 is not an observation and an action",
    ),
}


@pytest.mark.parametrize("corruption", TEXT_CORRUPTIONS.values(), ids=TEXT_CORRUPTIONS.keys())
def test_a_corrupt_text_record_is_regenerated_from_there(
    demo_store: DemoStore,
    capsys: pytest.CaptureFixture[str],
    corruption: tuple[bytes | dict[str, object], str],
) -> None:
    task = get_task("tic_tac_toe")
    original = demo_store.load(task, "txt", 0, 4)
    path = episodes_file(demo_store, "tic_tac_toe", "txt")
    change, reason = corruption
    line = change if isinstance(change, bytes) else edited_record(path, 1, change)
    replace_line(path, 1, line)
    capsys.readouterr()

    assert demo_store.load(task, "txt", 0, 4) == original  # tic-tac-toe's expert is deterministic
    expect_one_warning(capsys.readouterr().err, path.parent, 1, reason)
    assert stored_seeds(path) == [DEMO_SEED_BASE + k for k in range(4)]
    assert demo_store.load(task, "txt", 0, 4) == original
    assert capsys.readouterr().err == ""  # repaired: said once


def test_episodes_after_a_corrupt_one_are_regenerated_too(
    demo_store: DemoStore, capsys: pytest.CaptureFixture[str]
) -> None:
    task = get_task("tic_tac_toe")
    original = demo_store.load(task, "txt", 0, 5)
    path = episodes_file(demo_store, "tic_tac_toe", "txt")
    replace_line(path, 3, b'{"x"')
    replace_line(path, 4, b"garbage that never gets read")
    calls: list[int] = []
    # Episodes before the bad one come from the file; it and those after are played again.
    assert demo_store.load(task, "txt", 1, 4, calls.append) == original[1:5]
    assert sum(calls) == 2
    expect_one_warning(capsys.readouterr().err, path.parent, 3, "not JSON")
    assert stored_seeds(path) == [DEMO_SEED_BASE + k for k in range(5)]


def test_a_corrupt_record_beyond_the_request_waits_until_it_is_needed(
    demo_store: DemoStore, capsys: pytest.CaptureFixture[str]
) -> None:
    task = get_task("tic_tac_toe")
    original = demo_store.load(task, "txt", 0, 3)
    path = episodes_file(demo_store, "tic_tac_toe", "txt")
    replace_line(path, 2, b"[]")
    assert demo_store.load(task, "txt", 0, 2) == original[:2]
    assert capsys.readouterr().err == ""
    assert demo_store.load(task, "txt", 0, 3) == original
    expect_one_warning(capsys.readouterr().err, path.parent, 2, "not an object")


def test_a_last_line_without_its_newline_is_regenerated_silently(
    demo_store: DemoStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # A crash can stop a write just before the newline: the line parses, but an append
    # would then continue it, so it is dropped like any torn line.
    task = get_task("tic_tac_toe")
    original = demo_store.load(task, "txt", 0, 3)
    path = episodes_file(demo_store, "tic_tac_toe", "txt")
    path.write_bytes(path.read_bytes().removesuffix(b"\n"))
    assert demo_store.load(task, "txt", 0, 3) == original
    assert demo_store.load(task, "txt", 0, 4)[:3] == original
    assert capsys.readouterr().err == ""
    assert stored_seeds(path) == [DEMO_SEED_BASE + k for k in range(4)]


def first_image_step(path: Path, edit: dict[str, object]) -> bytes:
    """Line 1 of `path` with its first step's observation fields replaced."""
    record = json.loads(path.read_bytes().split(b"\n")[1])
    record["steps"][0]["observation"].update(edit)
    return json.dumps(record).encode()


def test_image_records_are_checked_against_their_files(
    demo_store: DemoStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    task = get_task("grid_world")
    original = demo_store.load(task, "png", 0, 2)
    path = episodes_file(demo_store, "grid_world", "png")
    folder = path.parent
    image = folder / "images" / f"{SECOND_SEED}-0.png"
    outside = tmp_path / "x.png"
    outside.write_bytes(image.read_bytes())  # a valid PNG, but not the store's to read
    escaping = "../" * len(folder.relative_to(tmp_path).parts) + "x.png"
    assert (folder / escaping).resolve() == outside.resolve()
    not_png = b"GIF89a, not a PNG"

    def corrupt(line: bytes | None, reason: str, remove_image: bool = False) -> None:
        if line is not None:
            replace_line(path, 1, line)
        if remove_image:
            image.unlink()
        capsys.readouterr()
        assert demo_store.load(task, "png", 0, 2) == original
        expect_one_warning(capsys.readouterr().err, folder, 1, reason)

    corrupt(None, "cannot read images/1000000001-0.png", remove_image=True)
    corrupt(first_image_step(path, {"image": escaping}), r"step 0: image '\.\./")
    corrupt(first_image_step(path, {"image": "images/1000000000-0.png"}), "step 0: image")
    corrupt(first_image_step(path, {"image_sha256": "ABC"}), "image_sha256 is not a SHA-256")
    corrupt(first_image_step(path, {"image_sha256": "A" * 64}), "image_sha256 is not a SHA-256")
    corrupt(first_image_step(path, {"text": "x"}), "step 0: the observation is not an image")
    image.write_bytes(b"\x89PNG\r\n\x1a\n but altered")
    corrupt(None, "images/1000000001-0.png does not match its hash")
    image.write_bytes(not_png)
    sha = hashlib.sha256(not_png).hexdigest()
    corrupt(first_image_step(path, {"image_sha256": sha}), "images/1000000001-0.png is not a PNG")


# --- the rendering version ---------------------------------------------------------------------


def test_the_rendering_version_is_part_of_the_store_folder(
    demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("tic_tac_toe")
    assert TicTacToe.rendering_version == 1
    before = demo_store.directory(task, "txt")
    assert before.parent.name == f"{task.spec_hash}-r1"
    stored = demo_store.load(task, "txt", 0, 2)
    calls: list[int] = []
    monkeypatch.setattr(TicTacToe, "rendering_version", 2)
    after = demo_store.directory(task, "txt")
    assert after != before and after.parent.name == f"{task.spec_hash}-r2"
    # A new version never reads the demonstrations stored under the old one.
    assert demo_store.load(task, "txt", 0, 2, calls.append) == stored
    assert sum(calls) == 2
    assert (after / "episodes.jsonl").exists() and (before / "episodes.jsonl").exists()
