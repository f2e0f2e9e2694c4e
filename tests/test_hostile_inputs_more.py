"""Hostile input, continued: clients of the served viewer that vanish or name another host,
datasets nested past the parser's recursion limit or saved by Excel with a byte-order mark,
and worker processes whose native libraries complain at exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import lmact

from lmact import demo_workers
from lmact.demos import DemoStore
from lmact.envs.classification import load_examples
from lmact.regimes.imitation import make_config
from lmact.report.viewer import make_server
from lmact.runner import Runner
from lmact.store import RunStore
from lmact.tasks import get_task

# --- the served viewer -----------------------------------------------------------------------


class Served:
    """`lmact view --serve` in a subprocess, its port and the run it serves."""

    def __init__(self, process: subprocess.Popen[str], port: int, run_id: str) -> None:
        self.process, self.port, self.run_id = process, port, run_id

    def get(self, host: str | None) -> tuple[int, bytes]:
        """The status and body of GET / sent with `host` as its Host header (None: none)."""
        header = f"Host: {host}\r\n" if host is not None else ""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as client:
            client.sendall(f"GET / HTTP/1.0\r\n{header}\r\n".encode())
            reply = b""
            while chunk := client.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def stop(self) -> str:
        """Stop it as Ctrl-C does; what it wrote on stderr after announcing its address."""
        self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=60)
        return stderr


def _default_interrupt() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store_path = tmp_path / "runs.sqlite"
    config = make_config("tic_tac_toe", model="random", demos=1)
    with RunStore(store_path) as store:
        runner = Runner(store, DemoStore(), progress=False)
        try:
            runner.run(config, 1)
        finally:
            runner.close()
    process = subprocess.Popen(
        [sys.executable, "-m", "lmact.cli", "view", "--serve", "--store", str(store_path)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal sends it: a suite started in the background (`cmd &` in a
        # script) ignores SIGINT, and a child would inherit that and never stop.
        preexec_fn=_default_interrupt,
    )
    try:
        announced = process.stderr.readline() if process.stderr else ""
        assert "serving http://127.0.0.1:" in announced, announced
        port = int(announced.split("127.0.0.1:")[1].split("/")[0])
        yield Served(process, port, config.run_id)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_client_that_hangs_up_costs_no_traceback(served: Served) -> None:
    # The server is stopped while the client connects, asks and resets the connection, so
    # it meets a connection already gone whatever the scheduling: a reload or a closed tab.
    os.kill(served.process.pid, signal.SIGSTOP)
    try:
        client = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        client.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n".encode())
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # linger 0: a reset, not an orderly close
    finally:
        os.kill(served.process.pid, signal.SIGCONT)
    for _ in range(3):  # the server goes on answering
        status, body = served.get(f"127.0.0.1:{served.port}")
        assert status == 200 and served.run_id.encode() in body
    assert served.stop() == ""  # not a traceback, not a line


def test_only_loopback_host_names_are_answered(served: Served) -> None:
    port = served.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost",
                 f"LocalHost:{port}"):  # fmt: skip
        status, body = served.get(host)
        assert status == 200 and served.run_id.encode() in body, host
    # A DNS-rebinding page sends its own name; HTTP/1.0 may send none.
    for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}",
                 f"127.0.0.1.evil.example:{port}", f"localhost:{port + 1}", None):  # fmt: skip
        status, body = served.get(host)
        assert status == 403, host
        assert served.run_id.encode() not in body and b"tic_tac_toe" not in body, host
    assert served.stop() == ""


def test_other_serving_errors_are_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server("<p>page</p>", 0)
    try:
        for error in (BrokenPipeError(32, "gone"), ConnectionResetError(104, "reset"),
                      ValueError("a bug in the handler")):  # fmt: skip
            try:
                raise error
            except Exception:
                server.handle_error(None, ("127.0.0.1", 4242))
    finally:
        server.server_close()
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "127.0.0.1" in stderr and "a bug in the handler" in stderr


# --- datasets ----------------------------------------------------------------------------------


def dataset_run(data: Path, model: str = "random") -> subprocess.CompletedProcess[str]:
    return lmact(
        "run", "--regime", "icrl", "--task", "classification", "--dataset", str(data),
        "--model", model, "--episodes", "2", "--replicates", "1", "--json",
        "--store", "s.sqlite", "--cache-dir", "cache", cwd=data.parent,
    )  # fmt: skip


@pytest.mark.parametrize(
    "nested", ["[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000]
)
def test_a_line_nested_too_deep_is_one_line_naming_it(tmp_path: Path, nested: str) -> None:
    data = tmp_path / "deep.jsonl"
    data.write_text(json.dumps({"text": "book a table", "label": "restaurant"}) + "\n" + nested)
    result = dataset_run(data)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[:2000]
    assert "deep.jsonl line 2 is not JSON" in result.stderr
    assert not (tmp_path / "s.sqlite").exists()  # refused before any work


def test_each_jsonl_line_must_be_an_object(tmp_path: Path) -> None:
    data = tmp_path / "lists.jsonl"
    data.write_text('{"text": "wake me", "label": "alarm"}\n\n["wake me", "alarm"]\n')
    with pytest.raises(ValueError, match=r"lists.jsonl line 3 is not a JSON object"):
        load_examples(data, "text", "label")


def test_a_byte_order_mark_is_no_part_of_the_first_name(tmp_path: Path) -> None:
    rows = [("book a table", "restaurant"), ("wake me at six", "alarm")]
    excel = tmp_path / "excel.csv"  # Excel's "CSV UTF-8": a BOM, CRLF line ends
    excel.write_bytes(
        ("\ufefftext,label\r\n" + "".join(f"{t},{label}\r\n" for t, label in rows)).encode()
    )
    jsonl = tmp_path / "bom.jsonl"
    lines = "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows)
    jsonl.write_bytes(("\ufeff" + lines).encode())
    for path in (excel, jsonl):
        assert load_examples(path, "text", "label") == tuple(rows), path
    done = dataset_run(excel, model="expert")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mean_return"] == 1.0


def test_lines_end_at_newlines_only(tmp_path: Path) -> None:
    # json.dumps(ensure_ascii=False) writes U+2028 and U+0085 as they are, and a quoted CSV
    # field may hold a newline; neither ends a row.
    jsonl = tmp_path / "separators.jsonl"
    jsonl.write_text(
        json.dumps({"text": "one\u2028two\x85three", "label": "x"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    assert load_examples(jsonl, "text", "label") == (("one two three", "x"),)
    csv_file = tmp_path / "quoted.csv"
    csv_file.write_text('text,label\n"one\ntwo\u2028three",x\nfour\x85five,y\n', encoding="utf-8")
    assert load_examples(csv_file, "text", "label") == (
        ("one two three", "x"),
        ("four five", "y"),
    )


# --- native libraries in worker processes ------------------------------------------------------


def test_demonstration_workers_release_their_emulators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ale_py")
    pools: list[int] = []

    class CountingPool(demo_workers.ProcessPoolExecutor):
        def __init__(self, *args: object, **kwargs: object) -> None:
            pools.append(int(kwargs["max_workers"]))  # type: ignore[call-overload]
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo_workers, "ProcessPoolExecutor", CountingPool)
    task = get_task("phoenix").model_copy(update={"max_steps": 2})  # a short expert episode
    # Every expert counts as slow, so episodes 2 and 3 are played by two spawned workers,
    # whose stderr is this process's (captured at the descriptor).
    store = DemoStore(tmp_path / "demos", workers=2, pool_after_s=0.0)
    assert len(store.load(task, "rgb", 0, 3)) == 3
    assert pools == [2]
    stderr = capfd.readouterr().err
    assert "nanobind" not in stderr and "leaked" not in stderr, stderr
