"""Tests for the tic-tac-toe environment: rules, seeding, expert, renderings and parsing."""

from __future__ import annotations

from functools import cache

import pytest
from helpers import decode

from lmact.envs.base import IllegalActionError, InvalidActionError
from lmact.envs.tic_tac_toe import TicTacToe
from lmact.errors import LmactError
from lmact.tasks import get_task

LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]
CELLS = [f"{row}{column}" for row in "abc" for column in "123"]


def board_from(rows: str) -> tuple[str, ...]:
    """A board from a compact picture: nine characters of x, o or '.', row by row."""
    cells = rows.replace("\n", "").replace(" ", "")
    assert len(cells) == 9
    return tuple(" " if cell == "." else cell for cell in cells)


def env_at(rows: str, agent_mark: str, seed: int = 0, **options: object) -> TicTacToe:
    env = TicTacToe(**options)
    env._set_position(board_from(rows), agent_mark, seed)
    return env


# --- an independent reference for the game, written without the module's helpers ------------


def has_line(board: tuple[str, ...], mark: str) -> bool:
    return any(all(board[i] == mark for i in line) for line in LINES)


def other(mark: str) -> str:
    return "o" if mark == "x" else "x"


def place(board: tuple[str, ...], index: int, mark: str) -> tuple[str, ...]:
    cells = list(board)
    assert cells[index] == " "
    cells[index] = mark
    return tuple(cells)


@cache
def game_value(board: tuple[str, ...], mark: str) -> int:
    """+1, 0 or -1: the result for `mark`, to move on an undecided board, under perfect play."""
    best = -1
    for index, cell in enumerate(board):
        if cell != " ":
            continue
        after = place(board, index, mark)
        if has_line(after, mark):
            return 1
        value = 0 if " " not in after else -game_value(after, other(mark))
        best = max(best, value)
    return best


def reachable_positions() -> set[tuple[tuple[str, ...], str]]:
    """Every undecided position of legal play, with the mark to move."""
    positions: set[tuple[tuple[str, ...], str]] = set()

    def visit(board: tuple[str, ...], mark: str) -> None:
        if (board, mark) in positions:
            return
        positions.add((board, mark))
        for index, cell in enumerate(board):
            if cell == " ":
                after = place(board, index, mark)
                if not has_line(after, mark) and " " in after:
                    visit(after, other(mark))

    visit((" ",) * 9, "x")
    return positions


# --- rules and rewards ------------------------------------------------------------------------


def test_agent_completing_a_line_wins() -> None:
    env = env_at("xx. oo. ...", "x")
    outcome = env.step("a3")
    assert (outcome.reward, outcome.done) == (1.0, True)
    assert env.done
    assert env.board == board_from("xxx oo. ...")


def test_opponent_completing_a_line_loses() -> None:
    # The agent (o) has two free cells; after c1 the opponent's only reply, a3, wins for x.
    env = env_at("xx. oox .ox", "o")
    outcome = env.step("c1")
    assert (outcome.reward, outcome.done) == (-1.0, True)
    assert env.board == board_from("xxx oox oox")


def test_agent_filling_the_board_draws() -> None:
    env = env_at("xox xoo ox.", "x")
    outcome = env.step("c3")
    assert (outcome.reward, outcome.done) == (0.0, True)


def test_opponent_filling_the_board_draws() -> None:
    env = env_at("xx. oox .ox", "o")
    outcome = env.step("a3")
    assert (outcome.reward, outcome.done) == (0.0, True)
    assert env.board == board_from("xxo oox xox")


def test_undecided_step_places_one_mark_each() -> None:
    env = env_at("... ... ...", "x", seed=5)
    outcome = env.step("b2")
    assert (outcome.reward, outcome.done) == (0.0, False)
    assert env.board[4] == "x"
    assert env.board.count("x") == 1
    assert env.board.count("o") == 1


def test_step_rejects_illegal_actions_and_finished_episodes() -> None:
    env = env_at("x.. ... ...", "o")
    with pytest.raises(ValueError):
        env.step("a1")  # occupied
    with pytest.raises(ValueError):
        env.step("z9")
    env = env_at("xx. oo. ...", "x")
    env.step("a3")
    with pytest.raises(ValueError):
        env.step("c3")
    with pytest.raises(ValueError):
        env.expert_action()


def test_legal_actions_are_the_empty_cells_in_order() -> None:
    env = env_at("x.o .x. o..", "x")
    assert env.legal_actions() == ["a2", "b1", "b3", "c2", "c3"]


