"""Tests of the on-demand diagnosis tools, on real allocations of this process."""

from __future__ import annotations

import collections
import gc
import importlib.util
import json
import json.decoder
import linecache
import sys
import textwrap
import tracemalloc
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime_guard import diagnosis
from runtime_guard.diagnosis import (
    AllocationSite,
    TracemallocSession,
    census_diff,
    diff_snapshots,
    find_instance,
    format_chain,
    functions,
    referrer_chain,
    referrers,
    type_census,
)


class Session:
    """A stand-in for an application object that leaks."""

    def __init__(self, n: int) -> None:
        self.n = n


_REGISTRY: dict[str, list[object]] = {"sessions": []}

# The searches are bounded by time; on a loaded machine the tests give them room.
_BUDGET = 30.0


class _Holder:
    def __init__(self) -> None:
        self.by_id: dict[int, object] = {}


_HOLDER = _Holder()


def _line_of(marker: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(marker) and "_line_of" not in line:
                return number
    raise AssertionError(marker)


def _leak_buffers(store: list[bytes], rounds: int) -> None:
    for i in range(rounds):
        store.append(bytes(1000 + i % 7))  # leak-line


@pytest.fixture
def tracing() -> Iterator[TracemallocSession]:
    session = TracemallocSession()
    session.start()
    try:
        yield session
    finally:
        session.stop()


def test_diff_reports_the_allocating_line_first(tracing: TracemallocSession) -> None:
    """The biggest growth between two snapshots is attributed to the line that allocated it."""
    store: list[bytes] = []
    before = tracing.snapshot()
    _leak_buffers(store, 2000)
    after = tracing.snapshot()
    sites = diff_snapshots(before, after, limit=5)
    top = sites[0]
    assert (top.filename, top.lineno) == (__file__, _line_of("# leak-line"))
    assert top.function == "_leak_buffers"
    assert top.size_diff >= 2000 * 1000
    assert top.count_diff >= 2000
    assert "store.append" in top.traceback[0]
    assert len(sites) <= 5


def test_diff_drops_excluded_files(tracing: TracemallocSession) -> None:
    """Files matched by ``exclude`` never appear in the sites or their tracebacks."""
    store: list[bytes] = []
    before = tracing.snapshot()
    _leak_buffers(store, 500)
    after = tracing.snapshot()
    sites = diff_snapshots(before, after, exclude=["*test_diagnosis.py"])
    assert all("test_diagnosis" not in frame for site in sites for frame in site.traceback)


def test_diff_never_reports_the_guards_own_frames(tracing: TracemallocSession) -> None:
    """Allocations made by runtime_guard itself (here: a census) are not reported as sites."""
    before = tracing.snapshot()
    kept = type_census()
    after = tracing.snapshot()
    sites = diff_snapshots(before, after, limit=50)
    assert kept
    assert not any("runtime_guard" in site.filename for site in sites)


def test_allocation_site_is_json_ready() -> None:
    """An AllocationSite serialises to JSON and reads as file:line, function and growth."""
    site = AllocationSite("app.py", 12, "handler", 2048, 3, ["app.py:12: x.append(y)"])
    assert json.loads(json.dumps(site.to_dict()))["lineno"] == 12
    assert str(site) == "app.py:12 in handler: +2.0 KiB in +3 blocks"


def test_session_starts_and_stops_tracemalloc_it_owns() -> None:
    """A session started with tracemalloc off turns it on, then off again, and counts time."""
    assert not tracemalloc.is_tracing()
    with TracemallocSession(frames=3) as session:
        assert tracemalloc.is_tracing()
        assert tracemalloc.get_traceback_limit() == 3
        assert session.owned
    assert not tracemalloc.is_tracing()
    assert session.seconds_on > 0


def test_session_leaves_the_hosts_tracemalloc_running() -> None:
    """When the host already traces, the session uses it and never stops it."""
    tracemalloc.start(2)
    try:
        with TracemallocSession() as session:
            assert not session.owned
            assert session.snapshot().traceback_limit == 2
        assert tracemalloc.is_tracing()
        assert session.seconds_on == 0
    finally:
        tracemalloc.stop()


def test_census_counts_new_instances() -> None:
    """A census diff shows the type whose instances were created, with exact growth."""
    before = type_census()
    made = [Session(i) for i in range(300)]
    after = type_census()
    growth = {g.type_name: g for g in census_diff(before, after, limit=50)}
    name = f"{__name__}.Session"
    assert growth[name].growth == 300
    assert growth[name].after == before[name] + 300
    assert made


def test_census_diff_orders_and_limits() -> None:
    """census_diff lists only grown types, biggest growth first, at most ``limit``."""
    before = Counter({"a": 5, "b": 1, "c": 9})
    after = Counter({"a": 6, "b": 50, "c": 2, "d": 3})
    result = census_diff(before, after, limit=2)
    assert [(g.type_name, g.growth) for g in result] == [("b", 49), ("d", 3)]
    assert result[0].to_dict() == {"type_name": "b", "before": 1, "after": 50, "growth": 49}


def test_chain_from_module_dict_through_list() -> None:
    """The chain names the module global, the dict key and the leaked instance's type."""
    _REGISTRY["sessions"].append(Session(1))
    try:
        links = referrer_chain(_REGISTRY["sessions"][-1], time_budget=_BUDGET)
    finally:
        _REGISTRY["sessions"].clear()
    assert links is not None
    assert links[0] == f"{__name__}._REGISTRY (dict)"
    assert links[1] == "['sessions'] list"
    assert links[-1] == f"{__name__}.Session"
    assert format_chain(links) == " -> ".join(links)


def test_chain_through_instance_attribute() -> None:
    """An object held in an attribute of a global instance is shown as ``.attr``."""
    _HOLDER.by_id[7] = Session(7)
    try:
        links = referrer_chain(_HOLDER.by_id[7], time_budget=_BUDGET)
    finally:
        _HOLDER.by_id.clear()
    assert links == [
        f"{__name__}._HOLDER ({__name__}._Holder)",
        ".by_id dict",
        f"[7] {__name__}.Session",
    ]


def test_chain_none_for_an_object_only_a_local_holds() -> None:
    """An object reachable only from a frame has no chain to a module global."""
    local = Session(3)
    assert referrer_chain(local, time_budget=_BUDGET) is None


def test_chain_respects_depth() -> None:
    """A chain longer than ``max_depth`` is not followed."""
    _REGISTRY["deep"] = [[[[Session(4)]]]]
    try:
        deep = _REGISTRY["deep"][0][0][0][0]  # type: ignore[index]
        assert referrer_chain(deep, max_depth=2, time_budget=_BUDGET) is None
        assert referrer_chain(deep, max_depth=8, time_budget=_BUDGET) is not None
    finally:
        del _REGISTRY["deep"]


def test_find_instance_prefers_the_allocating_site(tracing: TracemallocSession) -> None:
    """With a site, find_instance returns an instance allocated on that line."""
    old = [Session(i) for i in range(50)]
    gc.collect()
    new = Session(99)  # instance-line
    site = (__file__, _line_of("# instance-line"))
    found = find_instance(f"{__name__}.Session", site=site, time_budget=_BUDGET)
    assert found is new
    assert old


def test_find_instance_none_for_unknown_type() -> None:
    """No instance of an unknown type name is found."""
    assert find_instance("no.such.Type") is None
    assert diagnosis.type_name(Session) == f"{__name__}.Session"


def test_referrer_search_visits_at_most_max_frontier_objects_per_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An object held by thousands of containers is searched through at most _MAX_FRONTIER
    of them per level, so one popular object cannot blow up the search's memory or time."""
    target = Session(7)
    holders = [[target] for _ in range(referrers._MAX_FRONTIER + 1500)]
    asked: list[int] = []

    class CountingGc:
        def __getattr__(self, name: str) -> object:
            return getattr(gc, name)

        def get_referrers(self, *objects: object) -> list[object]:
            asked.append(len(objects))
            return gc.get_referrers(*objects)

    monkeypatch.setattr(referrers, "gc", CountingGc())
    diagnosis.referrer_chain(target, max_depth=3, time_budget=5.0)
    assert len(asked) >= 2
    assert max(asked) <= referrers._MAX_FRONTIER
    del holders


# -- naming the function around a line -------------------------------------------------------

_PROBE_SOURCE = textwrap.dedent(
    """\
    import contextlib
    import functools

    def deco(func):
        @functools.wraps(func)
        def wrapper(*args):
            return func(*args)
        return wrapper

    TABLE = {"a": 1}  # module-line

    class Shape:
        def area(self):
            return 0  # method-line

        @staticmethod
        def unit():
            return 1  # static-line

        @property
        def name(self):
            return "shape"  # property-line

    def outer():
        def inner():
            return 1  # inner-line
        return inner

    def factory():
        class Local:
            kind = "local"  # local-class-body-line
            def method(self):
                return 2  # local-class-line
        return Local

    def makers():
        return [lambda: n for n in range(3)]  # comprehension-lambda-line

    def by_name(names):
        return sorted(names, key=lambda name: (  # trailing-lambda-line
            name.lower(),
            len(name),
        ))

    @deco  # decorator-line
    def decorated():
        return 3  # decorated-line

    def bare(func):
        def wrapper(*args):
            return func(*args)
        return wrapper

    @bare
    def unwrapped():
        return 6  # bare-decorated-line

    @functools.lru_cache(maxsize=None)
    def cached():
        return 4  # cached-line

    @contextlib.contextmanager
    def managed():
        yield 5  # managed-line

    @functools.singledispatch
    def show(value):
        return str(value)  # dispatch-line

    def constant(): return lambda: 0  # one-line-def-line

    ZERO = constant()
    """
)


def _marker_line(path: Path, marker: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.endswith(f"# {marker}"):
            return number
    raise AssertionError(marker)


@pytest.fixture
def import_file(tmp_path: Path) -> Iterator[Callable[[str], tuple[types.ModuleType, Path]]]:
    """Write source to a file and import it under a fresh name; sys.modules is cleaned after."""
    names: list[str] = []

    def load(source: str) -> tuple[types.ModuleType, Path]:
        name = f"_rg_probe_{uuid.uuid4().hex}"
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        names.append(name)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module, path

    yield load
    for name in names:
        sys.modules.pop(name, None)


def _no_parsing(filename: str, lineno: int) -> str:
    raise AssertionError(f"parsed {filename}:{lineno}")


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("method-line", "Shape.area"),
        ("static-line", "Shape.unit"),
        ("property-line", "Shape.name"),
        ("inner-line", "outer.<locals>.inner"),
        ("local-class-line", "factory.<locals>.Local.method"),
        ("decorated-line", "decorated"),
        ("bare-decorated-line", "unwrapped"),
        ("cached-line", "cached"),
        ("managed-line", "managed"),
        ("dispatch-line", "show"),
        ("one-line-def-line", "constant"),
        ("local-class-body-line", "factory"),
        ("comprehension-lambda-line", "makers.<locals>.<lambda>"),
        ("trailing-lambda-line", "by_name.<locals>.<lambda>"),
    ],
)
def test_function_at_names_lines_of_an_imported_module_without_parsing(
    import_file: Callable[[str], tuple[types.ModuleType, Path]],
    monkeypatch: pytest.MonkeyPatch,
    marker: str,
    expected: str,
) -> None:
    """A line inside a function of an imported module is named from its code objects alone."""
    _, path = import_file(_PROBE_SOURCE)
    monkeypatch.setattr(functions, "parsed_function_at", _no_parsing)
    assert functions.function_at(str(path), _marker_line(path, marker)) == expected


