"""Helpers shared by tests: demonstrations, the prompts of an expert-played episode, images,
a run store with runs of every regime."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lmact.demos import DEMO_SEED_BASE, DemoStore, play_expert_episode
from lmact.models.base import (
    ModelClient,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    TurnStart,
    estimate_tokens,
)
from lmact.models.caller import ModelCaller
from lmact.prompting import PromptBuilder, PromptSettings, Step
from lmact.regimes.icrl import make_icrl_config
from lmact.regimes.imitation import make_config
from lmact.regimes.replay import make_replay_config
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task


def lmact(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `lmact` command, run in a subprocess from `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "lmact.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def demonstrations(task: str, observation: str, count: int) -> list[tuple[Step, ...]]:
    spec = get_task(task)
    env = spec.make_environment()
    return [
        play_expert_episode(spec, env, observation, DEMO_SEED_BASE + k).steps for k in range(count)
    ]


def episode_requests(
    task: str, observation: str, settings: PromptSettings, demos: int
) -> tuple[PromptBuilder, list[tuple[ModelRequest, str]]]:
    """The requests of one expert-played test episode, with each step's tail."""
    spec = get_task(task)
    builder = PromptBuilder(settings)
    prefix = builder.prefix(demonstrations(task, observation, demos))
    env = spec.make_environment()
    env.reset(7)
    trajectory: list[Step] = []
    requests = []
    for _ in range(spec.max_steps):
        observation_now = env.render(observation)
        legal = env.legal_actions()
        request = builder.request(
            prefix, trajectory, observation_now, legal, with_demonstrations=demos > 0, max_tokens=8
        )
        requests.append((request, builder.tail(legal, demos > 0)))
        action = env.expert_action()
        trajectory.append((observation_now, action))
        if env.step(action).done:
            break
    return builder, requests


def decode(png: bytes | None) -> Image.Image:
    """A PNG observation as a loaded Pillow image."""
    assert png is not None
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def call(
    client: ModelClient, request: ModelRequest, **caller_options: Any
) -> tuple[ModelResponse, ModelCaller]:
    """One call through a ModelCaller (retries, timeout) with a fast backoff, as a run makes it."""
    caller = ModelCaller(client, None, backoff_s=0.01, **caller_options)
    return asyncio.run(caller.call(request)), caller


def simple_request(**fields: Any) -> ModelRequest:
    """A three-part text request (preamble, demonstrations, current step)."""
    parts = (TextPart("Preamble.\n"), TextPart("Demonstrations.\n"), TextPart("Now: x1\n"))
    return ModelRequest(parts=fields.pop("parts", parts), **fields)


# A conversation as in-context RL sends one: an example's input, the model's answer, the
# feedback, then the current input; its first three turns are its first five parts.
CONVERSATION_PARTS: tuple[Part, ...] = (
    TextPart("in 1\n"),
    TurnStart("assistant"),
    TextPart("Action: a\n"),
    TurnStart("user"),
    TextPart("Right.\n"),
    TextPart("in 2\n"),
)


def conversation_request(**fields: Any) -> ModelRequest:
    """`CONVERSATION_PARTS` as a request, its first three turns the stable prefix."""
    fields.setdefault("stable_prefix_parts", 5)
    return ModelRequest(parts=CONVERSATION_PARTS, **fields)


class StubModel(ModelClient):
    """A test model: counts tokens with the documented estimate; subclasses answer."""

    def __init__(self, name: str, options: ModelOptions | None = None) -> None:
        super().__init__(name, options or ModelOptions())

    def count_tokens(self, parts: Sequence[Part]) -> int:
        return estimate_tokens(parts)


CYCLER = "test/cycler"
# Answers of every kind for both tasks: a tic-tac-toe move is invalid in grid_world, a
# direction invalid in tic-tac-toe, "zz" invalid in both, "" empty.
ANSWERS = ["b2", "left", "a1", "up", "zz", "c3", "", "right"]
TIC_TAC_TOE_DEMOS = (0, 1, 2)


class Cycler(StubModel):
    """Answers from a fixed list by the request's shape, so more demonstrations give other
    answers (and scores), as a model's would."""

    def __init__(self) -> None:
        super().__init__(CYCLER)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        index = len(request.parts[-1].text) + 3 * len(request.parts)
        return ModelResponse(text=ANSWERS[index % len(ANSWERS)], prompt_tokens=10,
                             completion_tokens=1)  # fmt: skip


