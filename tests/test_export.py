"""`lmact export --format parquet`: the runs' tables read back with pandas and with Hugging
Face `datasets` (offline) equal the store's rows, their observations the rendered ones;
a task's demonstrations likewise."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from helpers import StubModel
from PIL import Image

from lmact.cli import main
from lmact.demos import DemoStore
from lmact.models.base import ModelRequest, ModelResponse
from lmact.regimes.imitation import make_config
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task


class Moves(StubModel):
    """Answers in turn: a legal move, a word that is no move, nothing."""

    def __init__(self) -> None:
        super().__init__("test/moves")
        self.calls = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        return ModelResponse(text=("up", "jump", "")[self.calls % 3])


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A store of two runs (grid world as text with a model, and as images by the random
    policy, with their baselines), exported whole."""
    store_path, cache = tmp_path / "runs.sqlite", tmp_path / "cache"
    configs = [
        make_config("grid_world", model="test/moves", demos=1, max_steps=5),
        make_config("grid_world", observation="png", model="random", demos=0, max_steps=5),
    ]
    with RunStore(store_path) as store:
        runner = Runner(store, DemoStore.in_cache(cache), progress=False)
        runner.policies.register(Moves())
        try:
            for config in configs:
                runner.run(config, 3)
        finally:
            runner.close()
    out = tmp_path / "tables"
    code = main(["export", "--out", str(out), "--store", str(store_path),
                 "--cache-dir", str(cache)])  # fmt: skip
    assert code == 0
    return store_path, out, [config.run_id for config in configs]


def test_the_exported_tables_are_the_stores_rows_with_what_the_model_saw(
    exported: tuple[Path, Path, list[str]],
) -> None:
    store_path, out, (text_run, image_run) = exported
    runs = pd.read_parquet(out / "runs.parquet")
    episodes = pd.read_parquet(out / "episodes.parquet")
    steps = pd.read_parquet(out / "steps.parquet")
    with RunStore(store_path) as store:
        stored_runs = store.runs()
        stored_steps = {run.run_id: store.steps(run.run_id) for run in stored_runs}
        stored_episodes = {run.run_id: store.finished_episodes(run.run_id) for run in stored_runs}
    assert sorted(runs.run_id) == sorted(run.run_id for run in stored_runs)
    assert len(episodes) == sum(len(e) for e in stored_episodes.values())
    assert len(steps) == sum(len(s) for s in stored_steps.values())
    text_steps = steps[steps.run_id == text_run].sort_values(["episode", "step"])
    stored = stored_steps[text_run]
    assert list(text_steps.completion) == [s.completion for s in stored]
    assert list(text_steps.kind) == [s.kind.value for s in stored]
    assert list(text_steps.action) == [s.action for s in stored]
    assert set(text_steps.kind) >= {"valid", "invalid", "empty"}
    assert text_steps.prompt_verified.all()  # every prompt rebuilt is the one sent
    returns = episodes[episodes.run_id == text_run].sort_values("episode").total_return
    assert list(returns) == [e.total_return for e in stored_episodes[text_run].values()]
    # An image run's observations are the PNGs its environment renders.
    env = get_task("grid_world").make_environment()
    first = steps[(steps.run_id == image_run) & (steps.step == 0)].sort_values("episode")
    for (_, row), record in zip(first.iterrows(), stored_episodes[image_run].values(),
                                strict=True):  # fmt: skip
        env.reset(record.seed)
        assert row.observation_png == env.render("png").image_png
        assert Image.open(io.BytesIO(row.observation_png)).size[0] > 0
        assert pd.isna(row.observation_text)  # an image, no text


def test_datasets_reads_the_tables_offline(
    exported: tuple[Path, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    _, out, _ = exported
    loaded = {}
    for name in ("runs", "episodes", "steps"):  # a table a dataset (their columns differ)
        path = str(out / f"{name}.parquet")
        loaded[name] = datasets.load_dataset("parquet", data_files=path, split="train",
                                             cache_dir=str(tmp_path / "hf"))  # fmt: skip
        assert loaded[name].num_rows == len(pd.read_parquet(path)) > 0
    assert loaded["steps"].column_names[:5] == ["run_id", "chain", "unit_kind", "episode", "step"]


def test_a_tasks_demonstrations_export_a_row_a_step(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "demos"
    code = main(["export", "--demos", "tic_tac_toe", "--episodes", "4", "--out", str(out),
                 "--cache-dir", str(cache)])  # fmt: skip
    assert code == 0
    table = pd.read_parquet(out / "demonstrations.parquet")
    demonstrations = DemoStore.in_cache(cache).load(get_task("tic_tac_toe"), "txt", 0, 4)
    assert len(table) == sum(len(d.steps) for d in demonstrations)
    assert list(table.action) == [action for d in demonstrations for _, action in d.steps]
    assert list(table.observation_text) == [o.text for d in demonstrations for o, _ in d.steps]


def test_an_unknown_format_or_a_missing_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--format", "xlsx", "--out", str(tmp_path)]) == 2
    assert main(["export", "--out", str(tmp_path), "--store", str(tmp_path / "none")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "parquet" in errors[0] and "no run store" in errors[1]