@pytest.mark.parametrize("marker", ["module-line", "decorator-line"])
def test_function_at_calls_module_level_code_module(
    import_file: Callable[[str], tuple[types.ModuleType, Path]], marker: str
) -> None:
    """Module-level code, a decorator line included (it runs at import), is ``<module>``."""
    _, path = import_file(_PROBE_SOURCE)
    assert functions.function_at(str(path), _marker_line(path, marker)) == "<module>"


def test_function_at_names_a_lambda_in_a_default_argument_as_python_does(
    import_file: Callable[[str], tuple[types.ModuleType, Path]],
) -> None:
    """A lambda in a default argument gets the name Python compiled it with, not the parse's."""
    source = "class Sorter:\n    def sort(self, items, key=lambda item: item):\n        pass\n"
    module, path = import_file(source)
    key = module.Sorter.sort.__defaults__[0]
    assert key.__qualname__ == "Sorter.<lambda>"
    assert functions.function_at(str(path), 2) == "Sorter.<lambda>"
    assert functions.parsed_function_at(str(path), 2) == "Sorter.sort.<locals>.<lambda>"


@pytest.mark.parametrize("module", [json.decoder, collections], ids=lambda m: m.__name__)
def test_function_at_agrees_with_the_parse_on_every_line(module: types.ModuleType) -> None:
    """Every line of a real stdlib module gets the name the ast parse of its source gives."""
    filename = module.__file__
    assert filename is not None
    numbers = range(1, len(linecache.getlines(filename)) + 2)
    parsed = {n: functions.parsed_function_at(filename, n) for n in numbers}
    assert {n: functions.function_at(filename, n) for n in numbers} == parsed
    assert len(set(parsed.values())) > 5


