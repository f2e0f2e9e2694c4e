"""Broken files and out-of-range input: one line naming the problem, exit code 2, no
traceback, and the file left as it was."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import lmact

from lmact.report.tables import COLUMNS, format_table
from lmact.store import APPLICATION_ID, SCHEMA_VERSION, RunStore

RANDOM_RUN = ["run", "--task", "tic_tac_toe", "--model", "random", "--episodes", "2"]


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def other_programs_database(path: Path, application_id: int = 0) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO invoices (total) VALUES (12.5)")
        if application_id:
            db.execute(f"PRAGMA application_id = {application_id}")
    db.close()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_text("name,total\nfoo,1\n"), "is not a SQLite database"),
        (lambda p: p.mkdir(), "is a directory"),
        (other_programs_database, "another program's SQLite database (tables: invoices)"),
        (
            lambda p: other_programs_database(p, application_id=0x12345678),
            "another program's SQLite database (application_id 0x12345678)",
        ),
    ],
    ids=["text", "directory", "foreign-tables", "foreign-application-id"],
)
def test_a_store_that_is_not_lmacts_is_refused_untouched(
    tmp_path: Path, make: object, problem: str
) -> None:
    store = tmp_path / "store.sqlite"
    make(store)  # type: ignore[operator]
    before = sorted(tmp_path.iterdir())
    fingerprint = digest(store) if store.is_file() else None
    for command in (RANDOM_RUN, ["report"]):
        result = lmact(*command, "--store", str(store), cwd=tmp_path)
        one_line_error(result, str(store), problem)
    assert sorted(tmp_path.iterdir()) == before  # no -wal, no -shm, no results/
    if fingerprint is not None:
        assert digest(store) == fingerprint


def test_lmacts_own_stores_are_marked_and_older_ones_adopted(tmp_path: Path) -> None:
    store = tmp_path / "new.sqlite"
    RunStore(store).close()
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # a store of a release before the marks
        db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, config TEXT, created REAL)")
    RunStore(old).close()
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)


def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "future.sqlite"
    RunStore(store).close()
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA user_version = 99")
    one_line_error(lmact(*RANDOM_RUN, "--store", str(store), cwd=tmp_path), "newer lmact")


def without_root_powers() -> list[str]:
    """A command prefix that runs without root's power to write any file (none if not root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "util-linux's setpriv is needed to test permissions as root"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all"]


def test_an_unwritable_store_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "readonly.sqlite"
    RunStore(store).close()
    store.chmod(0o444)
    fingerprint = digest(store)
    result = subprocess.run(
        [
            *without_root_powers(),
            sys.executable,
            "-m",
            "lmact.cli",
            *RANDOM_RUN,
            "--store",
            str(store),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_line_error(result, str(store), "readonly")
    assert digest(store) == fingerprint
    unreachable = lmact(*RANDOM_RUN, "--store", "/proc/lmact/runs.sqlite", cwd=tmp_path)
    one_line_error(unreachable, "run store /proc/lmact/runs.sqlite")


def test_a_full_disk_is_one_line_and_loses_what_was_stored(tmp_path: Path) -> None:
    store = tmp_path / "full.sqlite"
    limit = 160 * 1024  # bytes any file of the run may grow to: a disk that fills up

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmact.cli",
            "run",
            "--task",
            "tic_tac_toe",
            "--model",
            "random",
            "--episodes",
            "3000",
            "--demos",
            "0",
            "--store",
            str(store),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_disk,
        env={**os.environ, "LMACT_CACHE_DIR": str(tmp_path / "cache")},
    )
    one_line_error(result, str(store))
    assert "full" in result.stderr or "disk" in result.stderr, result.stderr
    with RunStore(store) as reopened:  # what was stored before the disk filled is intact
        (run,) = reopened.runs()
        finished = reopened.finished_episodes(run.run_id)
        assert finished
        for episode, record in finished.items():
            steps = reopened.steps(run.run_id, episode)
            assert len(steps) == record.steps


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # Every bound, through the API: tests/test_options.py; here, how the command says one.
        (["--max-connections", "-1"], "--max-connections must be positive, not -1"),
        (["--timeout", "nan"], "--timeout must be a finite number, not nan"),
        (["--demos", "1000000000"], "--demos must be at most 100000"),
    ],
)
def test_out_of_range_options_fail_before_any_work(
    tmp_path: Path, options: list[str], message: str
) -> None:
    result = lmact(*RANDOM_RUN, *options, cwd=tmp_path)
    one_line_error(result, message)
    assert not (tmp_path / "results").exists()  # nothing was started


