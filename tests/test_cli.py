# mypy: disallow-untyped-calls=False, disallow-untyped-decorators=False
# (these tests drive third-party code that ships without types: Celery, redis-py, hypothesis)
"""The ``runtime-guard`` command: run, report, status and demo, as a user types them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import reportdata
import test_container  # tests/: a guarded worker process of a test's own container
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime_guard
from runtime_guard.cli import demo_app as _demo_app
from runtime_guard.cli import main
from runtime_guard.integrations.wsgi import GuardMiddleware
from runtime_guard.testing import FakeProbe, make_guard

CHILD = """\
import os, sys
import runtime_guard
guard = runtime_guard.get_guard()
print("guard installed:", guard is not None)
print("interval:", guard.config.interval if guard else None)
print("sampling:", guard is not None and len(guard.history) >= 0 and guard.sample() is not None)
print("existing sitecustomize:", os.environ.get("EXISTING_SITECUSTOMIZE_RAN"))
print("args:", sys.argv[1:])
sys.exit(int(sys.argv[1]))
"""


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime_guard", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD, encoding="utf-8")
    return path


def test_run_installs_guard_in_child_and_keeps_existing_sitecustomize(
    tmp_path: Path, child_script: Path
) -> None:
    """The child runs with the guard (options applied), its own sitecustomize, its args,
    its stdout and its exit code."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        'import os\nos.environ["EXISTING_SITECUSTOMIZE_RAN"] = "yes"\n', encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = _cli(
        "run", "--interval", "0.25", "--", sys.executable, str(child_script), "7", "x", env=env
    )
    assert done.returncode == 7, done.stderr
    assert "guard installed: True" in done.stdout
    assert "interval: 0.25" in done.stdout
    assert "sampling: True" in done.stdout
    assert "existing sitecustomize: yes" in done.stdout
    assert "args: ['7', 'x']" in done.stdout
    assert "Traceback" not in done.stderr


def test_run_without_double_dash_and_environment_options(child_script: Path) -> None:
    """RUNTIME_GUARD_* variables reach the child, and ``--`` may be left out."""
    env = {**os.environ, "RUNTIME_GUARD_INTERVAL": "0.5"}
    done = _cli("run", sys.executable, str(child_script), "0", env=env)
    assert done.returncode == 0, done.stderr
    assert "interval: 0.5" in done.stdout


def test_run_rejects_bad_option_before_starting(child_script: Path) -> None:
    """A bad option fails with status 2 and names the flag; the program never starts."""
    done = _cli("run", "--interval", "-1", "--", sys.executable, str(child_script), "0")
    assert done.returncode == 2
    assert "--interval='-1' is not accepted" in done.stderr
    assert "guard installed" not in done.stdout


def test_run_reports_missing_program() -> None:
    """A program that does not exist gives 127, like a shell."""
    done = _cli("run", "--", "/nonexistent/program")
    assert done.returncode == 127
    assert "cannot start '/nonexistent/program'" in done.stderr


