"""The holder's reference chain as a picture: objgraph's chain drawing, rendered by Graphviz.

``objgraph.show_chain`` writes the chain of objects from the root to the leaked object as a
Graphviz graph (each node its type and a short description, each edge the attribute or key
it goes through); ``dot -Tsvg`` turns that into SVG, which the HTML report shows as an
image. Where Graphviz is not installed there is no picture, and the report draws the chain's
text as boxes instead. Everything here is bounded: the chain is short, the SVG is capped,
``dot`` runs with a timeout.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["MAX_SVG_BYTES", "chain_svg"]

MAX_SVG_BYTES = 64 * 1024
"""A picture larger than this is left out of the report."""


def chain_svg(
    chain: Sequence[object], labels: dict[int, str] | None = None, timeout: float = 5.0
) -> str | None:
    """SVG of ``chain`` (objects, each holding the next), or None without Graphviz.

    ``labels`` adds a line to the node of the object with that ``id()`` (the holder's
    retained size, say).
    """
    dot = shutil.which("dot")
    if dot is None or len(chain) < 2:
        return None
    try:
        import objgraph
    except ImportError:
        return None
    extra = labels or {}
    source = io.StringIO()
    try:
        objgraph.show_chain(
            list(chain),
            backrefs=False,
            output=source,
            extra_info=lambda obj: extra.get(id(obj), ""),
            highlight=lambda obj: obj is chain[-1],
        )
        rendered = subprocess.run(
            [dot, "-Tsvg"],
            input=source.getvalue().encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError, RecursionError):
        return None
    if rendered.returncode != 0 or len(rendered.stdout) > MAX_SVG_BYTES:
        return None
    text = rendered.stdout.decode("utf-8", "replace")
    start = text.find("<svg")
    return text[start:] if start >= 0 else None
