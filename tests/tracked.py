"""Classes the tracking tests track, and the one line that makes them."""

from __future__ import annotations

from pathlib import Path


class Resource:
    def __init__(self, value: int = 0) -> None:
        self.value = value

    def close(self) -> None:
        self.value = -1


class AsyncResource:
    async def aclose(self) -> None:
        pass


def make_resources(n: int) -> list[Resource]:
    return [Resource(i) for i in range(n)]  # resources are made here


def line_of(path: str, text: str) -> int:
    """The line of ``path`` that ends with the comment ``# text``."""
    lines = Path(path).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# {text}"))


MADE_AT = (__file__, line_of(__file__, "resources are made here"))
"""``(file, line)`` where :func:`make_resources` makes them."""
