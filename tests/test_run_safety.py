"""Whole runs against servers and files that misbehave: a run never resumes over other
demonstrations, an answer that stays unreadable becomes an empty step, a server's pause is
announced, and a key a server echoes is never stored."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from helpers import lmact
from loopback import RecordedRequest, Reply, chat_completion, faults_then, loopback

from lmact import runner as runner_module
from lmact.demos import DemoStore
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore

KEY = "sk-echo-secret-0123456789"
TEST_VARIABLES = ("OPENAI_COMPATIBLE_API_KEY", "OPENAI_COMPATIBLE_BASE_URL", "OPENAI_API_KEY")


@pytest.fixture(autouse=True)
def _no_provider_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in TEST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_a_run_does_not_resume_over_other_demonstrations(tmp_path: Path) -> None:
    env = {**os.environ, "LMACT_CACHE_DIR": str(tmp_path / "cache")}
    run = ["run", "--task", "tic_tac_toe", "--model", "random", "--demos", "2", "--json"]
    first = lmact(*run, "--episodes", "2", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    (episodes,) = (tmp_path / "cache").glob("demos/tic_tac_toe/*/txt/episodes.jsonl")
    lines = episodes.read_text().splitlines()
    record = json.loads(lines[0])
    record["steps"][0]["observation"]["text"] += " "  # still well formed, but not the same
    episodes.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")

    refused = lmact(*run, "--episodes", "3", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "was played with other demonstrations" in refused.stderr
    assert "--restart" in refused.stderr and len(refused.stderr.splitlines()) == 1
    with sqlite3.connect(tmp_path / "results" / "lmact.sqlite") as db:
        (hash_kept,) = db.execute(
            "SELECT json_extract(facts, '$.demos_hash') FROM runs WHERE run_id = ?",
            (json.loads(first.stdout)["run_id"],),
        ).fetchone()
    assert hash_kept == json.loads(first.stdout)["demos_hash"]  # not overwritten

    again = lmact(*run, "--episodes", "3", "--restart", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    restarted = json.loads(again.stdout)
    assert restarted["episodes"] == 3 and restarted["demos_hash"] != hash_kept


def garbage(request: RecordedRequest) -> Reply:
    return Reply(body=b"<html>upstream hiccup</html>")


def test_an_answer_that_stays_unreadable_is_an_empty_step(tmp_path: Path) -> None:
    with loopback(garbage) as server:
        result = lmact(
            "run",
            "--task",
            "tic_tac_toe",
            "--model",
            "openai-compatible/m",
            "--base-url",
            f"{server.url}/v1",
            "--episodes",
            "2",
            "--demos",
            "0",
            "--max-retries",
            "1",
            "--json",
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["unreadable_answers"] == summary["steps"] > 0
    assert summary["empty_rate"] == 1.0
    assert len(server.requests) == 2 * summary["steps"]  # each call tried twice
    with sqlite3.connect(tmp_path / "results" / "lmact.sqlite") as db:
        kinds = db.execute(
            "SELECT DISTINCT kind, stop_reason FROM steps WHERE run_id = ?", (summary["run_id"],)
        ).fetchall()
        cached = db.execute("SELECT COUNT(*) FROM model_calls").fetchone()
    assert kinds == [("empty", "unreadable")] and cached == (0,)
    # The run is finished: a rerun plays nothing and asks nothing.
    rerun = lmact(
        "run",
        "--task",
        "tic_tac_toe",
        "--model",
        "openai-compatible/m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--episodes",
        "2",
        "--demos",
        "0",
        "--json",
        cwd=tmp_path,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["unreadable_answers"] == summary["unreadable_answers"]


def test_a_servers_pause_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner_module, "PAUSE_NOTICE_S", 0.0)
    rate_limited = Reply(
        status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "0.2"}
    )
    with loopback(
        faults_then(rate_limited, then=lambda r: Reply(body=chat_completion("a1")))
    ) as server:
        monkeypatch.setenv("OPENAI_COMPATIBLE_BASE_URL", f"{server.url}/v1")
        with RunStore(tmp_path / "runs.sqlite") as store:
            runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
            config = make_config("tic_tac_toe", model="openai-compatible/m", demos=0, max_steps=1)
            result = runner.run(config, 1)
    assert result.retries == 1
    notice = capsys.readouterr().err
    assert "openai-compatible/m" in notice and "paused until" in notice


def test_a_key_the_server_echoes_is_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", KEY)
    with loopback(lambda request: Reply(body=chat_completion(f"a1 (your key is {KEY})"))) as server:
        monkeypatch.setenv("OPENAI_COMPATIBLE_BASE_URL", f"{server.url}/v1")
        with RunStore(tmp_path / "runs.sqlite") as store:
            runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
            config = make_config("tic_tac_toe", model="openai-compatible/m", demos=1, max_steps=2)
            runner.run(config, 2)
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    stored = (tmp_path / "runs.sqlite").read_bytes()
    wal = tmp_path / "runs.sqlite-wal"
    stored += wal.read_bytes() if wal.exists() else b""
    assert KEY.encode() not in stored
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        completions = [row[0] for row in db.execute("SELECT completion FROM steps")]
    assert completions and all("your key is" in text for text in completions)