def test_function_at_agrees_with_the_parse_on_every_line_of_the_probe(
    import_file: Callable[[str], tuple[types.ModuleType, Path]],
) -> None:
    """Every line of the probe module, nested and decorated code included, is named as parsed."""
    _, path = import_file(_PROBE_SOURCE)
    numbers = range(1, len(_PROBE_SOURCE.splitlines()) + 2)
    parsed = {n: functions.parsed_function_at(str(path), n) for n in numbers}
    assert {n: functions.function_at(str(path), n) for n in numbers} == parsed


def test_function_at_names_every_function_line_of_json_decoder_without_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each line json/decoder.py has inside a function is named from its code objects alone."""
    filename = json.decoder.__file__
    assert filename is not None
    numbers = range(1, len(linecache.getlines(filename)) + 1)
    parsed = {n: functions.parsed_function_at(filename, n) for n in numbers}
    in_functions = {n: name for n, name in parsed.items() if name != "<module>"}
    monkeypatch.setattr(functions, "parsed_function_at", _no_parsing)
    assert {n: functions.function_at(filename, n) for n in in_functions} == in_functions
    assert "JSONDecoder.raw_decode" in in_functions.values()


def test_function_at_parses_a_file_no_module_was_loaded_from(tmp_path: Path) -> None:
    """A file that was never imported is named by parsing its source."""
    path = tmp_path / f"_rg_never_imported_{uuid.uuid4().hex}.py"
    path.write_text(_PROBE_SOURCE)
    assert all(getattr(m, "__file__", None) != str(path) for m in list(sys.modules.values()))
    assert functions.function_at(str(path), _marker_line(path, "inner-line")) == (
        "outer.<locals>.inner"
    )
    assert functions.function_at(str(path), _marker_line(path, "method-line")) == "Shape.area"
    assert functions.function_at(str(path), _marker_line(path, "module-line")) == "<module>"


def test_function_at_parses_a_module_whose_objects_defy_the_walk(
    import_file: Callable[[str], tuple[types.ModuleType, Path]],
) -> None:
    """A class whose ``__dict__`` raises leaves its file to the parse instead of failing."""
    source = textwrap.dedent(
        """\
        class Meta(type):
            @property
            def __dict__(cls):
                raise RuntimeError("no namespace here")

        class Odd(metaclass=Meta):
            def method(self):
                return 1  # odd-line
        """
    )
    _, path = import_file(source)
    assert functions.function_at(str(path), _marker_line(path, "odd-line")) == "Odd.method"


def test_function_at_never_runs_a_lazily_loaded_module(tmp_path: Path) -> None:
    """Mapping files to modules leaves a module that importlib's LazyLoader holds back unrun."""
    name = f"_rg_lazy_{uuid.uuid4().hex}"
    path = tmp_path / f"{name}.py"
    ran = tmp_path / "ran"
    path.write_text(f"open({str(ran)!r}, 'w').close()\n\ndef f():\n    return 1\n")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert functions.function_at(__file__, _line_of("# leak-line")) == "_leak_buffers"
        assert functions.function_at(str(path), 4) == "f"
        assert not ran.exists()
    finally:
        sys.modules.pop(name, None)
