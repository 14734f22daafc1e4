"""gunicorn settings of the scenarios: two workers; ``SVC_MODE`` picks the mitigation.

``none``: nothing. ``stock``: ``max_requests`` (``SVC_MAX_REQUESTS``, default 400), the
one-line mitigation users reach for. ``guard``: the guard's hooks, every option from
``RUNTIME_GUARD_*`` variables.
"""

import os

mode = os.environ.get("SVC_MODE", "none")
bind = os.environ.get("SVC_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SVC_WORKERS", "2"))
worker_class = os.environ.get("SVC_WORKER_CLASS", "sync")
threads = int(os.environ.get("SVC_THREADS", "4")) if worker_class == "gthread" else 1
graceful_timeout = 30
accesslog = None

if mode == "stock":
    max_requests = int(os.environ.get("SVC_MAX_REQUESTS", "400"))
elif mode == "guard":
    from runtime_guard.integrations import gunicorn as guard_hooks

    on_starting = guard_hooks.on_starting
    child_exit = guard_hooks.child_exit


def post_fork(server, worker):
    # The app reads which worker it is (SVC_LEAK_WORKERS); imported after this hook.
    os.environ["SVC_WORKER_AGE"] = str(worker.age)
    if mode == "guard":
        guard_hooks.post_fork(server, worker)
