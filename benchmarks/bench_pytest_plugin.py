"""Leak tests: runtime_guard's ``no_leaks`` against pytest-memray's ``limit_leaks``.

The evaluation suite (``tests/leaksuite``: a small shop back end and a test per handler,
leaky and clean side by side, against a real redis-server, a real PostgreSQL and an
in-process HTTP service) runs in its own pytest sessions, one per variant:

- ``plain``: the markers removed (the baseline every time is compared with);
- ``runtime_guard``: ``@pytest.mark.no_leaks`` with its defaults;
- ``memray-1KB`` and ``memray-64KB``: ``@pytest.mark.limit_leaks("1 KB")`` / ``("64 KB")``.

Each variant runs ``--repeat`` sessions (default 3), interleaved, so that a busy machine
slows every variant alike. A body's verdict is ``leak`` or ``clean`` when every session
gave it, ``flaky`` otherwise. It prints, from this one run: per test, each variant's verdict
and median time; per variant, leaks caught, false alarms, flaky bodies, failures whose first
location in the suite's own files is the leaking line, and the median session wall time
relative to the plain session's.

    python benchmarks/bench_pytest_plugin.py [--repeat 3] [-k EXPR]

redis-server and PostgreSQL are started on free loopback ports (``tests/servers.py``); the
tests that need one are skipped when it cannot start.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "leaksuite"
sys.path.insert(0, str(ROOT / "tests"))
import servers  # noqa: E402  (tests/servers.py)

MARK = "@pytest.mark.no_leaks"
VARIANTS = {
    "plain": ("", ("no:memray", "no:runtime_guard")),
    "runtime_guard": (MARK, ("no:memray",)),
    "memray-1KB": ('@pytest.mark.limit_leaks("1 KB")', ("no:runtime_guard",)),
    "memray-64KB": ('@pytest.mark.limit_leaks("64 KB")', ("no:runtime_guard",)),
}
# The same defaults with other threads at work: two pytest-xdist workers (each with its
# channel's thread), and a background thread working every 5 ms (the suite's conftest).
NOISY = {
    "rg, xdist -n 2": ("runtime_guard", ("-p", "xdist", "-n", "2"), {}),
    "rg, busy thread": ("runtime_guard", (), {"LEAKSUITE_BACKGROUND": "1"}),
}

# Plugins that play no part here; each variant keeps only the plugin it measures.
_QUIET = (
    "no:randomly",
    "no:cacheprovider",
    "no:hypothesispytest",
    "no:benchmark",
    "no:timeout",
    "no:xdist",
)

_LEAK = re.compile(r"#\s*LEAK:\s*(\w+)$")
_LOCATION = re.compile(r"([\w./-]+\.py):(\d+)")


@dataclass
class Outcome:
    seconds: float
    failed: bool
    skipped: bool
    message: str


def expected_leaks(suite: Path = SUITE) -> dict[str, tuple[str, int]]:
    """Test name -> (file relative to the suite, line) of each ``# LEAK: <name>`` comment."""
    found: dict[str, tuple[str, int]] = {}
    for path in sorted(suite.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = _LEAK.search(line)
            if match:
                found["test_" + match.group(1)] = (path.relative_to(suite).as_posix(), number)
    return found


def first_suite_location(message: str) -> tuple[str, int] | None:
    """The first ``file:line`` in ``message`` that points into the suite's own files."""
    for match in _LOCATION.finditer(message):
        path = match.group(1)
        for prefix in ("shop/", "suite_"):
            at = path.find(prefix)
            if at >= 0 and (at == 0 or path[at - 1] == "/"):
                return path[at:], int(match.group(2))
    return None


def _copy_suite(target: Path, mark: str) -> None:
    shutil.copytree(SUITE, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.glob("suite_*.py"):
        text = path.read_text()
        if mark:
            text = text.replace(MARK, mark)
        else:
            text = "\n".join(line for line in text.splitlines() if line.strip() != MARK)
        path.write_text(text)


def _run(directory: Path, name: str, env: dict[str, str], select: str) -> tuple[float, dict]:
    base, extra, variables = NOISY.get(name, (name, (), {}))
    mark, disabled = VARIANTS[base]
    variant = directory / re.sub(r"\W+", "-", name)
    _copy_suite(variant, mark)
    report = variant.with_suffix(".xml")
    args = [sys.executable, "-m", "pytest", "-q", "-o", "python_files=suite_*.py"]
    args += ["-o", "asyncio_default_fixture_loop_scope=function"]
    args += [f"--junitxml={report}", *extra]
    env = {**env, **variables}
    quiet = [plugin for plugin in _QUIET if not (extra and plugin == "no:xdist")]
    for plugin in (*quiet, *disabled):
        args += ["-p", plugin]
    if select:
        args += ["-k", select]
    started = time.perf_counter()
    subprocess.run(args, cwd=variant, env=env, stdout=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - started
    outcomes: dict[str, Outcome] = {}
    for case in ET.parse(report).iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        outcomes[case.attrib["name"]] = Outcome(
            seconds=float(case.attrib.get("time", 0.0)),
            failed=bad is not None,
            skipped=case.find("skipped") is not None,
            message="" if bad is None else (bad.text or bad.attrib.get("message", "")),
        )
    return wall, outcomes


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3, help="sessions per variant")
    parser.add_argument("-k", dest="select", default="", help="pytest -k expression")
    parser.add_argument(
        "--quick", action="store_true", help="leave out the variants with other threads at work"
    )
    arguments = parser.parse_args()
    repeat = max(arguments.repeat, 1)
    leaks = expected_leaks()
    names = [*VARIANTS, *([] if arguments.quick else NOISY)]
    runs: dict[str, list[tuple[float, dict[str, Outcome]]]] = {name: [] for name in names}
    started: list[object] = []
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    for key in ("RUNTIME_GUARD_LEAK_CHECK", "RUNTIME_GUARD_LEAK_CHECK_ROUNDS"):
        env.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="bench-pytest-plugin-") as tmp:
        try:
            for start, variable, attribute in (
                (servers.start_redis, "LEAKSUITE_REDIS_URL", "url"),
                (servers.start_postgres, "LEAKSUITE_POSTGRES_URL", "url"),
            ):
                try:
                    server = start()
                except servers.Unavailable as exc:
                    print(f"{variable}: not started ({exc}); its tests are skipped")
                    continue
                started.append(server)
                env[variable] = getattr(server, attribute)
            load = os.getloadavg()[0]
            for attempt in range(repeat):
                for name in names:
                    runs[name].append(_run(Path(tmp) / str(attempt), name, env, arguments.select))
        finally:
            for server in started:
                server.stop()  # type: ignore[attr-defined]
    _report(runs, leaks, repeat, load)


def _report(
    runs: dict[str, list[tuple[float, dict[str, Outcome]]]],
    leaks: dict[str, tuple[str, int]],
    repeat: int,
    load: float,
) -> None:
    tests = [
        test
        for test, outcome in runs["plain"][0][1].items()
        if not outcome.skipped and not any(results[0][1][test].skipped for results in runs.values())
    ]
    tests.sort(key=lambda test: (test not in leaks, test))
    seconds = {
        (name, test): _median([outcomes[test].seconds for _, outcomes in results])
        for name, results in runs.items()
        for test in tests
    }
    print(
        f"leak tests: {len(tests)} bodies ({sum(t in leaks for t in tests)} leaky), "
        f"{repeat} sessions per variant, interleaved; times are medians; "
        f"load average at start {load:.2f}"
    )
    judges = [name for name in runs if name != "plain"]
    header = f"{'test (expected)':44} {'plain':>6}"
    for name in judges:
        header += f" | {name:>19}"
    print(header)
    stats = {name: {"caught": 0, "false": 0, "flaky": 0, "named": 0} for name in judges}
    times: dict[tuple[str, str], list[float]] = {
        (name, kind): [] for name in runs for kind in ("leak", "clean")
    }
    for test in tests:
        kind = "leak" if test in leaks else "clean"
        row = f"{test.removeprefix('test_')[:36] + ' (' + kind + ')':44}"
        row += f" {seconds['plain', test] * 1000:4.0f}ms"
        times["plain", kind].append(seconds["plain", test])
        for name in judges:
            outcomes = [outcomes[test] for _, outcomes in runs[name]]
            failed = [outcome.failed for outcome in outcomes]
            verdict = "leak" if all(failed) else "clean" if not any(failed) else "flaky"
            mark = ""
            if verdict == "flaky":
                stats[name]["flaky"] += 1
            elif verdict == "leak" and kind == "leak":
                stats[name]["caught"] += 1
                named = [first_suite_location(o.message) == leaks[test] for o in outcomes]
                if all(named):
                    stats[name]["named"] += 1
                    mark = "@"
            elif verdict == "leak":
                stats[name]["false"] += 1
            right = " ok" if verdict == kind else " BAD"
            times[name, kind].append(seconds[name, test])
            row += f" | {verdict + mark + right:>11} {seconds[name, test] * 1000:5.0f}ms"
        print(row)
    print("(@: every failure's first location in the suite's files is the leaking line)")
    # What a wrong verdict of the plugin's said: the figures that grew.
    for test in tests:
        for name in judges:
            if name.startswith("memray"):
                continue
            for session, (_, outcomes) in enumerate(runs[name], start=1):
                outcome = outcomes[test]
                if outcome.failed != (test in leaks):
                    said = next(
                        (line.strip() for line in outcome.message.splitlines() if "grew" in line),
                        "passed" if not outcome.failed else outcome.message[:100],
                    )
                    print(f"  {name}, session {session}, {test}: {said}")
    walls = {name: _median([wall for wall, _ in results]) for name, results in runs.items()}
    leaky = sum(test in leaks for test in tests)
    clean = len(tests) - leaky
    print()
    print(
        f"{'variant':16} {'caught':>8} {'named':>7} {'false':>7} {'flaky':>6} "
        f"{'wall':>7} {'vs plain':>9} {'leaky tests':>12} {'clean tests':>12}"
    )
    for name in runs:
        wall = walls[name]
        leak_time = sum(times[name, "leak"])
        clean_time = sum(times[name, "clean"])
        if name == "plain":
            counts = f"{'-':>8} {'-':>7} {'-':>7} {'-':>6}"
        else:
            s = stats[name]
            counts = (
                f"{s['caught']:>3}/{leaky:<4} {s['named']:>7} {s['false']:>3}/{clean:<3} "
                f"{s['flaky']:>6}"
            )
        print(
            f"{name:16} {counts} {wall:6.2f}s {wall / walls['plain']:8.2f}x "
            f"{leak_time:11.2f}s {clean_time:11.2f}s"
        )
    print(
        "caught: leaky bodies failed in every session; named: of those, failures naming the "
        "leaking line first; false: clean bodies failed in every session; flaky: mixed "
        "verdicts; leaky/clean tests: summed median test time (junit)"
    )


if __name__ == "__main__":
    main()
