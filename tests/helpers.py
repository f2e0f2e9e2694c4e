"""Helpers shared by tests: demonstrations, the prompts of an expert-played episode, images."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lmact.demos import DEMO_SEED_BASE, play_expert_episode
from lmact.models.base import (
    ModelClient,
    ModelOptions,
    ModelRequest,
    ModelResponse,
    Part,
    TextPart,
    estimate_tokens,
)
from lmact.models.caller import ModelCaller
from lmact.prompting import PromptBuilder, PromptSettings, Step
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


class StubModel(ModelClient):
    """A test model: counts tokens with the documented estimate; subclasses answer."""

    def __init__(self, name: str, options: ModelOptions | None = None) -> None:
        super().__init__(name, options or ModelOptions())

    def count_tokens(self, parts: Sequence[Part]) -> int:
        return estimate_tokens(parts)
