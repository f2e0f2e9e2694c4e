"""Tests for the chess environment: rules and outcomes, notations, openings, Stockfish."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import chess
import chess.pgn
import numpy as np
import pytest
from helpers import lmact
from PIL import Image
from processes import running, stockfish_processes, wait_until

from lmact.envs import chess as chess_env
from lmact.envs.base import DEMO_SEED_BASE, IllegalActionError, InvalidActionError, StepOutcome
from lmact.envs.chess import Chess, close_engines, find_stockfish, running_engines, skill_pick
from lmact.errors import LmactError
from lmact.resources import data_dir

OPENINGS = data_dir("tasks") / "data" / "chess_openings.jsonl"


def env_at(fen: str, moves: tuple[str, ...] = (), seed: int = 0, **options: object) -> Chess:
    env = Chess(**options)
    env.reset(seed)  # seeds the opponent; the position is then replaced
    env._set_position(chess.Board(fen), moves)
    return env


def stockfish_children() -> set[int]:
    """Pids of the Stockfish processes that this test process started."""
    return stockfish_processes(parent=os.getpid())


# --- finding Stockfish --------------------------------------------------------------------------


def test_stockfish_from_the_variable_then_path_then_debian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = find_stockfish()
    monkeypatch.setenv("LMACT_STOCKFISH", real)
    assert find_stockfish() == real

    not_executable = tmp_path / "stockfish"
    not_executable.write_text("")
    monkeypatch.setenv("LMACT_STOCKFISH", str(not_executable))
    with pytest.raises(LmactError, match=r"LMACT_STOCKFISH=.* is not an executable file"):
        find_stockfish()

    monkeypatch.delenv("LMACT_STOCKFISH")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "stockfish").symlink_to(real)
    monkeypatch.setenv("PATH", str(on_path))
    assert find_stockfish() == str(on_path / "stockfish")

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(chess_env, "DEBIAN_STOCKFISH", real)
    assert find_stockfish() == real

    monkeypatch.setattr(chess_env, "DEBIAN_STOCKFISH", str(tmp_path / "missing"))
    with pytest.raises(LmactError, match="apt-get install stockfish"):
        find_stockfish()
    with pytest.raises(LmactError, match="apt-get install stockfish"):
        Chess()


def engine_error(monkeypatch: pytest.MonkeyPatch, path: Path | str) -> str:
    """The one-line error of starting the engine at `path` for an expert move."""
    monkeypatch.setenv("LMACT_STOCKFISH", str(path))
    with pytest.raises(LmactError) as caught:
        env = Chess()
        env.reset(0)
        env.expert_action()
    message = str(caught.value)
    assert "\n" not in message
    return message


def run_script(script: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """A Python script in a process of its own, from the tests folder (for its helpers)."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parent,
        env={**os.environ, **environment},
    )


def test_a_program_that_never_answers_the_handshake_fails_in_one_line() -> None:
    # cat echoes `uci` back and never says `uciok`. In a subprocess, so that a hang fails the
    # test instead of stalling the suite; it also reports whether cat was left running.
    script = (
        "import os, time\n"
        "from processes import descendants\n"
        "from lmact.envs import chess\n"
        "from lmact.errors import LmactError\n"
        "chess.HANDSHAKE_TIMEOUT_S = 0.5\n"
        "env = chess.Chess()\n"
        "env.reset(0)\n"
        "started = time.monotonic()\n"
        "try:\n"
        "    env.expert_action()\n"
        "except LmactError as error:\n"
        "    print(error)\n"
        "print(round(time.monotonic() - started))\n"
        "time.sleep(0.5)\n"
        "print(sorted(info.name for info in descendants(os.getpid()).values()))\n"
    )
    result = run_script(script, LMACT_STOCKFISH="/bin/cat")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines() == [
        "the chess engine /bin/cat did not answer the UCI handshake within 0.5 s; is it Stockfish?",
        "1",
        "[]",  # cat was killed
    ]