def test_done_is_read_only() -> None:
    env = env_at("... ... ...", "x")
    with pytest.raises(AttributeError):
        env.done = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "bad_name"),
    [
        ({"opening_plies": 5}, "opening_plies"),
        ({"opening_plies": -1}, "opening_plies"),
        ({"opening_plies": "2"}, "opening_plies"),
        ({"image_size": True}, "image_size"),
        ({"image_size": 8}, "image_size"),
        ({"coordinates": "yes"}, "coordinates"),
        ({"separator": "---"}, "separator"),
        ({"separator": "-" * 11}, "separator"),
        ({"separator": 10}, "separator"),
    ],
)
def test_constructor_rejects_bad_options(options: dict[str, object], bad_name: str) -> None:
    with pytest.raises(ValueError, match=f"^option {bad_name} must be") as caught:
        TicTacToe(**options)
    assert "\n" not in str(caught.value)


# --- seeding ----------------------------------------------------------------------------------


def play_out(env: TicTacToe, seed: int, consult_expert: bool) -> list[tuple[str, ...]]:
    """Boards seen while always playing the first legal cell from seed's opening."""
    env.reset(seed)
    boards = [env.board]
    while not env.done:
        if consult_expert:
            env.expert_action()
        env.step(env.legal_actions()[0])
        boards.append(env.board)
    return boards


def test_reset_is_deterministic_per_seed() -> None:
    first, second = TicTacToe(), TicTacToe()
    for seed in range(20):
        assert play_out(first, seed, False) == play_out(second, seed, False)
        first.reset(seed)
        second.reset(seed)
        assert first.agent_mark == second.agent_mark
        assert [first.expert_action() for _ in range(3)] == [
            second.expert_action() for _ in range(3)
        ]


def test_consulting_the_expert_does_not_change_the_opponent() -> None:
    plain, consulted = TicTacToe(), TicTacToe()
    for seed in range(20):
        assert play_out(plain, seed, False) == play_out(consulted, seed, True)


def test_seeds_give_varied_openings_and_sides() -> None:
    env = TicTacToe()
    boards, marks, plies = set(), set(), set()
    for seed in range(200):
        env.reset(seed)
        filled = 9 - env.board.count(" ")
        assert filled <= 2
        # x moves first, so the agent is x exactly when an even number of plies was played.
        assert env.agent_mark == ("x" if filled % 2 == 0 else "o")
        boards.add(env.board)
        marks.add(env.agent_mark)
        plies.add(filled)
    assert plies == {0, 1, 2}
    assert marks == {"x", "o"}
    assert len(boards) > 30


def test_opening_plies_bounds_the_opening() -> None:
    empty_opening = TicTacToe(opening_plies=0)
    long_opening = TicTacToe(opening_plies=4)
    lengths = set()
    for seed in range(100):
        empty_opening.reset(seed)
        assert empty_opening.board == (" ",) * 9
        assert empty_opening.agent_mark == "x"
        long_opening.reset(seed)
        lengths.add(9 - long_opening.board.count(" "))
    assert lengths == {0, 1, 2, 3, 4}


# --- the expert -------------------------------------------------------------------------------


def worst_result_for_expert(
    env: TicTacToe, board: tuple[str, ...], mark: str, seed: int, memo: dict
) -> int:
    """The worst result (+1/0/-1) the expert, playing `mark`, gets over all opponent replies."""
    key = (board, mark, seed)
    if key in memo:
        return memo[key]
    env._set_position(board, mark, seed)
    after = place(board, CELLS.index(env.expert_action()), mark)
    if has_line(after, mark):
        result = 1
    elif " " not in after:
        result = 0
    else:
        results = []
        for index, cell in enumerate(after):
            if cell != " ":
                continue
            replied = place(after, index, other(mark))
            if has_line(replied, other(mark)):
                results.append(-1)
            elif " " not in replied:
                results.append(0)
            else:
                results.append(worst_result_for_expert(env, replied, mark, seed, memo))
        result = min(results)
    memo[key] = result
    return result


@pytest.mark.parametrize("seed", [0, 1])
def test_expert_achieves_the_game_value_from_every_reachable_position(seed: int) -> None:
    env = TicTacToe()
    memo: dict = {}
    positions = reachable_positions()
    marks = {mark for _, mark in positions}
    assert marks == {"x", "o"}
    for board, mark in positions:
        value = game_value(board, mark)
        result = worst_result_for_expert(env, board, mark, seed, memo)
        # Against every reply sequence: it never loses a position that is not lost, and it
        # wins every position that is won.
        assert result == value, (board, mark)


def test_expert_takes_an_immediate_win_whenever_there_is_one() -> None:
    env = TicTacToe()
    checked = 0
    for board, mark in reachable_positions():
        winning = [
            i
            for i, cell in enumerate(board)
            if cell == " " and has_line(place(board, i, mark), mark)
        ]
        if not winning:
            continue
        for seed in range(3):
            env._set_position(board, mark, seed)
            assert CELLS.index(env.expert_action()) in winning, (board, mark)
        checked += 1
    assert checked > 100


def test_expert_wins_rather_than_blocks() -> None:
    # Both sides threaten a row; x should complete its own rather than block o's.
    env = env_at("xx. oo. ...", "x")
    assert env.expert_action() == "a3"
    env = env_at("xx. oo. x..", "o")
    assert env.expert_action() == "b3"