def test_run_forwards_sigterm_to_the_child(tmp_path: Path) -> None:
    """SIGTERM sent to ``runtime-guard run`` reaches the program, whose exit code comes back."""
    script = tmp_path / "server.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "def stop(signum, frame):\n"
        # Not print(): the signal can land while print('ready') is still flushing.
        "    os.write(1, b'got SIGTERM\\n')\n"
        "    sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n",
        encoding="utf-8",
    )
    with subprocess.Popen(
        [sys.executable, "-m", "runtime_guard", "run", "--", sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 3
            assert "got SIGTERM" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_run_returns_128_plus_signal_when_child_is_killed(tmp_path: Path) -> None:
    """A child killed by a signal gives 128 + N, as a shell does."""
    done = _cli(
        "run", "--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert done.returncode == 128 + signal.SIGKILL


def test_report_text_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A saved report renders as text on stdout and as an HTML file whose size is printed."""
    path = tmp_path / "runtime-guard-episode.json"
    path.write_text(json.dumps(reportdata.episode()), encoding="utf-8")
    assert main(["report", str(path)]) == 0
    text = capsys.readouterr().out
    assert "/srv/app/views.py:42 in get_user" in text
    out = tmp_path / "report.html"
    assert main(["report", str(path), "--html", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (")
    assert 'id="timeline-chart"' in out.read_text(encoding="utf-8")


HOSTILE_FILES: dict[str, bytes] = {
    "not-json": b"this is not json",
    "truncated": json.dumps(reportdata.episode()).encode()[:500],
    "binary": bytes(range(256)),
    "top-level-list": b"[1, 2, 3]",
    "empty-object": b"{}",
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
    "huge-integer": b'{"samples": [{"wall": 1, "usage": ' + b"9" * 5000 + b"}]}",
    "wrong-types": b'{"samples": "x", "events": 5, "leak": [], "health": "ok"}',
    "empty-file": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_report_on_malformed_file_names_it_without_traceback(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Malformed or hostile JSON gives status 2 and one clear line naming the file."""
    path = tmp_path / f"{name}.json"
    path.write_bytes(HOSTILE_FILES[name])
    assert main(["report", str(path), "--html", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"runtime-guard: report: {path}: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert not (tmp_path / "out.html").exists()


def test_report_with_lone_surrogates_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Strings JSON allows but UTF-8 does not (lone surrogates) are replaced, not fatal."""
    path = tmp_path / "surrogate.json"
    path.write_text(
        '{"kind": "leak", "top_sites": [{"filename": "\\ud800app.py", "lineno": 3}]}',
        encoding="utf-8",
    )
    out = tmp_path / "out.html"
    assert main(["report", str(path), "--html", str(out)]) == 0
    assert "?app.py:3" in out.read_text(encoding="utf-8")
    assert main(["report", str(path)]) == 0
    assert "?app.py:3" in capsys.readouterr().out


def test_report_on_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file is named, with the reason."""
    path = tmp_path / "nope.json"
    assert main(["report", str(path)]) == 2
    assert capsys.readouterr().err == f"runtime-guard: report: {path}: No such file or directory\n"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(guard: runtime_guard.Guard | None) -> Iterator[str]:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = make_server("127.0.0.1", 0, GuardMiddleware(app, guard=guard), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_status_of_running_server(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``status URL`` reads /health?detail=1 of a real server, prints it with the workers of
    its container and exits 0 when ok."""
    monkeypatch.setenv("RUNTIME_GUARD_CONTAINER_DIR", str(tmp_path))
    runtime_guard.install(interval=0.1)
    for base in _serve(None):
        assert main(["status", base]) == 0
    out = capsys.readouterr().out
    assert out.startswith(base + "/health?detail=1\n")
    assert "status    ok" in out
    assert "usage     " in out
    assert "workers   1 live in this container" in out
    assert f"  {os.getpid():<8}* ok" in out


def test_status_without_url_reads_the_containers_workers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a shell of the container, ``status`` lists every live worker from the figures they
    publish, with no route; the exit status is the worst worker's."""
    monkeypatch.setenv("RUNTIME_GUARD_CONTAINER_DIR", str(tmp_path))
    workers = [test_container._start_worker(tmp_path) for _ in range(2)]
    try:
        assert main(["status"]) == 0
        out = capsys.readouterr().out
        assert "workers   2 live in this container" in out
        for proc in workers:
            assert f"  {proc.pid:<8}  ok" in out
        assert main(["status", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)["workers"]
        assert sorted(w["pid"] for w in listed) == sorted(p.pid for p in workers)
    finally:
        for proc in workers:
            test_container._end(proc)
    assert main(["status"]) == 3
    assert "no live worker" in capsys.readouterr().out
    monkeypatch.setenv("RUNTIME_GUARD_CONTAINER_DIR", "off")
    assert main(["status"]) == 3
    assert "no container directory" in capsys.readouterr().err


def test_status_critical_server_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A server at CRITICAL answers 503; status still prints its health and exits 2."""
    probe = FakeProbe()
    guard = make_guard(probe)
    try:
        probe.set_fraction(0.99)
        guard.sample()
        for base in _serve(guard):
            assert main(["status", base + "/health", "--json"]) == 2
    finally:
        guard.stop()
    assert json.loads(capsys.readouterr().out)["status"] == "critical"


def test_status_unreachable_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: status 3 (unknown) and a one-line reason."""
    assert main(["status", "http://127.0.0.1:9/health", "--timeout", "2"]) == 3
    assert "unreachable" in capsys.readouterr().err


def _leaking_line() -> int:
    with open(_demo_app.__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if "# LEAKING LINE" in line:
                return number
    raise AssertionError("the demo app has no LEAKING LINE")


@pytest.mark.slow
def test_demo_quick_finds_the_leaking_line(tmp_path: Path) -> None:
    """``demo --quick`` runs to the end, prints the leaking line it found and writes the report."""
    html = tmp_path / "demo.html"
    done = _cli("demo", "--quick", "--html", str(html), timeout=240)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"shop.py:{_leaking_line()} in handle_order" in out, out
    assert "the leaking line is" in out, out
    assert "unreleased clients" in out, out
    assert "_make_client" in out, out
    assert "feature shed" in out, out
    assert "feature restored" in out, out
    assert "HTML report" in out, out
    assert "run time" in out, out
    assert "\x1b[" not in out  # plain text when not a terminal
    assert html.stat().st_size > 10_000
    page = html.read_text(encoding="utf-8")
    assert 'id="timeline-chart"' in page
    assert "handle_order" in page


# -- report files, fuzzed: hostile, malformed and odd-shaped JSON through main() ----------

HOSTILE_STRINGS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "</style><script>alert(1)</script>",
    "</title><script>alert(1)</script>",
    '"><svg onload=alert(1)>',
    "'><img src=x onerror=alert(1)>",
    "<iframe src=javascript:alert(1)>",
    "javascript:alert(1)",
    "]]><!--<script>",
    "\x1b[2J\x1b[31mred\r\nforged line",
    "\u202eevil\u2028\u2029",
    "../../../etc/passwd",
    "\ud800\udfff",
    "%s%n{0}{{7*7}}",
    "x" * 5000,
]
hostile_values = st.recursive(
    st.sampled_from(HOSTILE_STRINGS)
    | st.text(max_size=30)
    | st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(HOSTILE_STRINGS) | st.text(max_size=6), children, max_size=4
        )
    ),
    max_leaves=12,
)
BASES = {
    "episode": lambda: reportdata.episode(40),
    "leak": lambda: {"kind": "leak", **reportdata.leak_report()},
    "unreleased": lambda: {"kind": "unreleased", **reportdata.unreleased_report()},
    "empty": dict,
}
TAGS = ("<script", "<img", "<iframe", "<svg onload", "<title><script")


@st.composite
def mutated_reports(draw: st.DrawFn) -> Any:
    """A real report with some values, keys or whole branches swapped for hostile ones."""

    # Hypothesis leans towards 0, so 0 means "keep": most of each real report survives.
    def mutate(value: Any, depth: int) -> Any:
        if depth > 6 or draw(st.integers(0, 9)) == 9:
            return draw(hostile_values)
        if not isinstance(value, (dict, list)):
            # Mostly the hostile strings themselves: displayed fields are where they bite.
            return draw(st.sampled_from(HOSTILE_STRINGS) if draw(st.booleans()) else hostile_values)
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if draw(st.integers(0, 7)) == 7:
                    key = draw(st.sampled_from(HOSTILE_STRINGS))
                out[key] = mutate(item, depth + 1) if draw(st.integers(0, 2)) == 2 else item
            return out
        if isinstance(value, list) and value:
            value = list(value)
            for _ in range(draw(st.integers(0, 3))):
                i = draw(st.integers(0, len(value) - 1))
                value[i] = mutate(value[i], depth + 1)
            return value
        return value

    return mutate(BASES[draw(st.sampled_from(sorted(BASES)))](), 0)


def _run_report(path: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["report", str(path), *extra])  # an exception here fails the test
    return code, out.getvalue(), err.getvalue()


def _attribute_values(page: str) -> list[str]:
    """Every attribute value of the page's tags, as a browser's parser reads them."""
    values: list[str] = []

    class Attributes(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values.extend(value for _, value in attrs if value)

    parser = Attributes()
    parser.feed(page)
    parser.close()
    return values


def _assert_rendered_or_refused(path: Path, html: Path) -> bool:
    """Render ``path`` as text and HTML; True when refused, after checking the one-line error."""
    code, out, err = _run_report(path, "--html", str(html))
    if code != 0:
        assert err.startswith(f"runtime-guard: report: {path}: "), err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert not html.exists()
        text_code, _, text_err = _run_report(path)
        assert (text_code, text_err) == (code, err)
        return True
    page = html.read_text(encoding="utf-8")
    html.unlink()
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    assert not [tag for tag in TAGS if tag in lowered], "unescaped markup from the report"
    # A report's text may say "javascript:" (escaped, shortened to fit a box); no attribute
    # of the page may hold it.
    assert not [v for v in _attribute_values(page) if "javascript:" in v.lower()]
    code, out, err = _run_report(path)
    assert (code, err) == (0, "")
    assert "\x1b" not in out and "\r" not in out
    return False


report_fuzz = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@report_fuzz
@given(mutated_reports())
def test_report_command_on_hostile_json_renders_escaped_or_refuses_by_name(data: Any) -> None:
    """Any JSON report, however hostile, renders escaped or is refused in one line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runtime-guard-fuzz.json"
        path.write_text(json.dumps(data), encoding="utf-8", errors="surrogatepass")
        _assert_rendered_or_refused(path, Path(tmp) / "out.html")


@report_fuzz
@given(
    st.sampled_from(sorted(BASES)),
    st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=0, max_size=4)), max_size=4),
    st.integers(0, 10**6) | st.none(),
)
def test_report_command_on_corrupted_bytes_refuses_by_name(
    base: str, edits: list[tuple[int, bytes]], cut: int | None
) -> None:
    """Bytes of a real report spliced, overwritten with non-UTF-8 or cut short never crash it."""
    raw = bytearray(json.dumps(BASES[base]()).encode())
    for position, junk in edits:
        at = position % (len(raw) + 1)
        raw[at : at + len(junk)] = junk
    if cut is not None:
        del raw[cut % (len(raw) + 1) :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runtime-guard-fuzz.json"
        path.write_bytes(bytes(raw))
        _assert_rendered_or_refused(path, Path(tmp) / "out.html")


def test_report_command_on_oversized_and_large_files(tmp_path: Path) -> None:
    """A file over the size cap is refused unread; a 10 MB report renders capped."""
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: costs no disk
    assert _assert_rendered_or_refused(huge, tmp_path / "huge.html")
    assert "too large" in _run_report(huge)[2]
    large = tmp_path / "large.json"
    episode = reportdata.episode(40)
    episode["samples"] = episode["samples"] * 2000
    episode["events"] = [{"wall": 1.0, "kind": "leak", "label": HOSTILE_STRINGS[0]}] * 50_000
    large.write_text(json.dumps(episode), encoding="utf-8")
    assert large.stat().st_size > 10 * 1024 * 1024
    assert not _assert_rendered_or_refused(large, tmp_path / "large.html")
