"""The HTML report: one self-contained page, checked in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import reportdata
from _chromium import CHROMIUM, open_page
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runtime_guard.reports.html import render_html
from runtime_guard.reports.text import render_text
from runtime_guard.reports.view import ReportError

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

PAGE_CHECKS = {
    "usage_points": "document.querySelector('#timeline-chart #usage-line')"
    ".getAttribute('points').trim().split(' ').length",
    "limit_line": "!!document.querySelector('#timeline-chart #limit-line')",
    "bands": "[...document.querySelectorAll('#timeline-chart rect.band')].map(r => r.classList[1])",
    "markers": "[...document.querySelectorAll('#timeline-chart g.marker')]"
    ".map(g => g.classList[1])",
    "chart_width": "document.querySelector('#timeline-chart').getBoundingClientRect().width",
    "sections": "[...document.querySelectorAll('section')].map(s => s.id)",
    "sites": "document.querySelector('#allocation-sites')?.innerText",
    "types": "document.querySelector('#growing-types')?.innerText",
    "chain_nodes": "document.querySelectorAll('#referrer-chain rect.chain-node').length",
    "chain_text": "document.querySelector('#referrer-chain')?.textContent",
    "clients": "document.querySelector('#unreleased-sites')?.innerText",
    "scripts": "document.scripts.length",
}


@needs_chromium
def test_episode_page_renders_chart_and_sections_in_chromium(tmp_path: Path) -> None:
    """The chart (usage, limit, bands, each marker kind) and every section render, no errors."""
    page = tmp_path / "episode.html"
    page.write_text(render_html(reportdata.episode()), encoding="utf-8")
    result = open_page(page.as_uri(), PAGE_CHECKS, "report-episode.png")
    values = result.values
    assert result.errors == []
    assert values["usage_points"] == 120
    assert values["limit_line"] is True
    assert {"elevated", "high", "critical"} <= set(values["bands"])
    assert {"leak", "relief", "shed", "restore", "recycle", "unreleased"} <= set(values["markers"])
    assert values["chart_width"] > 600
    assert {"timeline", "health", "leak", "unreleased", "relief", "events"} <= set(
        values["sections"]
    )
    assert "/srv/app/views.py:42" in values["sites"]
    assert "app.Session" in values["types"]
    assert values["chain_nodes"] == 3
    assert "app.views._cache (dict)" in values["chain_text"]
    assert "app/views.py:88 in lookup" in values["clients"]
    assert "412" in values["clients"]
    assert values["scripts"] == 0
    assert os.path.getsize(result.screenshot) > 20_000


def test_page_loads_nothing_from_the_network() -> None:
    """No URL but the SVG namespace appears, images are data: URIs, and the CSP forbids loads."""
    data = reportdata.episode()
    data["leak"]["holder_svg"] = _SVG
    page = render_html(data)
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in page
    assert "img-src data:" in page
    assert re.findall(r"\b(?:src|href)=\"([^:\"]*:)", page) == ["data:"]
    assert "url(" not in page
    assert "@import" not in page


def test_report_strings_are_escaped() -> None:
    """Names from a report (sites, types, chain, labels) cannot inject markup."""
    data = reportdata.episode()
    data["leak"] = reportdata.leak_report(site_file=reportdata.HOSTILE)
    data["leak"]["referrer_chain"] = [reportdata.HOSTILE]
    data["leak"]["growing_types"][0]["type_name"] = reportdata.HOSTILE
    data["events"][0]["label"] = reportdata.HOSTILE
    data["health"]["status"] = '"><script>x</script>'
    page = render_html(data)
    assert "<script" not in page
    assert "&lt;script&gt;" in page


def test_leak_report_alone_renders_without_chart() -> None:
    """A leak report file (no samples) renders sites, types and chain, and says: no chart."""
    page = render_html({"kind": "leak", **reportdata.leak_report()})
    assert "No samples in this report" in page
    assert 'id="allocation-sites"' in page
    assert 'id="referrer-chain"' in page


def test_live_variant_refreshes_itself() -> None:
    """With ``refresh`` the page reloads itself and says how often."""
    page = render_html(reportdata.episode(), refresh=3)
    assert '<meta http-equiv="refresh" content="3">' in page
    assert "refreshes every 3 s" in page


def test_text_report_has_the_same_sections() -> None:
    """The text rendering names the leaking line, the chain and the client site."""
    text = render_text(reportdata.episode())
    assert "/srv/app/views.py:42 in get_user" in text
    assert "app.views._cache (dict) -> ['sessions'] list -> app.Session" in text
    assert "app/views.py:88 in lookup" in text
    assert "worst pressure  CRITICAL" in text


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "kind",
                    "samples",
                    "events",
                    "leak",
                    "leaks",
                    "unreleased",
                    "health",
                    "thresholds",
                    "wall",
                    "usage",
                    "limit",
                    "pressure",
                    "top_sites",
                    "growing_types",
                    "referrer_chain",
                    "types",
                    "sites",
                    "label",
                    "status",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
@example({"leak": {"kind": None}, "wall": 67768036191676796})  # a time no strftime can show
@example({"samples": [{"wall": -1e300, "usage": 1}], "generated": 1e20})
def test_any_json_renders_or_is_refused_cleanly(data: Any) -> None:
    """Whatever JSON a file holds, rendering gives a page or a ReportError, never a crash."""
    try:
        page = render_html(data)
    except ReportError:
        return
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    render_text(data)


def test_odd_figures_do_not_break_the_chart() -> None:
    """NaN, infinities, strings and one lone sample still draw a chart."""
    data: dict[str, Any] = {
        "kind": "episode",
        "samples": [
            {"wall": 1.0, "usage": float("nan")},
            {"wall": "2", "usage": "5", "limit": float("inf"), "pressure": "bogus"},
            {"wall": 3.0, "usage": 10, "limit": 0, "pressure": 7},
        ],
        "events": [{"wall": 2.5, "kind": "leak", "label": None}, {"kind": "shed"}],
    }
    page = render_html(json.loads(json.dumps(data)))
    assert 'id="usage-line"' in page


_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="60" viewBox="0 0 200 60">'
    '<rect x="1" y="1" width="198" height="58" fill="#eef"/>'
    '<text x="10" y="35">app.views._cache</text><script>alert(1)</script></svg>'
)


def _two_leaks() -> dict[str, Any]:
    """An episode whose latest leak report has no sites (a repeat without tracemalloc) and
    whose earlier one has them, with a holder and routes."""
    data = reportdata.episode()
    useful = reportdata.leak_report()
    latest = reportdata.leak_report()
    latest.update(top_sites=[], holder=None, routes=[], referrer_chain=None)
    latest["detected_at"] = useful["detected_at"] + 60
    latest["diagnosis"] = "done; tracemalloc skipped for this repeat"
    data.pop("leak")
    data["leaks"] = [latest, useful]
    return data


def test_page_leads_with_the_report_that_names_the_line_and_holder() -> None:
    """Of several leak reports, the one with sites and a holder comes first, not the latest."""
    page = render_html(_two_leaks())
    first = page.index('id="leak"')
    other = page.index('id="leak-1"')
    assert first < other
    lead = page[first:other]
    assert "Leak (the most useful of 2 reports)" in lead
    assert "/srv/app/views.py:42" in lead
    assert "app.views._cache (dict): 46.0 MiB (estimated) in 502 entries" in lead
    assert "no allocation sites recorded" in page[other:]
    text = render_text(_two_leaks())
    assert text.index("/srv/app/views.py:42") < text.index("Other leak report 1")


def test_episode_badge_shows_the_worst_level_reached() -> None:
    """An episode that reached CRITICAL says so in its badge, whatever health said at its end."""
    data = reportdata.episode()
    data["health"]["status"] = "ok"
    page = render_html(data)
    assert '<span class="status critical">critical</span>' in page
    assert "episode ok" not in page


def test_holder_picture_is_an_image_that_cannot_run_anything() -> None:
    """Graphviz's SVG goes in as a data: image; its markup never reaches the page."""
    data = {"kind": "leak", **reportdata.leak_report(), "holder_svg": _SVG}
    page = render_html(data)
    assert 'class="graph"' in page
    assert "data:image/svg+xml;base64," in page
    assert "<script" not in page
    assert 'id="referrer-chain"' not in page  # the boxes are the fallback, not both
    assert "app.views._cache (dict) -&gt; [&#x27;sessions&#x27;] list" in page


