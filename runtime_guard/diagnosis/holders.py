"""What holds a leak: a forward search from the user's code to an object allocated at the
leaking line, and the collection on that path that grows.

Leaked objects sit in a module global of the user's code (a list, a cache dict, a set), in
a class attribute, in a closure in a registry, or on the application object (a Flask
``app.extensions``, a FastAPI ``app.state``, a blueprint's cache). So the search starts
there: the namespace of the module that allocates, ``__main__``, the application objects
the middleware registered (:mod:`~runtime_guard.diagnosis.roots`) and the other modules of
the user's code. It goes breadth-first, reading each object's tracemalloc traceback as it
meets it, until it finds one allocated at the leaking line (tracemalloc must still trace).

Going forwards from the user's code is what makes it robust: a backwards search from a
leaked object meets the interpreter's internals that refer to everything (ABC caches,
weakref registries, the type hierarchy) long before a module global. Going forwards, the
search follows data only: the contents of containers, instance and slot attributes, the
attributes of the user's own classes, closures of the user's own functions. It never
enters modules, the classes of libraries, code, frames or weak references. It is bounded
by an object count and a time budget, and it runs in slices of a few milliseconds with the
GIL given up between them, so that requests keep being served while it runs.

The forward search of the pytest plugin (``runtime_guard._leakcheck.scan``) follows the same
idea, limited to what a test round made; this one serves a running process.
"""

from __future__ import annotations

import _tracemalloc
import collections
import functools
import gc
import sys
import time
import types
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from runtime_guard import _frames
from runtime_guard.diagnosis import roots as _roots
from runtime_guard.diagnosis.functions import module_globals, namespace_of
from runtime_guard.diagnosis.referrers import (
    chain_from_path,
    is_instance_dict,
    items_of,
    path_expression,
)

__all__ = [
    "Found",
    "Root",
    "entries_of",
    "find_holder",
    "holder_index",
    "search_roots",
    "young_share",
]

Root = tuple[str, dict[str, Any]]
"""``(name, namespace)``: a module's name and globals, or an app's name and ``{name: app}``."""

_ATOMIC = (str, bytes, bytearray, int, float, complex, bool, type(None), range, slice)
_SEQUENCES = (list, tuple, set, frozenset, collections.deque)
# Never followed: references into everything, or no data of the user's at all.
_OPAQUE = (
    types.ModuleType,
    types.CodeType,
    types.FrameType,
    types.GeneratorType,
    types.CoroutineType,
    types.AsyncGeneratorType,
    types.BuiltinFunctionType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    type(Ellipsis),
)

# Below the roots, how deep the search goes at most (module -> cache -> entry -> record
# -> field -> ...).
MAX_DEPTH = 10


def _is_weak(cls: type) -> bool:
    module = getattr(cls, "__module__", "")
    return module in ("weakref", "_weakref", "_weakrefset", "_abc") or cls.__name__ in (
        "weakref",
        "weakproxy",
        "weakcallableproxy",
        "ReferenceType",
        "KeyedRef",
    )


@functools.lru_cache(maxsize=1024)
def _user_module(name: str) -> bool:
    """True when the module called ``name`` is the user's code (``__main__`` included)."""
    namespace = namespace_of(sys.modules.get(name))
    file = namespace.get("__file__") if namespace is not None else None
    if not isinstance(file, str):
        return name == "__main__"
    return _frames.kind(file) is _frames.FrameKind.USER


