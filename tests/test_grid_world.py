"""Tests for the grid world: movement, rewards, seeding, the shortest-path expert, renderings."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from helpers import decode

from lmact.envs.base import InvalidActionError
from lmact.envs.grid_world import GridWorld
from lmact.errors import LmactError
from lmact.tasks import get_task

Position = tuple[int, int]


def env_at(
    player: Position,
    target: Position,
    extra_walls: tuple[Position, ...] = (),
    seed: int = 0,
    **options: int,
) -> GridWorld:
    env = GridWorld(**options)
    env._set_state(player, target, extra_walls, seed)
    return env


def walk_with_expert(env: GridWorld, limit: int = 1000) -> int:
    """Follow the expert to the target; the number of steps, checking every reward on the way."""
    steps = 0
    while True:
        outcome = env.step(env.expert_action())
        steps += 1
        if outcome.done:
            assert outcome.reward == 1.0
            assert env.player == env.target
            return steps
        assert outcome.reward == 0.0
        assert steps < limit, "the expert is not getting to the target"


def shortest_path_length(
    size: int, walls: frozenset[Position], start: Position, goal: Position
) -> int | None:
    """A reference breadth-first search, independent of the module's."""
    seen = {start: 0}
    queue = collections.deque([start])
    while queue:
        row, column = queue.popleft()
        if (row, column) == goal:
            return seen[goal]
        for neighbour in (
            (row - 1, column),
            (row + 1, column),
            (row, column - 1),
            (row, column + 1),
        ):
            if neighbour not in walls and neighbour not in seen:
                seen[neighbour] = seen[(row, column)] + 1
                queue.append(neighbour)
    return None


# --- movement and rewards ---------------------------------------------------------------------


def test_border_walls_block_moves() -> None:
    env = env_at((1, 1), (5, 5))
    for action in ("up", "left"):
        outcome = env.step(action)
        assert (outcome.reward, outcome.done) == (0.0, False)
        assert env.player == (1, 1)
    env = env_at((10, 10), (5, 5))
    for action in ("down", "right"):
        env.step(action)
        assert env.player == (10, 10)


def test_moves_change_the_position_by_one_cell() -> None:
    env = env_at((5, 5), (1, 1))
    expected = {"left": (5, 4), "right": (5, 5), "up": (4, 5), "down": (5, 5)}
    for action, position in expected.items():
        env.step(action)
        assert env.player == position


def test_interior_walls_block_moves() -> None:
    env = env_at((3, 3), (1, 1), extra_walls=((3, 4),))
    env.step("right")
    assert env.player == (3, 3)
    assert (3, 4) in env.walls


def test_reaching_the_target_rewards_and_ends() -> None:
    env = env_at((2, 2), (2, 3))
    outcome = env.step("right")
    assert (outcome.reward, outcome.done) == (1.0, True)
    assert env.done
    with pytest.raises(ValueError):
        env.step("left")
    with pytest.raises(ValueError):
        env.expert_action()


def test_step_rejects_unknown_actions() -> None:
    env = env_at((2, 2), (4, 4))
    for action in ("north", "Left", ""):
        with pytest.raises(ValueError):
            env.step(action)


def test_all_four_actions_are_always_legal() -> None:
    env = env_at((1, 1), (4, 4))
    assert env.legal_actions() == ["left", "right", "up", "down"]


def test_walls_are_exactly_the_border() -> None:
    env = GridWorld(size=5)
    env.reset(0)
    border = {(r, c) for r in range(5) for c in range(5) if r in (0, 4) or c in (0, 4)}
    assert env.walls == frozenset(border)


def test_done_is_read_only() -> None:
    env = env_at((1, 1), (4, 4))
    with pytest.raises(AttributeError):
        env.done = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "bad_name"),
    [
        ({"size": 3}, "size"),
        ({"size": "12"}, "size"),
        ({"size": True}, "size"),
        ({"cell_pixels": 2}, "cell_pixels"),
        ({"cell_pixels": 16.0}, "cell_pixels"),
        ({"text_layout": "table"}, "text_layout"),
        ({"text_layout": True}, "text_layout"),
        ({"coords_layout": "JSON"}, "coords_layout"),
    ],
)
def test_constructor_rejects_bad_options(options: dict[str, object], bad_name: str) -> None:
    with pytest.raises(ValueError, match=f"^option {bad_name} must be") as caught:
        GridWorld(**options)
    assert "\n" not in str(caught.value)


# --- seeding ----------------------------------------------------------------------------------


def test_reset_is_deterministic_per_seed() -> None:
    first, second = GridWorld(), GridWorld()
    for seed in range(50):
        first.reset(seed)
        second.reset(seed)
        assert (first.player, first.target) == (second.player, second.target)
        assert [first.expert_action() for _ in range(5)] == [
            second.expert_action() for _ in range(5)
        ]


