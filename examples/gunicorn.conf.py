"""gunicorn settings for the example apps: the guard's hooks, two workers.

``gunicorn -c examples/gunicorn.conf.py flask_app:app``; every ``RUNTIME_GUARD_*`` variable
configures the guard in each worker (``RUNTIME_GUARD_PROCESS_LIMIT=300MB``, ...), and
``EXAMPLE_GUARD=0`` leaves it out.
"""

import os

from runtime_guard.integrations import gunicorn as guard_hooks

if os.environ.get("EXAMPLE_GUARD", "1") != "0":
    on_starting = guard_hooks.on_starting
    post_fork = guard_hooks.post_fork
    child_exit = guard_hooks.child_exit

chdir = os.path.dirname(os.path.abspath(__file__))
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "2"))
graceful_timeout = 30
accesslog = None
