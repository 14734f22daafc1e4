"""gunicorn settings for the apps here: the guard's hooks (unless ``LEAKAPP_GUARD=0``).

``LEAKAPP_WORKER`` picks ``sync`` or ``gthread`` (4 threads); ``LEAKAPP_BIND`` the address.
"""

import os

if os.environ.get("LEAKAPP_GUARD", "1") != "0":
    from runtime_guard.integrations.gunicorn import (  # noqa: F401
        child_exit,
        on_starting,
        post_fork,
        post_worker_init,
    )

bind = os.environ.get("LEAKAPP_BIND", "127.0.0.1:8000")
workers = 1
worker_class = os.environ.get("LEAKAPP_WORKER", "sync")
threads = 4
graceful_timeout = 10
accesslog = None
