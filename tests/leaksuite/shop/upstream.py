"""The user service the shop calls, stubbed in-process: JSON over HTTP/1.1.

One thread accepts and one thread per connection answers, as ``http.server`` does, so
keep-alive connections hold a thread and a socket on the server side for as long as the
client keeps them open.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the body waits for
    # the client's delayed ACK of the headers (40 ms a request on Linux).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        user_id = self.path.rstrip("/").rsplit("/", 1)[-1]
        body = json.dumps(
            {"id": user_id, "name": f"user {user_id}", "roles": ["customer"], "active": True}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Upstream:
    """The stub server, serving from a daemon thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="upstream", daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