def _children(obj: object) -> Sequence[object]:
    """What the search follows from ``obj`` (its type is never a proxy's doing: ``type()``)."""
    cls = type(obj)
    if cls is dict or issubclass(cls, dict):
        # Values first: a cache's values are what it holds.
        try:
            return [*dict.values(obj), *dict.keys(obj)]  # type: ignore[arg-type]
        except RuntimeError:  # another thread changed it meanwhile (see items_of)
            pairs = items_of(obj)
            return [*(value for _, value in pairs), *(key for key, _ in pairs)]
    if cls is list or cls is tuple:
        # Not copied (the search runs traced: each copy is traced too). Another thread may
        # append to a list while it is read; CPython's list iteration stays valid.
        return obj  # type: ignore[return-value]
    if cls in _SEQUENCES:
        items: list[object] = list(obj)  # type: ignore[call-overload]
        return items
    if issubclass(cls, _ATOMIC) or issubclass(cls, _OPAQUE) or _is_weak(cls):
        return []
    if issubclass(cls, type):
        # A class of the user's code holds class-level registries; any other class leads
        # into the type hierarchy, its ABC caches and its subclass lists.
        module = object.__getattribute__(obj, "__module__")
        if isinstance(module, str) and _user_module(module):
            return list(type.__dict__["__dict__"].__get__(obj).values())
        return []
    if cls is types.FunctionType:
        function: types.FunctionType = obj  # type: ignore[assignment]
        if _frames.kind(function.__code__.co_filename) is not _frames.FrameKind.USER:
            return []
        found: list[object] = [cell for cell in function.__closure__ or ()]
        found += function.__defaults__ or ()
        found += (function.__kwdefaults__ or {}).values()
        found += function.__dict__.values()
        return found
    if cls is types.CellType:
        try:
            return [obj.cell_contents]  # type: ignore[attr-defined]
        except ValueError:  # an empty cell
            return []
    if cls is types.MethodType:
        return [obj.__self__, obj.__func__]  # type: ignore[attr-defined]
    module = getattr(cls, "__module__", "")
    if module == "numpy" or module.startswith("runtime_guard."):
        # Arrays and scalars: data, no references worth following. The guard's own
        # objects (a report a receiver keeps) are not the application's.
        return []
    # Anything else: what the garbage collector sees it refer to (attributes, slots,
    # the items of a container subclass). Its class comes with it and meets the rule above.
    return gc.get_referents(obj)


_MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT


def _traceback_reader() -> Callable[[object], Any]:
    """``_tracemalloc._get_object_traceback``, mended for Python 3.11.

    On 3.11 it misses every instance of an ordinary class: those are allocated with two
    pointers before their GC header (the managed dict), which the lookup does not skip
    (fixed in 3.12). The private C function it wraps takes the allocation's address, so
    the address is given right here.
    """
    read: Callable[[object], Any] = _tracemalloc._get_object_traceback
    if sys.version_info[:2] != (3, 11):
        return read
    try:
        import ctypes

        raw = ctypes.pythonapi._PyTraceMalloc_GetTraceback
        raw.restype = ctypes.py_object
        raw.argtypes = [ctypes.c_uint, ctypes.c_size_t]
        # The GC header and the managed dict's two pointers.
        before = 4 * ctypes.sizeof(ctypes.c_void_p)
    except (AttributeError, OSError, ImportError):
        return read

    def traceback(obj: object) -> Any:
        found = read(obj)
        if found is None and type(obj).__flags__ & _MANAGED_DICT:
            return raw(0, id(obj) - before)
        return found

    return traceback


@dataclass
class Found:
    """A path from a root to an object allocated at the leaking line."""

    root: str
    """The root's name (a module's name, or ``"app"``)."""
    path: list[object]
    """``[root namespace, first object, ..., the object found]``; each holds the next."""
    holder: int
    """Index in :attr:`path` of the holder: the biggest collection on the way."""
    visited: int
    """Objects the search looked at."""
    seconds: float
    """Seconds the search took, pauses excluded."""

    @property
    def expression(self) -> str:
        """The holder as code would name it: ``app.cache._RESPONSES``."""
        return path_expression(self.root, self.path[: self.holder + 1])

    @property
    def links(self) -> list[str]:
        """The chain from the root to the object found, one link per reference."""
        return chain_from_path(self.root, self.path)


