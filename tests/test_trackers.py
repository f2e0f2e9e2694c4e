"""Experiment trackers (`--log-to`): what Weights & Biases (offline) and MLflow (a local
file store) recorded of real runs and a sweep, read back with their own APIs, equals the
runs' summaries in lmact's store; a tracker that raises is disabled in one line and the run
goes on; a missing extra or an unknown name is one line and exit status 2; a third-party
tracker registered as an entry point hears every event, and no secret reaches it."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from loopback import LoopbackServer, RecordedRequest, Reply, chat_completion, loopback

from lmact import api
from lmact.cli import main
from lmact.envs import installed_entry_points
from lmact.records import EpisodeRecord, UnitKey
from lmact.scoring import normalized_score
from lmact.trackers import TrackedRun, Trackers
from lmact.trackers.base import Tracker, safe_config

CELLS = [f"{row}{column}" for row in "abc" for column in "123"]
EPISODES = 3
# The summary's numbers a tracker must hold as the store scores them (report rows' names).
SCORES = (
    "mean_return", "ci95_low", "ci95_high", "normalized_score", "illegal_rate",
    "invalid_rate", "empty_rate", "prompt_tokens", "completion_tokens", "cost_usd",
)  # fmt: skip


def moves(request: RecordedRequest) -> Reply:
    """A model that names a cell chosen by its prompt: tokens and a price make a cost."""
    cell = CELLS[hashlib.sha256(request.body).digest()[0] % len(CELLS)]
    return Reply(body=chat_completion(cell, prompt_tokens=40, completion_tokens=2))


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback(moves) as running:
        yield running


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The trackers' own settings pointed into tmp_path (W&B offline, MLflow's file store),
    and nothing of the user's: no key, no project, no server."""
    for name in list(os.environ):
        if name.startswith(("OPENAI", "WANDB", "MLFLOW", "LMACT_STORE")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses it otherwise
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lmact-tests")
    monkeypatch.chdir(tmp_path)
    yield
    if "wandb" in sys.modules and sys.modules["wandb"] is not None:
        sys.modules["wandb"].teardown()  # wandb reads WANDB_DIR once a session: the next test's


def lmact(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def model_run(url: str, store: Path, *args: str) -> list[str]:
    """`lmact run` of a model behind the loopback server, at a dollar a million tokens."""
    return [
        "run", "--task", "tic_tac_toe", "--demos", "0", "--episodes", str(EPISODES),
        "--model", "openai-compatible/m", "--base-url", f"{url}/v1", "--input-price", "1",
        "--output-price", "1", "--store", str(store), "--json", *args,
    ]  # fmt: skip


def tracked_model_run(
    capsys: pytest.CaptureFixture[str], url: str, store: Path, tracker: str
) -> dict[str, Any]:
    """`model_run` logged to `tracker`, which must succeed: the run's JSON summary."""
    code, out, err = lmact(capsys, *model_run(url, store, "--log-to", tracker))
    assert code == 0, err
    return json.loads(out)


def stored_scores(store: Path, run_id: str) -> dict[str, Any]:
    """The run's scores as lmact's store gives them (`lmact.api.results`)."""
    (row,) = [row for row in api.results(store).runs if row["run_id"] == run_id]
    return {name: row[name] for name in SCORES}


def stored_returns(store: Path, run_id: str) -> list[float]:
    return sorted(e["total_return"] for e in api.results(store).episodes if e["run_id"] == run_id)


# --- MLflow -------------------------------------------------------------------------------


def mlflow_runs() -> dict[str, Any]:
    """The MLflow runs of the tests' experiment, by their lmact run id (the sweep's parent
    run under its sweep's name), read with MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("lmact-tests")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return {r.data.tags.get("lmact.run_id") or r.data.tags["lmact.sweep"]: r for r in runs}


def mlflow_history(run: Any, key: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(run.info.run_id, key)
    return [metric.value for metric in sorted(history, key=lambda metric: metric.step)]


def test_mlflow_holds_the_runs_configuration_episodes_and_summary(
    capsys: pytest.CaptureFixture[str], server: LoopbackServer, tmp_path: Path
) -> None:
    store = tmp_path / "runs.sqlite"
    summary = tracked_model_run(capsys, server.url, store, "mlflow")
    run = mlflow_runs()[summary["run_id"]]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["task"], params["model"], params["episodes"]) == (
        "tic_tac_toe", "openai-compatible/m", str(EPISODES),
    )  # fmt: skip
    scores = stored_scores(store, summary["run_id"])
    assert scores["prompt_tokens"] > 0 and scores["cost_usd"] > 0  # the numbers say something
    assert {name: run.data.metrics[name] for name in SCORES if scores[name] is not None} == (
        pytest.approx({name: value for name, value in scores.items() if value is not None})
    )
    assert sorted(mlflow_history(run, "episode/return")) == stored_returns(store, summary["run_id"])
    assert mlflow_history(run, "running/episodes") == [1.0, 2.0, 3.0]
    assert mlflow_history(run, "running/mean_return")[-1] == pytest.approx(scores["mean_return"])
    for running in ("prompt_tokens", "completion_tokens", "cost_usd"):
        assert mlflow_history(run, f"running/{running}")[-1] == pytest.approx(scores[running])


# --- Weights & Biases ----------------------------------------------------------------------

BLOCK = 32768  # the .wandb file is a LevelDB log: 32 KiB blocks of 7-byte-headed chunks
FULL, LAST = 1, 4


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline run's .wandb file, as wandb's own protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2

    data, position, parts = path.read_bytes(), 7, b""  # after the file's header
    while position + 7 <= len(data):
        room = BLOCK - position % BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if room < 7 or (length == 0 and kind == 0):  # a block's padding
            position += room
            continue
        parts += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_runs(folder: Path) -> list[dict[str, Any]]:
    """Each offline W&B run under `folder`: its config, group, name, history and summary."""
    runs = []
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        run: dict[str, Any] = {"config": {}, "history": [], "summary": {}}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["group"], run["name"] = record.run.run_group, record.run.display_name
                updates = record.run.config.update
                run["config"] |= {_key(u): json.loads(u.value_json) for u in updates}
            elif kind == "history":
                items = record.history.item
                run["history"].append({_key(i): json.loads(i.value_json) for i in items})
            elif kind == "summary":
                updates = record.summary.update
                run["summary"] |= {_key(u): json.loads(u.value_json) for u in updates}
        runs.append(run)
    return runs


def test_wandb_offline_holds_the_runs_configuration_episodes_and_summary(
    capsys: pytest.CaptureFixture[str], server: LoopbackServer, tmp_path: Path
) -> None:
    store = tmp_path / "runs.sqlite"
    summary = tracked_model_run(capsys, server.url, store, "wandb")
    (run,) = wandb_runs(tmp_path)
    assert run["config"]["run_id"] == summary["run_id"] and run["config"]["episodes"] == EPISODES
    assert run["config"]["task"] == "tic_tac_toe" and run["group"] == ""
    scores = stored_scores(store, summary["run_id"])
    assert {name: run["summary"][name] for name in SCORES} == pytest.approx(scores)
    history = sorted(run["history"], key=lambda step: step["_step"])
    assert [step["running/episodes"] for step in history] == [1, 2, 3]
    returns = sorted(step["episode/return"] for step in history)
    assert returns == stored_returns(store, summary["run_id"])
    assert history[-1]["running/mean_return"] == pytest.approx(scores["mean_return"])
    assert history[-1]["running/cost_usd"] == pytest.approx(scores["cost_usd"])


# --- A sweep, in both --------------------------------------------------------------------


def test_a_sweep_is_a_wandb_group_and_an_mlflow_parent_run_of_its_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'name = "tracked"\n[base]\ntask = "tic_tac_toe"\nepisodes = 2\nmodel = "random"\n'
        'log_to = ["wandb", "mlflow"]\n[axes]\ndemos = [0, 1]\n'
    )
    store = tmp_path / "runs.sqlite"
    code, _, err = lmact(capsys, "sweep", str(sweep), "--store", str(store))
    assert code == 0, err
    results = api.results(store, sweep="tracked")
    run_ids = {row["run_id"] for row in results.runs if row["model"] == "random"}
    assert len(run_ids) == 2
    recorded = mlflow_runs()
    parent = recorded.pop("tracked")
    assert recorded.keys() == run_ids and parent.info.status == "FINISHED"
    for run_id, run in recorded.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        scores = stored_scores(store, run_id)
        assert run.data.metrics["mean_return"] == pytest.approx(scores["mean_return"])
    wandb = {run["config"]["run_id"]: run for run in wandb_runs(tmp_path)}
    assert wandb.keys() == run_ids
    for run_id, run in wandb.items():
        scores = stored_scores(store, run_id)
        assert run["group"] == "tracked"
        assert run["summary"]["mean_return"] == pytest.approx(scores["mean_return"])


# --- Plug-ins: a recorder and a tracker that fails -----------------------------------------

PLUGIN = """
from lmact.trackers.base import Tracker

EVENTS = []


class Recorder(Tracker):
    def sweep_started(self, sweep, runs):
        EVENTS.append(("sweep_started", sweep, dict(runs)))

    def run_started(self, run):
        EVENTS.append(("run_started", run))

    def episode_finished(self, run_id, episode, measures):
        EVENTS.append(("episode_finished", run_id, episode, dict(measures)))

    def run_finished(self, run_id, summary, error):
        EVENTS.append(("run_finished", run_id, summary, error))

    def close(self):
        EVENTS.append(("close",))


class Faulty(Recorder):
    def episode_finished(self, run_id, episode, measures):
        super().episode_finished(run_id, episode, measures)
        raise RuntimeError("the tracker's server went away\\nand a second line")
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A hand-made installed distribution registering `recorder` and `faulty` trackers
    (`lmact.trackers` entry points), and the module they record their events in."""
    site = tmp_path / "site"
    info = site / "lmact_test_trackers-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lmact-test-trackers\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[lmact.trackers]\nrecorder = lmact_test_trackers:Recorder\n"
        "faulty = lmact_test_trackers:Faulty\n"
    )
    (site / "lmact_test_trackers.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    installed_entry_points.cache_clear()
    yield importlib.import_module("lmact_test_trackers")
    sys.modules.pop("lmact_test_trackers", None)
    installed_entry_points.cache_clear()


def random_run(store: Path, *args: str) -> list[str]:
    return ["run", "--task", "tic_tac_toe", "--model", "random", "--episodes", str(EPISODES),
            "--store", str(store), "--json", *args]  # fmt: skip


def test_a_plugin_tracker_hears_every_event_of_a_run_and_no_secret(
    capsys: pytest.CaptureFixture[str], plugin: ModuleType, tmp_path: Path
) -> None:
    url = "http://user:pa55word-9f3@127.0.0.1:9/v1"  # a model option: never a run's config
    twice = ("--log-to", "recorder", "--log-to", "recorder")  # one tracker, all the same
    code, out, err = lmact(capsys, *random_run(tmp_path / "r.sqlite", *twice, "--base-url", url))
    assert code == 0, err
    summary = json.loads(out)
    kinds = [event[0] for event in plugin.EVENTS]
    assert kinds == ["run_started"] + ["episode_finished"] * EPISODES + ["run_finished", "close"]
    started: TrackedRun = plugin.EVENTS[0][1]
    assert started.run_id == summary["run_id"] and started.config["model"] == "random"
    assert plugin.EVENTS[-2] == ("run_finished", summary["run_id"], summary, None)
    assert "pa55word" not in repr(plugin.EVENTS)


def test_a_failing_tracker_is_disabled_in_one_line_and_the_run_goes_on(
    capsys: pytest.CaptureFixture[str], plugin: ModuleType, tmp_path: Path
) -> None:
    store = tmp_path / "r.sqlite"
    code, out, err = lmact(capsys, *random_run(store, "--log-to", "faulty,recorder"))
    assert code == 0
    (line,) = err.splitlines()  # once, though every episode would have raised
    assert "faulty" in line and "RuntimeError" in line and "Traceback" not in err
    summary = json.loads(out)
    assert summary["episodes"] == EPISODES == len(stored_returns(store, summary["run_id"]))
    # The one that failed heard one episode; the other heard the run to its end.
    assert [e[0] for e in plugin.EVENTS].count("episode_finished") == 1 + EPISODES
    assert ("run_finished", summary["run_id"], summary, None) in plugin.EVENTS


def test_a_run_normalized_by_stored_baselines_has_a_running_normalized_score(
    capsys: pytest.CaptureFixture[str], plugin: ModuleType, tmp_path: Path
) -> None:
    store = tmp_path / "r.sqlite"
    args = ("--seed", "3", "--episodes", "4")
    assert lmact(capsys, *random_run(store, "--model", "expert", *args))[0] == 0
    code, out, err = lmact(capsys, *random_run(store, *args, "--log-to", "recorder"))
    assert code == 0, err
    summary = json.loads(out)
    episodes = [event[3] for event in plugin.EVENTS if event[0] == "episode_finished"]
    assert len(episodes) == 4 and all("running/normalized_score" in e for e in episodes)
    assert episodes[-1]["running/normalized_score"] == pytest.approx(summary["normalized_score"])


def test_running_measures_count_each_episode_once_against_the_same_baseline_units() -> None:
    class Heard(Tracker):
        def __init__(self) -> None:
            self.measures: list[dict[str, float]] = []

        def episode_finished(self, run_id: str, episode: EpisodeRecord, measures: Any) -> None:
            self.measures.append(dict(measures))

    def episode(index: int, value: float) -> EpisodeRecord:
        return EpisodeRecord(index, 100 + index, value, 3, True, 3, 0, 0, 0, cost_usd=0.5)

    heard = Heard()
    trackers = Trackers([("heard", heard)])
    trackers.run_started(TrackedRun("run", "m t/f", {}), {"random": ("r", {UnitKey(0, 0): 0.0}),
                                                          "expert": ("e", {})})  # fmt: skip
    trackers.episode_finished("run", episode(0, 0.5))
    assert "running/normalized_score" not in heard.measures[-1]  # no expert on episode 0 yet
    trackers.episode_finished("e", episode(0, 1.0))  # a baseline's episode played here
    trackers.episode_finished("run", episode(1, 3.0))  # its baselines unknown: not compared
    assert heard.measures[-1]["running/normalized_score"] == normalized_score(0.5, 0.0, 1.0)
    assert heard.measures[-1]["running/mean_return"] == 1.75
    assert heard.measures[-1]["running/cost_usd"] == 1.0
    trackers.episode_finished("other", episode(2, 9.0))  # not a started run: not told
    assert len(heard.measures) == 2


# --- Bad input -----------------------------------------------------------------------------


def test_a_missing_extra_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails
    code, out, err = lmact(capsys, *random_run(tmp_path / "r.sqlite", "--log-to", "wandb"))
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert 'pip install "lmact[wandb]"' in line
    assert not (tmp_path / "r.sqlite").exists()  # said before anything was played


def test_an_unknown_tracker_is_one_line_naming_it_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "r.sqlite"
    code, _, err = lmact(capsys, *random_run(store, "--log-to", "mlflow,tensorboard"))
    (line,) = err.splitlines()
    assert code == 2 and "--log-to" in line and "'tensorboard'" in line and "mlflow" in line


def test_a_configuration_loses_its_secrets_before_a_tracker_sees_it() -> None:
    config = {
        "model": "m", "max_tokens": 8, "api_key": "sk-1", "options": {"password": "p"},
        "server": "https://me:tok3n@host/v1", "urls": ["http://a:b@c"],
    }  # fmt: skip
    assert safe_config(config) == {
        "model": "m", "max_tokens": 8, "options": {},
        "server": "https://[redacted]@host/v1", "urls": ["http://[redacted]@c"],
    }  # fmt: skip
