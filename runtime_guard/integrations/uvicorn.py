"""uvicorn: recycle a worker on ``restart_requested`` through uvicorn's own graceful shutdown.

The worker stops accepting, then sets ``Server.should_exit``, exactly what
``--limit-max-requests`` does: uvicorn finishes in-flight requests, runs the lifespan shutdown
and exits. Under
``uvicorn --workers N`` the supervisor then starts a fresh worker on the same socket; with a
single process, whatever supervises uvicorn (systemd, Kubernetes) restarts it.

The usual way in is :func:`runtime_guard.integrations.asgi.lifespan`, which calls
:func:`enable_recycling` in each worker and, at its shutdown, :func:`worker_stopping`: under
Prometheus multiprocess mode the worker's gauges leave the scrape before it exits.

The guard's log propagates to the root logger, to whatever the app sets up there; uvicorn's
own loggers do not propagate, so :func:`use_error_log` copies it to uvicorn's log as well.
"""

from __future__ import annotations

import logging
import os
import signal

from runtime_guard.guard import Guard
from runtime_guard.integrations._http import missing_extra
from runtime_guard.integrations._recycle import Recycler, attach_recycler, log_to, worker_gone

try:
    import uvicorn
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("uvicorn", "uvicorn", "fastapi") from exc

__all__ = [
    "DRAIN_SECONDS",
    "enable_recycling",
    "find_server",
    "shutdown",
    "use_error_log",
    "worker_stopping",
]

_log = logging.getLogger("runtime_guard")


def find_server() -> uvicorn.Server | None:
    """The running ``uvicorn.Server`` of this process, if uvicorn is serving.

    While it serves, uvicorn owns SIGTERM: its handler is the server's bound ``handle_exit``.
    """
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return server if isinstance(server, uvicorn.Server) else None


# How long a worker keeps serving after it stops accepting, before uvicorn's shutdown.
DRAIN_SECONDS = 0.5

# The most it waits beyond that for connections it accepted whose request it has not read
# yet (a busy event loop reads them late); uvicorn's shutdown would reset them.
UNREAD_LIMIT_SECONDS = 5.0


def shutdown(reason: str = "") -> None:
    """Shut this uvicorn worker down gracefully (the ``--limit-max-requests`` path).

    The worker first stops accepting, and only :data:`DRAIN_SECONDS` later sets
    ``should_exit``: uvicorn's shutdown closes every connection with no request in progress,
    and one accepted a moment before, whose request the loop has not read yet, counts as
    such; its client got a reset instead of an answer (seen in the proof under load: a
    handful of resets each time a worker recycled). While a connection still has no
    request read, it waits on, up to :data:`UNREAD_LIMIT_SECONDS` (an overloaded loop read
    them late: two dozen resets per recycle in a container near its limit). The other
    workers accept meanwhile.
    """
    server = find_server()
    if server is not None:
        _stop_accepting_then_exit(server)
        return
    # Not serving from the main thread (a custom runner): SIGTERM is uvicorn's documented
    # graceful shutdown too.
    _log.info("runtime_guard: uvicorn server not found; sending SIGTERM to pid %d", os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


def _stop_accepting_then_exit(server: uvicorn.Server) -> None:
    listening = list(getattr(server, "servers", None) or ())
    if not listening:
        server.should_exit = True
        return

    def stop() -> None:
        for listener in listening:
            listener.close()
        deadline = loop.time() + DRAIN_SECONDS + UNREAD_LIMIT_SECONDS

        def exit_when_read() -> None:
            if _unread(server) and loop.time() < deadline:
                loop.call_later(0.1, exit_when_read)
                return
            server.should_exit = True

        loop.call_later(DRAIN_SECONDS, exit_when_read)

    try:
        loop = listening[0].get_loop()
        # Signals arrive on the guard's own thread; the servers belong to the loop's.
        loop.call_soon_threadsafe(stop)
    except Exception:  # the loop is closing: uvicorn's own path, at once
        server.should_exit = True


def _unread(server: uvicorn.Server) -> bool:
    """Whether a connection is open whose first request the loop has not read yet."""
    state = getattr(server, "server_state", None)
    for connection in list(getattr(state, "connections", ())):
        transport = getattr(connection, "transport", None)
        # ``cycle`` is the request in progress (h11 and httptools alike); a keep-alive
        # connection between requests has the last one, complete: not unread.
        if getattr(connection, "cycle", True) is None and not (
            transport is None or transport.is_closing()
        ):
            return True
    return False


def enable_recycling(
    guard: Guard, *, min_lifetime: float | None = None, jitter: float | None = None
) -> Recycler:
    """Recycle this worker gracefully when ``guard`` sends ``restart_requested``.

    ``min_lifetime`` and ``jitter`` default to the guard's ``recycle_min_lifetime`` and
    ``recycle_jitter`` options.
    """
    return attach_recycler(guard, shutdown, "uvicorn", min_lifetime=min_lifetime, jitter=jitter)


def worker_stopping() -> None:
    """At the lifespan's shutdown: a worker that uvicorn is stopping leaves the metrics.

    Only while uvicorn serves this process (its shutdown is under way); a test client
    running the lifespan in a process that goes on is left alone.
    """
    if find_server() is not None:
        worker_gone()


def use_error_log() -> None:
    """Copy the guard's log to uvicorn's error log too (records still reach the root logger)."""
    log_to(logging.getLogger("uvicorn.error"))
