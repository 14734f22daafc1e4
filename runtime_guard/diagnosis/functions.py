"""The name of the function around a line: tracemalloc frames carry only file and line.

Looked up in the code objects of the module loaded from the file (cheap), and by parsing
the source only where no loaded code object covers the line (slow on a big file).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import linecache
import re
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any, cast

__all__ = ["function_at", "module_globals", "parsed_function_at"]


@functools.lru_cache(maxsize=256)
def _function_spans(filename: str) -> tuple[tuple[int, int, str], ...]:
    """``(first line, last line, qualified name)`` of every function in ``filename``."""
    source = "".join(linecache.getlines(filename))
    if not source:
        return ()
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError):
        return ()
    spans: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                name = child.name if not isinstance(child, ast.Lambda) else "<lambda>"
                qualname = f"{prefix}{name}"
                end = child.end_lineno or child.lineno
                spans.append((child.lineno, end, qualname))
                visit(child, f"{qualname}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return tuple(spans)


def parsed_function_at(filename: str, lineno: int) -> str:
    """The innermost function around ``lineno`` by parsing the source: slow on a big file."""
    best = "<module>"
    best_size = None
    for first, last, name in _function_spans(filename):
        if first <= lineno <= last and (best_size is None or last - first < best_size):
            best, best_size = name, last - first
    return best


# The ast path does not count a comprehension as a function; its code object must not count
# either, nor appear in the qualified name of a lambda inside it.
_COMPREHENSIONS = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})


_DEF_LINE = re.compile(r"\s*(?:async\s+)?def\s+(\w+)")


# The keys of sys.modules when the map was built, and file name -> keys in sys.modules of
# the modules loaded from that file. Keys rather than modules: the map must not keep a
# module alive after it leaves sys.modules.
_modules_by_file: tuple[frozenset[str], dict[str, list[str]]] = (frozenset(), {})


def _namespace(module: object) -> dict[str, Any] | None:
    """A module's globals, read without running any code of the module's class.

    A lazy module (``importlib.util.LazyLoader``) executes itself on its first attribute
    access, ``__dict__`` included; naming a line must not import anything.
    """
    if not issubclass(type(module), types.ModuleType):
        return None
    namespace = object.__getattribute__(module, "__dict__")
    return namespace if isinstance(namespace, dict) else None


def _file_of(module: object) -> str | None:
    namespace = _namespace(module)
    file = namespace.get("__file__") if namespace is not None else None
    return file if isinstance(file, str) else None


def _modules_loaded_from(filename: str) -> tuple[tuple[str, int, int], ...]:
    """``(key in sys.modules, id and size of its globals)`` of the modules run from ``filename``.

    A file the map knows is trusted once its module is checked to be still there. For any
    other the map is rebuilt if the names in sys.modules changed since; the count alone
    would not do: a test suite imports a module and drops the one imported before it.
    Comparing the names costs tens of microseconds with 1,600 modules, the rebuild a
    millisecond and a half.
    """
    global _modules_by_file
    names, by_file = _modules_by_file
    found = _still_loaded(by_file.get(filename, ()), filename)
    if not found and sys.modules.keys() != names:
        modules = list(sys.modules.items())
        names, by_file = frozenset(key for key, _ in modules), {}
        for key, module in modules:
            file = _file_of(module)
            if file is not None:
                by_file.setdefault(file, []).append(key)
        _modules_by_file = (names, by_file)
        found = _still_loaded(by_file.get(filename, ()), filename)
    return found


def module_globals(filename: str) -> tuple[str, dict[str, Any]] | None:
    """``(module name, globals)`` of a loaded module run from ``filename``, or None.

    Read without running any code of the module (see :func:`_namespace`).
    """
    for key, _, _ in _modules_loaded_from(filename):
        namespace = _namespace(sys.modules.get(key))
        if namespace is not None:
            name = namespace.get("__name__")
            return (name if isinstance(name, str) else key), namespace
    return None


def _still_loaded(keys: Iterable[str], filename: str) -> tuple[tuple[str, int, int], ...]:
    found = []
    for key in keys:
        namespace = _namespace(sys.modules.get(key))
        if namespace is not None and namespace.get("__file__") == filename:
            found.append((key, id(namespace), len(namespace)))
    return tuple(found)


def _code_objects(filename: str, namespaces: Iterable[dict[str, Any]]) -> list[types.CodeType]:
    """Code objects compiled from ``filename`` reachable from the module globals given.

    Only the types named here are looked into, by their exact type: ``isinstance`` and
    ``getattr`` on a module global may run a proxy's code (a werkzeug ``LocalProxy``
    raises outside a request). A class is followed when one of the modules defined it or
    it holds a function compiled from this file (httpx and yarl set ``__module__`` to the
    package's public name), so the walk stays among the file's own definitions.
    """
    module_names = {namespace.get("__name__") for namespace in namespaces}
    codes: list[types.CodeType] = []
    seen: set[int] = set()
    stack: list[object] = [value for namespace in namespaces for value in list(namespace.values())]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        kind = type(obj)
        if kind is types.CodeType:
            code = cast(types.CodeType, obj)
            if code.co_filename == filename:
                codes.append(code)
                stack.extend(const for const in code.co_consts if type(const) is types.CodeType)
        elif kind is types.FunctionType:
            function = cast(types.FunctionType, obj)
            stack.append(function.__code__)
            # A decorator's wrapper lives in the decorator's file; the function written
            # here is reachable only through ``__wrapped__`` or the wrapper's closure.
            wrapped = function.__dict__.get("__wrapped__")
            if wrapped is not None:
                stack.append(wrapped)
            # A lambda in a default argument belongs to the enclosing scope, whose code
            # object (a module or class body) is gone once it ran.
            stack.extend(function.__defaults__ or ())
            stack.extend((function.__kwdefaults__ or {}).values())
            for cell in function.__closure__ or ():
                with contextlib.suppress(ValueError):  # a cell not yet filled
                    stack.append(cell.cell_contents)
        elif kind is types.MethodType or issubclass(kind, (staticmethod, classmethod)):
            stack.append(cast(types.MethodType, obj).__func__)
        elif issubclass(kind, property):
            prop = cast(property, obj)
            stack.extend((prop.fget, prop.fset, prop.fdel))
        elif issubclass(kind, (functools.cached_property, functools.partialmethod)):
            stack.append(cast("functools.cached_property[Any]", obj).func)
        elif kind is functools._lru_cache_wrapper:
            stack.append(cast("functools._lru_cache_wrapper[Any]", obj).__wrapped__)
        elif issubclass(kind, type):
            attrs = list(object.__getattribute__(obj, "__dict__").items())
            if any(
                (key == "__module__" and value in module_names)
                or (type(value) is types.FunctionType and value.__code__.co_filename == filename)
                for key, value in attrs
            ):
                stack.extend(value for _, value in attrs)
    return codes


@functools.lru_cache(maxsize=256)
def _code_spans(
    filename: str, modules: tuple[tuple[str, int, int], ...]
) -> tuple[tuple[int, int, str], ...]:
    """:func:`_function_spans` from the loaded code objects, in the ast path's format.

    ``modules`` is :func:`_modules_loaded_from`'s answer. Its globals' id and size are part
    of the cache key because a module gains functions after this first looks (while it is
    still importing, or patched later); a method added to a class later keeps the old
    spans until the entry ages out, and such a line falls back to the parse.
    """
    namespaces = [
        namespace
        for key, _, _ in modules
        if (namespace := _namespace(sys.modules.get(key))) is not None
    ]
    lines = linecache.getlines(filename)
    last_lines: dict[int, int] = {}
    spans: list[tuple[int, int, str]] = []
    for code in _code_objects(filename, namespaces):
        # Module and class bodies run in a namespace of their own, not as a function.
        if not code.co_flags & inspect.CO_NEWLOCALS or code.co_name in _COMPREHENSIONS:
            continue
        name = ".".join(part for part in code.co_qualname.split(".") if part not in _COMPREHENSIONS)
        first = _def_line(code, lines)
        spans.append((first, max(first, _last_line(code, last_lines)), name))
    return tuple(spans)


def _last_line(code: types.CodeType, known: dict[int, int]) -> int:
    """The last line holding an instruction of ``code`` or of the code nested in it.

    Short of the ast's end line when the function ends in a closing bracket; but a frame
    only ever reports a line holding an instruction, and ``co_positions()``, which reaches
    the bracket, costs four times as much. The nested code counts because a lambda in the
    last statement can reach further than its function's own instructions, and the
    function must still enclose it, or it would be the innermost on the lambda's lines.
    """
    last = known.get(id(code))
    if last is None:
        last = max((line for _, _, line in code.co_lines() if line is not None), default=0)
        for const in code.co_consts:
            if type(const) is types.CodeType:
                last = max(last, _last_line(const, known))
        known[id(code)] = last
    return last


def _def_line(code: types.CodeType, lines: Sequence[str]) -> int:
    """The ``def`` line of a function: where the ast starts it, after its decorators.

    ``co_firstlineno`` is the first decorator's line, but a decorator runs in the enclosing
    scope, which is where the ast path names it. The source is what ``_format_frame``
    reads anyway; the first ``def`` after the decorators is this function's.
    """
    first = code.co_firstlineno
    if not 0 < first <= len(lines) or not lines[first - 1].lstrip().startswith("@"):
        return first
    for number in range(first, len(lines) + 1):
        match = _DEF_LINE.match(lines[number - 1])
        if match is not None:
            return number if match.group(1) == code.co_name else first
    return first


def function_at(filename: str, lineno: int) -> str:
    """The innermost function around ``lineno``; tracemalloc frames carry no names.

    Looked up in the code objects of the module loaded from ``filename``: a walk of its
    globals took 1.5 ms for ``redis/client.py`` where parsing the source took 20 ms, on the
    path of a failing leak test. A line that no reachable code object covers is left to
    the parse: module-level code, a lambda that no global holds, a file no module was
    loaded from.
    """
    try:
        modules = _modules_loaded_from(filename)
        spans = _code_spans(filename, modules) if modules else ()
    except Exception:
        # The walk touches the host's own modules and classes; one that defies it must
        # cost a name, not the leak report.
        spans = ()
    if spans:
        best: tuple[int, int, str] | None = None
        for first, last, name in spans:
            # On a tie the ast path keeps the enclosing function, whose name is shorter.
            if first <= lineno <= last and (
                best is None or (last - first, len(name)) < (best[0], best[1])
            ):
                best = (last - first, len(name), name)
        if best is not None:
            return best[2]
    return parsed_function_at(filename, lineno)
