"""Chess against Stockfish: the agent plays a whole game from a short opening.

The game starts from an opening (a few plies of sound play, from a committed pool whose test
and demonstration parts never share a position) and the agent plays the side to move. The
opponent is Stockfish at skill level 0 limited to 1 node; the expert is Stockfish at full
strength with 50 ms a move.

Stockfish draws its skill-level handicap from a generator seeded by the clock, so the same
opponent could never replay a game. Here the engine supplies the candidate moves (a multi-PV
search under the same node limit, from a cleared hash) and the handicap rule of Stockfish's
skill levels picks among them with the episode's seeded generator: the same weak opponent,
reproducible, so a rerun through the call cache meets the same positions.

One Stockfish process serves every chess environment of a process (starting one costs about
100 ms; a 1-node move about 1 ms); it is closed when the process exits or on `close_engines()`.
If the process ends any other way (even by SIGKILL), Stockfish reads the end of its input,
which only that process held open, and quits by itself, mid-search too.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import shutil
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import chess
import chess.engine
import chess.pgn
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lmact.envs.base import (
    Environment,
    IllegalActionError,
    InvalidActionError,
    Observation,
    StepOutcome,
    file_option,
    integer_option,
    pool_entry,
    strip_answer,
)
from lmact.envs.drawing import draw_centered, png_bytes
from lmact.errors import LmactError

STOCKFISH_VARIABLE = "LMACT_STOCKFISH"
DEBIAN_STOCKFISH = "/usr/games/stockfish"
NOTATIONS = ("san", "uci")
DEFAULT_OPENINGS_FILE = "data/chess_openings.jsonl"
# Seconds an engine may take to start and answer `uci` with `uciok` (Stockfish takes ~0.1 s);
# a program that is not a UCI engine (e.g. /bin/cat, which echoes `uci`) would never answer.
HANDSHAKE_TIMEOUT_S = 10.0

# The handicap rule of Stockfish's skill levels, on centipawn scores.
_STRONGEST_SKILL = 20
_PAWN_CP = 100
_MATE_CP = 100_000
_OPPONENT_CANDIDATES = 4

_T = TypeVar("_T")

_LIGHT_SQUARE = (240, 217, 181)
_DARK_SQUARE = (181, 136, 99)
_LAST_MOVE_TINT = (205, 210, 106)
_MIN_IMAGE_SIZE = 128
_MAX_IMAGE_SIZE = 2048


def find_stockfish() -> str:
    """The Stockfish binary: $LMACT_STOCKFISH, else `stockfish` on PATH, else Debian's path."""
    configured = os.environ.get(STOCKFISH_VARIABLE)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise LmactError(f"{STOCKFISH_VARIABLE}={configured} is not an executable file")
        return configured
    found = shutil.which("stockfish")
    if found:
        return found
    if os.path.isfile(DEBIAN_STOCKFISH) and os.access(DEBIAN_STOCKFISH, os.X_OK):
        return DEBIAN_STOCKFISH
    raise LmactError(
        "the chess task needs Stockfish: install it with `apt-get install stockfish` (Debian "
        f"puts it at {DEBIAN_STOCKFISH}) or set {STOCKFISH_VARIABLE} to the binary's path"
    )


