"""The operations pages: every Python and shell block runs as written; YAML blocks (the
configuration) parse."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs" / "operations").glob("*.md"))
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(kind: str) -> list[tuple[str, str]]:
    """``(page name and index, code)`` of every ``kind`` block of the pages."""
    found = []
    for page in PAGES:
        for index, match in enumerate(_BLOCK.finditer(page.read_text())):
            if match.group(1) == kind:
                found.append((f"{page.name}#{index}", match.group(2)))
    return found


class _Accepting(BaseHTTPRequestHandler):
    """Takes any OTLP export (the OpenTelemetry example exports at shutdown)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accepting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _env(tmp_path: Path, collector: str) -> dict[str, str]:
    env = {**os.environ, "RUNTIME_GUARD_CONTAINER_DIR": str(tmp_path / "container")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector
    env.pop("SENTRY_DSN", None)
    return env


def test_the_pages_have_blocks() -> None:
    """Both pages exist and show code of each kind."""
    assert {p.name for p in PAGES} == {"kubernetes.md", "observability.md"}
    assert blocks("python") and blocks("sh") and blocks("yaml")


@pytest.mark.parametrize(("where", "code"), blocks("python"), ids=lambda v: str(v)[:30])
def test_python_blocks_run(where: str, code: str, tmp_path: Path, collector: str) -> None:
    """Each Python block runs as a program of its own, from the repository's root."""
    done = _run([sys.executable, "-c", code], _env(tmp_path, collector))
    assert done.returncode == 0, f"{where}:\n{done.stderr[-2000:]}"


@pytest.mark.parametrize(("where", "code"), blocks("sh"), ids=lambda v: str(v)[:30])
def test_shell_blocks_run(where: str, code: str, tmp_path: Path, collector: str) -> None:
    """Each shell block runs with bash -e from the repository's root."""
    if "promtool" in code and shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    env = _env(tmp_path, collector)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = _run(["bash", "-e", "-c", code], env)
    assert done.returncode == 0, f"{where}:\n{done.stdout[-1000:]}{done.stderr[-2000:]}"


@pytest.mark.parametrize(("where", "code"), blocks("yaml"), ids=lambda v: str(v)[:30])
def test_yaml_blocks_parse(where: str, code: str) -> None:
    """Each configuration block is valid YAML."""
    assert yaml.safe_load(code) is not None, where
