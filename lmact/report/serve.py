"""`lmact view --serve`: the viewer's page on a loopback port, answered only to loopback
host names, with clients that hang up dropped quietly."""

from __future__ import annotations

import http.server
import sys
from collections.abc import Callable
from typing import Any

from lmact.errors import LmactError
from lmact.report.viewer_page import CONTENT_SECURITY_POLICY

# The names the page answers to: a DNS-rebinding page (evil.example resolved to 127.0.0.1)
# sends its own Host, so refusing every other name keeps a run away from other sites.
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _is_loopback_host(host: str | None, port: int) -> bool:
    """Whether a request's Host header names this server on loopback (with or without its
    port); a missing Host (HTTP/1.0) is not."""
    if not host:
        return False
    host = host.strip().lower()
    return any(host in (name, f"{name}:{port}") for name in _LOOPBACK_HOSTS)


class _PageServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:  # socketserver's name
        """A client gone mid-request (a reload, a closed tab) is not an error; anything else
        is one line, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        print(f"lmact: serving {client_address[0]}: {error!r}", file=sys.stderr, flush=True)


def make_server(page: str, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:`port` (0: any free port) that serves `page` at `/` to
    requests naming a loopback host."""
    body = page.encode("utf-8")

    class PageHandler(http.server.BaseHTTPRequestHandler):
        timeout = 60  # a client that connects and sends nothing does not hold a thread forever

        def do_GET(self) -> None:  # the name http.server calls
            if not _is_loopback_host(self.headers.get("Host"), self.server.server_address[1]):
                self.send_error(403, "this server answers only to localhost")
                return
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a page view is not worth a line on the terminal

    try:
        return _PageServer(("127.0.0.1", port), PageHandler)
    except OSError as error:
        raise LmactError(f"cannot serve on 127.0.0.1:{port} ({error.strerror})") from None


def serve_page(page: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve `page` on 127.0.0.1 until Ctrl-C (or SIGTERM); `announce` gets its URL."""
    server = make_server(page, port)
    try:
        announce(f"http://127.0.0.1:{server.server_address[1]}/")
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # how serving is meant to end
    finally:
        server.server_close()
