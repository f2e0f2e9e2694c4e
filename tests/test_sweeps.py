"""Sweeps: a grid of runs from one TOML file, played in one event loop with one caller per
model, identical requests in flight sent once, kept in the store for the report."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from helpers import StubModel, lmact

from lmact.demos import DemoStore
from lmact.errors import LmactError
from lmact.models.base import ModelRequest, ModelResponse
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.sweeps import load_sweep, play_sweep, read_sweep_file

SWEEP = """
name = "grid"
[base]
task = "tic_tac_toe"
episodes = 3
[axes]
model = ["random", "expert"]
demos = [0, 1, 2]
[[exclude]]
model = "expert"
demos = 2
[[runs]]
model = "expert"
demos = 4
"""


def write(folder: Path, text: str, name: str = "sweep.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_the_grid_is_the_product_of_the_axes_less_exclusions_plus_extra_runs(
    tmp_path: Path,
) -> None:
    name, base, runs = read_sweep_file(write(tmp_path, SWEEP))
    assert name == "grid" and base == {"task": "tic_tac_toe", "episodes": 3}
    points = [(run["model"], run["demos"]) for run in runs]
    assert points == [("random", 0), ("random", 1), ("random", 2), ("expert", 0),
                      ("expert", 1), ("expert", 4)]  # fmt: skip
    sweep = load_sweep(write(tmp_path, SWEEP))
    assert len({run.config.run_id for run in sweep.runs}) == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\n[base]\ntask = "tic_tac_toe"\n[axes]\ndemoz = [1]\n', "unrecognized"),
        ('name = "x"\ncolour = 1\n', "unknown key 'colour'"),
        ('[base]\ntask = "tic_tac_toe"\n', "give the sweep a name"),
        ('name = "x"\n[axes]\nthreads = [1, 2]\n', "option of the process"),
        ('name = "x"\n[base]\ntask = "tic_tac_toe"\n[axes]\ndemos = []\n', "non-empty list"),
        ('name = "x"\n[base]\ntask = "checkers"\n', "unknown task 'checkers'"),
        ('name = "x"\n[base\n', "not valid TOML"),
    ],
)
def test_a_bad_sweep_file_is_one_line_before_anything_runs(
    tmp_path: Path, text: str, message: str
) -> None:
    done = lmact("sweep", str(write(tmp_path, text)), "--store", "s.sqlite", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and not (tmp_path / "s.sqlite").exists()


def test_a_sweep_runs_stores_its_grid_and_reports_its_runs(tmp_path: Path) -> None:
    sweep = write(tmp_path, SWEEP)
    common = ["--store", "s.sqlite", "--cache-dir", "cache"]
    done = lmact("sweep", str(sweep), *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sweep grid: 6 runs" in done.stdout
    counts = re.findall(r"(\d+/\d+) runs finished", done.stderr)
    assert counts == [f"{n}/6" for n in range(1, 7)]  # a line per run as it ends
    lines = [
        line for line in done.stdout.splitlines() if line.startswith("| ") and "run" not in line
    ]
    assert len(lines) == 6 and all(" failed " not in line for line in lines)
    other = lmact("run", "--task", "grid_world", "--model", "random", "--episodes", "2",
                  *common, cwd=tmp_path)  # fmt: skip
    assert other.returncode == 0, other.stderr
    report = lmact("report", "--format", "csv", "--sweep", "grid", *common[:2], cwd=tmp_path)
    tasks = {line.split(",")[1] for line in report.stdout.splitlines()[1:]}
    assert tasks == {"tic_tac_toe"}  # the grid world run is not the sweep's
    assert len(report.stdout.splitlines()) == 1 + 6  # its runs; their baselines among them
    dry = lmact("sweep", str(sweep), "--dry-run", *common, cwd=tmp_path)
    assert dry.returncode == 0 and "no model was called" in dry.stdout
    assert "6 runs" in dry.stdout


class Counting(StubModel):
    """A test model that counts the requests it answers at once, and every request."""

    def __init__(self) -> None:
        super().__init__("test/counting")
        self.in_flight = 0
        self.most = 0
        self.prompts: list[str] = []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        self.prompts.append(request.prompt_hash)
        try:
            await asyncio.sleep(0.02)
            return ModelResponse(text="b2", prompt_tokens=10, completion_tokens=1)
        finally:
            self.in_flight -= 1


def test_runs_of_one_model_share_its_connections_and_send_a_request_once(
    tmp_path: Path,
) -> None:
    text = SWEEP.replace('["random", "expert"]', '["test/counting"]').split("[[exclude]]")[0]
    text += '[[runs]]\nmodel = "test/counting"\ndemos = 1\nmax_steps = 2\n'
    with RunStore(tmp_path / "s.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), max_connections=2, progress=False)
        counting = Counting()
        runner.policies.register(counting)
        sweep = load_sweep(write(tmp_path, text))
        assert len(sweep.runs) == 4
        seen: list[set[str]] = []  # what a live display is shown, tick by tick

        def tick() -> None:
            seen.append(set(runner.playing))

        outcomes = asyncio.run(play_sweep(runner, sweep, lambda o: None, tick, tick_s=0.01))
        assert not runner.playing
    assert all(o.error is None for o in outcomes)
    assert max(len(playing) for playing in seen) >= 2  # shown playing side by side
    assert set().union(*seen) <= set(sweep.run_ids())  # the sweep's runs and baselines
    assert counting.most == 2  # the runs went side by side, under one connection limit
    assert len(counting.prompts) == len(set(counting.prompts))  # no request paid twice
    # The step-limited run's requests are the first steps of the demos=1 run's: whichever
    # of the two sends one first (their preparations finish in either order), the other
    # takes it from the cache or from the call in flight.
    (limited,) = [o for o in outcomes if o.run.options.get("max_steps") == 2]
    (full,) = [o for o in outcomes if o.run.options.get("demos") == 1 and o is not limited]
    assert limited.summary is not None and full.summary is not None
    assert limited.summary.calls_made + limited.summary.calls_cached == limited.summary.steps
    assert full.summary.calls_cached >= limited.summary.calls_made  # what one paid, not twice


def test_a_failing_run_leaves_the_others_going(tmp_path: Path) -> None:
    text = 'name = "x"\n[base]\ntask = "tic_tac_toe"\nepisodes = 2\n[axes]\n'
    text += 'model = ["random", "test/refuses"]\n'

    class Refuses(StubModel):
        async def complete(self, request: ModelRequest) -> ModelResponse:
            from lmact.models.base import ModelCallError

            raise ModelCallError("HTTP 400: no")

    with RunStore(tmp_path / "s.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        runner.policies.register(Refuses("test/refuses"))
        sweep = load_sweep(write(tmp_path, text))
        outcomes = asyncio.run(play_sweep(runner, sweep, lambda outcome: None))
    by_model = {o.run.config.model: o for o in outcomes}
    assert by_model["random"].summary is not None
    assert by_model["test/refuses"].summary is None and "HTTP 400" in (
        by_model["test/refuses"].error or ""
    )
    with pytest.raises(LmactError):
        load_sweep(write(tmp_path, text.replace("[axes]\n", "[axes]\nepisodes = [0]\n")))
    assert json.dumps(sweep.grid())  # the grid the store keeps is JSON


def test_a_run_being_prepared_does_not_hold_up_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Preparation (generating demonstrations, starting an engine) is on a worker thread:
    a run whose preparation takes long leaves the event loop to the sweep's other runs."""
    from lmact.regimes.imitation import ImitationRegime

    prepare = ImitationRegime.prepare
    prepared_at: dict[str, float] = {}

    def slow_for_grid_world(self, config, *args):  # type: ignore[no-untyped-def]
        if config.task == "grid_world":
            time.sleep(1.5)  # blocking, as generating demonstrations is
        prepared_at[config.run_id] = time.monotonic()
        return prepare(self, config, *args)

    monkeypatch.setattr(ImitationRegime, "prepare", slow_for_grid_world)
    text = 'name = "x"\n[base]\nmodel = "random"\nepisodes = 2\ndemos = 0\n'
    text += '[axes]\ntask = ["grid_world", "tic_tac_toe"]\n'
    done_at: dict[str, float] = {}
    with RunStore(tmp_path / "s.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        sweep = load_sweep(write(tmp_path, text))
        outcomes = asyncio.run(
            play_sweep(
                runner, sweep, lambda o: done_at.update({o.run.config.task: time.monotonic()})
            )
        )
    assert all(o.error is None for o in outcomes)
    (slow,) = [o.run.config.run_id for o in outcomes if o.run.config.task == "grid_world"]
    assert done_at["tic_tac_toe"] < prepared_at[slow] < done_at["grid_world"]


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "tasks" / "sweeps").glob("*.toml"))
)
def test_the_shipped_sweeps_load(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.runs and len(sweep.run_ids()) >= len(sweep.runs)


def test_process_options_in_the_sweep_file_are_used_unless_the_command_line_gives_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmact import cli

    seen: list[int | None] = []
    init = Runner.__init__

    def recorded(self, store, demo_store, model_options=None, max_connections=None, **kw):  # type: ignore[no-untyped-def]
        seen.append(max_connections)
        init(self, store, demo_store, model_options, max_connections, **kw)

    monkeypatch.setattr(Runner, "__init__", recorded)
    monkeypatch.chdir(tmp_path)
    text = 'name = "x"\n[base]\ntask = "tic_tac_toe"\nepisodes = 1\nmodel = "random"\n'
    text += 'store = "from-file.sqlite"\nmax_connections = 3\n'
    path = write(tmp_path, text)
    assert cli.main(["sweep", str(path)]) == 0
    assert (tmp_path / "from-file.sqlite").exists() and seen == [3]
    assert cli.main(["sweep", str(path), "--store", "given.sqlite", "--max-connections", "5"]) == 0
    assert (tmp_path / "given.sqlite").exists() and seen == [3, 5]