def search_roots(site_file: str | None = None) -> list[Root]:
    """Where a holder is searched from, most likely first.

    The module that allocates, ``__main__``, the registered application objects, then
    every other module of the user's code.
    """
    found: list[Root] = []
    seen: set[int] = set()

    def add(name: str, namespace: dict[str, Any]) -> None:
        if id(namespace) not in seen:
            seen.add(id(namespace))
            found.append((name, namespace))

    if site_file is not None and _frames.kind(site_file) is _frames.FrameKind.USER:
        module = module_globals(site_file)
        if module is not None:
            add(*module)
    main_dict = namespace_of(sys.modules.get("__main__"))
    if main_dict is not None:
        add("__main__", main_dict)
    for name, app in _roots.registered():
        add(name, {name: app})
    # Namespaces read without running any module's code: a lazily loaded module would
    # import itself on an attribute access.
    for name, loaded in sorted(list(sys.modules.items()), key=lambda item: item[0]):
        namespace = namespace_of(loaded)
        if namespace is not None and _user_module(name):
            add(name, namespace)
    return found


def entries_of(obj: object) -> int | None:
    """How many entries a collection holds now: ``len()`` of a dict, list, set or deque,
    the current size of an ``lru_cache``; None for anything else."""
    cls = type(obj)
    try:
        if issubclass(cls, (dict, list, set, frozenset, collections.deque)):
            return len(obj)  # type: ignore[arg-type]
        if cls is functools._lru_cache_wrapper:
            return int(obj.cache_info().currsize)  # type: ignore[attr-defined]
    except Exception:  # a subclass whose len() fails is no collection to measure
        return None
    return None


def _collection_size(obj: object) -> int:
    return entries_of(obj) or 0


def holder_index(path: Sequence[object]) -> int:
    """The index of the holder on ``path``: the collection with the most entries below the
    root (an instance's or a class's own ``__dict__`` is not one), else the found object's
    parent. Records on the way (a tuple, a dict of fields) hold a few entries; what grows
    holds hundreds."""
    best, best_size = len(path) - 2, 0
    for i in range(1, len(path) - 1):
        obj = path[i]
        if is_instance_dict(path[i - 1], obj):
            continue
        size = _collection_size(obj)
        if size > best_size:
            best, best_size = i, size
    return max(best, 1)