def test_a_program_that_is_not_an_engine_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine_error(monkeypatch, "/bin/true") == (
        "the chess engine /bin/true exited during the UCI handshake; is it Stockfish?"
    )
    not_executable = tmp_path / "stockfish"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    assert engine_error(monkeypatch, not_executable) == (
        f"LMACT_STOCKFISH={not_executable} is not an executable file"
    )
    assert engine_error(monkeypatch, tmp_path) == (
        f"LMACT_STOCKFISH={tmp_path} is not an executable file"
    )


@pytest.mark.parametrize("kind", ["directory", "not executable"])
def test_an_engine_path_that_cannot_run_fails_in_one_line(tmp_path: Path, kind: str) -> None:
    # Below find_stockfish: a path that passed its check but cannot be run after all.
    path = tmp_path
    if kind == "not executable":
        path = tmp_path / "stockfish"
        path.write_text("")
    with pytest.raises(LmactError, match=rf"^the chess engine {path} could not be started \("):
        chess_env._ENGINES.call(str(path), lambda engine: engine.ping())


def test_a_missing_engine_is_one_line_from_lmact_demos(tmp_path: Path) -> None:
    environment = {**os.environ, "LMACT_STOCKFISH": "/bin/true"}
    result = lmact("demos", "chess", "--episodes", "1", cwd=tmp_path, env=environment)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lmact: error: the chess engine /bin/true exited during the UCI handshake; is it Stockfish?"
    ]


# --- rules and outcomes ------------------------------------------------------------------------


def test_checkmate_by_the_agent_wins() -> None:
    env = env_at("6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 0 1")
    assert "Ra8#" in env.legal_actions()
    outcome = env.step("Ra8#")
    assert (outcome.reward, outcome.done) == (1.0, True)
    assert env.done and env.legal_actions() == []
    with pytest.raises(ValueError, match="game is over"):
        env.step("Kf1")


def test_checkmate_by_the_opponent_loses() -> None:
    # White's only move is Ka2; then Ra4 mates, which a full-strength opponent finds.
    env = env_at("8/8/8/8/6r1/8/2k5/K7 w - - 0 1", opponent_skill_level=20, opponent_nodes=5000)
    assert env.legal_actions() == ["Ka2"]
    outcome = env.step("Ka2")
    assert (outcome.reward, outcome.done) == (-1.0, True)
    assert env.board.is_checkmate()
    assert env.board.peek() == chess.Move.from_uci("g4a4")


def test_the_agent_plays_black_when_black_is_to_move() -> None:
    env = env_at("8/8/8/8/6R1/8/2K5/k7 b - - 0 1", opponent_skill_level=20, opponent_nodes=5000)
    assert env.agent_color == chess.BLACK
    assert env.legal_actions() == ["Ka2"]
    outcome = env.step("Ka2")
    assert (outcome.reward, outcome.done) == (-1.0, True)


def test_stalemate_is_a_draw() -> None:
    env = env_at("k7/8/2Q5/8/8/8/8/7K w - - 0 1")
    outcome = env.step("Qb6")
    assert (outcome.reward, outcome.done) == (0.0, True)
    assert env.board.is_stalemate()


def test_insufficient_material_is_a_draw() -> None:
    env = env_at("7k/8/8/8/8/8/1r6/K7 w - - 0 1")
    outcome = env.step("Kxb2")
    assert (outcome.reward, outcome.done) == (0.0, True)
    assert env.board.is_insufficient_material()


def test_a_claimable_fifty_move_draw_ends_the_game() -> None:
    # After White's move and Black's reply the clock reaches 99 half-moves: White could claim
    # the draw with any quiet move, so the game ends there.
    env = env_at("7k/8/8/8/8/8/8/R6K w - - 97 80")
    outcome = env.step("Ra2")
    assert (outcome.reward, outcome.done) == (0.0, True)
    assert env.board.halfmove_clock == 99
    assert env.board.can_claim_fifty_moves()


def test_a_claimable_repetition_ends_the_game() -> None:
    # Black could now reach the starting position a third time with Ng8.
    env = env_at(chess.STARTING_FEN, ("Nf3", "Nf6", "Ng1", "Ng8", "Nf3", "Nf6", "Ng1"))
    assert env.done
    assert env.legal_actions() == []
    # One repetition fewer: the game goes on.
    env = env_at(chess.STARTING_FEN, ("Nf3", "Nf6", "Ng1", "Ng8"))
    assert not env.done


