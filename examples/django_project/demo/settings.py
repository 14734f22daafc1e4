"""Settings of the example project: just enough Django, plus the guard."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "demo.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# First, so refused requests cost nothing further down the stack.
MIDDLEWARE = ["runtime_guard.integrations.django.GuardMiddleware"]

RUNTIME_GUARD = {
    "exempt": ["/admin"],
    "metrics_path": "/metrics",
    # Any install() option goes here too, e.g. "memory_limit": "1GiB".
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"runtime_guard": {"handlers": ["console"], "level": "INFO"}},
}
