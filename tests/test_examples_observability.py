"""The example alert rules and Grafana dashboard: checked by promtool, and queried by a real
Prometheus that scrapes a real guarded app."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import servers
import yaml
from prometheus_client import CollectorRegistry

import runtime_guard
from runtime_guard.integrations import prometheus
from runtime_guard.integrations.wsgi import GuardMiddleware

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RULES = EXAMPLES / "prometheus" / "runtime_guard.rules.yml"
RULE_TESTS = EXAMPLES / "prometheus" / "runtime_guard.rules.test.yml"
DASHBOARD = EXAMPLES / "grafana" / "runtime_guard.json"

_NAME = re.compile(r"\b(runtime_guard(?::[a-z_]+|_[a-z_]+))\b")


def exported_names() -> set[str]:
    """Every series name the Prometheus integration exports (counters with ``_total``)."""
    guard = runtime_guard.install(interval=3600)
    guard.sample()
    registry = CollectorRegistry()
    registry.register(prometheus.GuardCollector(guard))
    names = set()
    for family in registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p["targets"]]


def rule_exprs() -> list[tuple[str, str]]:
    """``(name, expr)`` of every recording and alerting rule."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    """promtool accepts the rules, and every alert fires (and stays quiet) as its unit
    tests say, on the series each test feeds it."""
    promtool = _promtool()
    for command in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        done = subprocess.run(
            [promtool, *command], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        t["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for t in test.get("alert_rule_test", [])
    }
    alerts = {name for name, _ in rule_exprs() if not name.startswith("runtime_guard:")}
    assert alerts == tested, "every alert has a unit test"


def test_rules_and_dashboard_read_only_metrics_that_exist() -> None:
    """Every runtime_guard series named by a rule or a panel is exported (or is the rules'
    own recording rule); the dashboard is JSON with unique panel ids and a datasource
    variable its panels use."""
    names = exported_names()
    recorded = {name for name, _ in rule_exprs() if name.startswith("runtime_guard:")}
    used = {m for _, expr in rule_exprs() for m in _NAME.findall(expr)}
    used |= {m for expr in dashboard_exprs() for m in _NAME.findall(expr)}
    assert used - names - recorded == set()
    for needed in ("leak_rate", "pressure_level", "recycles", "unreleased_objects"):
        assert any(needed in name for name in used)
    data = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    assert all(p["datasource"]["uid"] == "${datasource}" for p in data["panels"])


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def guarded_app() -> Iterator[str]:
    """A real guarded WSGI app serving /metrics on a loopback port; its base URL."""
    runtime_guard.install(interval=0.2)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server: WSGIServer = make_server(
        "127.0.0.1", 0, GuardMiddleware(app, metrics_path="/metrics"), handler_class=_Quiet
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.slow
def test_a_real_prometheus_evaluates_every_rule_and_panel(guarded_app: str, tmp_path: Path) -> None:
    """Prometheus scrapes the app, loads the rules and answers every dashboard query
    without error; the panels on figures every process has return data."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    shutil.copy(RULES, tmp_path / RULES.name)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES.name],
        "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": [guarded_app]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = servers.free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> dict[str, Any]:
        answer = httpx.get(f"{base}/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        result: dict[str, Any] = answer["data"]
        return result

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if query("runtime_guard_memory_usage_bytes")["result"]:
                    break
            except (httpx.TransportError, ValueError, AssertionError):
                pass
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(3)  # a few scrapes, for the rates
        rules = httpx.get(f"{base}/rules", timeout=10).json()["data"]["groups"]
        loaded = {r["name"]: r for g in rules for r in g["rules"]}
        assert set(loaded) == {name for name, _ in rule_exprs()}
        assert all(r["health"] == "ok" for r in loaded.values()), loaded
        always = ("usage_bytes", "usage_ratio", "pressure_level", "rss_bytes", "gc_")
        for expr in dashboard_exprs():
            concrete = expr.replace("$__rate_interval", "10s").replace("$instance", ".*")
            result = query(concrete)
            # A panel filtered on growth ("> 0": the time left at the current leak rate)
            # has data only while the process grows, which a test process may not.
            if any(name in concrete for name in always) and "> 0" not in concrete:
                # A rate needs two scrapes in its window: a busy machine may scrape late.
                deadline = time.monotonic() + 30
                while not result["result"] and time.monotonic() < deadline:
                    time.sleep(0.5)
                    result = query(concrete)
                assert result["result"], f"no data for {expr}"
    finally:
        proc.terminate()
        proc.wait(30)