def young_share(holder: object, sample: int = 200) -> float | None:
    """The share of ``holder``'s entries made since tracemalloc started, from up to
    ``sample`` of them; call while tracemalloc traces. None for no entries.

    An entry counts as new when it, or one of the objects it refers to directly, has a
    traceback: a list or dict entry often comes from CPython's free lists, which tracemalloc
    does not see, while its contents are fresh allocations.
    """
    cls = type(holder)
    if issubclass(cls, dict):
        entries: list[object] = list(dict.values(holder))  # type: ignore[arg-type]
    elif issubclass(cls, (list, set, frozenset, collections.deque)):
        entries = list(holder)  # type: ignore[call-overload]
    else:
        return None
    if not entries:
        return None
    step = max(len(entries) // sample, 1)
    picked = entries[::step][:sample]
    traceback = _traceback_reader()
    new = 0
    for entry in picked:
        if traceback(entry) is not None or any(
            traceback(part) is not None for part in _children(entry)[:8]
        ):
            new += 1
    return new / len(picked)


def find_holder(
    site: tuple[str, int] | None,
    roots: Sequence[Root] | None = None,
    *,
    target: object | None = None,
    avoid: Collection[int] = (),
    seconds: float = 0.5,
    max_objects: int = 300_000,
    slice_seconds: float = 0.004,
    pause: Callable[[], None] | None = None,
    stats: dict[str, float] | None = None,
) -> Found | None:
    """Search breadth-first from ``roots`` for an object allocated at ``site``.

    ``site`` is ``(filename, lineno)``; an object is allocated there when its tracemalloc
    traceback holds that frame, so call this while tracemalloc traces. Without a site,
    ``target`` is the object searched for. ``roots`` default to :func:`search_roots`;
    objects whose ``id()`` is in ``avoid`` are neither entered nor found.
    The search looks at ``max_objects`` objects at most and spends at most ``seconds`` of
    this thread's CPU time; every ``slice_seconds`` (wall time) it calls ``pause`` (by
    default a sleep of a millisecond, which lets other threads take the GIL). CPU time,
    not wall time: on a busy machine, or beside request threads that share the GIL, the
    same search takes longer by the clock, and a wall-time budget gave up on holders it
    found in a quiet run (3 of 3 under three loaded servers on two cores). The clock still
    bounds it, at ``_WALL_FACTOR`` times ``seconds`` (pauses excluded). ``stats`` receives
    ``visited``, ``seconds`` (CPU) and ``longest_slice`` (wall).
    """
    if roots is None:
        roots = search_roots(site[0] if site is not None else None)
    if pause is None:
        pause = _sleep
    traceback = _traceback_reader()
    parents: dict[int, object] = {}
    keep: list[object] = []  # what ``parents`` points at stays alive while searched
    # Layer by layer, the depth implicit: the search runs while tracemalloc traces, so
    # every object it makes is traced too (about a microsecond each with its traceback),
    # and a (child, depth) pair per queued object cost a third of its time.
    layer: list[object] = []
    for _, namespace in roots:
        parents[id(namespace)] = None
        layer.append(namespace)
    for key in avoid:
        parents.setdefault(key, None)  # met before: never entered again
    visited = 0
    spent = 0.0
    longest = 0.0
    fallback: Found | None = None
    begun = time.perf_counter()
    cpu_begun = time.thread_time()
    waited = 0.0
    try:
        for depth in range(MAX_DEPTH):
            deeper = depth + 1 < MAX_DEPTH
            following: list[object] = []
            countdown = 16
            for obj in layer:
                children = _children(obj)
                visited += len(children)
                for child in children:
                    # type(), never isinstance(): a proxy (Django's settings, werkzeug's
                    # LocalProxy) would resolve its target, or raise, on ``__class__``.
                    leaf = issubclass(type(child), _ATOMIC)
                    if not leaf:
                        # Leaves are never entered, so they need no id (a traced int each).
                        key = id(child)
                        if key in parents:
                            continue
                        parents[key] = obj
                    if target is not None:
                        hit = child is target
                    else:
                        tb = traceback(child)
                        hit = tb is not None and site in tb
                    if hit:
                        if leaf:  # a leaf has no entry yet: the path is read from parents
                            parents[id(child)] = obj
                        path = _path_to(child, parents)
                        name = next((n for n, ns in roots if ns is path[0]), "?")
                        found = Found(name, path, holder_index(path), visited, 0.0)
                        if _collection_size(path[found.holder]) or target is not None:
                            spent += time.thread_time() - cpu_begun
                            found.seconds = spent
                            longest = max(longest, time.perf_counter() - begun)
                            return found
                        # A module-level name bound to one of the objects (a loop variable
                        # of a script) is no holder: look on for a collection holding them.
                        fallback = fallback or found
                        continue
                    if deeper and not leaf:
                        keep.append(child)
                        following.append(child)
                if visited >= max_objects:
                    return fallback
                countdown -= 1  # the clock every 16 objects: each reading is traced too
                if countdown:
                    continue
                countdown = 16
                now = time.perf_counter()
                if now - begun >= slice_seconds:
                    spent += time.thread_time() - cpu_begun
                    waited, longest = waited + now - begun, max(longest, now - begun)
                    if spent >= seconds or waited >= _WALL_FACTOR * seconds:
                        return fallback
                    pause()
                    begun = time.perf_counter()
                    cpu_begun = time.thread_time()
            layer = following
            if not layer:
                break
        spent += time.thread_time() - cpu_begun
        return fallback
    finally:
        if stats is not None:
            stats.update(visited=visited, seconds=spent, longest_slice=longest)
        parents.clear()
        keep.clear()


_WALL_FACTOR = 8.0
"""How many times its CPU budget a holder search may take by the clock (pauses excluded)."""


def _path_to(obj: object, parents: dict[int, object]) -> list[object]:
    path = [obj]
    node = parents.get(id(obj))
    while node is not None:
        path.append(node)
        node = parents.get(id(node))
    path.reverse()
    return path


def _sleep() -> None:
    time.sleep(0.001)