@pytest.mark.parametrize(
    ("options", "variables", "message"),
    [
        (["--base-url", "localhost:8000/v1"], {}, "needs the scheme http:// or https://"),
        (
            ["--base-url", "ftp://user:hunter2@example/v1"],
            {},
            "ftp://[redacted]@example/v1",
        ),
        (
            ["--base-url", "http://127.0.0.1:9/v1"],
            {"OPENAI_COMPATIBLE_API_KEY": "sk-caf\u00e9-0123456789"},
            "OPENAI_COMPATIBLE_API_KEY holds a non-ASCII character",
        ),
    ],
    ids=["no-scheme", "credentials", "non-ascii-key"],
)
def test_a_bad_server_address_or_key_fails_before_any_work(
    tmp_path: Path, options: list[str], variables: dict[str, str], message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")} | variables
    run = ["run", "--task", "tic_tac_toe", "--model", "openai-compatible/m", *options]
    result = lmact(*run, cwd=tmp_path, env=env)
    one_line_error(result, message)
    assert "hunter2" not in result.stderr and "caf" not in result.stderr
    store = tmp_path / "results" / "lmact.sqlite"
    if store.exists():  # opened, perhaps, but nothing was played
        with sqlite3.connect(store) as db:
            assert db.execute("SELECT COUNT(*) FROM episodes").fetchone() == (0,)


def test_demonstrations_that_cannot_fit_stop_before_they_are_all_made(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = lmact(
        "run",
        "--task",
        "tic_tac_toe",
        "--model",
        "random",
        "--demos",
        "100000",
        "--demo-draw",
        "shared",
        "--context-window",
        "2000",
        cwd=tmp_path,
        env={**os.environ, "LMACT_CACHE_DIR": str(cache)},
    )
    one_line_error(result, "exceeds the model's context window of 2000 tokens")
    (episodes,) = cache.glob("demos/tic_tac_toe/*/txt/episodes.jsonl")
    assert len(episodes.read_text().splitlines()) < 200


def write_variant(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nenvironment = "tic_tac_toe"\nobservations = ["txt", "png"]\n'
        f'default_observation = "txt"\n{body}'
    )
    return path


def test_a_task_variant_by_path_and_on_the_search_path(tmp_path: Path) -> None:
    variant = write_variant(tmp_path / "mine", "ttt_short", "max_steps = 3\nepisodes = 2\n")
    by_path = lmact("run", "--task", str(variant), "--model", "random", "--json", cwd=tmp_path)
    assert by_path.returncode == 0, by_path.stderr
    assert '"task": "ttt_short"' in by_path.stdout and '"max_steps": 3' in by_path.stdout
    env = {**os.environ, "LMACT_TASKS_PATH": str(tmp_path / "mine")}
    listed = lmact("tasks", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "ttt_short:" in listed.stdout
    by_name = lmact(
        "run", "--task", "ttt_short", "--model", "random", "--json", cwd=tmp_path, env=env
    )
    assert by_name.returncode == 0, by_name.stderr
    first, again = json.loads(by_path.stdout), json.loads(by_name.stdout)
    assert again["run_id"] == first["run_id"] and again["calls_made"] == 0  # read back
    assert again["mean_return"] == first["mean_return"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("episodes = true\n", "episodes: Input should be a valid integer"),
        ('max_steps = "100"\n', "max_steps: Input should be a valid integer"),
    ],
)
def test_a_mistyped_task_spec_is_one_line(tmp_path: Path, body: str, message: str) -> None:
    variant = write_variant(tmp_path, "ttt_bad", body)
    one_line_error(lmact("run", "--task", str(variant), cwd=tmp_path), str(variant), message)


def test_a_task_spec_with_an_unknown_format_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ttt_fen.toml"
    path.write_text(
        'name = "ttt_fen"\nenvironment = "tic_tac_toe"\nobservations = ["txt", "fen"]\n'
        'default_observation = "txt"\n'
    )
    result = lmact("run", "--task", str(path), cwd=tmp_path)
    one_line_error(result, "unknown observation format 'fen' for environment tic_tac_toe")


def test_a_variant_may_not_take_a_shipped_name(tmp_path: Path) -> None:
    variant = write_variant(tmp_path, "tic_tac_toe", "max_steps = 3\n")
    one_line_error(lmact("run", "--task", str(variant), cwd=tmp_path), "another task already")
    env = {**os.environ, "LMACT_TASKS_PATH": str(tmp_path)}
    one_line_error(lmact("tasks", cwd=tmp_path, env=env), "task tic_tac_toe is defined twice")


def test_a_missing_task_file_is_one_line(tmp_path: Path) -> None:
    one_line_error(lmact("run", "--task", "nowhere/variant.toml", cwd=tmp_path), "not found")


def test_a_model_name_with_a_bar_keeps_the_markdown_table_whole() -> None:
    row = {column: None for column in COLUMNS} | {"model": "openai-compatible/a|b", "task": "t"}
    header, _rule, line = format_table([row]).splitlines()
    cells = line.replace("\\|", "").split("|")
    assert len(cells) == len(header.split("|"))
    assert "openai-compatible/a\\|b" in line


def test_output_to_a_full_device_is_one_line(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "lmact.cli", "tasks"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    one_line_error(result, "cannot write the output: No space left on device")


def test_the_report_reads_runs_it_cannot_configure(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    assert lmact(*RANDOM_RUN, "--store", str(store), cwd=tmp_path).returncode == 0
    with sqlite3.connect(store) as db:  # a run of a regime this release does not know
        db.execute(
            "INSERT INTO runs (run_id, config, created) VALUES ('future', ?, 0)",
            ('{"regime": "icrl", "task": "bandit_hard", "model": "ucb1", "arms": 5}',),
        )
        db.execute(
            "INSERT INTO episodes (run_id, episode, seed, status, total_return, steps, "
            "terminated, valid, illegal, invalid, empty, prompt_tokens, completion_tokens, "
            "cached_tokens) VALUES ('future', 0, 0, 'done', 1.0, 1, 1, 1, 0, 0, 0, 0, 0, 0)"
        )
    db.close()
    report = lmact("report", "--store", str(store), "--format", "csv", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    header, *rows = report.stdout.splitlines()
    assert header.split(",")[:3] == ["run_id", "task", "regime"]
    future = next(row for row in rows if row.startswith("future,"))
    assert future.startswith("future,bandit_hard,icrl,") and ",1.0," in future
    assert any(row.split(",")[2] == "imitation" for row in rows)
