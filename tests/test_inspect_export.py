"""`lmact export --format inspect`: the logs read back with inspect_ai's own reader equal
lmact's records (samples, scores, messages, usage) for imitation, replay and in-context RL
runs, images included, and Inspect's own viewer (its static bundle, in headless Chromium)
opens them and shows the samples."""

from __future__ import annotations

import base64
import functools
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import inspect_ai.log as inspect_log  # the dev extra installs it (lmact[inspect])
import pytest
from browser import opened
from helpers import store_of_every_regime

from lmact import __version__
from lmact.cli import main
from lmact.demos import DemoStore
from lmact.regimes.imitation import make_config
from lmact.report.tables import run_row
from lmact.runner import Runner
from lmact.store import RunRecord, RunStore
from lmact.tasks import get_task


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A store of every regime's runs plus a grid world run shown as images, exported;
    the store, the logs' folder and the image run's id."""
    folder = tmp_path_factory.mktemp("inspect")
    store_path = store_of_every_regime(folder)
    images = make_config("grid_world", observation="png", model="random", demos=1, max_steps=4)
    with RunStore(store_path) as store:
        runner = Runner(store, DemoStore(folder / "demos"), progress=False)
        try:
            runner.run(images, 2)
        finally:
            runner.close()
    out = folder / "logs"
    code = main(["export", "--format", "inspect", "--out", str(out), "--store", str(store_path),
                 "--cache-dir", str(folder)])  # fmt: skip
    assert code == 0
    return store_path, out, images.run_id


def _logs(out: Path) -> dict[str, Any]:
    """Each log, attachments resolved, by its run id."""
    logs = [inspect_log.read_eval_log(str(p), resolve_attachments=True)
            for p in sorted(out.glob("*.eval"))]  # fmt: skip
    return {log.eval.run_id: log for log in logs}


def _score(log: Any, name: str) -> float | None:
    found = [s.metrics["mean"].value for s in log.results.scores if s.name == name]
    return found[0] if found else None


def test_every_run_is_a_log_whose_samples_are_its_episodes(
    exported: tuple[Path, Path, str],
) -> None:
    store_path, out, _ = exported
    logs = _logs(out)
    with RunStore(store_path) as store:
        runs = store.runs()
        assert sorted(logs) == sorted(run.run_id for run in runs)
        assert {run.config["regime"] for run in runs} >= {"imitation", "replay", "icrl"}
        for run in runs:
            _check_log(store, run, logs[run.run_id])


def _check_log(store: RunStore, run: RunRecord, log: Any) -> None:
    episodes = store.finished_episodes(run.run_id)
    steps = store.steps(run.run_id)
    row = run_row(store, run) or {}
    assert log.eval.metadata["lmact_config"] == run.config
    assert log.eval.packages == {"lmact": __version__}
    assert len(log.samples) == len(episodes)
    by_unit = {(s.metadata["chain"], s.metadata["unit_kind"], s.metadata["episode"]): s
               for s in log.samples}  # fmt: skip
    returns, normalized = [], []
    for unit, record in episodes.items():
        sample = by_unit[unit.chain, unit.kind.value, unit.index]
        assert sample.scores["return"].value == record.total_return
        if sample.metadata["scored"]:
            returns.append(record.total_return)
            if "normalized_score" in sample.scores:
                normalized.append(sample.scores["normalized_score"].value)
        answers = [m for m in sample.messages if m.role == "assistant" and m.source == "generate"]
        stored = [s for s in steps if s.unit == unit]
        assert [m.text for m in answers] == [s.completion for s in stored]
        assert [m.metadata["action"] for m in answers] == [s.action for s in stored]
        # Every prompt sent is rebuilt; a scripted policy's steps sent none.
        verified = [m.metadata["prompt_verified"] for m in answers]
        assert verified == [True if s.prompt_hash else None for s in stored]
        usage = sample.model_usage[log.eval.model]
        prompt = sum(s.usage.prompt_tokens for s in stored)
        cached = sum(s.usage.cached_tokens + s.usage.cache_write_tokens for s in stored)
        assert usage.input_tokens == prompt - cached
        assert usage.output_tokens == sum(s.usage.completion_tokens for s in stored)
    # The log's results are lmact's scores, and its samples' scores average to them.
    if row.get("mean_return") is not None:
        assert _score(log, "return") == pytest.approx(row["mean_return"])
        assert sum(returns) / len(returns) == pytest.approx(row["mean_return"])
    if row.get("normalized_score") is not None:
        assert _score(log, "normalized_score") == pytest.approx(row["normalized_score"])
        assert len(normalized) == len(returns)
        assert sum(normalized) / len(normalized) == pytest.approx(row["normalized_score"])


def test_some_runs_are_normalized_and_an_image_runs_messages_hold_its_pngs(
    exported: tuple[Path, Path, str],
) -> None:
    store_path, out, image_run = exported
    logs = _logs(out)
    assert any(_score(log, "normalized_score") is not None for log in logs.values())
    log = logs[image_run]
    env = get_task("grid_world").make_environment()
    with RunStore(store_path) as store:
        episodes = store.finished_episodes(image_run)
    for sample, record in zip(log.samples, episodes.values(), strict=True):
        env.reset(record.seed)
        first_observation = env.render("png").image_png
        images = [base64.b64decode(c.image.split(",", 1)[1]) for m in sample.messages
                  if m.role == "user" and not isinstance(m.content, str)
                  for c in m.content if c.type == "image"]  # fmt: skip
        assert first_observation in images
        assert len(images) > record.steps  # the demonstration's images, then each step's


def test_a_demonstration_export_in_inspect_or_without_inspect_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code = main(["export", "--format", "inspect", "--demos", "tic_tac_toe", "--episodes", "1",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    store_path = store_of_every_regime(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "inspect_ai.log", None)  # as if not installed
    code = main(["export", "--format", "inspect", "--out", str(tmp_path / "logs"),
                 "--store", str(store_path)])  # fmt: skip
    assert code == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "lmact[inspect]" in errors[1]
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())


@pytest.fixture
def served_bundle(exported: tuple[Path, Path, str], tmp_path: Path) -> Iterator[str]:
    """Inspect's own static viewer over the exported logs, served on a loopback port."""
    _, out, _ = exported
    bundle = tmp_path / "bundle"
    inspect_log.bundle_log_dir(log_dir=str(out), output_dir=str(bundle))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(bundle))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_inspects_viewer_opens_a_log_and_shows_its_samples_and_messages(
    exported: tuple[Path, Path, str], served_bundle: str
) -> None:
    from playwright.sync_api import expect

    store_path, out, _ = exported
    with RunStore(store_path) as store:
        # A model's imitation run whose first answer is not empty, so the page can show it.
        first_steps = {r.run_id: store.steps(r.run_id)[0] for r in store.runs()
                       if r.config["regime"] == "imitation" and r.config["model"] != "random"
                       and r.config["demos"]}  # fmt: skip
        run_id, first = next((k, step) for k, step in first_steps.items() if step.completion)
        run = store.run(run_id)
    log_name = next(p.name for p in out.glob(f"*_{run.run_id}.eval"))
    with opened(served_bundle, width=1400) as shown:
        page = shown.page
        # The listing of all logs, then the run's log (as a click on its row goes).
        expect(page.get_by_text("lmact/ucb1").first).to_be_visible(timeout=30_000)
        page.goto(f"{served_bundle}#/tasks/{urllib.parse.quote(log_name)}")
        # The log's samples are listed, each with the run's preamble as its input.
        expect(page.get_by_text(run.config["task"]).first).to_be_visible(timeout=30_000)
        preamble = page.get_by_text("You act in an environment")
        expect(preamble.first).to_be_visible()
        assert preamble.count() >= 2
        preamble.first.click()
        # A sample's messages: the first answer is the first step's completion.
        expect(page.get_by_text("assistant").first).to_be_visible(timeout=30_000)
        lines = page.inner_text("body").split("\n")
        heading = next(i for i, line in enumerate(lines) if line.lower() == "assistant")
        answer = next(line for line in lines[heading + 1 :] if line.strip() and not line.isdigit())
        assert answer == first.completion
        assert not shown.page_errors and not shown.outside_requests
