"""A scripted HTTP server on 127.0.0.1 for testing the real provider SDKs offline.

A test gives a function from the recorded request to a `Reply`; the server records every
request (method, path, headers, body) so the test can assert what the SDK sent. Faults are
replies too: an error status with headers, a delay past the client's timeout, a connection
closed without an answer, a body that is not JSON.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # a JSON value, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # close the connection without answering

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body if self.body is not None else {}).encode()


Handler = Callable[[RecordedRequest], Reply]


def faults_then(*faults: Reply, then: Handler) -> Handler:
    """Answer the first requests with `faults`, in order, and every later one with `then`."""
    pending = list(faults)
    lock = threading.Lock()

    def handle(request: RecordedRequest) -> Reply:
        with lock:
            fault = pending.pop(0) if pending else None
        return fault if fault is not None else then(request)

    return handle


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) drops the connections of a burst of concurrent
    # clients, which then wait a second for the SYN to be sent again.
    request_queue_size = 128


class LoopbackServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        server = self

        class _RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle's algorithm on, the body
            # waits for the client's delayed ACK (40 ms a reply) as no real server's does.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                with server._lock:
                    server.requests.append(request)
                reply = server.handler(request)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = reply.encoded()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a timeout test)

            do_GET = do_POST = do_DELETE = do_PATCH = _handle

        self._server = _Server(("127.0.0.1", 0), _RequestHandler)
        self._server.daemon_threads = True
        # A short poll interval: stopping the server waits for one poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def loopback(handler: Handler) -> Iterator[LoopbackServer]:
    server = LoopbackServer(handler).start()
    try:
        yield server
    finally:
        server.stop()


def chat_completion(
    content: Any, prompt_tokens: Any = 40, completion_tokens: Any = 2, model: str = "m"
) -> dict[str, Any]:
    """A chat.completion body as OpenAI and OpenAI-compatible servers send it (the counts
    may be anything, for tests of what a server must not be trusted with)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": 0,
        },
    }
