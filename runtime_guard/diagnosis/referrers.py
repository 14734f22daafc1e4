"""What holds an object: a recent instance of a growing type, and the chain of references
from a module global down to it."""

from __future__ import annotations

import gc
import itertools
import sys
import time
import tracemalloc
import types
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from runtime_guard.diagnosis.census import type_name
from runtime_guard.diagnosis.functions import namespace_of

__all__ = [
    "chain_from_path",
    "find_instance",
    "format_chain",
    "is_instance_dict",
    "items_of",
    "path_expression",
    "referrer_chain",
]


def find_instance(
    name: str, site: tuple[str, int] | None = None, time_budget: float = 0.5
) -> object | None:
    """Return a recently created GC-tracked instance of the type called ``name``.

    The youngest generation is searched first, newest object first, so the instance is
    most likely one of those that keep piling up. With ``site`` (``(filename, lineno)``)
    and tracemalloc tracing, an instance allocated at that line is preferred. The search
    gives up after ``time_budget`` seconds with the best instance seen so far.
    """
    deadline = time.monotonic() + time_budget
    fallback: object | None = None
    checked = 0
    seen = 0
    # Naming each object's type costs a Python call; naming each distinct type once does not.
    matches: dict[type, bool] = {}
    for generation in (0, 1, 2):
        objects: list[object] = gc.get_objects(generation)
        try:
            for obj in reversed(objects):
                seen += 1
                if seen % 50_000 == 0 and time.monotonic() >= deadline:
                    return fallback
                cls = type(obj)
                match = matches.get(cls)
                if match is None:
                    match = matches[cls] = type_name(cls) == name
                if not match:
                    continue
                if site is None or not tracemalloc.is_tracing():
                    return obj
                if fallback is None:
                    fallback = obj
                checked += 1
                traceback = tracemalloc.get_object_traceback(obj)
                if traceback is not None and any((f.filename, f.lineno) == site for f in traceback):
                    return obj
                if checked >= 1000:
                    return fallback
        finally:
            del objects
    return fallback


# Frontier size per level of the backward search: keeps one step over a popular object
# (a class, a shared dict) from exploding the search.
_MAX_FRONTIER = 2000


def referrer_chain(
    target: object,
    max_depth: int = 8,
    time_budget: float = 0.5,
    skip_module: Callable[[str], bool] | None = None,
) -> list[str] | None:
    """Return readable links from a module-level global down to ``target``, or None.

    For example ``['myapp.views._cache (dict)', "['sessions'] list", 'Session']``. The
    search goes backwards from ``target`` one level at a time, asking ``gc.get_referrers``
    about the whole level in one heap scan (``objgraph.find_backref_chain`` scans the heap
    once per object, which on a large heap does not fit a time budget), and stops at the
    first module namespace it reaches, after ``max_depth`` levels, or when ``time_budget``
    seconds are spent. Frames are skipped: a local variable is not what keeps a leak alive.
    Modules for which ``skip_module(name)`` is true are neither where a chain starts nor
    on its way.
    """
    deadline = time.monotonic() + time_budget
    # Namespaces read without running any module's code (a lazily loaded module would
    # import itself on ``__dict__``).
    module_dicts = {
        id(namespace): name
        for name, module in list(sys.modules.items())
        if not name.startswith("runtime_guard") and (namespace := namespace_of(module)) is not None
    }
    skipped = {key for key, name in module_dicts.items() if skip_module and skip_module(name)}
    # The guard's own modules hold what it keeps of the heap (and its ``__all__`` lists):
    # a chain through one of them, up from ``sys.modules``, names the guard as the holder.
    for name, module in list(sys.modules.items()):
        if name.startswith("runtime_guard") or (skip_module is not None and skip_module(name)):
            skipped.add(id(module))
            if (namespace := namespace_of(module)) is not None:
                skipped.add(id(namespace))
    # The search's own containers refer to the objects it visits; they must not become
    # part of a chain.
    down: dict[int, object] = {id(target): None}
    own: set[int] = {id(down)}
    level: list[object] = [target]
    own.add(id(level))
    try:
        for _ in range(max_depth):
            if time.monotonic() >= deadline or not level:
                return None
            referrers = gc.get_referrers(*level)
            own.add(id(referrers))
            level_ids = {id(obj) for obj in level}
            own.add(id(level_ids))
            next_level: list[object] = []
            own.add(id(next_level))
            for ref in referrers:
                ref_id = id(ref)
                if ref_id in own or ref_id in down or ref_id in skipped or _bookkeeping(type(ref)):
                    continue
                child = next((c for c in gc.get_referents(ref) if id(c) in level_ids), None)
                if child is None:
                    continue
                link = (ref, child)
                own.add(id(link))
                down[ref_id] = link
                if ref_id in module_dicts:
                    return _render(module_dicts[ref_id], ref, child, down, target)
                if len(next_level) < _MAX_FRONTIER:
                    next_level.append(ref)
            del referrers
            level = next_level
        return None
    finally:
        down.clear()
        del level


