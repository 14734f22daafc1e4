"""Leak tests: runtime_guard's ``no_leaks`` against pytest-memray's ``limit_leaks``.

The same known-leaky and clean test bodies run three times, each in its own pytest
session: unmarked (the baseline), marked ``@pytest.mark.no_leaks`` (runtime_guard) and
marked ``@pytest.mark.limit_leaks("16KB")`` (pytest-memray, from the ``bench`` extra). It
prints, from this one run, whether each verdict was right and each test's wall time
relative to the unmarked test, then the totals.

    python benchmarks/bench_pytest_plugin.py

The bodies are those of ``tests/test_pytest_plugin.py``. The redis bodies need
``redis-server`` on PATH; without it they are left out.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

TOLERANCE = "16KB"

# The bodies are the plugin tests' own known-leaky and clean sets, marked no_leaks there;
# each variant swaps that marker for its own.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_pytest_plugin import CLEAN, LEAKY, REDIS  # noqa: E402

FILES = {"leaky": LEAKY, "clean": CLEAN, "redis": REDIS}
LEAKY_TESTS = {
    "test_list_append",
    "test_dict_cache",
    "test_open_file",
    "test_closure_registry",
    "test_client_per_call",
}

# Plugins that play no part here; each variant keeps only the plugin it measures.
_QUIET = ("no:cacheprovider", "no:hypothesispytest", "no:benchmark", "no:anyio", "no:timeout")

VARIANTS = {
    "plain": ("", ("no:memray", "no:runtime_guard")),
    "runtime_guard": ("@pytest.mark.no_leaks", ("no:memray",)),
    "pytest-memray": (f'@pytest.mark.limit_leaks("{TOLERANCE}")', ("no:runtime_guard",)),
}


@dataclass
class Outcome:
    seconds: float
    failed: bool
    skipped: bool


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(directory: Path) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    return None, None


def _run(directory: Path, name: str, env: dict[str, str]) -> tuple[float, dict[str, Outcome]]:
    mark, disabled = VARIANTS[name]
    variant = directory / name
    variant.mkdir()
    for stem, source in FILES.items():
        body = textwrap.dedent(source).replace("@pytest.mark.no_leaks", mark)
        (variant / f"test_{stem}.py").write_text(body)
    report = directory / f"{name}.xml"
    args = [sys.executable, "-m", "pytest", "-q", str(variant), f"--junitxml={report}"]
    for plugin in (*_QUIET, *disabled):
        args += ["-p", plugin]
    started = time.perf_counter()
    subprocess.run(args, cwd=variant, env=env, stdout=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - started
    outcomes: dict[str, Outcome] = {}
    for case in ET.parse(report).iter("testcase"):
        outcomes[case.attrib["name"]] = Outcome(
            seconds=float(case.attrib.get("time", 0.0)),
            failed=case.find("failure") is not None or case.find("error") is not None,
            skipped=case.find("skipped") is not None,
        )
    return wall, outcomes


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pytest-plugin-") as tmp:
        directory = Path(tmp)
        redis_proc, redis_url = _start_redis(directory)
        env = dict(os.environ)
        env.pop("PYTEST_ADDOPTS", None)
        env["LEAK_TEST_REDIS_URL"] = redis_url or "redis://127.0.0.1:1/0"
        try:
            results = {name: _run(directory, name, env) for name in VARIANTS}
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(10)

    plain_wall, plain = results["plain"]
    tests = [name for name in plain if redis_url is not None or "client" not in name]
    print(f"leak tests: same bodies unmarked, under no_leaks and under limit_leaks({TOLERANCE})")
    print(f"{'test (expected)':36} {'plain':>8} | {'runtime_guard':>24} | {'pytest-memray':>24}")
    correct = dict.fromkeys(VARIANTS, 0)
    totals = dict.fromkeys(VARIANTS, 0.0)
    by_kind = {(name, kind): 0.0 for name in VARIANTS for kind in ("leak", "clean")}
    for test in tests:
        expected_leak = test in LEAKY_TESTS
        label = f"{test.removeprefix('test_')} ({'leak' if expected_leak else 'clean'})"
        row = f"{label:36} {plain[test].seconds * 1000:6.0f}ms"
        kind = "leak" if expected_leak else "clean"
        totals["plain"] += plain[test].seconds
        by_kind["plain", kind] += plain[test].seconds
        for name in ("runtime_guard", "pytest-memray"):
            outcome = results[name][1][test]
            right = outcome.failed == expected_leak
            correct[name] += right
            totals[name] += outcome.seconds
            by_kind[name, kind] += outcome.seconds
            verdict = ("leak" if outcome.failed else "clean") + (" ok " if right else " BAD")
            # junit times are rounded to the millisecond: a 0 ms plain test counts as 1 ms.
            ratio = outcome.seconds / max(plain[test].seconds, 1e-3)
            row += f" | {verdict:10} {outcome.seconds * 1000:5.0f}ms x{ratio:6.1f}"
        print(row)
    print()
    for name in ("runtime_guard", "pytest-memray"):
        wall = results[name][0]
        print(
            f"{name:14} correct verdicts {correct[name]}/{len(tests)}; "
            f"test time {totals[name]:.2f}s = x{totals[name] / max(totals['plain'], 1e-6):.1f} "
            f"the plain tests ({totals['plain']:.2f}s); "
            f"session wall {wall:.2f}s = x{wall / plain_wall:.2f} the plain session "
            f"({plain_wall:.2f}s); clean bodies {by_kind[name, 'clean']:.2f}s, "
            f"leaky bodies {by_kind[name, 'leak']:.2f}s"
        )
    if redis_url is None:
        print("redis-server not found: the redis bodies were left out")


if __name__ == "__main__":
    main()
