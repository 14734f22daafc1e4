"""The judgement on pools: checkouts held too long, and pools that ran out of connections.

On every sample the component looks at each pool seen checking out connections: a checkout
held longer than ``checkout_warn_after`` (HikariCP's ``leakDetectionThreshold``, 30 s by
default) is reported once, with the line that checked it out and the connection's
transaction state (a psycopg connection left ``idle in transaction`` says so); a pool that
has had requests waiting and no free connection for longer than ``pool_exhausted_after``
is reported once per episode, naming the sites of its longest holders.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from runtime_guard import signals
from runtime_guard._component import Component
from runtime_guard._units import format_duration
from runtime_guard.pools.checkouts import (
    Checkout,
    PoolFigures,
    PoolRegistry,
    PoolWatch,
    default_registry,
)
from runtime_guard.pools.hooks import PoolHooks, default_hooks
from runtime_guard.reports.files import write_report

if TYPE_CHECKING:
    from runtime_guard.guard import Guard
    from runtime_guard.sample import Sample

__all__ = ["HOLDERS"]

_log = logging.getLogger("runtime_guard")

HOLDERS = 5
"""Longest holders named in a ``pool_exhausted`` report."""


def _exhausted(figures: PoolFigures) -> bool:
    if figures.waiting > 0:
        return True
    # A pool that cannot count its waiters is exhausted when every connection is out.
    return figures.waiting < 0 and figures.size is not None and figures.in_use >= figures.size


class PoolComponent(Component):
    """Reports checkouts held too long and exhausted pools; feeds health and metrics."""

    name = "pools"

    def __init__(
        self,
        checkout_warn_after: float = 30.0,
        exhausted_after: float = 5.0,
        *,
        registry: PoolRegistry | None = None,
        hooks: bool = True,
    ) -> None:
        self.registry = registry or default_registry
        """The pools and checkouts judged."""
        self.checkout_warn_after = checkout_warn_after
        """Seconds a checkout may be held before it is reported."""
        self.exhausted_after = exhausted_after
        """Seconds a pool may have waiters and no free connection before it is reported."""
        self.reports: deque[dict[str, Any]] = deque(maxlen=50)
        """The last reports sent (``checkout_held`` and ``pool_exhausted``), newest last."""
        if not hooks:
            self.hooks: PoolHooks | None = None
        elif self.registry is default_registry:
            self.hooks = default_hooks
        else:
            self.hooks = PoolHooks(self.registry)
        """The checkout hooks this component enabled (``None``: fed by someone else)."""
        if self.hooks is not None:
            self.hooks.enable()

    def on_sample(self, guard: Guard, sample: Sample) -> None:
        if not self.registry.watches:
            return
        now = self.registry.clock()
        for watch in self.registry.all():
            for checkout in list(watch.checkouts.values()):
                if (
                    not checkout.reported
                    and not checkout.long_lived
                    and checkout.seconds(now) >= self.checkout_warn_after
                ):
                    checkout.reported = True
                    self._held(guard, watch, checkout, now)
            figures = watch.figures()
            if figures is not None:
                self._judge(guard, watch, figures, sample.monotonic, now)

    def _held(self, guard: Guard, watch: PoolWatch, checkout: Checkout, now: float) -> None:
        seconds = checkout.seconds(now)
        data = {"kind": "checkout_held", **checkout.to_dict(now, watch.name)}
        state = f", {data['state']}" if data["state"] else ""
        _log.warning(
            "runtime_guard: a connection of pool %s has been held %s%s, checked out at "
            "%s by %s\n%s",
            watch.name,
            format_duration(seconds),
            state,
            checkout.site,
            data["thread"],
            "\n".join(f"    {line}" for line in data["stack"]),
        )
        self._keep(guard, data, "checkout_held")
        guard.send(signals.checkout_held, pool=watch.name, seconds=seconds, site=checkout.site)

    def _judge(
        self, guard: Guard, watch: PoolWatch, figures: PoolFigures, at: float, now: float
    ) -> None:
        if _exhausted(figures):
            watch.free_since = None
            if watch.exhausted_since is None:
                watch.exhausted_since = at
            elif not watch.exhausted_reported and at - watch.exhausted_since >= (
                self.exhausted_after
            ):
                watch.exhausted_reported = True
                self._exhaustion(guard, watch, figures, at - watch.exhausted_since, now)
            return
        if not watch.exhausted_reported:
            watch.exhausted_since = None  # waiters must stay for the whole delay
            return
        if watch.free_since is None:
            watch.free_since = at
        elif at - watch.free_since >= self.exhausted_after:  # the episode is over
            watch.exhausted_since = watch.free_since = None
            watch.exhausted_reported = False

    def _exhaustion(
        self, guard: Guard, watch: PoolWatch, figures: PoolFigures, lasted: float, now: float
    ) -> None:
        holders = watch.longest(now, HOLDERS)
        data = {
            "kind": "pool_exhausted",
            "pool": watch.name,
            "seconds": round(lasted, 3),
            **figures._asdict(),
            "holders": [h.to_dict(now, watch.name) for h in holders],
        }
        waiting = "unknown" if figures.waiting < 0 else str(figures.waiting)
        _log.warning(
            "runtime_guard: pool %s exhausted for %s: %d in use of %s, %s waiting; "
            "longest holders:\n%s",
            watch.name,
            format_duration(lasted),
            figures.in_use,
            "?" if figures.size is None else figures.size,
            waiting,
            "\n".join(
                f"    {format_duration(h['seconds'])}  {h['site']}  "
                f"({h['state'] or 'state unknown'})"
                for h in data["holders"]
            ),
        )
        self._keep(guard, data, "pool_exhausted")
        guard.send(
            signals.pool_exhausted,
            pool=watch.name,
            in_use=figures.in_use,
            waiting=figures.waiting,
            holders=holders,
        )

    def _keep(self, guard: Guard, data: dict[str, Any], kind: str) -> None:
        data["wall"] = round(time.time(), 3)
        if guard.config.report_dir:
            data["path"] = write_report(guard.config.report_dir, kind, dict(data))
        self.reports.append(data)

    def pools(self) -> dict[str, dict[str, Any]]:
        """Per pool: its figures, the checkouts held past the threshold and the oldest."""
        now = self.registry.clock()
        out: dict[str, dict[str, Any]] = {}
        for watch in self.registry.all():
            figures = watch.figures()
            held = [
                c
                for c in list(watch.checkouts.values())
                if not c.long_lived and c.seconds(now) >= self.checkout_warn_after
            ]
            oldest = watch.longest(now, 1)
            out[watch.name] = {
                "library": watch.kind,
                **(figures._asdict() if figures is not None else {}),
                "held_too_long": len(held),
                "oldest_checkout_seconds": round(oldest[0].seconds(now), 3) if oldest else 0.0,
                "exhausted": watch.exhausted_reported,
                "holders": [
                    c.to_dict(now, watch.name) for c in sorted(held, key=lambda c: c.since)[:3]
                ],
            }
        return out

    def health(self, guard: Guard) -> dict[str, Any]:
        return {"pools": self.pools()}

    def close(self, guard: Guard) -> None:
        hooks, self.hooks = self.hooks, None
        if hooks is not None:
            hooks.disable()
