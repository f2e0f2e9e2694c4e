"""One episode loop for every regime, and the order of resets and steps and the step limit
checked once, by `EpisodeGuard`, whatever the environment family."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lmact.episode
import lmact.regimes
from lmact.demos import DEMO_SEED_BASE, DemoStore
from lmact.envs import environment_families, make_environment
from lmact.envs.base import EpisodeGuard, EpisodeOrderError
from lmact.envs.grid_world import GridWorld
from lmact.records import STEP_LIMIT
from lmact.regimes.base import RegimeConfig
from lmact.regimes.icrl import make_icrl_config
from lmact.regimes.imitation import make_config
from lmact.regimes.replay import make_replay_config
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task

# --- the guard, for every family --------------------------------------------------------------


@pytest.mark.parametrize("family", environment_families())
def test_every_family_is_used_in_order_through_the_guard(family: str) -> None:
    rng = np.random.default_rng(0)
    env = EpisodeGuard(make_environment(family), max_steps=1)
    fmt = env.observation_formats[0]
    before_reset: list[Callable[[], Any]] = [
        lambda: env.step("anything"),
        lambda: env.render(fmt),
        env.legal_actions,
        env.expert_action,
        lambda: env.random_action(rng),
    ]
    try:
        for use in before_reset:
            with pytest.raises(EpisodeOrderError):
                use()
        env.reset(0)
        action = env.random_action(rng)
        env.step(action)
        assert env.over  # ended, or cut by the step limit of one step
        with pytest.raises(EpisodeOrderError):
            env.step(action)
        with pytest.raises(EpisodeOrderError):
            env.expert_action()
        assert isinstance(env.legal_actions(), list)  # reading the end is not refused
        env.reset(1)
        assert not env.over and env.steps == 0
        env.step(env.random_action(rng))  # a reset starts another episode
    finally:
        env.close()
    with pytest.raises(EpisodeOrderError):
        env.render(fmt)


def test_an_episode_that_ends_by_its_rules_refuses_a_further_step() -> None:
    env = EpisodeGuard(make_environment("tic_tac_toe"))  # no step limit
    env.reset(0)
    while not env.over:
        env.step(env.expert_action())
    assert env.done and not env.truncated
    with pytest.raises(EpisodeOrderError):
        env.step("a1")
    with pytest.raises(EpisodeOrderError):
        env.expert_action()


def test_an_end_on_the_last_allowed_step_is_an_end_not_a_truncation() -> None:
    env = EpisodeGuard(make_environment("bandit"), max_steps=1)  # one round: done at once
    env.reset(0)
    env.step(env.expert_action())
    assert env.done and not env.truncated and env.end_reason() is not None


# --- the loop, for every regime ---------------------------------------------------------------


def one_step_grid_world(folder: Path) -> str:
    """A grid world variant whose step limit is one step (the path of its spec)."""
    spec = folder / "grid_world_one_step.toml"
    spec.write_text('include = "grid_world"\nname = "grid_world_one_step"\nmax_steps = 1\n')
    return str(spec)


def far_from_the_target(seed: int) -> bool:
    """Whether no single move reaches the target from the start of `seed`."""
    env = GridWorld()
    env.reset(seed)
    (row, column), (target_row, target_column) = env.player, env.target
    return abs(row - target_row) + abs(column - target_column) > 1


def test_the_step_limit_cuts_every_regimes_episodes_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = one_step_grid_world(tmp_path)
    configs: dict[str, tuple[RegimeConfig, list[int]]] = {
        "imitation": (make_config(task, model="random", demos=0), [0, 1, 2]),
        "icrl": (make_icrl_config(task, model="random", replicates=1), [0, 0, 0]),
        "replay": (
            make_replay_config(task, model="random"),
            [DEMO_SEED_BASE + k for k in range(3)],
        ),
    }
    played: list[int] = []
    step = lmact.episode.play_step

    async def counted(*args: Any, **kwargs: Any) -> lmact.episode.PlayedStep:
        played.append(1)
        return await step(*args, **kwargs)

    # Every step of every regime is played by the one loop, in lmact.episode.
    monkeypatch.setattr(lmact.episode, "play_step", counted)
    with RunStore(tmp_path / "runs.sqlite") as store:
        runner = Runner(store, DemoStore(tmp_path / "demos"), progress=False)
        for regime, (config, seeds) in configs.items():
            assert all(far_from_the_target(seed) for seed in seeds)  # so one step cannot end it
            played.clear()
            episodes = runner.run(config, 3).episodes
            ends = [(e.seed, e.steps, e.terminated, e.end_reason) for e in episodes]
            assert ends == [(seed, 1, False, STEP_LIMIT) for seed in seeds], regime
            assert len(played) == 3, regime
        runner.close()
    assert get_task(task).max_steps == 1


# --- no loop of their own in the regimes ------------------------------------------------------

REGIME_MODULES = sorted(Path(lmact.regimes.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", REGIME_MODULES, ids=lambda path: path.stem)
def test_no_regime_module_steps_an_environment_itself(path: Path) -> None:
    called = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                called.add(node.func.id)
            elif isinstance(node.func, ast.Attribute):
                called.add(node.func.attr)
    assert not called & {"step", "play_step"}


def test_the_regime_modules_are_found() -> None:
    assert {"imitation", "replay", "icrl"} <= {path.stem for path in REGIME_MODULES}