def test_initial_states_are_distinct_interior_cells_and_varied() -> None:
    env = GridWorld(size=12)
    states = set()
    for seed in range(200):
        env.reset(seed)
        assert env.player != env.target
        for row, column in (env.player, env.target):
            assert 1 <= row <= 10
            assert 1 <= column <= 10
        states.add((env.player, env.target))
    assert len(states) > 190


def test_every_ordered_pair_of_cells_occurs_on_a_small_grid() -> None:
    # A 4x4 grid has 4 free cells, so 12 ordered (player, target) pairs.
    env = GridWorld(size=4)
    pairs = set()
    for seed in range(300):
        env.reset(seed)
        pairs.add((env.player, env.target))
    assert len(pairs) == 12


def test_reset_forgets_walls_added_by_the_hook() -> None:
    env = env_at((1, 1), (5, 5), extra_walls=((3, 3),))
    env.reset(0)
    assert (3, 3) not in env.walls


# --- the expert -------------------------------------------------------------------------------


def test_expert_walks_the_manhattan_distance_on_an_open_grid() -> None:
    env = GridWorld()
    for seed in range(200):
        env.reset(seed)
        (player_row, player_column), (target_row, target_column) = env.player, env.target
        distance = abs(player_row - target_row) + abs(player_column - target_column)
        assert walk_with_expert(env) == distance


def test_expert_goes_round_an_interior_wall() -> None:
    # A wall down column 4 from row 1 to row 5 leaves a gap at row 6 of the 8x8 grid, so
    # from (1, 2) to (1, 6): 5 down, 4 across, 5 up.
    wall = tuple((row, 4) for row in range(1, 6))
    for seed in range(20):
        env = env_at((1, 2), (1, 6), extra_walls=wall, seed=seed, size=8)
        assert walk_with_expert(env) == 14


def test_expert_is_optimal_among_random_interior_walls() -> None:
    layouts = np.random.default_rng(1234)
    checked = 0
    while checked < 60:
        size = int(layouts.integers(5, 14))
        interior = [(r, c) for r in range(1, size - 1) for c in range(1, size - 1)]
        extra = tuple(cell for cell in interior if layouts.random() < 0.3)
        free = [cell for cell in interior if cell not in extra]
        if len(free) < 2:
            continue
        first, second = layouts.choice(len(free), size=2, replace=False)
        player, target = free[int(first)], free[int(second)]
        env = env_at(player, target, extra_walls=extra, seed=checked, size=size)
        expected = shortest_path_length(size, env.walls, player, target)
        if expected is None:
            with pytest.raises(ValueError):
                env.expert_action()
            continue
        assert walk_with_expert(env) == expected
        checked += 1


def test_expert_breaks_ties_at_random() -> None:
    # Down and right are both on shortest paths; both should turn up across seeds.
    choices = {env_at((3, 3), (6, 6), seed=seed).expert_action() for seed in range(50)}
    assert choices == {"down", "right"}


def test_expert_takes_the_only_shortest_move() -> None:
    assert env_at((3, 3), (3, 7)).expert_action() == "right"
    assert env_at((8, 3), (2, 3)).expert_action() == "up"


# --- renderings -------------------------------------------------------------------------------


def test_text_rendering() -> None:
    env = env_at((1, 2), (3, 1), size=5)
    assert env.render("txt").text == (
        "wall wall wall wall wall\n"
        "wall tile player tile wall\n"
        "wall tile tile tile wall\n"
        "wall target tile tile wall\n"
        "wall wall wall wall wall"
    )


def test_coords_rendering() -> None:
    env = env_at((1, 2), (3, 1), size=5)
    assert env.render("coords").text == '{"player": [1, 2], "target": [3, 1]}'
    env.step("down")
    assert env.render("coords").text == '{"player": [2, 2], "target": [3, 1]}'


def test_boxed_text_layout_is_the_reference_codes_table() -> None:
    env = env_at((1, 2), (3, 1), size=5, text_layout="boxed")
    # The LMAct reference code's formula: "|" + each word centred in 8 + "|" per cell, a rule
    # of dashes as long as a row above the first row and after every row.
    words = [
        ["wall"] * 5,
        ["wall", "tile", "player", "tile", "wall"],
        ["wall", "tile", "tile", "tile", "wall"],
        ["wall", "target", "tile", "tile", "wall"],
        ["wall"] * 5,
    ]
    scene = []
    for row in words:
        line = "|" + "".join(word.center(8) + "|" for word in row)
        scene += [line, "-" * len(line)]
    expected = "\n".join(["-" * len(scene[0]), *scene])
    assert env.render("txt").text == expected
    assert expected.splitlines()[3] == "|  wall  |  tile  | player |  tile  |  wall  |"
    env.step("down")
    lines = env.render("txt").text.splitlines()
    assert lines[3] == "|  wall  |  tile  |  tile  |  tile  |  wall  |"
    assert lines[5] == "|  wall  |  tile  | player |  tile  |  wall  |"