class _EnginePool:
    """One Stockfish process per binary and per OS process, shared by all chess environments.

    The engines run on an event loop in a daemon thread of their own (python-chess's
    SimpleEngine uses a non-daemon thread, which would keep the interpreter from exiting
    while an engine is open). Calls are serialized by a lock: environments of concurrent
    episodes take turns, and a 1-node reply takes about a millisecond. A process forked from
    one that held engines starts its own rather than writing to its parent's pipes.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engines: dict[str, tuple[asyncio.SubprocessTransport, chess.engine.UciProtocol]] = {}

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _engine(self, path: str) -> chess.engine.UciProtocol:
        if self._owner != os.getpid():
            # A new process (or a fork, whose copy of the parent's loop thread does not run).
            self._loop = asyncio.new_event_loop()
            self._loop.set_exception_handler(_quiet_about_dead_engines)
            threading.Thread(
                target=self._loop.run_forever, name="lmact-stockfish", daemon=True
            ).start()
            self._owner = os.getpid()
            self._engines = {}
        if path not in self._engines:
            self._engines[path] = self._run(_start_engine(path))
        return self._engines[path][1]

    def call(
        self, path: str, use: Callable[[chess.engine.UciProtocol], Coroutine[Any, Any, _T]]
    ) -> _T:
        """Await `use(engine)` on the shared engine, restarting it once if it died."""
        with self._lock:
            for attempt in range(2):
                engine = self._engine(path)
                try:
                    return self._run(_unless_terminated(engine, use(engine)))
                except chess.engine.EngineTerminatedError:
                    self._engines.pop(path, None)
                    if attempt == 1:
                        raise LmactError(f"Stockfish at {path} terminated twice in a row") from None
            raise AssertionError("unreachable")

    def running(self) -> int:
        return len(self._engines) if self._owner == os.getpid() else 0

    def close(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                for transport, engine in self._engines.values():
                    try:
                        self._run(engine.quit(), timeout=5)
                    except Exception:  # a stuck or dead engine is killed instead
                        transport.kill()
            self._engines = {}


def _quiet_about_dead_engines(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A dead engine is reported (and restarted) by _EnginePool.call; python-chess's own
    # futures that saw it die need not be logged when they are collected.
    if not isinstance(context.get("exception"), chess.engine.EngineTerminatedError):
        loop.default_exception_handler(context)


async def _unless_terminated(
    engine: chess.engine.UciProtocol, coroutine: Coroutine[Any, Any, _T]
) -> _T:
    """Await `coroutine`, or raise EngineTerminatedError as soon as the engine has died.

    python-chess can miss an engine's death that comes just as a command starts, and then
    waits for the command forever; the engine's exit code settles it.
    """
    work = asyncio.ensure_future(coroutine)
    await asyncio.wait({work, engine.returncode}, return_when=asyncio.FIRST_COMPLETED)
    if work.done():
        return work.result()
    work.cancel()
    raise chess.engine.EngineTerminatedError(
        f"engine process died (exit code: {engine.returncode.result()})"
    )


async def _start_engine(
    path: str,
) -> tuple[asyncio.SubprocessTransport, chess.engine.UciProtocol]:
    """Start the engine at `path` and complete the UCI handshake, or raise LmactError.

    On failure the started process is killed (popen_uci closes its transport, which kills it).
    """
    timeout = HANDSHAKE_TIMEOUT_S
    try:
        # Its own process group: a Ctrl-C at the terminal reaches lmact alone, which quits the
        # engine. However its owner ends (even by SIGKILL), the engine reads the end of its
        # input and quits too.
        return await asyncio.wait_for(chess.engine.popen_uci(path, setpgrp=True), timeout)
    except TimeoutError:
        problem = f"did not answer the UCI handshake within {timeout:g} s; is it Stockfish?"
    except chess.engine.EngineTerminatedError:
        problem = "exited during the UCI handshake; is it Stockfish?"
    except chess.engine.EngineError as error:
        problem = f"failed the UCI handshake ({error}); is it Stockfish?"
    except OSError as error:
        problem = f"could not be started ({error.strerror or error})"
    raise LmactError(f"the chess engine {path} {problem}")


_ENGINES = _EnginePool()
atexit.register(_ENGINES.close)


def close_engines() -> None:
    """Quit this process's Stockfish processes (they also quit when the process exits)."""
    _ENGINES.close()


def running_engines() -> int:
    """How many Stockfish processes this process holds open."""
    return _ENGINES.running()


def _centipawns(score: chess.engine.PovScore) -> int:
    return score.relative.score(mate_score=_MATE_CP)


def skill_pick(scores: Sequence[int], level: int, rng: np.random.Generator) -> int:
    """The index that Stockfish's skill-level handicap picks among candidate moves.

    `scores` are the candidates' centipawn scores, best first. Each candidate's score is
    raised by a share of its gap to the best (larger at weaker levels) plus a random term
    bounded by the candidates' spread (capped at a pawn); the highest result wins. At level 0
    this is close to uniform over the candidates; at level 20 it is the best move.
    """
    if not scores:
        raise ValueError("skill_pick needs at least one candidate")
    if level >= _STRONGEST_SKILL:
        return 0
    weakness = 120 - 2 * level
    top = scores[0]
    spread = min(top - scores[-1], _PAWN_CP)
    best_index, best_value = 0, None
    for index, score in enumerate(scores):
        push = (weakness * (top - score) + spread * int(rng.integers(weakness))) // 128
        if best_value is None or score + push > best_value:
            best_index, best_value = index, score + push
    return best_index


