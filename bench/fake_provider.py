"""A fake OpenAI-compatible provider for the benches, served from its own process.

It answers every Chat Completions request after a fixed latency with the first legal action
listed in the prompt (tic-tac-toe, grid world …). It runs in a child process so that, as a
real provider, it shares no interpreter lock with the harness being measured.
"""

from __future__ import annotations

import multiprocessing
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from loopback import RecordedRequest, Reply, chat_completion, loopback

LEGAL = re.compile(r"The legal actions in this state are: ([^\n]+)")


def first_legal_action(request: RecordedRequest) -> str:
    content = request.json["messages"][-1]["content"]
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    return LEGAL.findall(text)[-1].split(", ")[0]


def answer_after(latency_s: float) -> Callable[[RecordedRequest], Reply]:
    def handle(request: RecordedRequest) -> Reply:
        time.sleep(latency_s)
        return Reply(body=chat_completion(first_legal_action(request), prompt_tokens=100))

    return handle


def _serve(latency_s: float, urls: multiprocessing.Queue) -> None:
    with loopback(answer_after(latency_s)) as server:
        urls.put(f"{server.url}/v1")
        while True:
            time.sleep(3600)


@contextmanager
def fake_provider(latency_s: float) -> Iterator[str]:
    """The base URL of a fake provider answering after `latency_s`, until the block ends."""
    context = multiprocessing.get_context("fork")
    urls = context.Queue()
    process = context.Process(target=_serve, args=(latency_s, urls), daemon=True)
    process.start()
    try:
        yield urls.get(timeout=30)
    finally:
        process.terminate()
        process.join()
