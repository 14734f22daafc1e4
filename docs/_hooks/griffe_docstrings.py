"""A griffe extension: the package's docstrings as the API reference needs them.

- The package's docstrings use Sphinx roles (``:func:`install```), double-backtick literals
  and ``::`` literal blocks, which Markdown would show verbatim. They are rewritten when the
  API reference is built: a role becomes an optional cross-reference (a link where the
  target is on the site, plain code otherwise), a literal a code span, and a literal block a
  fenced Python block.
- A blinker signal documents itself with ``namespace.signal(name, doc="...")``, which a
  static reader does not see: that ``doc`` becomes the attribute's docstring.

The package's source is left as it is.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from griffe import Attribute, Docstring, Extension, Module, Object

__all__ = ["Docstrings", "markdown_from_rest"]

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")
_FENCE = "```"


def _literal_blocks(text: str) -> str:
    # "Some text::" followed by a blank line and an indented block is a reST literal block:
    # Markdown gets "Some text:" and a fenced block, without the indentation.
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(head + ":")
            j = i + 2
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith(" ")):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                out += ["", _FENCE + "python", *(b[indent:] for b in block), _FENCE, ""]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def markdown_from_rest(text: str, resolve: Any = None) -> str:
    """Rewrite roles, literals and literal blocks of ``text``; ``resolve(name)`` gives the full
    path of a name relative to the documented object (or raises)."""

    def role(match: re.Match[str]) -> str:
        short, name = match.group(1), match.group(2).strip()
        title = name.rsplit(".", 1)[-1] if short else name
        identifier = name
        if resolve is not None:
            try:
                identifier = resolve(name)
            except Exception:
                identifier = name
        return f'<autoref identifier="{identifier}" optional>`{title}`</autoref>'

    parts = _literal_blocks(text).split(_FENCE)
    # Even parts are prose, odd parts are fenced code, which is left alone.
    for index in range(0, len(parts), 2):
        parts[index] = _LITERAL.sub(r"`\1`", _ROLE.sub(role, parts[index]))
    return _FENCE.join(parts)


def _rewrite(obj: Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = markdown_from_rest(obj.docstring.value, obj.resolve)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member, seen)  # type: ignore[arg-type]


def _call_doc(node: Any) -> str | None:
    value = getattr(node, "value", None)
    if not isinstance(value, ast.Call):
        return None
    for keyword in value.keywords:
        if keyword.arg == "doc":
            doc = ast.literal_eval(keyword.value)
            return doc if isinstance(doc, str) else None
    return None


class Docstrings(Extension):
    """Gives signals their ``doc=`` as docstring, then rewrites every docstring of a loaded
    package from reST to Markdown."""

    def on_attribute_instance(self, *, node: Any, attr: Attribute, **kwargs: Any) -> None:
        doc = _call_doc(node) if attr.docstring is None else None
        if doc:
            attr.docstring = Docstring(doc, parent=attr)

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        _rewrite(pkg, set())
