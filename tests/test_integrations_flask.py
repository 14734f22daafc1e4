"""Flask: init_app installs the guard, wraps the app, and reads app.config["RUNTIME_GUARD"]."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pytest
from flask import Flask

import runtime_guard
from runtime_guard.config import ConfigError
from runtime_guard.integrations.flask import EXTENSION, init_app
from runtime_guard.probes import RssReader


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config)

    @app.get("/work")
    def work() -> str:
        return "done"

    @app.get("/admin/ping")
    def ping() -> str:
        return "pong"

    return app


def test_init_app_installs_and_serves_health() -> None:
    """init_app installs the process-wide guard with the given options and adds /health."""
    rss = RssReader().read()
    app = make_app()
    guard = init_app(app, memory_limit=rss * 10, interval=60)
    assert guard is runtime_guard.get_guard()
    assert app.extensions[EXTENSION] is guard
    assert guard is not None and guard.limit == rss * 10
    client = app.test_client()
    assert client.get("/work").text == "done"
    health = client.get("/health")
    assert (health.status_code, health.json["status"]) == (200, "ok")  # type: ignore[index]


def test_critical_refuses_non_exempt_routes_from_config() -> None:
    """Options from app.config["RUNTIME_GUARD"] apply: exempt routes pass while critical."""
    rss = RssReader().read()
    app = make_app(RUNTIME_GUARD={"memory_limit": rss // 2, "exempt": ["/admin"], "interval": 60})
    guard = init_app(app, retry_after=5)
    assert guard is not None
    guard.sample()
    client = app.test_client()
    refused = client.get("/work")
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "5")
    assert client.get("/admin/ping").text == "pong"
    assert client.get("/health").status_code == 503


def test_install_false_leaves_installing_to_the_server() -> None:
    """With install=False no guard is installed and requests pass until one is."""
    app = make_app()
    assert init_app(app, install=False) is None
    assert runtime_guard.get_guard() is None
    assert app.test_client().get("/work").status_code == 200


def test_unknown_option_fails_loudly() -> None:
    """A misspelt option raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="helth_path"):
        init_app(make_app(), helth_path="/h")


def test_missing_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Flask installed, importing the integration says which extra to install."""
    monkeypatch.setitem(sys.modules, "flask", None)
    monkeypatch.delitem(sys.modules, "runtime_guard.integrations.flask")
    with pytest.raises(ImportError, match=r"pip install 'runtime-guard-server\[flask\]'"):
        importlib.import_module("runtime_guard.integrations.flask")
