"""Tests for Atari Phoenix: action parsing, seeding, sticky actions, renderings, hit detection,
and the snapshot-planning expert (which must never disturb the episode it plans for)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import decode, lmact

from lmact.envs.base import InvalidActionError
from lmact.envs.phoenix import (
    ACTIONS,
    PLAN_HORIZON,
    SCREEN_HEIGHT,
    SCREEN_WIDTH,
    STICKY_ACTION_PROBABILITY,
    Phoenix,
    ship_is_hit,
)
from lmact.errors import LmactError

ALL_ACTIONS = ("NOOP", "FIRE", "RIGHT", "LEFT", "DOWN", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE")


@pytest.fixture(scope="module")
def shared() -> Iterator[Phoenix]:
    """One emulator for the tests that only reset and read it (creating one costs ~0.1 s)."""
    env = Phoenix()
    yield env
    env.close()


def play(env: Phoenix, actions: list[str]) -> tuple[list[float], list[bytes]]:
    """The rewards and screens (raw bytes) after each of `actions`."""
    rewards, screens = [], []
    for action in actions:
        rewards.append(env.step(action).reward)
        screens.append(env.frame().tobytes())
    return rewards, screens


def random_actions(seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [ALL_ACTIONS[int(index)] for index in rng.integers(len(ALL_ACTIONS), size=count)]


# --- actions and parsing ----------------------------------------------------------------------


def test_legal_actions_are_the_eight_joystick_actions_in_a_fixed_order(shared: Phoenix) -> None:
    shared.reset(0)
    assert shared.legal_actions() == list(ALL_ACTIONS)
    assert ACTIONS == ALL_ACTIONS
    # The gymnasium environment's own action meanings, in the same order.
    assert tuple(shared._gym_env.unwrapped.get_action_meanings()) == ALL_ACTIONS
    shared.step("FIRE")
    assert shared.legal_actions() == list(ALL_ACTIONS)


@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_parse_accepts_every_action_in_any_case_and_padding(shared: Phoenix, action: str) -> None:
    for answer in (action, action.lower(), action.capitalize(), f"  {action.lower()}.\n"):
        assert shared.parse_action(answer) == action


@pytest.mark.parametrize(
    "answer",
    [
        "SHOOT",
        "UPFIRE",
        "UP",
        "fire left",
        "left fire",
        "",
        " ",
        "FIRE..",
        "FIRE!",
        "1",
        "noop fire",
    ],
)
def test_parse_rejects_answers_that_are_not_actions(shared: Phoenix, answer: str) -> None:
    with pytest.raises(InvalidActionError):
        shared.parse_action(answer)


def test_step_rejects_non_canonical_actions(shared: Phoenix) -> None:
    shared.reset(0)
    for action in ("fire", "SHOOT", ""):
        with pytest.raises(ValueError):
            shared.step(action)


def test_the_environment_must_be_reset_first() -> None:
    env = Phoenix()
    try:
        with pytest.raises(RuntimeError):
            env.render("png")
        with pytest.raises(RuntimeError):
            env.step("NOOP")
    finally:
        env.close()


def test_a_missing_atari_extra_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ale_py", None)  # makes `import ale_py` fail
    with pytest.raises(LmactError, match=r'pip install "lmact\[atari\]"'):
        Phoenix()


@pytest.mark.parametrize(
    ("options", "bad_name"),
    [
        ({"frame_skip": 0}, "frame_skip"),
        ({"frame_skip": 4.0}, "frame_skip"),
        ({"sticky_actions": 1}, "sticky_actions"),
        ({"max_noop_starts": -1}, "max_noop_starts"),
        ({"frame_stack": 0}, "frame_stack"),
        ({"frame_stack": True}, "frame_stack"),
    ],
)
def test_constructor_rejects_bad_options(options: dict[str, object], bad_name: str) -> None:
    with pytest.raises(ValueError, match=bad_name):
        Phoenix(**options)  # type: ignore[arg-type]


# --- seeding and reproducibility --------------------------------------------------------------


def test_same_seed_gives_the_same_start_and_the_same_play(shared: Phoenix) -> None:
    actions = random_actions(11, 40)
    shared.reset(5)
    start = shared.frame().tobytes()
    first = play(shared, actions)
    other = Phoenix()
    try:
        other.reset(5)
        assert other.frame().tobytes() == start
        assert play(other, actions) == first
    finally:
        other.close()
    # Resetting the same emulator again replays the episode too.
    shared.reset(5)
    assert shared.frame().tobytes() == start
    assert play(shared, actions) == first
    assert sum(first[0]) > 0, "a play that scores nothing checks little"


def test_different_seeds_give_different_starts(shared: Phoenix) -> None:
    starts = set()
    for seed in range(8):
        shared.reset(seed)
        starts.add(shared.frame().tobytes())
    assert len(starts) >= 4


def test_without_noop_starts_every_seed_starts_alike() -> None:
    # The emulator itself is deterministic: the seeded no-ops are what vary the start.
    env = Phoenix(max_noop_starts=0)
    try:
        starts = set()
        for seed in range(4):
            env.reset(seed)
            starts.add(env.frame().tobytes())
        assert len(starts) == 1
    finally:
        env.close()


def test_sticky_actions_option_sets_the_repeat_probability() -> None:
    plain, sticky = Phoenix(), Phoenix(sticky_actions=True)
    try:
        assert plain._ale.getFloat("repeat_action_probability") == 0.0
        assert sticky._ale.getFloat("repeat_action_probability") == pytest.approx(
            STICKY_ACTION_PROBABILITY
        )
        # Rapidly changing actions: with sticky actions some are not taken when asked.
        actions = random_actions(3, 60)
        plain.reset(2)
        sticky.reset(2)
        assert play(plain, actions)[1] != play(sticky, actions)[1]
        # And sticky play is still reproducible from the seed.
        sticky.reset(9)
        first = play(sticky, actions)
        sticky.reset(9)
        assert play(sticky, actions) == first
    finally:
        plain.close()
        sticky.close()


def test_the_episode_ends_when_the_game_is_over() -> None:
    env = Phoenix(frame_skip=16)
    try:
        env.reset(0)
        for _ in range(2000):
            if env.step("NOOP").done:
                break
        assert env.done
        assert env.lives == 0
        with pytest.raises(ValueError):
            env.step("NOOP")
        with pytest.raises(ValueError):
            env.expert_action()
    finally:
        env.close()


# --- renderings -------------------------------------------------------------------------------


def test_renderings_are_the_screen_as_png(shared: Phoenix) -> None:
    shared.reset(1)
    shared.step("FIRE")
    for fmt in ("rgb", "png"):
        observation = shared.render(fmt)
        assert observation.is_image
        image = decode(observation.image_png)
        assert image.format == "PNG"
        assert image.mode == "RGB"
        assert image.size == (SCREEN_WIDTH, SCREEN_HEIGHT) == (160, 210)
        assert np.array_equal(np.asarray(image), shared.frame())
    assert shared.render("rgb").image_png == shared.render("png").image_png
    with pytest.raises(ValueError):
        shared.render("txt")


def test_renderings_follow_the_game(shared: Phoenix) -> None:
    shared.reset(1)
    before = shared.render("png").image_png
    shared.step("LEFTFIRE")
    assert shared.render("png").image_png != before


def test_frame_stack_shows_the_last_frames_side_by_side() -> None:
    env = Phoenix(frame_stack=3)
    try:
        env.reset(4)
        start = env.frame()
        image = np.asarray(decode(env.render("png").image_png))
        assert image.shape == (SCREEN_HEIGHT, 3 * SCREEN_WIDTH, 3)
        for panel in range(3):
            assert np.array_equal(
                image[:, panel * SCREEN_WIDTH : (panel + 1) * SCREEN_WIDTH], start
            )
        env.step("RIGHT")
        after_one = env.frame()
        env.step("FIRE")
        image = np.asarray(decode(env.render("rgb").image_png))
        panels = [image[:, k * SCREEN_WIDTH : (k + 1) * SCREEN_WIDTH] for k in range(3)]
        assert np.array_equal(panels[0], start)
        assert np.array_equal(panels[1], after_one)
        assert np.array_equal(panels[2], env.frame())
        assert not np.array_equal(panels[1], panels[2])
    finally:
        env.close()


# --- hit detection ----------------------------------------------------------------------------


def test_the_hit_flag_fires_long_before_a_life_is_lost(shared: Phoenix) -> None:
    # Standing still, the ship is soon shot; the RAM flag shows it at once, the counter later.
    shared.reset(0)
    lives = shared.lives
    first_hit = None
    for step in range(500):
        assert not shared.done
        shared.step("NOOP")
        if first_hit is None and shared.ship_is_hit():
            first_hit = step
        if shared.lives < lives:
            life_lost = step
            break
    else:
        pytest.fail("standing still never lost a life")
    assert first_hit is not None
    assert life_lost - first_hit >= 20
    assert ship_is_hit(shared.ram()) == shared.ship_is_hit()


def test_the_planner_penalizes_a_sequence_that_gets_the_ship_hit(shared: Phoenix) -> None:
    # Find when standing still gets the ship hit, then score standing still from a few steps
    # before that: the score must carry the hit penalty.
    shared.reset(0)
    steps_to_hit = 0
    while not shared.ship_is_hit():
        shared.step("NOOP")
        steps_to_hit += 1
    shared.reset(0)
    for _ in range(steps_to_hit - 5):
        shared.step("NOOP")
    root = shared._ale.cloneState(include_rng=True)
    noop = ALL_ACTIONS.index("NOOP")
    assert shared._rollout_score(root, [noop] * PLAN_HORIZON) < -1000
    shared._ale.restoreState(root)


def test_rollout_scores_match_real_play(shared: Phoenix) -> None:
    # The planner plays the emulator directly; its rewards must be the episode's rewards. The
    # comparison needs a play that scores and is never hit (a hit adds the penalty).
    compared = 0
    for sequence_seed in range(20):
        actions = random_actions(sequence_seed, PLAN_HORIZON)
        shared.reset(sequence_seed)
        root = shared._ale.cloneState(include_rng=True)
        planned = shared._rollout_score(root, [ALL_ACTIONS.index(a) for a in actions])
        shared._ale.restoreState(root)
        rewards, hits = [], []
        for action in actions:
            rewards.append(shared.step(action).reward)
            hits.append(shared.ship_is_hit())
        if any(hits):
            assert planned < 0
            continue
        assert planned == sum(rewards)
        compared += sum(rewards) > 0
    assert compared >= 3


# --- the expert -------------------------------------------------------------------------------


@pytest.mark.parametrize("sticky_actions", [False, True])
def test_planning_leaves_the_episode_unchanged(sticky_actions: bool) -> None:
    planner, bystander = (
        Phoenix(sticky_actions=sticky_actions),
        Phoenix(sticky_actions=sticky_actions),
    )
    try:
        actions = random_actions(5, 30)
        for env in (planner, bystander):
            env.reset(6)
            play(env, actions[:10])
        for action in actions[10:20]:
            frame, ram, png = planner.frame(), planner.ram(), planner.render("png").image_png
            planner.expert_action()
            assert np.array_equal(planner.frame(), frame)
            assert np.array_equal(planner.ram(), ram)
            assert planner.render("png").image_png == png
            # The next step goes exactly as in an emulator that never planned.
            assert play(planner, [action]) == play(bystander, [action])
        assert play(planner, actions[20:]) == play(bystander, actions[20:])
    finally:
        planner.close()
        bystander.close()


def expert_episode(env: Phoenix, seed: int, steps: int) -> tuple[list[str], list[float]]:
    env.reset(seed)
    actions, rewards = [], []
    for _ in range(steps):
        action = env.expert_action()
        outcome = env.step(action)
        actions.append(action)
        rewards.append(outcome.reward)
        if outcome.done:
            break
    return actions, rewards


def test_expert_episodes_are_reproducible_from_their_seed(shared: Phoenix) -> None:
    first = expert_episode(shared, 3, 12)
    other = Phoenix()
    try:
        assert expert_episode(other, 3, 12) == first
    finally:
        other.close()
    # A different seed draws another start and other plans.
    assert expert_episode(shared, 4, 12) != first


@pytest.mark.slow
def test_expert_scores_far_above_random(shared: Phoenix) -> None:
    steps = 100
    expert_returns = [sum(expert_episode(shared, seed, steps)[1]) for seed in (0, 1)]
    random_returns = []
    for seed in range(4):
        shared.reset(seed)
        random_returns.append(sum(play(shared, random_actions(100 + seed, steps))[0]))
    expert_mean = float(np.mean(expert_returns))
    random_mean = float(np.mean(random_returns))
    assert expert_mean >= min(4 * random_mean, 200), (expert_returns, random_returns)
    assert expert_mean > random_mean


# --- the command line -------------------------------------------------------------------------


@pytest.mark.slow
def test_lmact_run_with_the_random_model(tmp_path: Path) -> None:
    # No demonstration: one would be an expert episode of 100 steps (~20 s).
    result = lmact(
        "run",
        "--task",
        "phoenix",
        "--model",
        "random",
        "--demos",
        "0",
        "--episodes",
        "1",
        "--max-steps",
        "5",
        "--json",
        "--store",
        str(tmp_path / "runs.sqlite"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["task"] == "phoenix"
    assert summary["observation"] == "rgb"
    assert summary["episodes"] == 1
    assert summary["steps"] == 5
    assert summary["invalid_rate"] == 0.0
    assert summary["mean_return"] >= 0


def test_a_text_only_model_is_refused_before_any_work(tmp_path: Path) -> None:
    result = lmact(
        "run", "--task", "phoenix", "--demos", "0", "--store", str(tmp_path / "runs.sqlite"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "lmact: error: model local/gemma-3-270m accepts no images; "
        "task phoenix has only image observations: choose a model that sees them"
    )
