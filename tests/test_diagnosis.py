# mypy: disallow-untyped-calls=False, disallow-untyped-decorators=False
# (these tests drive third-party code that ships without types: Celery, redis-py, hypothesis)
"""Tests of the on-demand diagnosis tools, on real allocations of this process."""

from __future__ import annotations

import collections
import functools
import gc
import importlib
import importlib.util
import json
import json.decoder
import linecache
import subprocess
import sys
import textwrap
import threading
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


# -- sites by the user's line, the holder, its size, its picture ---------------------------


_CLIENT_LIBRARY = """
class Client:
    def __init__(self):
        self.headers = {"User-Agent": "x" * 300}
        self.pool = [bytearray(256) for _ in range(4)]
        self.session = Pool()


class Pool:
    def __init__(self):
        self.connections = [dict(id=i) for i in range(3)]
"""


def _make_clients(client_class: type, kept: list[object]) -> None:
    for _ in range(300):
        kept.append(client_class())  # client-line


def test_diff_adds_up_every_traceback_of_one_line(
    tracing: TracemallocSession, tmp_path: Path
) -> None:
    """A library constructor's allocations, in frames of its own, count for the user's line."""
    library = tmp_path / "site-packages"
    library.mkdir()
    (library / "fakeclient_rg.py").write_text(_CLIENT_LIBRARY)
    spec = importlib.util.spec_from_file_location("fakeclient_rg", library / "fakeclient_rg.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kept: list[object] = []
    before = tracing.snapshot()
    _make_clients(module.Client, kept)
    after = tracing.snapshot()
    sites = diff_snapshots(before, after, limit=5)
    top = sites[0]
    assert (top.filename, top.lineno) == (__file__, _line_of("# client-line"))
    assert top.size_diff >= 300 * (300 + 4 * 256)
    # Every one of its tracebacks went into that one site.
    assert sum(site.lineno == top.lineno for site in sites) == 1


_HOARD: dict[str, bytes] = {}
_RECENT: collections.deque[object] = collections.deque()


class _Limiter:
    hits: list[tuple[int, str]] = []  # noqa: RUF012 - the class attribute that grows


_CALLBACKS: collections.defaultdict[str, list[Callable[[], object]]] = collections.defaultdict(list)


def _remember(i: int) -> None:
    _HOARD[f"request-{i}"] = b"%d" % i * 2000  # hoard-line


def _hit(i: int) -> None:
    note = f"client-{i}" * 200  # hit-line
    _Limiter.hits.append((i, note))


def _register(i: int) -> None:
    snapshot = [f"{i}:{n}".ljust(40) for n in range(20)]  # callback-line

    def notify() -> object:
        return snapshot

    _CALLBACKS["paid"].append(notify)


@pytest.fixture
def cleared() -> Iterator[None]:
    yield
    _HOARD.clear()
    _Limiter.hits.clear()
    _CALLBACKS.clear()
    _RECENT.clear()


@pytest.mark.parametrize(
    ("grow", "marker", "expression"),
    [
        (_remember, "# hoard-line", f"{__name__}._HOARD"),
        (_hit, "# hit-line", f"{__name__}._Limiter.hits"),
        (_register, "# callback-line", f"{__name__}._CALLBACKS['paid']"),
    ],
)
def test_holder_search_finds_the_growing_collection(
    tracing: TracemallocSession,
    cleared: None,
    grow: Callable[[int], None],
    marker: str,
    expression: str,
) -> None:
    """Forward from the user's modules: a global dict, a class attribute, a closure registry."""
    from runtime_guard.diagnosis.holders import find_holder

    for i in range(300):
        grow(i)
    found = find_holder((__file__, _line_of(marker)), seconds=_BUDGET)
    assert found is not None
    assert found.expression == expression
    assert found.links[0].startswith(expression.split("[", maxsplit=1)[0].rsplit(".", 1)[0])


_CROWD: list[list[int]] = []
_BURIED: list[list[list[dict[str, str]]]] = []


def test_holder_search_budget_is_cpu_time_so_gil_contention_does_not_end_it() -> None:
    """Three threads busy in Python take the GIL three turns in four: the search takes
    about four times as long by the clock, and still finds the holder within twice the CPU
    it needed alone (a wall-clock budget ran out first)."""
    from runtime_guard.diagnosis.holders import find_holder

    # Made before tracing starts, as a server's long-lived objects are: searched through
    # before what lies deeper, cheaply (they have no traceback to read).
    _CROWD[:] = [[i, i] for i in range(10_000)]
    session = TracemallocSession()
    session.start()
    try:
        _BURIED[:] = [[[]]]
        for i in range(50):
            _BURIED[0][0].append({"id": str(i)})  # buried-line
        site = (__file__, _line_of("# buried-line"))
        alone: dict[str, float] = {}
        assert find_holder(site, seconds=_BUDGET, stats=alone) is not None
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                sum(range(200))

        spinners = [threading.Thread(target=spin) for _ in range(3)]
        for spinner in spinners:
            spinner.start()
        try:
            crowded: dict[str, float] = {}
            found = find_holder(site, seconds=2 * alone["seconds"], stats=crowded)
        finally:
            stop.set()
            for spinner in spinners:
                spinner.join()
        assert found is not None, (alone, crowded)
        assert found.expression == f"{__name__}._BURIED[0][0]"
    finally:
        session.stop()
        _CROWD.clear()
        _BURIED.clear()


def test_holder_search_finds_what_only_the_app_object_holds(
    tracing: TracemallocSession,
) -> None:
    """A cache kept on an application object no module holds is found from its registration."""
    from runtime_guard.diagnosis import roots
    from runtime_guard.diagnosis.holders import find_holder

    class App:
        def __init__(self) -> None:
            self.extensions: dict[str, list[object]] = {"recent": []}

    app = App()
    roots.register(app, "shop_app")
    for i in range(200):
        app.extensions["recent"].append({"id": i, "body": f"{i}" * 500})  # app-line
    found = find_holder((__file__, _line_of("# app-line")), seconds=_BUDGET)
    assert found is not None
    assert found.expression == "shop_app.extensions['recent']"


def test_an_app_that_is_gone_gives_its_root_place_up() -> None:
    """Apps made and dropped one after another (a factory per test) never fill the roots:
    the one registered last is searched from."""
    import gc

    from runtime_guard.diagnosis import roots

    class App:
        pass

    for _ in range(roots.MAX_ROOTS + 2):
        roots.register(App(), "factory_app")
        gc.collect()
    last = App()
    roots.register(last, "factory_app")
    assert [obj for _, obj in roots.registered()] == [last]


def test_holder_search_never_goes_through_abc_caches_or_weak_references(
    tracing: TracemallocSession, cleared: None
) -> None:
    """Objects also held by weak references and ABC registries are found through the data."""
    import abc
    import weakref

    class Registry(abc.ABC):  # noqa: B024 - only a registry of virtual subclasses
        pass

    keep = weakref.WeakValueDictionary()  # type: ignore[var-annotated]
    for i in range(100):
        item = Session(i)  # weakly-held-line
        keep[i] = item
        Registry.register(type(item))
        _RECENT.append(item)
    from runtime_guard.diagnosis.holders import find_holder

    found = find_holder((__file__, _line_of("# weakly-held-line")), seconds=_BUDGET)
    assert found is not None
    assert found.expression == f"{__name__}._RECENT"
    assert not any("weakref" in link or "_abc" in link for link in found.links)


def test_holder_index_prefers_the_biggest_collection_over_records() -> None:
    """On ``cache -> record dict -> field``, the holder is the cache, not the record."""
    from runtime_guard.diagnosis.holders import holder_index

    cache = [{"id": i, "body": "x"} for i in range(50)]
    record = cache[7]
    path: list[object] = [{"CACHE": cache}, cache, record, record["body"]]
    assert holder_index(path) == 1


def test_retained_size_is_within_a_fifth_of_pymplers_full_size() -> None:
    """Sampled sizing of big holders stays within 20 % of asizeof over everything."""
    from pympler import asizeof

    from runtime_guard.diagnosis.sizing import retained_size

    holders: list[object] = [
        {f"k{i}": b"x" * (5000 + i % 900) for i in range(3000)},
        [[f"{i}:{j}".ljust(50) for j in range(40)] for i in range(3000)],
        {f"token-{i}" * 80 for i in range(3000)},
        [Session(i) for i in range(5000)],
    ]
    for holder in holders:
        size = retained_size(holder, seconds=0.05)
        assert size is not None
        assert abs(size.bytes / asizeof.asizeof(holder) - 1) < 0.2
        assert size.entries == len(holder)  # type: ignore[arg-type]


def test_retained_size_does_not_count_what_entries_refer_back_to() -> None:
    """A tree node's ``parent`` leads back up: the holder's root is never counted again."""
    from runtime_guard.diagnosis.sizing import retained_size

    class Node:
        def __init__(self, parent: Node | None) -> None:
            self.parent = parent
            self.children: list[Node] = []
            self.payload = b"p" * 200

    root = Node(None)
    root.payload = b"r" * 5_000_000  # big, and above the holder
    for _ in range(2000):
        root.children.append(Node(root))
    size = retained_size(root.children, above=[root], seconds=0.05)
    assert size is not None
    assert size.bytes < 2_000_000


def test_retained_size_counts_what_closures_keep() -> None:
    """A registry of callbacks retains what their closures hold, not just function objects."""
    from runtime_guard.diagnosis.sizing import retained_size

    def make(i: int) -> Callable[[], object]:
        data = [f"{i}-{j}".ljust(100) for j in range(50)]
        return lambda: data

    registry = [make(i) for i in range(400)]
    size = retained_size(registry)
    assert size is not None
    assert size.bytes > 400 * 50 * 100


_SIZE_IN_A_FRESH_PROCESS = """
import gc, sys
from runtime_guard.diagnosis.sizing import retained_size
held = {i: bytes(1000) for i in range(50)}
gc.collect()
before = sys.getallocatedblocks()
size = retained_size(held)
gc.collect()
print(size.bytes, sys.getallocatedblocks() - before, "numpy" in sys.modules)
"""


def test_sizing_a_holder_never_loads_numpy_into_a_process_without_it() -> None:
    """The first sizing leaves NumPy unloaded (14 MiB of RSS) where the app never loaded it."""
    pytest.importorskip("numpy")  # only where pympler would import it
    out = subprocess.run(
        [sys.executable, "-c", _SIZE_IN_A_FRESH_PROCESS],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert int(out[0]) > 50 * 1000
    assert out[2] == "False"
    assert int(out[1]) < 20_000  # with NumPy's import: over 40,000 blocks kept


def test_numpy_hidden_from_the_sizing_thread_imports_on_every_other() -> None:
    """While the sizing imports pympler, a request on another thread imports what it needs."""
    from runtime_guard.diagnosis.sizing import _hidden

    found: list[object] = []
    with _hidden(frozenset({"json.tool"})):
        sys.modules.pop("json.tool", None)
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("json.tool")
        worker = threading.Thread(target=lambda: found.append(importlib.import_module("json.tool")))
        worker.start()
        worker.join()
    assert found and found[0] is sys.modules["json.tool"]


@pytest.mark.skipif(__import__("shutil").which("dot") is None, reason="Graphviz not installed")
def test_chain_picture_is_an_svg_with_the_holders_label() -> None:
    """objgraph's drawing of the chain, rendered by dot, labels the holder with its size."""
    from runtime_guard.diagnosis.graph import chain_svg

    cache = {"a": [b"x" * 100]}
    svg = chain_svg([cache, cache["a"], cache["a"][0]], {id(cache): "4.2 MiB in 502 entries"})
    assert svg is not None
    assert svg.startswith("<svg")
    assert "4.2 MiB in 502 entries" in svg
    assert "<script" not in svg


def test_path_expression_names_attributes_keys_and_indexes() -> None:
    """How code names an object: ``.attr`` for attributes, ``[key]`` and ``[i]`` otherwise."""
    from runtime_guard.diagnosis.referrers import path_expression

    holder = _Holder()
    holder.by_id[7] = [1, 2, ["deep"]]
    namespace = {"HOLDER": holder}
    deep = holder.by_id[7][2]  # type: ignore[index]
    path = [namespace, holder, holder.__dict__, holder.by_id, holder.by_id[7], deep]
    assert path_expression("app.models", path) == "app.models.HOLDER.by_id[7][2]"
    assert path_expression("app", [{"app": holder}, holder, holder.__dict__, holder.by_id]) == (
        "app.by_id"
    )


class _Proxy:
    """Like Django's unconfigured settings: asking it its class raises."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("settings are not configured")


_PROXY = _Proxy()


def test_holder_search_never_resolves_a_proxy(tracing: TracemallocSession, cleared: None) -> None:
    """A proxy among the globals (werkzeug's, Django's settings) is never asked its class."""
    from runtime_guard.diagnosis.holders import find_holder

    for i in range(100):
        _remember(i)
    found = find_holder((__file__, _line_of("# hoard-line")), seconds=_BUDGET)
    assert found is not None
    assert found.expression == f"{__name__}._HOARD"
    assert _PROXY is not None  # still unresolved: the module-level proxy was walked past


_SERVER_LIBRARY = """
_CACHE = []


def serve(app, requests):
    for i in range(requests):
        raw = f"GET /items/{i} HTTP/1.1" * 10
        _CACHE.append(raw * 3)  # the server's own cache, refilled per request
        app(raw)
"""


def _app(kept: list[str], raw: str) -> None:
    kept.append(raw[:20] * 30)  # user-line


def test_a_servers_own_allocations_never_lead_the_users_line(
    tracing: TracemallocSession, tmp_path: Path
) -> None:
    """A bigger growth in a server's own code comes after the user's line."""
    library = tmp_path / "site-packages"
    library.mkdir()
    (library / "fakeserver_rg.py").write_text(_SERVER_LIBRARY)
    spec = importlib.util.spec_from_file_location("fakeserver_rg", library / "fakeserver_rg.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kept: list[str] = []
    before = tracing.snapshot()
    # The server's loop runs on a thread of its own, as a worker's does: no frame of the
    # user's code below it.
    server = threading.Thread(target=module.serve, args=(functools.partial(_app, kept), 200))
    server.start()
    server.join()
    after = tracing.snapshot()
    sites = diff_snapshots(before, after, limit=5)
    assert (sites[0].filename, sites[0].lineno) == (__file__, _line_of("# user-line"))
    assert sites[1].size_diff > sites[0].size_diff  # the server's, bigger, comes second


def test_young_share_counts_entries_made_since_tracing_started() -> None:
    """A holder whose entries were half made before tracemalloc started reads about half
    young; one of entries all made before reads none; an empty one reads None."""
    from runtime_guard.diagnosis.holders import young_share

    was_tracing = tracemalloc.is_tracing()
    if was_tracing:
        pytest.skip("tracemalloc already runs: every entry would be traced")
    old = {f"old{i}": bytearray(1000) for i in range(300)}
    tracemalloc.start(1)
    try:
        mixed = dict(old)
        mixed.update({f"new{i}": bytearray(1000) for i in range(300)})
        share = young_share(mixed)
        assert share is not None and 0.4 <= share <= 0.6
        assert young_share(list(old.values())) == 0.0
        assert young_share({}) is None
    finally:
        tracemalloc.stop()


class _Changing:
    """A mapping whose first reads fail as a dict's do when another thread resizes it."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def items(self) -> list[tuple[str, int]]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("dictionary changed size during iteration")
        return [("kept", 1)]


def test_a_mapping_changed_while_read_is_read_again_and_never_raises() -> None:
    """A dict another thread resized mid-read is read again; one that never settles reads
    as empty rather than switching the leak detector off."""
    from runtime_guard.diagnosis.referrers import items_of

    assert items_of(_Changing(2)) == [("kept", 1)]
    assert items_of(_Changing(50)) == []
    assert items_of({"a": 1}) == [("a", 1)]
