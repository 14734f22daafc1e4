"""Tracked clients for one leak check: which were created during it and never released."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ClientWatch", "Unreleased"]


@dataclass
class Unreleased:
    """A tracked client created during the check and neither released nor collected."""

    type_name: str
    """Qualified class name."""
    site: str
    """Creation site, ``file:line in function``."""
    count: int = 1
    """How many such clients were created at that site."""


class ClientWatch:
    """Tracked clients for one check: the known clients plus ``track=``, undone afterwards.

    Only types this watch started tracking are untracked at the end, so a guard (or a test)
    that tracks them itself keeps its tracking.
    """

    def __init__(self, names: tuple[str, ...] | None) -> None:
        self._names = names
        self._added: list[str] = []
        self._known = False
        self._mark = 0

    @classmethod
    def start(cls, track: Sequence[str | type]) -> ClientWatch:
        from runtime_guard import tracking
        from runtime_guard.tracking import clients as _clients

        known = [spec.name for spec in _clients.CLIENTS]
        watch = cls(None)
        if not any(tracking.is_tracked(name) for name in known):
            tracking.enable_known_clients()
            watch._known = True
        names = []
        for item in track:
            tracked_before = tracking.is_tracked(item)
            name = tracking.track(item)
            if not tracked_before:
                watch._added.append(name)
            names.append(name)
        watch._names = tuple(names) if names else None
        return watch

    def mark(self) -> None:
        from runtime_guard import tracking

        self._mark = tracking.marker()

    def _live(self) -> list[Any]:
        from runtime_guard import tracking

        found = tracking.unreleased_since(self._mark, collected=False)
        if self._names is not None:
            found = [item for item in found if item.type in self._names]
        return found

    def count(self) -> int:
        """Tracked clients created since the mark, alive and never released."""
        return len(self._live())

    def first_site(self) -> tuple[tuple[str, int] | None, str]:
        """The creation line of the most common unreleased client, when it is the user's,
        and the client's type."""
        from runtime_guard._leakcheck.frames import USER, kind

        lines: Counter[tuple[tuple[str, int], str]] = Counter()
        for item in self._live():
            filename, lineno, _ = item.site.where
            if kind(filename) is USER:
                lines[((filename, lineno), item.type)] += 1
        return lines.most_common(1)[0][0] if lines else (None, "")

    def unreleased(self) -> list[Unreleased]:
        """The same, grouped by type and creation site, most first."""
        from runtime_guard._leakcheck.scan import shown

        groups: Counter[tuple[str, str]] = Counter()
        for item in self._live():
            filename, lineno, function = item.site.where
            groups[(item.type, f"{shown(filename)}:{lineno} in {function}")] += 1
        return [Unreleased(kind, site, count) for (kind, site), count in groups.most_common()]

    def close(self) -> None:
        from runtime_guard import tracking

        for name in self._added:
            tracking.untrack(name)
        if self._known:
            tracking.disable_known_clients()