def test_an_undecided_step_gets_zero_and_the_opponent_replies() -> None:
    env = env_at(chess.STARTING_FEN)
    outcome = env.step("e4")
    assert (outcome.reward, outcome.done) == (0.0, False)
    board = env.board
    assert len(board.move_stack) == 2 and board.turn == chess.WHITE
    with pytest.raises(ValueError, match="not a legal move"):
        env.step("e4")  # the pawn is on e4 already


# --- notations ---------------------------------------------------------------------------------


def test_san_answers() -> None:
    env = env_at(chess.STARTING_FEN)
    assert env.parse_action("Nf3") == "Nf3"
    assert env.parse_action(" e4. ") == "e4"
    # python-chess also reads long algebraic and check marks; the canonical spelling is SAN.
    assert env.parse_action("Ng1f3") == "Nf3"
    assert env.parse_action("e2e4") == "e4"
    for broken in ("Nf9", "hello", "E4", "nf3", "1. e4", "Pe4"):
        with pytest.raises(InvalidActionError):
            env.parse_action(broken)
    for not_legal in ("e5", "O-O", "Qh5", "--"):
        with pytest.raises(IllegalActionError):
            env.parse_action(not_legal)
    legal = env.legal_actions()
    assert legal == sorted(legal) and len(legal) == 20 and "Nf3" in legal


def test_an_ambiguous_san_move_is_illegal() -> None:
    env = env_at("4k3/8/8/8/8/8/8/1N2KN2 w - - 0 1")
    with pytest.raises(IllegalActionError, match="ambiguous"):
        env.parse_action("Nd2")
    assert env.parse_action("Nbd2") == "Nbd2"


def test_uci_answers() -> None:
    env = env_at(chess.STARTING_FEN, notation="uci")
    assert env.parse_action("g1f3") == "g1f3"
    assert env.parse_action("G1F3") == "g1f3"
    for broken in ("Nf3", "g1", "g1f9", "hello"):
        with pytest.raises(InvalidActionError):
            env.parse_action(broken)
    for not_legal in ("g1g3", "e2e5", "0000"):
        with pytest.raises(IllegalActionError):
            env.parse_action(not_legal)
    assert "g1f3" in env.legal_actions() and "Nf3" not in env.legal_actions()
    assert env.step("e2e4") == StepOutcome(reward=0.0, done=False)


def test_promotion_in_both_notations() -> None:
    fen = "8/P6k/8/8/8/8/8/K7 w - - 0 1"
    assert env_at(fen).parse_action("a8=Q") == "a8=Q"
    assert env_at(fen, notation="uci").parse_action("a7a8q") == "a7a8q"
    with pytest.raises(IllegalActionError):
        env_at(fen).parse_action("a8")  # a promotion must name its piece


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="notation"):
        Chess(notation="lan")
    with pytest.raises(ValueError, match="opponent_skill_level"):
        Chess(opponent_skill_level=21)
    with pytest.raises(ValueError, match="option openings_file: no such file"):
        Chess(openings_file="/nonexistent/openings.jsonl")


# --- renderings --------------------------------------------------------------------------------


def test_text_renderings() -> None:
    env = Chess()
    env.reset(3)
    board = env.board
    assert env.render("fen").text == board.fen(en_passant="fen")
    assert env.render("txt").text == str(board)
    assert len(env.render("txt").text.splitlines()) == 8
    movetext = env.render("pgn").text
    replay = chess.pgn.read_game(io.StringIO(movetext))
    assert replay is not None and replay.end().board() == board
    assert movetext.startswith("1. ") and movetext.endswith("*")
    with pytest.raises(ValueError, match="accepted: fen, pgn, txt, png"):
        env.render("svg")


def test_png_rendering() -> None:
    env = Chess(image_size=256)
    env.reset(0)
    before = env.render("png").image_png
    image = Image.open(io.BytesIO(before))
    assert image.format == "PNG" and image.size == (256, 256)
    env.step(env.legal_actions()[0])
    assert env.render("png").image_png != before
    assert env.render("png").image_png == env.render("png").image_png