def test_dict_coords_layout_is_the_reference_codes_python_dict() -> None:
    env = env_at((1, 2), (3, 1), size=5, coords_layout="dict")
    # The reference code: str(dict(player=..., target=...)) of numpy [row, column] indices.
    reference = str(dict(player=np.array([1, 2]).tolist(), target=np.array([3, 1]).tolist()))
    assert env.render("coords").text == reference == "{'player': [1, 2], 'target': [3, 1]}"
    env.step("down")
    assert env.render("coords").text == "{'player': [2, 2], 'target': [3, 1]}"


def test_layout_options_leave_the_defaults_and_the_other_formats_alone() -> None:
    default = env_at((1, 2), (3, 1), size=5)
    explicit = env_at((1, 2), (3, 1), size=5, text_layout="words", coords_layout="json")
    boxed = env_at((1, 2), (3, 1), size=5, text_layout="boxed")
    for fmt in GridWorld.observation_formats:
        assert default.render(fmt) == explicit.render(fmt)
    assert boxed.render("coords") == default.render("coords")
    assert boxed.render("png") == default.render("png")
    # Answers and the expert do not depend on the layout.
    assert boxed.expert_action() == default.expert_action()
    assert boxed.parse_action(" Down.") == "down"


def test_the_task_spec_takes_the_layout_options() -> None:
    spec = get_task("grid_world")
    default = spec.make_environment()
    assert isinstance(default, GridWorld)
    assert (default.text_layout, default.coords_layout) == ("words", "json")
    env = spec.make_environment(text_layout="boxed", coords_layout="dict")
    assert isinstance(env, GridWorld)
    assert (env.text_layout, env.coords_layout) == ("boxed", "dict")
    with pytest.raises(LmactError, match="option text_layout must be one of 'words', 'boxed'"):
        spec.make_environment(text_layout="grid")


def test_image_rendering_decodes_at_the_grid_size() -> None:
    env = env_at((1, 2), (3, 1), size=6, cell_pixels=10)
    for fmt in ("rgb", "png"):
        observation = env.render(fmt)
        assert observation.is_image
        image = decode(observation.image_png)
        assert image.format == "PNG"
        assert image.mode == "RGB"
        assert image.size == (60, 60)
    assert env.render("rgb").image_png == env.render("png").image_png


def test_image_rendering_follows_the_state() -> None:
    before = env_at((2, 2), (5, 5)).render("png").image_png
    assert env_at((2, 2), (5, 5), seed=7).render("png").image_png == before
    env = env_at((2, 2), (5, 5))
    env.step("right")
    assert env.render("png").image_png != before


def test_image_sprites_differ_by_cell_kind() -> None:
    cell = 16
    image = decode(env_at((1, 2), (2, 1), size=4, cell_pixels=cell).render("png").image_png)
    crops = {
        kind: image.crop((column * cell, row * cell, (column + 1) * cell, (row + 1) * cell))
        for kind, (row, column) in {
            "wall": (0, 0),
            "player": (1, 2),
            "target": (2, 1),
            "tile": (1, 1),
        }.items()
    }
    pixels = {kind: crop.tobytes() for kind, crop in crops.items()}
    assert len(set(pixels.values())) == 4
    # Every wall cell shows the same cached sprite.
    other_wall = image.crop((3 * cell, 3 * cell, 4 * cell, 4 * cell)).tobytes()
    assert other_wall == pixels["wall"]


def test_render_rejects_unknown_formats() -> None:
    with pytest.raises(ValueError):
        env_at((1, 2), (3, 1)).render("jpeg")


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "action"),
    [("left", "left"), (" RIGHT ", "right"), ("Up.", "up"), ("\tdown.\n", "down")],
)
def test_parse_accepts_directions_in_any_case_and_padding(answer: str, action: str) -> None:
    assert env_at((1, 2), (3, 1)).parse_action(answer) == action


@pytest.mark.parametrize(
    "answer", ["north", "l", "lef", "left..", "move left", "left right", "", "1", "up!"]
)
def test_parse_rejects_answers_that_are_not_directions(answer: str) -> None:
    with pytest.raises(InvalidActionError):
        env_at((1, 2), (3, 1)).parse_action(answer)


def test_parse_accepts_moves_into_walls() -> None:
    # Nothing is ever illegal: bumping into the border is a valid, legal action.
    env = env_at((1, 1), (3, 3))
    assert env.parse_action("up") == "up"
