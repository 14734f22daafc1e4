"""Real servers on free loopback ports for tests: redis-server, PostgreSQL, a small HTTP server.

Each ``start_*`` returns a handle with the connection details and a ``stop()``; each
raises :class:`Unavailable` (with the reason) when the server's programs are not installed,
so fixtures turn that into a skip. ``.ci/run`` installs the Debian packages.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = [
    "HttpServer",
    "PostgresServer",
    "RedisServer",
    "Unavailable",
    "free_port",
    "start_http",
    "start_postgres",
    "start_redis",
]

_START_TIMEOUT = 30.0


class Unavailable(RuntimeError):
    """The server's programs are missing or it could not start here; the message says why."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(check: object, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{what} exited with status {proc.returncode}")
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise Unavailable(f"{what} did not answer within {timeout:.0f}s")


# -- redis --------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A redis-server on loopback, without persistence."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    directory: str

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_redis() -> RedisServer:
    """Start ``redis-server`` from PATH on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("redis-server is not installed (Debian package redis-server)")
    for _attempt in range(3):
        directory = tempfile.mkdtemp(prefix="rg-redis-")
        port = free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", directory, "--daemonize", "no"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer("127.0.0.1", port, proc, directory)
        try:
            _wait_for(server.ping, _START_TIMEOUT, "redis-server", proc)
            return server
        except Unavailable:
            server.stop()  # most likely the port was taken meanwhile: try another
    raise Unavailable("redis-server did not start on three free ports")


# -- PostgreSQL ---------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster on loopback, trust authentication."""

    host: str
    port: int
    user: str
    dbname: str
    directory: str
    bindir: str
    run_as: Sequence[str] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def stop(self) -> None:
        pg_ctl = os.path.join(self.bindir, "pg_ctl")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*self.run_as, pg_ctl, "stop", "-D", self.data, "-m", "immediate", "-w"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def data(self) -> str:
        return os.path.join(self.directory, "data")


def _postgres_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return os.path.dirname(found[0])
    initdb = shutil.which("initdb")
    return None if initdb is None else os.path.dirname(initdb)


def start_postgres() -> PostgresServer:
    """Start a PostgreSQL cluster in a temporary directory on a free loopback port.

    PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as, the
    ``postgres`` user (via ``runuser``).
    """
    bindir = _postgres_bindir()
    if bindir is None:
        raise Unavailable("PostgreSQL is not installed (Debian package postgresql)")
    run_as: list[str] = []
    directory = tempfile.mkdtemp(prefix="rg-pg-")
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = None
        if runuser is None or owner is None:
            shutil.rmtree(directory, ignore_errors=True)
            raise Unavailable("running as root without a postgres user or runuser")
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        os.chmod(directory, 0o700)
        run_as = [runuser, "-u", "postgres", "--"]
    data = os.path.join(directory, "data")
    initdb = subprocess.run(
        [*run_as, os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if initdb.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise Unavailable(f"initdb failed: {initdb.stderr.decode(errors='replace')[-300:]}")
    for _attempt in range(3):
        port = free_port()
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = os.path.join(directory, "log")
        pg_ctl = os.path.join(bindir, "pg_ctl")
        started = subprocess.run(
            [*run_as, pg_ctl, "start", "-D", data, "-w", "-t", "60", "-o", options, "-l", log],
            capture_output=True,
            timeout=90,
            check=False,
        )
        if started.returncode == 0:
            return PostgresServer(
                "127.0.0.1", port, "postgres", "postgres", directory, bindir, run_as
            )
    log = ""
    with contextlib.suppress(OSError), open(os.path.join(directory, "log")) as f:
        log = f.read()[-300:]
    shutil.rmtree(directory, ignore_errors=True)
    raise Unavailable(f"pg_ctl start failed: {log}")


# -- HTTP ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class HttpServer:
    """A threaded HTTP/1.1 server on loopback answering ``GET`` with ``ok``."""

    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def start_http() -> HttpServer:
    """Start the HTTP server on a free loopback port, serving from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    return HttpServer(server, thread)
