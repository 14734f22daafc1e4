"""The ``leak_check`` fixture's object: checks callables and blocks, sync or async."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, NoReturn

from runtime_guard._leakcheck.check import LeakCheck, LeakResult
from runtime_guard._leakcheck.options import LeakCheckOptions

__all__ = ["LeakBlock", "LeakChecker"]


class LeakChecker:
    """What the ``leak_check`` fixture returns: checks callables and blocks for leaks."""

    def __init__(
        self,
        defaults: LeakCheckOptions,
        fail: Callable[[str], NoReturn],
        verbose: bool = False,
    ) -> None:
        self.defaults = defaults
        """Options before this call's keywords: plugin defaults, options, ini."""
        self._fail = fail
        self._verbose = verbose

    def __call__(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *args: Any,
        rounds: int | None = None,
        warmup: int | None = None,
        tolerance: int | str | None = None,
        track: Sequence[str | type] | None = None,
        check: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Check ``fn(*args, **kwargs)``; without ``fn``, return a context manager.

        Returns the :class:`LeakResult` of a clean check (an awaitable of it for a
        coroutine function called inside a running event loop) and fails the test with the
        result's message otherwise.
        """
        options = self.defaults.replace(
            rounds=rounds, warmup=warmup, tolerance=tolerance, track=track, check=check
        )
        if options.track:
            options = options.replace(unreleased=True)
        if fn is None:
            if args or kwargs:
                raise TypeError("leak_check() without a callable takes keyword options only")
            return LeakBlock(self._start(options, "the block"), self._judge)
        label = getattr(fn, "__qualname__", repr(fn))
        if inspect.iscoroutinefunction(fn):
            import asyncio  # here, not with the module: 20 ms that sync checks never need

            try:
                asyncio.get_running_loop()
            except RuntimeError:
                with asyncio.Runner() as runner:
                    return self._run(options, label, lambda: runner.run(fn(*args, **kwargs)))
            return self._run_async(options, label, fn, args, kwargs)
        return self._run(options, label, lambda: fn(*args, **kwargs))

    def _start(self, options: LeakCheckOptions, label: str) -> LeakCheck:
        return LeakCheck(options, label=label)

    def _judge(self, check: LeakCheck) -> LeakResult:
        if check.result.leaked:
            self._fail(check.result.message(self._verbose))
        return check.result

    def _run(self, options: LeakCheckOptions, label: str, call: Callable[[], Any]) -> LeakResult:
        check = self._start(options, label)
        with contextlib.closing(check.runs()) as runs:
            for _ in runs:
                call()
        return self._judge(check)

    async def _run_async(
        self,
        options: LeakCheckOptions,
        label: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> LeakResult:
        check = self._start(options, label)
        with contextlib.closing(check.runs()) as runs:
            for _ in runs:
                await fn(*args, **kwargs)
        return self._judge(check)


class LeakBlock:
    """``with leak_check() as rounds: for _ in rounds: ...``: the block runs each round."""

    def __init__(self, check: LeakCheck, judge: Callable[[LeakCheck], LeakResult]) -> None:
        self._check = check
        self._judge = judge
        self.result: LeakResult | None = None
        """The verdict, once the block has ended cleanly."""
        self._runs: Generator[int, None, None] | None = None

    def __enter__(self) -> Iterator[int]:
        self._runs = self._check.runs()
        return self._runs

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if self._runs is not None:
            self._runs.close()
        if exc_type is not None:
            return
        if not self._check.finished:
            raise RuntimeError(
                "leak_check(): iterate over every round, e.g. "
                "`with leak_check() as rounds: for _ in rounds: body()`"
            )
        self.result = self._judge(self._check)