def test_routes_are_ranked_with_their_cost_per_request() -> None:
    """The routes table lists each route's bytes per request and share of the growth."""
    page = render_html({"kind": "leak", **reportdata.leak_report()})
    table = page[page.index('id="routes"') :]
    assert table.index("/users/&lt;id&gt;") < table.index("<code>/</code>")
    assert "5.5 KiB" in table
    assert "97%" in table


@needs_chromium
def test_holder_picture_and_routes_render_in_chromium(tmp_path: Path) -> None:
    """In a real browser the chain picture loads as an image and nothing errs or runs."""
    from runtime_guard.diagnosis.graph import chain_svg

    cache = {"a": [b"x" * 100]}
    svg = chain_svg([cache, cache["a"], cache["a"][0]], {id(cache): "46.0 MiB in 502 entries"})
    data = {"kind": "leak", **reportdata.leak_report(), "holder_svg": svg or _SVG}
    page = tmp_path / "leak.html"
    page.write_text(render_html(data), encoding="utf-8")
    checks = {
        "image_width": "document.querySelector('img.graph').naturalWidth",
        "routes": "document.querySelector('#routes').innerText",
        "holder": "document.querySelector('#holder').innerText",
        "scripts": "document.scripts.length",
    }
    result = open_page(page.as_uri(), checks, "report-leak-graph.png")
    assert result.errors == []
    assert result.values["image_width"] > 50
    assert "/users/<id>" in result.values["routes"]
    assert "46.0 MiB" in result.values["holder"]
    assert result.values["scripts"] == 0