# --- openings and reproducibility ----------------------------------------------------------------


def test_the_committed_opening_pool() -> None:
    records = [json.loads(line) for line in OPENINGS.read_text().splitlines()]
    assert [record["index"] for record in records] == list(range(len(records)))
    tests = [record for record in records if record["split"] == "test"]
    demonstrations = [record for record in records if record["split"] == "demonstration"]
    assert len(tests) >= 100 and len(demonstrations) >= 400
    positions = {}
    for record in records:
        board = chess.Board()
        for move in record["moves"]:
            board.push_san(move)  # every move legal
        assert board.outcome(claim_draw=True) is None
        positions.setdefault(board.epd(), []).append(record["split"])
    assert all(len(splits) == 1 for splits in positions.values()), "a position repeats"
    sides = {len(record["moves"]) % 2 for record in records}
    assert sides == {0, 1}, "the agent should play both white and black"


def test_seeds_draw_test_and_demonstration_openings() -> None:
    records = [json.loads(line) for line in OPENINGS.read_text().splitlines()]
    tests = [r["moves"] for r in records if r["split"] == "test"]
    demonstrations = [r["moves"] for r in records if r["split"] == "demonstration"]
    env = Chess()
    for seed, expected in ((0, tests[0]), (5, tests[5]), (DEMO_SEED_BASE + 2, demonstrations[2])):
        env.reset(seed)
        board = env.board
        replay = chess.Board()
        for move in expected:
            replay.push_san(move)
        assert board == replay
        assert env.agent_color == replay.turn


def play_out(
    env: Chess, seed: int, choose: Callable[[Chess, np.random.Generator], str]
) -> list[str]:
    env.reset(seed)
    rng = np.random.default_rng(seed)
    while not env.done and len(env.board.move_stack) < 60:
        env.step(choose(env, rng))
    return [move.uci() for move in env.board.move_stack]


def random_choice(env: Chess, rng: np.random.Generator) -> str:
    legal = env.legal_actions()
    return legal[int(rng.integers(len(legal)))]


def test_the_opponent_replays_a_game_from_its_seed() -> None:
    first = play_out(Chess(), 7, random_choice)
    close_engines()  # a fresh engine process must not change the game
    second = play_out(Chess(), 7, random_choice)
    other_env = Chess()
    other_env.reset(11)
    other_env.step(other_env.legal_actions()[0])  # the shared engine searched elsewhere meanwhile
    third = play_out(Chess(), 7, random_choice)
    assert first == second == third
    assert play_out(Chess(), 8, random_choice) != first


def test_the_opponent_varies_its_moves() -> None:
    # Skill level 0 picks among several candidates, so one position gets several replies.
    replies = set()
    for seed in range(12):
        env = Chess()
        env.reset(seed)
        env._set_position(chess.Board())
        env.step("e4")
        replies.add(env.board.peek().uci())
    assert len(replies) >= 3


def test_skill_pick() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        skill_pick([], 0, rng)
    assert all(skill_pick([30, 20, 10, 0], 20, rng) == 0 for _ in range(50))
    picks = np.bincount([skill_pick([30, 25, 20, 15], 0, rng) for _ in range(4000)], minlength=4)
    assert picks.min() > 400, picks  # every close candidate is played
    picks = np.bincount([skill_pick([30, -900], 0, rng) for _ in range(4000)], minlength=2)
    assert picks[1] < picks[0], picks  # a much worse move is played less often
    seeded = [skill_pick([5, 4, 3, 2], 0, np.random.default_rng(9)) for _ in range(3)]
    assert len(set(seeded)) == 1


@pytest.mark.slow
def test_the_expert_beats_the_opponent_in_most_games() -> None:
    results = []
    for seed in range(4):
        env = Chess()
        env.reset(seed)
        total = 0.0
        for _ in range(100):
            outcome = env.step(env.expert_action())
            total += outcome.reward
            if outcome.done:
                break
        results.append(total)
    assert sum(result == 1.0 for result in results) >= 3, results


def test_the_expert_is_deterministic_with_a_node_limit() -> None:
    def expert_game(seed: int) -> list[str]:
        env = Chess(expert_nodes=2000)
        env.reset(seed)
        for _ in range(6):
            if env.done:
                break
            env.step(env.expert_action())
        return [move.uci() for move in env.board.move_stack]

    assert expert_game(4) == expert_game(4)


