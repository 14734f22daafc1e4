"""gunicorn settings for the example apps: the guard's hooks inside the app's own, two workers.

``gunicorn -c examples/gunicorn.conf.py flask_app:app``; every ``RUNTIME_GUARD_*`` variable
configures the guard in each worker (``RUNTIME_GUARD_PROCESS_LIMIT=300MB``, ...), and
``EXAMPLE_GUARD=0`` leaves it out.
"""

import os

from runtime_guard.integrations import gunicorn as guard_hooks

GUARD = os.environ.get("EXAMPLE_GUARD", "1") != "0"


def on_starting(server):
    if GUARD:
        guard_hooks.on_starting(server)


def post_fork(server, worker):
    if GUARD:
        guard_hooks.use_error_log(server)  # the guard's lines in gunicorn's error log too
        guard_hooks.post_fork(server, worker)
    server.log.info("worker %s ready to serve", worker.pid)


def child_exit(server, worker):
    if GUARD:
        guard_hooks.child_exit(server, worker)


chdir = os.path.dirname(os.path.abspath(__file__))
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "2"))
graceful_timeout = 30
accesslog = None
