"""Leak tests: runtime_guard's ``no_leaks`` against pytest-memray's ``limit_leaks``.

The same known-leaky and clean test bodies run three times, each in its own pytest
session: unmarked (the baseline), marked ``@pytest.mark.no_leaks`` (runtime_guard) and
marked ``@pytest.mark.limit_leaks("16KB")`` (pytest-memray, from the ``bench`` extra). It
prints, from this one run, whether each verdict was right and each test's wall time
relative to the unmarked test, then the totals, and the totals over the tests on which both
plugins agree. Each variant's session runs ``--repeat`` times (default 3), interleaved;
times are medians, and a verdict is a variant's only when every session gave it.

    python benchmarks/bench_pytest_plugin.py

The bodies are those of ``tests/test_pytest_plugin.py``. The redis bodies need
``redis-server`` on PATH; without it they are left out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
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
    variant.mkdir(parents=True)
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


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--repeat", type=int, default=3, help="sessions per variant, interleaved (median shown)"
    )
    repeat = max(parser.parse_args().repeat, 1)
    runs: dict[str, list[tuple[float, dict[str, Outcome]]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-pytest-plugin-") as tmp:
        directory = Path(tmp)
        redis_proc, redis_url = _start_redis(directory)
        env = dict(os.environ)
        env.pop("PYTEST_ADDOPTS", None)
        env["LEAK_TEST_REDIS_URL"] = redis_url or "redis://127.0.0.1:1/0"
        try:
            for attempt in range(repeat):
                for name in VARIANTS:
                    runs[name].append(_run(directory / str(attempt), name, env))
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(10)

    walls = {name: _median([wall for wall, _ in results]) for name, results in runs.items()}
    tests = [name for name in runs["plain"][0][1] if redis_url is not None or "client" not in name]
    seconds = {
        (name, test): _median([outcomes[test].seconds for _, outcomes in results])
        for name, results in runs.items()
        for test in tests
    }
    # A verdict counts as the variant's when every session gave it.
    failed = {
        (name, test): [outcomes[test].failed for _, outcomes in results]
        for name, results in runs.items()
        for test in tests
    }
    print(
        f"leak tests: same bodies unmarked, under no_leaks and under limit_leaks({TOLERANCE}); "
        f"median of {repeat} sessions each"
    )
    print(f"{'test (expected)':36} {'plain':>8} | {'runtime_guard':>24} | {'pytest-memray':>24}")
    correct = dict.fromkeys(VARIANTS, 0)
    totals = dict.fromkeys(VARIANTS, 0.0)
    by_kind = {(name, kind): 0.0 for name in VARIANTS for kind in ("leak", "clean")}
    same: list[str] = []
    for test in tests:
        expected_leak = test in LEAKY_TESTS
        kind = "leak" if expected_leak else "clean"
        label = f"{test.removeprefix('test_')} ({kind})"
        plain = seconds["plain", test]
        row = f"{label:36} {plain * 1000:6.0f}ms"
        totals["plain"] += plain
        by_kind["plain", kind] += plain
        verdicts = {}
        for name in ("runtime_guard", "pytest-memray"):
            spent = seconds[name, test]
            outcomes = failed[name, test]
            verdict = "leak" if all(outcomes) else "clean" if not any(outcomes) else "flaky"
            verdicts[name] = verdict
            right = verdict == kind
            correct[name] += right
            totals[name] += spent
            by_kind[name, kind] += spent
            # junit times are rounded to the millisecond: a 0 ms plain test counts as 1 ms.
            ratio = spent / max(plain, 1e-3)
            mark = " ok " if right else " BAD"
            row += f" | {verdict + mark:10} {spent * 1000:5.0f}ms x{ratio:6.1f}"
        if verdicts["runtime_guard"] == verdicts["pytest-memray"]:
            same.append(test)
        print(row)
    print()
    for name in ("runtime_guard", "pytest-memray"):
        wall = walls[name]
        print(
            f"{name:14} correct verdicts {correct[name]}/{len(tests)}; "
            f"test time {totals[name]:.2f}s = x{totals[name] / max(totals['plain'], 1e-6):.1f} "
            f"the plain tests ({totals['plain']:.2f}s); "
            f"session wall {wall:.2f}s = x{wall / walls['plain']:.2f} the plain session "
            f"({walls['plain']:.2f}s); clean bodies {by_kind[name, 'clean']:.2f}s, "
            f"leaky bodies {by_kind[name, 'leak']:.2f}s"
        )
    shared = {name: sum(seconds[name, test] for test in same) for name in VARIANTS}
    print(
        f"the {len(same)} tests with the same verdict from both: "
        f"runtime_guard {shared['runtime_guard']:.2f}s = "
        f"x{shared['runtime_guard'] / max(shared['plain'], 1e-6):.1f} the plain tests, "
        f"pytest-memray {shared['pytest-memray']:.2f}s = "
        f"x{shared['pytest-memray'] / max(shared['plain'], 1e-6):.1f} "
        f"({shared['plain']:.2f}s plain)"
    )
    if redis_url is None:
        print("redis-server not found: the redis bodies were left out")


if __name__ == "__main__":
    main()