def _bookkeeping(cls: type) -> bool:
    """Referrers a chain never goes through: frames (a local is not what keeps a leak),
    weak references and the ABC caches that hold them, which refer to everything."""
    module = getattr(cls, "__module__", "") or ""
    return (
        cls is types.FrameType
        or module in ("weakref", "_weakref", "_weakrefset", "_abc")
        or module.startswith("runtime_guard.")  # the guard's own records of the heap
        or issubclass(cls, weakref.ref)
    )


def chain_from_path(root: str, path: Sequence[object]) -> list[str]:
    """Links like :func:`referrer_chain`'s for a path found going forwards.

    ``path`` starts at a namespace dict (a module's globals, a frame's locals) named
    ``root`` and ends at the held object; each item holds the next.
    """
    down: dict[int, object] = {
        id(holder): (holder, held) for holder, held in itertools.pairwise(path[1:])
    }
    return _render(root, path[0], path[1], down, path[-1])


def _render(
    module_name: str,
    namespace: object,
    child: object,
    down: dict[int, object],
    target: object,
) -> list[str]:
    """Turn the recorded links from the module namespace down to ``target`` into text."""
    path: list[object] = [child]
    node = child
    while node is not target:
        link = down.get(id(node))
        if not isinstance(link, tuple):
            break
        node = link[1]
        path.append(node)
    links: list[str] = []
    key = _dict_key(namespace, child)
    # An application object registered as a root is its own namespace: ``app``, not ``app.app``.
    head = key if key == module_name else f"{module_name}.{key if key is not None else '?'}"
    links.append(f"{head} ({_short(child)})")
    for holder, held in itertools.pairwise(path):
        if is_instance_dict(holder, held):
            continue  # shown as an attribute on the next link
        links.append(_edge(holder, held, path))
    return links


def _short(obj: object) -> str:
    return type_name(type(obj))


def _dict_key(mapping: object, value: object) -> str | None:
    if not isinstance(mapping, dict):
        return None
    for key, item in list(mapping.items()):
        if item is value:
            return str(key)
    return None


def is_instance_dict(holder: object, held: object) -> bool:
    """True when ``held`` is the ``__dict__`` of ``holder``: one link, not two."""
    if type(held) is not dict:
        return False
    try:
        return object.__getattribute__(holder, "__dict__") is held
    except AttributeError:
        return False


_READ_TRIES = 5


def items_of(mapping: object) -> list[tuple[object, object]]:
    """A mapping's items, read again when another thread changed its size meanwhile.

    The diagnosis reads the app's live dicts from the sampler thread. Copying one makes
    objects, a collection may run then, and a finalizer's Python code lets a request
    thread in: "dictionary changed size during iteration" switched the leak detector off
    for good. After a few tries the mapping reads as empty (a link less in a chain).
    """
    for _ in range(_READ_TRIES):
        try:
            if isinstance(mapping, dict):
                return list(dict.items(mapping))
            return list(mapping.items())  # type: ignore[attr-defined]
        except RuntimeError:
            continue
    return []


