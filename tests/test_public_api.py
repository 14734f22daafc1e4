"""The public face promised in shared/DESIGN.md, and documentation that cannot drift."""

from __future__ import annotations

import configparser
import dataclasses
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtime_guard
from runtime_guard.testing import ManualClock, make_guard
from runtime_guard.tracking import untrack

ROOT = Path(__file__).resolve().parent.parent

DESIGN_NAMES = [
    "install",
    "uninstall",
    "get_guard",
    "Guard",
    "Pressure",
    "signals",
    "feature",
    "enabled",
    "sheddable",
    "register_cache",
    "limiter",
    "no_overlap",
    "track",
    "live_objects",
    "Sample",
    "LeakReport",
    "UnreleasedReport",
    "ReliefResult",
    "ConfigError",
]

GUARD_MEMBERS = ["pressure", "sample", "history", "health", "check_leaks", "relieve", "stop"]

INTEGRATIONS = ["wsgi", "asgi", "flask", "django", "gunicorn", "celery", "prometheus"]


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_design_name_is_importable_from_the_package(name: str) -> None:
    """Every name the design card promises is importable from runtime_guard."""
    assert hasattr(runtime_guard, name)
    assert name in runtime_guard.__all__


def test_importing_the_package_or_its_plugin_loads_no_module_it_does_not_need() -> None:
    """pytest loads the plugin in every session: that imports neither asyncio nor the guard,
    and each public name still resolves (to the object, not a module of the same name)."""
    code = (
        "import sys, runtime_guard.pytest_plugin\n"
        "loaded = sorted(m for m in sys.modules if m == 'asyncio' or m.startswith('runtime_g'))\n"
        "print(' '.join(loaded))\n"
        "import runtime_guard.shedding, runtime_guard.limiters\n"
        "print(callable(runtime_guard.limiter), runtime_guard.install.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded, resolved = result.stdout.splitlines()
    assert set(loaded.split()) <= {
        "runtime_guard",
        "runtime_guard._interpreter",
        "runtime_guard._units",
        "runtime_guard._version",
        "runtime_guard.config",
        "runtime_guard._errors",
        "runtime_guard._lazy",
        "runtime_guard.pressure",
        "runtime_guard.pytest_plugin",
    }, loaded
    assert resolved == "True runtime_guard._install"


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and every entry exists."""
    assert runtime_guard.__all__ == sorted(runtime_guard.__all__)
    for name in runtime_guard.__all__:
        assert hasattr(runtime_guard, name)


@pytest.mark.parametrize("member", GUARD_MEMBERS)
def test_guard_members(member: str) -> None:
    """A guard has the members the design card lists."""
    guard = make_guard()
    try:
        assert hasattr(guard, member)
    finally:
        guard.stop()


@pytest.mark.parametrize("name", INTEGRATIONS)
def test_integration_module_exists(name: str) -> None:
    """Each integration named in the design card is a module of runtime_guard.integrations."""
    assert importlib.util.find_spec(f"runtime_guard.integrations.{name}") is not None


def test_report_classes_are_dataclasses_with_to_dict() -> None:
    """Sample and the report types are dataclasses with to_dict() and a readable __str__."""
    for name in ("Sample", "LeakReport", "UnreleasedReport", "ReliefResult"):
        cls = getattr(runtime_guard, name)
        assert callable(cls.to_dict)
        assert cls.__str__ is not object.__str__
        assert dataclasses.is_dataclass(cls)


def test_readme_has_the_two_commands() -> None:
    """The README shows the demo command and a test command that installs and runs pytest."""
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && runtime-guard demo" in readme
    assert "pip install -e '.[test]' && python -m pytest" in readme


def test_readme_warns_of_the_other_runtime_guard() -> None:
    """The README names the distribution to install and warns of the PyPI name it is not."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "pip install runtime-guard-server" in readme
    assert "Do not `pip install runtime-guard`" in readme
    assert "pip uninstall runtime-guard" in readme


# -- the project's own public API under its own no_leaks marker -----------------------------


@pytest.fixture(scope="module")
def long_lived() -> Iterator[runtime_guard.Guard]:
    """A guard sampled in every round: once its history is full a sample must keep nothing.

    Its clock stands still: the windows that the components close by the clock (each adds
    to a bounded record until it is full) would otherwise fill in whichever rounds a busy
    machine made long enough, and read as growth in every round."""
    guard = make_guard(clock=ManualClock(), history_size=16, relief=False, track_clients=False)
    yield guard
    guard.stop()


@pytest.mark.no_leaks(rounds=5, warmup=2)
def test_sample_and_health_leave_nothing_behind(long_lived: runtime_guard.Guard) -> None:
    """Guard.sample() and health() on a long-lived guard keep no memory between rounds."""
    for _ in range(1000):
        long_lived.sample()
    for _ in range(300):
        assert long_lived.health()["status"] in ("ok", "degraded", "critical")


@runtime_guard.no_overlap(name="public-api-tick")
def _tick() -> int:
    return 1


@pytest.fixture
def declared() -> tuple[runtime_guard.Feature, runtime_guard.Limiter]:
    """A feature and a limiter declared as an app declares them, for this test alone (at
    import they would outlive it, and shed in whichever test ran first in the process)."""
    return (
        runtime_guard.feature("public-api-extras", shed_at="high"),
        runtime_guard.limiter("public-api-jobs", 4),
    )


@pytest.mark.no_leaks(rounds=5, warmup=2)
def test_enabled_limiter_and_no_overlap_leave_nothing_behind(
    declared: tuple[runtime_guard.Feature, runtime_guard.Limiter],
) -> None:
    """enabled(), limiter acquire/release (sync and async) and no_overlap calls keep nothing."""
    import asyncio

    extras, jobs = declared

    async def async_rounds() -> None:
        for _ in range(500):
            async with jobs:
                pass

    for _ in range(1000):
        assert runtime_guard.enabled("public-api-extras")
        with jobs:
            assert _tick() == 1
    asyncio.run(async_rounds())
    assert jobs.holders == 0 and extras.enabled


class _TrackedClient:
    def __init__(self) -> None:
        self.open = True

    def close(self) -> None:
        self.open = False


@pytest.fixture
def tracked_name() -> Iterator[str]:
    name = runtime_guard.track(_TrackedClient)
    yield name
    untrack(_TrackedClient)


@pytest.mark.no_leaks(rounds=5, warmup=2)
def test_tracked_objects_created_and_closed_leave_nothing_behind(tracked_name: str) -> None:
    """Creating and closing tracked objects keeps no per-instance memory once they are gone."""
    for _ in range(500):
        client = _TrackedClient()
        client.close()
    del client
    counts = runtime_guard.live_objects()[tracked_name]
    assert counts["live"] == 0 and counts["released"] >= 500


@pytest.mark.no_leaks(rounds=5, warmup=2)
def test_install_uninstall_cycles_leave_nothing_behind() -> None:
    """install()/uninstall() cycles keep no memory, threads or file descriptors."""
    for _ in range(5):
        guard = runtime_guard.install(interval=0.05, track_clients=False)
        guard.sample()
        runtime_guard.uninstall()
    assert runtime_guard.get_guard() is None


def test_version_is_the_installed_distributions_and_the_commands() -> None:
    """``__version__``, the installed metadata and ``runtime-guard --version`` say the same."""
    from importlib.metadata import version

    assert runtime_guard.__version__ == version("runtime-guard-server")
    out = subprocess.run(
        [sys.executable, "-m", "runtime_guard", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f"runtime-guard {runtime_guard.__version__}"


def test_the_supported_pythons_are_named_alike_everywhere() -> None:
    """The installed package's classifiers and python_requires, tox's envs, the Pythons CI
    runs and CONTRIBUTING.md's paragraph name the same Pythons."""
    from importlib.metadata import metadata

    meta = metadata("runtime-guard-server")
    classified = sorted(
        int(match.group(1))
        for classifier in meta.get_all("Classifier") or []
        if (match := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", classifier))
    )
    assert classified, "no Python version classifiers"
    assert meta["Requires-Python"] == f">=3.{classified[0]}"
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    envs = re.findall(r"\bpy3(\d+)\b", tox["tox"]["envlist"])
    assert sorted(map(int, envs)) == classified
    ci = ROOT / ".ci" / "run"
    if ci.exists():  # the sdist carries no CI
        script = ci.read_text()
        line = re.search(r"^tox -e (\S+)", script, re.M)
        assert line is not None, "no tox line in .ci/run"
        others = sorted(int(env.removeprefix("py3")) for env in line.group(1).split(","))
        # The oldest runs directly, the others through tox, each found by CI's pattern.
        assert [classified[0], *others] == classified
        pattern = re.search(r"grep -E '([^']+)'", script)
        assert pattern is not None
        assert all(re.match(pattern.group(1), f"3.{minor}.0") for minor in classified)
    contributing = ROOT / "CONTRIBUTING.md"
    if contributing.exists():
        *first, last = (f"3.{minor}" for minor in classified)
        named = f"on Python {', '.join(first)} and {last}" if first else f"on Python {last}"
        assert named in " ".join(contributing.read_text().split())


def test_written_reports_carry_the_version(tmp_path: Path) -> None:
    """Every report file names the version that wrote it."""
    import json

    from runtime_guard.reports.files import write_report

    path = write_report(str(tmp_path), "relief", {"reason": "manual"})
    assert path is not None
    assert json.loads(Path(path).read_text())["runtime_guard_version"] == runtime_guard.__version__
