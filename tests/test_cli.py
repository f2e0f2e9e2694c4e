"""The `lmact` command: its outputs, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import lmact

from lmact.store import RunStore
from lmact.tasks import task_specs

JSON_KEYS = {
    "task",
    "observation",
    "model",
    "demos",
    "episodes",
    "mean_return",
    "ci95",
    "normalized_score",
    "expert_return",
    "random_return",
    "invalid_rate",
    "illegal_rate",
    "empty_rate",
    "prompt_tokens",
    "completion_tokens",
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "--task", "checkers"],
            f"unknown task 'checkers'; accepted: {', '.join(sorted(task_specs()))}",
        ),
        (
            ["run", "--task", "tic_tac_toe", "--observation", "rgb"],
            "unknown observation format for task tic_tac_toe 'rgb'; accepted: txt, png",
        ),
        (
            ["run", "--task", "tic_tac_toe", "--model", "gpt-9"],
            "unknown model 'gpt-9'; accepted: local/gemma-3-270m, local/<path to a .gguf file>, "
            "openai/<model>, anthropic/<model>, google/<model>, openai-compatible/<model>, "
            "random, expert",
        ),
        (["run", "--task", "tic_tac_toe", "--model", "random/x"], "unknown model 'random/x'"),
        (
            ["run", "--task", "grid_world", "--model", "random", "--token-budget", "20"],
            "token budget 20 is too small for one demonstration",
        ),
        (
            ["run", "--task", "tic_tac_toe", "--model", "local/missing.gguf"],
            "model file not found: missing.gguf",
        ),
        (
            ["run", "--task", "tic_tac_toe", "--demos", "1", "--token-budget", "900"],
            "argument --token-budget: not allowed with argument --demos",
        ),
        (
            ["run", "--task", "tic_tac_toe", "--model", "random", "--episodes", "0"],
            "--episodes must be positive",
        ),
        (
            ["run", "--task", "tic_tac_toe", "--model", "random", "--demos", "-1"],
            "--demos must be at least 0",
        ),
        (["run"], "--task is required"),
        (["demos", "maze", "--episodes", "2"], "unknown task 'maze'"),
        (["report", "--store", "nowhere.sqlite"], "no run store at nowhere.sqlite"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = lmact(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_run_json_report_and_listings(tmp_path: Path) -> None:
    result = lmact(
        "run",
        "--task",
        "tic_tac_toe",
        "--model",
        "expert",
        "--episodes",
        "4",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) >= JSON_KEYS
    assert summary["normalized_score"] == 1.0 and len(summary["ci95"]) == 2
    assert (tmp_path / "results" / "lmact.sqlite").exists()  # the default store

    table = lmact(
        "run", "--task", "tic_tac_toe", "--model", "expert", "--episodes", "4", cwd=tmp_path
    )
    assert table.returncode == 0 and "| normalized score | 1.000 |" in table.stdout

    report = lmact("report", "--format", "csv", cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert {row["model"] for row in rows} == {"expert", "random"}
    expert_row = next(row for row in rows if row["model"] == "expert" and row["demos"] == "1")
    assert float(expert_row["normalized_score"]) == 1.0
    assert float(expert_row["mean_return"]) == summary["mean_return"]
    markdown = lmact("report", cwd=tmp_path)
    # Markdown leads with the task's pivot, then its runs (docs/reports.md).
    assert markdown.returncode == 0
    assert markdown.stdout.startswith("### tic_tac_toe\n\n**imitation: normalized score")
    assert "**imitation runs**\n\n| run_id | task |" in markdown.stdout

    tasks = lmact("tasks", cwd=tmp_path).stdout
    assert "tic_tac_toe:" in tasks and "grid_world:" in tasks
    models = lmact("models", cwd=tmp_path).stdout
    assert "local/gemma-3-270m  (default)" in models


def test_demos_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmact.cli",
            "demos",
            "grid_world",
            "--episodes",
            "3",
            "--observation",
            "png",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "3 demonstrations of grid_world/png" in result.stdout
    assert len(list((tmp_path / "c" / "demos" / "grid_world").glob("*/png/images/*.png"))) > 3


def test_help_explains_the_run_options(tmp_path: Path) -> None:
    text = lmact("run", "--help", cwd=tmp_path).stdout
    for option in (
        "--demos",
        "--token-budget",
        "--legal-actions",
        "--cot",
        "--json",
        "--episodes",
        "--seed",
        "--max-steps",
        "--observation",
        "--model",
        "--dry-run",
        "--base-url",
        "--max-connections",
        "--max-retries",
        "--timeout",
    ):
        assert option in text


def test_dry_run_prices_a_run_without_a_key_or_a_call(tmp_path: Path) -> None:
    # No key and an unreachable API: a dry run needs neither, and stores nothing.
    env_free = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    args = ["run", "--task", "tic_tac_toe", "--model", "openai/gpt-4o", "--demos", "2"]
    args += ["--episodes", "4", "--dry-run", "--json", "--store", str(tmp_path / "r.sqlite")]
    result = subprocess.run(
        [sys.executable, "-m", "lmact.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env_free},
    )
    assert result.returncode == 0, result.stderr
    estimate = json.loads(result.stdout)
    assert estimate["dry_run"] and estimate["episodes_todo"] == 4 and estimate["calls"] >= 4
    # gpt-4o's catalog prices: $2.50 in, $1.25 cached in, $10 out per million tokens.
    uncached = (estimate["prompt_tokens"] * 2.5 + estimate["completion_tokens"] * 10) / 1e6
    assert estimate["cost_usd"] == pytest.approx(uncached)
    assert 0 < estimate["cost_cached_usd"] < estimate["cost_usd"]
    with RunStore(tmp_path / "r.sqlite") as store:
        assert store.runs() == []


def test_a_networked_model_without_its_key_fails_before_any_work(tmp_path: Path) -> None:
    args = ["run", "--task", "tic_tac_toe", "--model", "anthropic/claude-haiku-4-5"]
    result = subprocess.run(
        [sys.executable, "-m", "lmact.cli", *args, "--store", str(tmp_path / "r.sqlite")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANTHROPIC_API_KEY": ""},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lmact: error: model anthropic/claude-haiku-4-5 needs an API key: set ANTHROPIC_API_KEY"
    ]