def _edge(holder: object, held: object, path: list[object]) -> str:
    name = _short(held)
    cls = type(holder)  # never isinstance(): a proxy on the path resolves on __class__
    if issubclass(cls, dict):
        owner = _owner_of_dict(holder, path)  # type: ignore[arg-type]
        pairs = items_of(holder)
        for key, item in pairs:
            if item is held:
                if owner is not None and type(key) is str:
                    return f".{key} {name}"
                return f"[{key!r}] {name}"
        return name
    if cls is types.CellType:
        return f"(closure cell) {name}"
    if cls is types.FunctionType:
        return f"{holder.__qualname__} {name}"  # type: ignore[attr-defined]
    attr = _attribute_name(holder, held)
    return f".{attr} {name}" if attr is not None else name


def _attribute_name(holder: object, held: object) -> str | None:
    """The attribute of ``holder`` (an instance or a class, ``__dict__`` or slots) that is
    ``held``; read without running any code of the holder's class."""
    try:
        attrs = object.__getattribute__(holder, "__dict__")
    except AttributeError:
        attrs = None
    if isinstance(attrs, (dict, types.MappingProxyType)):
        for key, item in items_of(attrs):
            if item is held:
                return str(key)
    for cls in type(holder).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            descriptor = cls.__dict__.get(slot)
            if not isinstance(descriptor, types.MemberDescriptorType):
                continue
            try:
                if descriptor.__get__(holder, type(holder)) is held:
                    return str(slot)
            except AttributeError:  # a slot never set
                continue
    return None


def path_expression(root: str, path: Sequence[object]) -> str:
    """How code names ``path[-1]``, starting at the namespace ``path[0]`` called ``root``:
    ``app.cache._RESPONSES``, ``handlers['paid'][3]``.

    Each object on ``path`` holds the next (as :func:`chain_from_path` takes it).
    """
    if len(path) < 2:
        return root
    key = _dict_key(path[0], path[1])
    text = key if key == root else f"{root}.{key if key is not None else '?'}"
    for i in range(1, len(path) - 1):
        holder, held = path[i], path[i + 1]
        if is_instance_dict(path[i - 1], holder):
            # An instance's or a class's own namespace: its keys are attribute names.
            text += f".{_dict_key(holder, held) or '?'}"
        else:
            text += _step(holder, held)
    return text


def _step(holder: object, held: object) -> str:
    """One reference as code writes it: ``.name``, ``['key']``, ``[3]``."""
    cls = type(holder)
    if is_instance_dict(holder, held) or cls is types.CellType:
        return ""  # the next step names the attribute, or the function named the cell
    # Types, not isinstance(): a proxy on the path (werkzeug's LocalProxy) answers
    # ``__class__`` with its target's class, or raises outside a request.
    if issubclass(cls, dict):
        pairs = items_of(holder)
        for key, item in pairs:
            if item is held or key is held:
                return f"[{key!r}]"
        return "[?]"
    if issubclass(cls, (list, tuple)):
        for index, item in enumerate(list(holder)):  # type: ignore[call-overload]
            if item is held:
                return f"[{index}]"
        return "[?]"
    if issubclass(cls, (set, frozenset)):
        return "{…}"
    if cls is types.FunctionType:
        function: types.FunctionType = holder  # type: ignore[assignment]
        for name, cell in zip(
            function.__code__.co_freevars, function.__closure__ or (), strict=False
        ):
            if cell is held:
                return f".<closure {name}>"
        return ".<function data>"
    if cls is types.MethodType:
        return ".__self__" if getattr(holder, "__self__", None) is held else ".__func__"
    attr = _attribute_name(holder, held)
    return f".{attr}" if attr is not None else ".?"


def _owner_of_dict(mapping: dict[Any, Any], path: list[object]) -> object | None:
    """The object on ``path`` whose ``__dict__`` is ``mapping``, if any."""
    for obj in path:
        if obj is not mapping and is_instance_dict(obj, mapping):
            return obj
    return None


def format_chain(links: Iterable[str] | None) -> str:
    """Join referrer-chain links with ``" -> "``; empty text for no chain."""
    return " -> ".join(links) if links else ""
