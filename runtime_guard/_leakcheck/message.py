"""The failure message of a leak check: short enough for a terminal, everything with ``-v``."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from runtime_guard import diagnosis
from runtime_guard._leakcheck.scan import shown
from runtime_guard._units import format_size

if TYPE_CHECKING:
    from runtime_guard._leakcheck.check import Figure, LeakResult

__all__ = ["render"]

_SHORT_LIMIT = 3

_FIGURE_WORDS = {
    "heap": "Python heap",
    "objects": "live objects",
    "fds": "open file descriptors",
    "clients": "unreleased tracked clients",
}


def _growth(figure: Figure, blocks: Sequence[int]) -> str:
    rounds = len(figure.deltas)
    if figure.name == "heap":
        block_deltas = [b - a for a, b in itertools.pairwise(blocks)]
        per_block = sum(block_deltas) / len(block_deltas) if block_deltas else 0.0
        return (
            f"+{format_size(figure.per_round)}/round ({per_block:+,.0f} blocks/round) "
            f"over {rounds} rounds"
        )
    unit = {"objects": "objects", "fds": "fds", "clients": "clients"}[figure.name]
    return f"{figure.per_round:+,.0f} {unit}/round over {rounds} rounds"


def _round_text(figure: Figure) -> str:
    if figure.name != "heap":
        return ", ".join(f"{delta:+,}" for delta in figure.deltas)
    # Untraced rounds are judged on an upper bound of the growth, traced ones exactly.
    return ", ".join(
        f"{delta:+,} B" if traced else f"at most {delta:+,} B"
        for delta, traced in zip(figure.deltas, figure.traced, strict=True)
    )


def _per_round(value: float, rounds: int) -> float:
    return value / rounds if rounds else value


def _by_line(sites: Sequence[diagnosis.AllocationSite]) -> list[diagnosis.AllocationSite]:
    """Sites merged by line: several tracebacks through one line are one line to read."""
    merged: dict[tuple[str, int], diagnosis.AllocationSite] = {}
    for site in sites:
        key = (site.filename, site.lineno)
        if key in merged:
            merged[key].size_diff += site.size_diff
            merged[key].count_diff += site.count_diff
        else:
            merged[key] = dataclasses.replace(site)
    return sorted(merged.values(), key=lambda site: -site.size_diff)


def render(result: LeakResult, verbose: bool) -> str:
    """The failure text of ``result``: short by default, every detail with ``verbose``."""
    options = result.options
    limit = None if verbose else _SHORT_LIMIT
    lines = [
        f"leak found in {result.label}: "
        f"{options.warmup} warm-up runs, then {result.rounds_run} measured rounds"
        + (_traced_text(result) if result.traced_rounds else "")
    ]
    for figure in result.grown:
        tolerance = f"; tolerance {options.tolerance_text}" if figure.name == "heap" else ""
        if figure.name == "objects":
            tolerance = f"; tolerance {figure.threshold:,} objects"
        lines.append(
            f"  {_FIGURE_WORDS[figure.name]} grew in every round: "
            f"{_growth(figure, result.blocks)}{tolerance}"
        )
        if verbose:
            lines.append(f"    per round: {_round_text(figure)}")
    # Sites and types are read from the traced rounds alone.
    rounds = result.traced_rounds
    if result.sites:
        lines.append("  top allocation sites of the growth (per round):")
        for site in (result.sites if verbose else _by_line(result.sites))[:limit]:
            lines.append(
                f"    {shown(site.filename)}:{site.lineno} in {site.function}: "
                f"+{format_size(_per_round(site.size_diff, rounds))}/round "
                f"({_per_round(site.count_diff, rounds):+,.0f} blocks/round)"
            )
            if verbose:
                lines.extend(f"        {frame}" for frame in site.traceback)
        hidden = len(result.sites) - _SHORT_LIMIT
        if not verbose and hidden > 0:
            lines.append(f"    ... {hidden} more (-v shows all, with tracebacks)")
    if result.types:
        growing = ", ".join(
            f"{g.type_name} {_per_round(g.growth, rounds):+,.0f}" for g in result.types[:limit]
        )
        lines.append(f"  growing types (per round): {growing}")
    if result.chain:
        lines.append(f"  held by: {diagnosis.format_chain(result.chain)}")
    if result.new_fds:
        targets = result.new_fds if verbose else result.new_fds[:_SHORT_LIMIT]
        more = len(result.new_fds) - len(targets)
        lines.append(
            f"  still open: {', '.join(targets)}" + (f" (+{more} more)" if more > 0 else "")
        )
        lines.extend(f"    {owner}" for owner in result.fd_owners[:limit])
    if result.unreleased:
        lines.append("  unreleased clients (created during the test, never closed):")
        for item in result.unreleased[:limit]:
            lines.append(f"    {item.count} x {item.type_name} created at {item.site}")
        hidden = len(result.unreleased) - _SHORT_LIMIT
        if not verbose and hidden > 0:
            lines.append(f"    ... {hidden} more sites (-v shows all)")
    return "\n".join(lines)


def _traced_text(result: LeakResult) -> str:
    if result.traced_rounds >= result.rounds_run:
        return ", traced"
    if result.traced_rounds == 1:
        return ", the last one traced"
    return f", the last {result.traced_rounds} traced"
