"""gunicorn settings for the example apps: the guard's hooks, two workers.

``gunicorn -c examples/gunicorn.conf.py flask_app:app``; every ``RUNTIME_GUARD_*`` variable
configures the guard in each worker (``RUNTIME_GUARD_PROCESS_LIMIT=300MB``, ...).
"""

import os

from runtime_guard.integrations.gunicorn import child_exit, on_starting, post_fork

chdir = os.path.dirname(os.path.abspath(__file__))
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("EXAMPLE_WORKERS", "2"))
graceful_timeout = 30
accesslog = None

__all__ = ["bind", "chdir", "child_exit", "graceful_timeout", "on_starting", "post_fork", "workers"]
