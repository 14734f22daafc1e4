"""Creation sites: the first frame outside library code, a short stack, cheap to take."""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Callable
from typing import Any

import pytest

from runtime_guard.tracking.sites import STACK_DEPTH, Site, capture


def _make_site() -> Site:
    return capture(0)  # the line a test asserts on


def _library_constructor(source_name: str) -> Callable[[], Site]:
    # Code compiled under the stdlib's directory counts as library code, like a real
    # client's constructor calling a helper that takes the site.
    path = os.path.join(sysconfig.get_paths()["stdlib"], source_name)
    namespace: dict[str, Any] = {"capture": capture}
    source = "def construct():\n    return helper()\ndef helper():\n    return capture(0)\n"
    exec(compile(source, path, "exec"), namespace)
    return namespace["construct"]  # type: ignore[no-any-return]


def _line_of(func: Callable[..., Any], text: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_site_names_the_calling_file_line_and_function() -> None:
    """A site points at the exact file, line and function that made the object."""
    site = _make_site()
    assert site.filename == __file__
    assert site.lineno == _line_of(_make_site, "capture(0)")
    assert site.function == "_make_site"


def test_library_frames_are_skipped() -> None:
    """Frames in the standard library or site-packages are passed over to the user's frame."""
    construct = _library_constructor("rg_fake_library.py")

    def user_code() -> Site:
        return construct()  # the user's line

    site = user_code()
    assert site.filename == __file__
    assert site.function == "user_code"
    assert site.lineno == _line_of(user_code, "the user's line")
    assert site.frames[1][2] == "test_library_frames_are_skipped"


def test_short_stack_lists_callers_outwards() -> None:
    """The stack holds the creating frame and its callers, at most STACK_DEPTH frames."""

    def inner() -> Site:
        return capture(0)

    def outer() -> Site:
        return inner()

    frames = outer().frames
    assert len(frames) == STACK_DEPTH == 2
    assert [f[2] for f in frames] == ["inner", "outer"]
    assert frames[1][1] == _line_of(outer, "return inner()")


def test_all_library_stack_falls_back_to_the_nearest_frame() -> None:
    """When no frame is user code the nearest frame is named rather than nothing."""
    namespace: dict[str, Any] = {"capture": capture}
    path = os.path.join(sysconfig.get_paths()["stdlib"], "rg_fake_thread.py")
    exec(compile("def run():\n    return capture(0)\n", path, "exec"), namespace)
    import threading

    out: list[Site] = []
    thread = threading.Thread(target=lambda: out.append(namespace["run"]()))
    thread.start()
    thread.join()
    # The thread's lambda is in this file, so the first user frame is that lambda.
    assert out[0].filename == __file__
    assert capture(10_000).where == ("<unknown>", 0, "<unknown>")


def test_same_line_gives_the_same_interned_site() -> None:
    """Repeated construction at one line shares one Site object (bounded memory per record)."""
    sites = [_make_site() for _ in range(3)]
    assert sites[0] is sites[1] is sites[2]


def test_site_to_dict_is_json_ready_and_str_is_readable() -> None:
    """A site renders as 'path:line in function' and serialises with its stack."""
    site = _make_site()
    data = site.to_dict()
    json.dumps(data)
    assert data["line"] == site.lineno
    assert str(site).endswith(f":{site.lineno} in _make_site")
    assert os.path.basename(__file__) in str(site)
    stack = data["stack"]
    assert isinstance(stack, list) and stack[0] == data["site"]


def test_interned_site_table_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past _MAX_INTERNED distinct sites the table stops growing; new sites are still named."""
    from runtime_guard.tracking import sites as _sites

    monkeypatch.setattr(_sites, "_MAX_INTERNED", len(_sites._interned) + 5)
    found = []
    for index in range(20):
        code = compile("capture(0)", f"/srv/app/interned_{index}.py", "eval")
        found.append(eval(code, {"capture": capture}))
    assert len(_sites._interned) == _sites._MAX_INTERNED
    assert [site.filename for site in found] == [f"/srv/app/interned_{i}.py" for i in range(20)]


def test_an_all_library_stack_is_named_at_the_first_installed_package() -> None:
    """With no user frame at all, the first installed package's frame is named rather than
    the standard library's machinery beneath it (a server's own thread, say)."""
    import site
    import threading

    namespace: dict[str, Any] = {"capture": capture}
    stdlib = os.path.join(sysconfig.get_paths()["stdlib"], "rg_machinery.py")
    source = "def make():\n    return capture(0)\ndef run(f, out):\n    out.append(f())\n"
    exec(compile(source, stdlib, "exec"), namespace)  # like asyncio's create_task
    package = os.path.join(site.getsitepackages()[0], "rg_server.py")
    exec(compile("def serve():\n    return make()\n", package, "exec"), namespace)
    out: list[Site] = []
    thread = threading.Thread(target=namespace["run"], args=(namespace["serve"], out))
    thread.start()
    thread.join()
    assert out[0].filename == package
    assert out[0].function == "serve"