@functools.cache
def load_openings(path: Path) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    """The (test, demonstration) openings of a JSONL pool file, each a tuple of SAN moves."""
    tests: list[tuple[str, ...]] = []
    demonstrations: list[tuple[str, ...]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ValueError(f"cannot read the chess openings {path}: {error}") from None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            moves = tuple(record["moves"])
            split = record["split"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not an opening record ({error})") from None
        if split not in ("test", "demonstration"):
            raise ValueError(f"{path}:{number}: split must be test or demonstration")
        (tests if split == "test" else demonstrations).append(moves)
    return tuple(tests), tuple(demonstrations)


class Chess(Environment):
    """A game of chess against a weak Stockfish; +1 win, 0 draw, -1 loss, at the end.

    The game ends at checkmate, stalemate, insufficient material, or as soon as either side
    could claim a draw (threefold repetition, fifty moves). Observations: `fen`, `pgn` (the
    movetext from the initial position), `txt` (python-chess's ASCII board, white at the
    bottom) and `png`. Actions are SAN (`Nf3`, `exd5`, `O-O`, `e8=Q`) or UCI (`g1f3`) as the
    `notation` option says; answers are parsed by python-chess, so a broken move is invalid and
    a well-formed one that is not legal now (or ambiguous) is illegal.

    Options:
        notation: "san" (default) or "uci".
        openings_file: the JSONL pool of openings, relative to the tasks folder.
        opponent_skill_level: 0 (weakest, default) to 20 (the engine's best candidate).
        opponent_nodes: the opponent's node limit (default 1).
        expert_time_ms: the expert's time per move (default 50).
        expert_nodes: if above 0, the expert searches this many nodes instead of a time limit,
            which makes it deterministic (a time limit depends on the machine's speed).
        image_size: the side of the png rendering in pixels.
    """

    observation_formats: ClassVar[tuple[str, ...]] = ("fen", "pgn", "txt", "png")
    image_formats: ClassVar[frozenset[str]] = frozenset({"png"})

    def __init__(
        self,
        *,
        notation: str = "san",
        openings_file: str = DEFAULT_OPENINGS_FILE,
        opponent_skill_level: int = 0,
        opponent_nodes: int = 1,
        expert_time_ms: int = 50,
        expert_nodes: int = 0,
        image_size: int = 400,
    ) -> None:
        if notation not in NOTATIONS:
            raise ValueError(f"option notation must be one of {', '.join(NOTATIONS)}")
        self.notation = notation
        self.opponent_skill_level = integer_option(
            "opponent_skill_level", opponent_skill_level, 0, _STRONGEST_SKILL
        )
        self.opponent_nodes = integer_option("opponent_nodes", opponent_nodes, 1)
        self.expert_time_ms = integer_option("expert_time_ms", expert_time_ms, 1)
        self.expert_nodes = integer_option("expert_nodes", expert_nodes, 0)
        self.image_size = integer_option("image_size", image_size, _MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE)
        self._tests, self._demonstrations = load_openings(
            file_option("openings_file", openings_file)
        )
        # Found now, so that a missing Stockfish fails before any model call.
        self._stockfish = find_stockfish()
        self._board = chess.Board()
        self._agent_color = chess.WHITE
        self._started = False
        self._done = False
        self._opponent_rng = np.random.default_rng(0)
        # Identifies this game to the engine, which clears its state when the game changes.
        self._game_token = object()

    # --- state -------------------------------------------------------------------------------

    @property
    def board(self) -> chess.Board:
        """A copy of the current position, with the moves since the initial position."""
        self._require_started()
        return self._board.copy()

    @property
    def agent_color(self) -> chess.Color:
        self._require_started()
        return self._agent_color

    def reset(self, seed: int) -> None:
        opening = pool_entry(seed, self._tests, self._demonstrations)
        (self._opponent_rng,) = np.random.default_rng(np.random.SeedSequence(seed)).spawn(1)
        self._set_position(chess.Board(), opening)

    def _set_position(self, board: chess.Board, moves: Sequence[str] = ()) -> None:
        """Start from `board` after playing `moves` (SAN); the agent is the side to move."""
        board = board.copy()
        for move in moves:
            board.push_san(move)
        self._board = board
        self._agent_color = board.turn
        self._game_token = object()
        self._started = True
        self._done = board.outcome(claim_draw=True) is not None

    def step(self, action: str) -> StepOutcome:
        try:
            move = self._parse_move(action)
        except (InvalidActionError, IllegalActionError) as error:
            raise ValueError(f"not a legal move: {error}") from None
        self._board.push(move)
        if (ended := self._outcome()) is not None:
            return ended
        self._board.push(self._opponent_move())
        if (ended := self._outcome()) is not None:
            return ended
        return StepOutcome(reward=0.0, done=False)

    def _outcome(self) -> StepOutcome | None:
        outcome = self._board.outcome(claim_draw=True)
        if outcome is None:
            return None
        self._done = True
        self._ended_by = outcome.termination.name.lower().replace("_", " ")
        if outcome.winner is None:
            return StepOutcome(reward=0.0, done=True)
        return StepOutcome(reward=1.0 if outcome.winner == self._agent_color else -1.0, done=True)

    def legal_actions(self) -> list[str]:
        if self._done:
            return []
        return sorted(self._spell(move) for move in self._board.legal_moves)

    def _spell(self, move: chess.Move) -> str:
        return self._board.san(move) if self.notation == "san" else move.uci()

    # --- answers -----------------------------------------------------------------------------

    def parse_action(self, answer: str) -> str:
        return self._spell(self._parse_move(answer))

    def _parse_move(self, answer: str) -> chess.Move:
        text = strip_answer(answer)
        if self._done:
            raise IllegalActionError("the game is over")
        try:
            if self.notation == "san":
                move = self._board.parse_san(text)
            else:
                # UCI squares and promotion pieces are lower case; E2E4 means e2e4.
                move = self._board.parse_uci(text.lower())
        except chess.InvalidMoveError:
            raise InvalidActionError(
                f"{answer!r} is not a move in {self.notation.upper()}"
            ) from None
        except (chess.IllegalMoveError, chess.AmbiguousMoveError) as error:
            raise IllegalActionError(str(error)) from None
        if not move:  # python-chess reads `--` and `0000` as the null move
            raise IllegalActionError("passing (the null move) is not a legal move")
        return move

    # --- Stockfish ---------------------------------------------------------------------------

    def _opponent_move(self) -> chess.Move:
        board = self._board

        def candidates(
            engine: chess.engine.UciProtocol,
        ) -> Coroutine[Any, Any, list[chess.engine.InfoDict]]:
            # A fresh game token clears the engine's hash first, so the candidates depend on
            # the position alone, not on what the shared engine searched before.
            return engine.analyse(
                board,
                chess.engine.Limit(nodes=self.opponent_nodes),
                multipv=_OPPONENT_CANDIDATES,
                game=object(),
            )

        lines = [info for info in _ENGINES.call(self._stockfish, candidates) if info.get("pv")]
        if not lines:
            raise LmactError(f"Stockfish returned no move in position {board.fen()}")
        lines.sort(key=lambda info: -_centipawns(info["score"]))
        scores = [_centipawns(info["score"]) for info in lines]
        return lines[skill_pick(scores, self.opponent_skill_level, self._opponent_rng)]["pv"][0]

    def expert_action(self) -> str:
        """Stockfish at full strength, 50 ms a move (or `expert_nodes` nodes)."""
        limit = (
            chess.engine.Limit(nodes=self.expert_nodes)
            if self.expert_nodes
            else chess.engine.Limit(time=self.expert_time_ms / 1000)
        )
        board, game = self._board, self._game_token
        result = _ENGINES.call(self._stockfish, lambda engine: engine.play(board, limit, game=game))
        if result.move is None:
            raise LmactError(f"Stockfish returned no move in position {board.fen()}")
        return self._spell(result.move)

    # --- renderings --------------------------------------------------------------------------

    def render(self, fmt: str) -> Observation:
        if fmt == "fen":
            return Observation(text=self._board.fen(en_passant="fen"))
        if fmt == "pgn":
            return Observation(text=self._movetext())
        if fmt == "txt":
            return Observation(text=str(self._board))
        if fmt == "png":
            return Observation(image_png=self._render_png())
        raise ValueError(
            f"unknown observation format {fmt!r}; accepted: {', '.join(self.observation_formats)}"
        )

    def _movetext(self) -> str:
        game = chess.pgn.Game.from_board(self._board)
        exporter = chess.pgn.StringExporter(headers=False, variations=False, comments=False)
        return game.accept(exporter)

    def _render_png(self) -> bytes:
        size = self.image_size
        margin = size // 16
        square = (size - margin) / 8
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        last_move = self._board.peek() if self._board.move_stack else None
        tinted = {last_move.from_square, last_move.to_square} if last_move else set()
        label_font = ImageFont.load_default(size=max(8, margin * 0.7))
        piece_font = ImageFont.load_default(size=max(8, square * 0.5))

        for square_index in chess.SQUARES:
            column = chess.square_file(square_index)
            row = 7 - chess.square_rank(square_index)  # white at the bottom
            left, top = margin + column * square, row * square
            box = [(left, top), (left + square, top + square)]
            light = (column + chess.square_rank(square_index)) % 2 == 1
            color = (
                _LAST_MOVE_TINT
                if square_index in tinted
                else (_LIGHT_SQUARE if light else _DARK_SQUARE)
            )
            draw.rectangle(box, fill=color)
            piece = self._board.piece_at(square_index)
            if piece is not None:
                _draw_piece(draw, piece, (left + square / 2, top + square / 2), square, piece_font)

        for index in range(8):
            center = margin + (index + 0.5) * square
            draw_centered(draw, chess.FILE_NAMES[index], (center, size - margin / 2), label_font)
            draw_centered(
                draw, str(8 - index), (margin / 2, index * square + square / 2), label_font
            )

        return png_bytes(image)


def _draw_piece(
    draw: ImageDraw.ImageDraw,
    piece: chess.Piece,
    center: tuple[float, float],
    square: float,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    # A disc in the piece's colour with its letter (K Q R B N P) in the other colour.
    radius = square * 0.38
    x, y = center
    fill, ink = ("white", "black") if piece.color == chess.WHITE else ((30, 30, 30), "white")
    draw.ellipse(
        [(x - radius, y - radius), (x + radius, y + radius)],
        fill=fill,
        outline="black",
        width=max(1, round(square / 30)),
    )
    draw_centered(draw, piece.symbol().upper(), center, font, ink)


def generate_openings(
    count: int,
    tests: int,
    seed: int,
    *,
    min_plies: int = 4,
    max_plies: int = 9,
    depth: int = 10,
    window_cp: int = 30,
    balance_cp: int = 80,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, object]]:
    """A pool of `count` distinct openings, the first `tests` of them the test part.

    Each opening is `min_plies`..`max_plies` plies (uniformly, so the agent plays white or
    black); every ply is drawn uniformly from the moves that a depth-`depth` search scores
    within `window_cp` of the best, and the final position must be within `balance_cp` of
    equal. No two openings reach the same position (pieces, side to move, castling and en
    passant rights), so the test and demonstration parts share none. Deterministic for a
    seed and a Stockfish version: every search starts from a cleared hash, one thread.
    """
    if not 0 <= tests <= count:
        raise ValueError("tests must be between 0 and count")
    rng = np.random.default_rng(seed)
    path = find_stockfish()
    seen: set[str] = set()
    openings: list[dict[str, object]] = []

    def analyse(board: chess.Board, lines: int) -> list[chess.engine.InfoDict]:
        return _ENGINES.call(
            path,
            lambda engine: engine.analyse(
                board, chess.engine.Limit(depth=depth), multipv=lines, game=object()
            ),
        )

    while len(openings) < count:
        board = chess.Board()
        plies = int(rng.integers(min_plies, max_plies + 1))
        for _ in range(plies):
            lines = [info for info in analyse(board, 5) if info.get("pv")]
            best = max(_centipawns(info["score"]) for info in lines)
            sound = sorted(
                (info["pv"][0] for info in lines if _centipawns(info["score"]) >= best - window_cp),
                key=lambda move: move.uci(),
            )
            board.push(sound[int(rng.integers(len(sound)))])
        position = board.epd()
        if position in seen or board.outcome() is not None:
            continue
        (final,) = analyse(board, 1)
        if abs(_centipawns(final["score"])) > balance_cp:
            continue
        seen.add(position)
        split = "test" if len(openings) < tests else "demonstration"
        openings.append({"index": len(openings), "split": split, "moves": _san_list(board)})
        if progress is not None:
            progress(1)
    return openings


def _san_list(board: chess.Board) -> list[str]:
    """The SAN of every move played from the initial position to `board`."""
    replay = board.root()
    moves = []
    for move in board.move_stack:
        moves.append(replay.san(move))
        replay.push(move)
    return moves