def store_of_every_regime(folder: Path) -> Path:
    """A run store `folder/runs.sqlite` with runs of every regime, in about two seconds:
    Cycler's imitation runs of tic-tac-toe (0, 1, 2 demonstrations) and grid_world (two
    formats, a token budget), a replay run, two in-context RL bandit baselines, and their
    random and expert baselines. Its demonstrations are cached in `folder/demos` (what
    `--cache-dir folder` reads)."""
    path = folder / "runs.sqlite"
    with RunStore(path) as store:
        runner = Runner(store, DemoStore(folder / "demos"), progress=False)
        runner.policies.register(Cycler())
        try:
            for count in TIC_TAC_TOE_DEMOS:
                runner.evaluate(make_config("tic_tac_toe", model=CYCLER, demos=count), 4)
            grid = {"max_steps": 12}
            for observation, count in (("txt", 0), ("txt", 2), ("coords", 1)):
                config = make_config("grid_world", model=CYCLER, observation=observation,
                                     demos=count, **grid)  # fmt: skip
                runner.evaluate(config, 3)
            runner.evaluate(make_config("grid_world", model=CYCLER, token_budget=4000, **grid), 3)
            runner.evaluate(make_replay_config("tic_tac_toe", model="random"), 3)
            for model in ("ucb1", "greedy"):
                runner.evaluate(make_icrl_config("bandit_hard", model=model, replicates=4), 20)
        finally:
            runner.close()
    return path


def cycler_store(path: Path, demos_folder: Path) -> str:
    """A store at `path` with one Cycler run of tic-tac-toe (4 episodes) and its baselines,
    the run to copy in stores of many runs; its run id."""
    with RunStore(path) as store:
        runner = Runner(store, DemoStore(demos_folder), progress=False)
        runner.policies.register(Cycler())
        try:
            config = make_config("tic_tac_toe", model=CYCLER, demos=1)
            runner.evaluate(config, 4)
        finally:
            runner.close()
    return config.run_id


def copy_run(path: Path, run_id: str, copies: int, tag: str = "c", **config: str) -> list[str]:
    """`copies` copies of run `run_id` in the store at `path`, its episodes and steps with
    them, by SQL (10,000 runs in a second): run ids `RUN_ID-TAG00001` …, and where `config`
    gives a value (say model="test/m-{}"), that field of each copy's configuration, `{}`
    its number. Returns the copies' run ids."""
    if copies < 1:
        return []
    config_sql, formats = "r.config", []
    for name in config:
        config_sql = f"json_set({config_sql}, '$.{name}', printf(?, n.i))"
        formats.append(config[name].replace("%", "%%").replace("{}", "%05d"))
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # committed, then closed
        for table in ("runs", "episodes", "steps"):
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            values = {"run_id": "r.run_id || printf('-%s%05d', ?, n.i)"}
            if table == "runs":
                values |= {"config": config_sql, "created": "r.created + n.i * 1e-6"}
            selected = ", ".join(values.get(c, f"r.{c}") for c in columns)
            db.execute(
                f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT {selected} "
                f"FROM {table} AS r, n WHERE r.run_id = ?",
                (copies, *([tag, *formats] if table == "runs" else [tag]), run_id),
            )
    return [f"{run_id}-{tag}{i:05d}" for i in range(1, copies + 1)]


# lmact's command line, then its peak resident memory (KiB) as stderr's last line: VmHWM,
# this program's own peak (ru_maxrss would keep the parent's across fork and exec).
_MEASURED_LMACT = (
    "import re, sys\n"
    "from lmact.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "status = open('/proc/self/status').read()\n"
    "print(re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def measured_lmact(
    *words: str, timeout_s: float = 600
) -> tuple[subprocess.CompletedProcess[str], int]:
    """`lmact WORDS…` in a process of its own: what it did, and its peak memory in bytes
    (0 if it did not get as far as saying it)."""
    done = subprocess.run([sys.executable, "-c", _MEASURED_LMACT, *words],
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    lines = done.stderr.splitlines()
    return done, int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else 0