# --- Stockfish processes ----------------------------------------------------------------------


def test_one_engine_serves_every_environment_and_closes() -> None:
    close_engines()
    assert wait_until(lambda: not stockfish_children())
    environments = [Chess() for _ in range(3)]
    for seed, env in enumerate(environments):
        env.reset(seed)
        env.step(env.legal_actions()[0])
        env.expert_action()
        env.close()
    assert running_engines() == 1
    assert len(stockfish_children()) == 1
    close_engines()
    assert running_engines() == 0
    assert wait_until(lambda: not stockfish_children())


def test_a_dead_engine_is_restarted() -> None:
    env = Chess()
    env.reset(1)
    env.step(env.legal_actions()[0])
    (pid,) = stockfish_children()  # exactly one engine
    os.kill(pid, 9)
    assert wait_until(lambda: pid not in stockfish_children())
    env.step(env.legal_actions()[0])  # the opponent's move needs the engine again
    assert stockfish_children() and pid not in stockfish_children()
    close_engines()


def test_an_engine_killed_just_before_a_call_is_restarted_not_waited_for() -> None:
    # python-chess can miss a death that comes as a command starts and wait forever; run in a
    # subprocess so that such a hang fails the test instead of stalling the suite.
    script = (
        "import os, signal\n"
        "from processes import stockfish_processes\n"
        "from lmact.envs.chess import Chess\n"
        "env = Chess()\n"
        "env.reset(1)\n"
        "for _ in range(8):\n"
        "    env.step(env.legal_actions()[0])\n"
        "    for pid in stockfish_processes(parent=os.getpid()):\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    env.reset(1)\n"
        "print(env.expert_action())\n"
    )
    result = run_script(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stderr == ""


def test_a_process_that_used_stockfish_exits_and_leaves_none_behind() -> None:
    before = stockfish_processes()
    script = (
        "from lmact.envs.chess import Chess\n"
        "env = Chess()\n"
        "env.reset(0)\n"
        "env.step(env.legal_actions()[0])\n"
        "print(env.expert_action())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert wait_until(lambda: stockfish_processes() <= before)


def test_an_engine_quits_when_its_owner_is_killed_mid_search() -> None:
    # However its owner ends, even by SIGKILL with no cleanup, the engine reads the end of its
    # input and quits, here in the middle of a 30 s search.
    script = (
        "from lmact.envs.chess import Chess\n"
        "env = Chess(expert_time_ms=30_000)\n"
        "env.reset(0)\n"
        "env.expert_action()\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert wait_until(lambda: bool(stockfish_processes(parent=owner.pid)), timeout=30)
        (engine,) = stockfish_processes(parent=owner.pid)
        time.sleep(0.5)  # well into the search
        owner.kill()
        owner.wait()
        assert wait_until(lambda: not running([engine]), timeout=5)
    finally:
        owner.kill()


# --- through the command line --------------------------------------------------------------------


def test_lmact_run_plays_chess_with_the_baselines(tmp_path: Path) -> None:
    result = lmact(
        "run", "--task", "chess", "--model", "random", "--episodes", "2", "--max-steps", "6",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["task"] == "chess" and summary["observation"] == "fen"
    assert summary["episodes"] == 2 and 0 < summary["steps"] <= 12
    assert summary["invalid_rate"] == 0.0  # the random policy answers legal moves
    assert -1.0 <= summary["mean_return"] <= 1.0
    assert summary["expert_return"] is not None and summary["random_return"] is not None


def test_a_missing_stockfish_stops_the_run_before_any_work(tmp_path: Path) -> None:
    environment = {**os.environ, "LMACT_STOCKFISH": str(tmp_path / "no-stockfish")}
    result = lmact(
        "run", "--task", "chess", "--model", "random", "--demos", "0", "--episodes", "1",
        cwd=tmp_path, env=environment,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lmact: error: LMACT_STOCKFISH={tmp_path / 'no-stockfish'} is not an executable file"
    ]
    assert result.stdout == ""