def test_expert_blocks_an_immediate_threat() -> None:
    env = env_at("xx. .o. ...", "o")
    assert env.expert_action() == "a3"


def test_expert_breaks_ties_at_random() -> None:
    # On the empty board every cell draws, so all nine should turn up across seeds.
    env = TicTacToe(opening_plies=0)
    choices = set()
    for seed in range(200):
        env.reset(seed)
        choices.add(env.expert_action())
    assert choices == set(CELLS)


# --- renderings -------------------------------------------------------------------------------


def test_text_rendering() -> None:
    env = env_at("xo. .x. o..", "x")
    assert env.render("txt").text == "x | o |  \n---------\n  | x |  \n---------\no |   |  "
    env = env_at("... ... ...", "x")
    assert env.render("txt").text == "  |   |  \n---------\n  |   |  \n---------\n  |   |  "


def test_ten_dash_separator_is_the_reference_codes_text() -> None:
    env = env_at("xo. .x. o..", "o", separator="----------")
    # The LMAct reference code: '\n----------\n'.join(' | '.join(row) for row in board), an
    # empty cell written as ' '.
    board = [["x", "o", " "], [" ", "x", " "], ["o", " ", " "]]
    expected = "\n----------\n".join(" | ".join(row) for row in board)
    assert env.render("txt").text == expected
    assert expected == "x | o |  \n----------\n  | x |  \n----------\no |   |  "
    # The layout changes no other rendering, nor how answers read or what the expert plays.
    default = env_at("xo. .x. o..", "o")
    assert env.render("png") == default.render("png")
    assert env.parse_action(" C3.") == "c3"
    assert env.expert_action() == default.expert_action()


def test_the_task_spec_takes_the_separator_option() -> None:
    spec = get_task("tic_tac_toe")
    default = spec.make_environment()
    assert isinstance(default, TicTacToe) and default.separator == "---------"
    env = spec.make_environment(separator="----------")
    assert isinstance(env, TicTacToe) and env.separator == "----------"
    with pytest.raises(LmactError, match="option separator must be one of"):
        spec.make_environment(separator="==========")


@pytest.mark.parametrize("coordinates", [False, True])
def test_png_rendering_decodes_at_the_configured_size(coordinates: bool) -> None:
    env = env_at("xo. .x. o..", "x", coordinates=coordinates, image_size=128)
    observation = env.render("png")
    assert observation.is_image
    image = decode(observation.image_png)
    assert image.format == "PNG"
    assert image.mode == "RGB"
    assert image.size == (128, 128)


def test_png_rendering_follows_the_state() -> None:
    a = env_at("xo. .x. o..", "x").render("png").image_png
    same = env_at("xo. .x. o..", "o", seed=9).render("png").image_png
    different = env_at("xo. .x. oo.", "x").render("png").image_png
    empty = env_at("... ... ...", "x").render("png").image_png
    assert a == same
    assert a != different
    assert a != empty


def test_png_marks_are_drawn_in_their_cells() -> None:
    # The centre cell is blank on the empty board and inked once x is there.
    size = 90
    empty = decode(env_at("... ... ...", "x", image_size=size).render("png").image_png)
    centre_x = decode(env_at("... .x. ...", "o", image_size=size).render("png").image_png)
    assert empty.getpixel((45, 45)) == (255, 255, 255)
    assert centre_x.getpixel((45, 45)) != (255, 255, 255)


def test_coordinates_change_the_png() -> None:
    plain = env_at("xo. .x. o..", "x").render("png").image_png
    labelled = env_at("xo. .x. o..", "x", coordinates=True).render("png").image_png
    assert plain != labelled


def test_render_rejects_unknown_formats() -> None:
    with pytest.raises(ValueError):
        env_at("... ... ...", "x").render("rgb")


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "action"),
    [("b2", "b2"), (" B2 ", "b2"), ("C3.", "c3"), ("\ta1.\n", "a1"), ("A3", "a3")],
)
def test_parse_accepts_cells_in_any_case_and_padding(answer: str, action: str) -> None:
    env = env_at("... ... ...", "x")
    assert env.parse_action(answer) == action


@pytest.mark.parametrize(
    "answer", ["d1", "a4", "a0", "1a", "a 1", "a1..", "a1b", "b", "", "center", "a1,"]
)
def test_parse_rejects_answers_that_are_not_cells(answer: str) -> None:
    env = env_at("... ... ...", "x")
    with pytest.raises(InvalidActionError):
        env.parse_action(answer)


def test_parse_reports_an_occupied_cell_as_illegal() -> None:
    env = env_at("x.. .o. ...", "x")
    for answer in ("a1", "B2.", " b2 "):
        with pytest.raises(IllegalActionError):
            env.parse_action(answer)
    assert env.parse_action("a2") == "a2"
