"""The failure message of a leak check: the leaking line first, everything with ``-v``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime_guard import diagnosis
from runtime_guard._leakcheck.frames import USER, kind
from runtime_guard._leakcheck.scan import frame_text, shown
from runtime_guard._units import format_size
from runtime_guard.diagnosis import functions

if TYPE_CHECKING:
    from runtime_guard._leakcheck.check import Figure, LeakResult

__all__ = ["render"]

_SHORT_LIMIT = 3

_FIGURE_WORDS = {
    "heap": "large allocations (over 512 B)",
    "objects": "small objects (pymalloc blocks)",
    "traced": "Python allocations (tracemalloc traces)",
    "fds": "open file descriptors",
    "threads": "live threads",
    "tasks": "pending asyncio tasks",
    "clients": "unreleased tracked clients",
}


def _growth(figure: Figure) -> str:
    if figure.name == "heap":
        return f"+{format_size(figure.per_call)}/call"
    return (
        f"{figure.per_call:+,.2g}/call" if figure.per_call < 1 else f"+{figure.per_call:,.0f}/call"
    )


def _words(result: LeakResult, figure: Figure) -> str:
    if figure.name == "objects" and result.traced_blocks:
        return _FIGURE_WORDS["traced"]
    return _FIGURE_WORDS[figure.name]


def render(result: LeakResult, verbose: bool) -> str:
    """The failure text of ``result``: short by default, every detail with ``verbose``."""
    options = result.options
    limit = None if verbose else _SHORT_LIMIT
    lines = [f"leak found in {result.label}: {_runs(result)}"]
    line = result.line
    if line is not None:
        what = f": {line.what}" if line.what else ""
        lines.append(
            f"  leaking line: {shown(line.filename)}:{line.lineno} in {line.function}{what}"
        )
    grown = result.grown
    if grown:
        lines.append(
            "  grew in every round: "
            + ", ".join(f"{_words(result, figure)} {_growth(figure)}" for figure in grown)
        )
        if verbose:
            for figure in grown:
                deltas = ", ".join(f"{delta:+,}" for delta in figure.deltas)
                lines.append(
                    f"    {figure.name} per round: {deltas} (calls: "
                    f"{', '.join(map(str, figure.calls))}; thresholds: "
                    f"{', '.join(map(str, figure.thresholds))})"
                )
    if result.chain:
        lines.append(f"  held by: {diagnosis.format_chain(result.chain)}")
    for text in result.exceptions[:limit]:
        lines.append(f"  kept exception: {text}")
    if result.threads:
        lines.append("  threads started during the test and still running:")
        lines.extend(f"    {text}" for text in result.threads[:limit])
    if result.tasks:
        lines.append("  asyncio tasks created during the test and still pending:")
        lines.extend(f"    {text}" for text in result.tasks[:limit])
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
    sites = [
        site
        for site in result.sites
        if verbose
        or (
            kind(site.filename) is USER
            and (line is None or site.lineno != line.lineno or site.filename != line.filename)
        )
    ]
    if sites:
        calls = max(result.traced_calls, 1)
        lines.append(
            "  allocation sites of the traced calls' growth (per call):"
            if verbose
            else "  also allocated and kept (per call):"
        )
        for site in sites[:limit]:
            function = site.function or functions.function_at(site.filename, site.lineno)
            blocks = site.count_diff / calls
            lines.append(
                f"    {shown(site.filename)}:{site.lineno} in {function}: "
                f"+{format_size(site.size_diff / calls)} in {blocks:,.0f} "
                + ("block" if round(blocks) == 1 else "blocks")
            )
            if verbose:
                lines.extend(f"        {frame_text(frame)}" for frame in site.traceback)
    if result.types:
        calls = max(result.traced_calls, 1)
        growing = ", ".join(f"{g.type_name} {g.growth / calls:+,.3g}" for g in result.types[:limit])
        lines.append(f"  kept objects by type (per traced call): {growing}")
    lines.extend(f"  note: {note}" for note in result.notes)
    if result.noisy_rounds:
        lines.append(f"  ({result.noisy_rounds} rounds read while another thread kept working)")
    if options.tolerance_text and verbose:
        lines.append(f"  tolerance {options.tolerance_text} per call")
    return "\n".join(lines)


def _runs(result: LeakResult) -> str:
    text = f"{result.options.warmup} warm-up calls, then {result.rounds_run} rounds"
    if result.calls_per_round > 1:
        text += f" of {result.calls_per_round} calls"
    if result.traced_rounds >= result.rounds_run:
        return text + ", traced"
    if result.traced_rounds == 1:
        if result.traced_calls > 1:
            return text + f", the last one traced ({result.traced_calls} calls)"
        return text + ", the last one a single traced call"
    return text
