"""Sentry: the guard's ERROR events become Sentry events, one issue per leaking line, with
the report, its sites and holder attached; read through sentry-sdk itself."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent

# sentry-sdk runs in a child process only: sentry_sdk.init() patches logging for the whole
# process, once, and importing sentry_sdk imports eventlet (a test dependency for Celery's
# pools) when it is installed, which then warns on every fork() the other tests make.
SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import sentry_sdk
    from sentry_sdk.transport import Transport

    sys.path.insert(0, sys.argv[1])
    import reportdata
    from runtime_guard import signals
    from runtime_guard.events import record
    from runtime_guard.integrations.sentry import RuntimeGuardIntegration
    from runtime_guard.testing import FakeProbe, make_guard
    from runtime_guard.tracking.component import UnreleasedReport

    captured = []


    class Recording(Transport):
        # What sentry-sdk would send, kept in this process.
        def capture_envelope(self, envelope):
            for item in envelope.items:
                if item.type == "event":
                    captured.append(item.payload.json)


    integrations = [RuntimeGuardIntegration()] if sys.argv[2] == "with" else []
    sentry_sdk.init(
        dsn="https://key@sentry.invalid/1", transport=Recording, integrations=integrations
    )
    guard = make_guard(FakeProbe())
    for site in ("/srv/app/views.py", "/srv/app/views.py", "/srv/app/other.py"):
        report = reportdata.leak_report_object(site)
        report.rate_bytes_per_min *= 1 + len(captured)  # each report's message differs
        guard.send(signals.leak_suspected, report=report)
        guard.flush_signals()
    guard.send(
        signals.unreleased_objects,
        report=UnreleasedReport(
            type="redis.Redis", reasons=["growing"], live=9, unreleased=9, released=0,
            collected_unreleased=0, created=9, sites=[{"site": "/srv/app/cache.py:17", "count": 9}],
        ),
    )
    record("pressure_changed", logging.WARNING, "pressure ELEVATED -> HIGH", {"new": "high"})
    guard.flush_signals()
    guard.stop()
    logging.getLogger("app").error("the app's own error")
    sentry_sdk.flush()
    print(json.dumps(captured))
    """
)


def _events(integration: bool) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS), "with" if integration else "without"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    events: list[dict[str, Any]] = json.loads(done.stdout.splitlines()[-1])
    return events


def _is_guard(event: dict[str, Any]) -> bool:
    return bool(event.get("logger", "").startswith("runtime_guard"))


@pytest.mark.slow
def test_leaks_become_one_issue_per_leaking_line_with_the_report_attached() -> None:
    """Three leak reports at two lines make three ERROR events with two fingerprints; each
    carries the report's figures, sites and holder as context; the app's own error and
    the guard's WARNING (a breadcrumb) are left as sentry-sdk made them."""
    events = _events(integration=True)
    guard = [e for e in events if _is_guard(e)]
    leaks = [e for e in guard if e["tags"]["runtime_guard.event"] == "leak_suspected"]
    assert len(leaks) == 3
    assert {e["level"] for e in leaks} == {"error"}
    prints = [tuple(e["fingerprint"]) for e in leaks]
    assert prints[0] == prints[1] != prints[2]
    assert prints[0] == ("runtime_guard", "leak_suspected", "/srv/app/views.py:42")
    leak = leaks[0]["contexts"]["leak"]
    assert leak["site"] == "/srv/app/views.py:42"
    assert leak["top_sites"][0]["function"] == "get_user"
    assert leak["holder"].startswith("app.views._cache")
    assert leaks[0]["contexts"]["runtime_guard"]["metric"] == "heap"
    assert "runtime_guard" not in leaks[0].get("extra", {})
    [unreleased] = [e for e in guard if e["tags"]["runtime_guard.event"] == "unreleased_objects"]
    assert unreleased["fingerprint"][2:] == ["redis.Redis", "/srv/app/cache.py:17"]
    assert unreleased["contexts"]["unreleased"]["sites"][0]["count"] == 9
    assert not [e for e in guard if e["tags"]["runtime_guard.event"] == "pressure_changed"]
    [app] = [e for e in events if not _is_guard(e)]
    assert "fingerprint" not in app
    crumbs = app.get("breadcrumbs", {}).get("values", [])
    assert any("ELEVATED -> HIGH" in (c.get("message") or "") for c in crumbs)


@pytest.mark.slow
def test_without_the_integration_leaks_are_still_error_events() -> None:
    """With sentry-sdk's defaults alone a leak is an event (ERROR), not a breadcrumb, but
    each report is grouped by its message: the integration is what groups by line."""
    events = [e for e in _events(integration=False) if _is_guard(e)]
    leaks = [e for e in events if "leak suspected" in e["logentry"]["formatted"]]
    assert len(leaks) == 3
    assert all("fingerprint" not in e for e in leaks)
    assert leaks[0]["extra"]["event"] == "leak_suspected"


def test_a_leak_without_a_line_groups_by_the_figure_that_grows() -> None:
    """Without an allocation site the fingerprint is the growing figure, not the type that
    happened to grow most in one diagnosis window."""
    cases = [
        {"site": "a.py:3", "metric": "heap"},
        {"site": None, "metric": "rss", "growing_type": "dict"},
        {"site": None, "metric": "rss", "growing_type": "list"},
    ]
    code = (
        "import json, sys; from runtime_guard.integrations.sentry import fingerprint; "
        "print(json.dumps([fingerprint('leak_suspected', c) for c in json.loads(sys.argv[1])]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    prints = json.loads(done.stdout)
    assert prints[0] == ["runtime_guard", "leak_suspected", "a.py:3"]
    assert prints[1] == prints[2] == ["runtime_guard", "leak_suspected", "rss, no site"]
