"""The helpers for tests of code that uses the guard."""

from __future__ import annotations

import gc

from tracked import Resource, make_resources

from runtime_guard import tracking
from runtime_guard.testing import reset


def test_reset_untracks_every_class_and_forgets_the_records() -> None:
    """After ``reset()`` no class is tracked, each is restored, and no marker is remembered."""
    before = list(Resource.__dict__.items())
    tracking.track(Resource)
    tracking.track("rg_never_imported_module.Thing")
    mark = tracking.marker()
    make_resources(2)
    gc.collect()
    assert len(tracking.unreleased_since(mark)) == 2
    reset()
    assert tracking.tracked_names() == []
    assert list(Resource.__dict__.items()) == before
    assert not tracking.default_registry.store.remember_recent
    assert tracking.default_registry.watcher.watching() == []
    assert tracking.unreleased_since(mark) == []


def test_make_guard_that_fails_leaves_no_hook_behind() -> None:
    """A guard refused by its configuration undoes what the components attached before the
    refusal did (pool and creation hooks stay off)."""
    import threading

    import pytest

    from runtime_guard.config import ConfigError
    from runtime_guard.pools.hooks import default_hooks as pool_hooks
    from runtime_guard.resources.creation import default_hooks
    from runtime_guard.testing import make_guard

    init = threading.Thread.__init__
    with pytest.raises(ConfigError):
        make_guard(leak_windows=3, leak_confirm=3)
    assert not default_hooks.enabled and not pool_hooks.enabled
    assert threading.Thread.__init__ is init


def test_reset_forgets_the_apps_registered_for_the_leak_diagnosis() -> None:
    """After reset() no application object is searched from: another test's apps are gone."""
    from runtime_guard.diagnosis import roots

    app: object = object.__new__(type("App", (), {}))
    roots.register(app, "app")
    assert roots.registered()
    reset()
    assert roots.registered() == []
