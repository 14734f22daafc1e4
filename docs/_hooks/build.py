"""mkdocs hooks of the documentation site (named in ``mkdocs.yml``; never copied into it).

- The options reference is generated from ``Config.describe()`` at build time, so the
  table a user reads is the table ``install()`` accepts.
- Code fences carry how ``tests/test_docs.py`` checks them (``test="skip" reason="..."``);
  those marks are taken out of the fence line before rendering, since Material's fences
  refuse options they do not know.
- A line ``--8<-- "FILE"`` is replaced by that file of the repository (CONTRIBUTING.md,
  CHANGELOG.md), before the marks are taken out.
- Pages being written on other branches are named in the nav before they exist here: an
  entry in :data:`PENDING_PAGES` whose file is missing is left out of the nav, logged, so
  ``mkdocs build --strict`` passes on any checkout. A missing page that is not listed still
  fails the strict build.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from runtime_guard.config import Config, env_name

__all__ = [
    "OPTIONS_MARKER",
    "PENDING_PAGES",
    "TEST_MARKS",
    "on_files",
    "on_page_markdown",
    "options_table",
]

_log = logging.getLogger("mkdocs.hooks.runtime_guard")

OPTIONS_MARKER = "<!-- options-table -->"
"""Where the generated options table goes in a page."""

PENDING_PAGES = frozenset(
    {
        "integrations/asgi.md",
        "integrations/celery.md",
        "integrations/gunicorn.md",
        "integrations/uwsgi.md",
        "integrations/prometheus.md",
        "operations/recycling.md",
        "pytest.md",
        "leaks.md",
        "reports.md",
        "resources.md",
    }
)
"""Nav entries whose pages arrive from other branches; once they exist they are kept."""


def _default(shown: str) -> str:
    # describe() gives repr() of each default; a reader wants the form they would write.
    if shown == "None":
        return "none"
    if shown in ("True", "False"):
        return f"`{shown.lower()}`"
    return f"`{shown.strip(chr(39))}`"


def options_table() -> str:
    """The Markdown table of every option: name, default, meaning (its variable in a tooltip)."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for name, default, doc in Config.describe():
        variable = env_name(name)
        rows.append(f'| <code title="{variable}">{name}</code> | {_default(default)} | {doc} |')
    return "\n".join(rows)


TEST_MARKS = ("test", "reason", "outcome", "expect")
"""Fence options that tell the documentation tests how to check a block."""

_ROOT = Path(__file__).resolve().parents[2]
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)
_FENCE = re.compile(r"^(\s*```+\s*\S+)(.*)$", re.MULTILINE)
_MARK = re.compile(r'\s+(?:{})="[^"]*"'.format("|".join(TEST_MARKS)))


def _include(match: re.Match[str]) -> str:
    return (_ROOT / match.group(1)).read_text(encoding="utf-8")


def _unmark(match: re.Match[str]) -> str:
    return match.group(1) + _MARK.sub("", match.group(2))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Include repository files, drop the test marks of fences, fill the options table."""
    markdown = _INCLUDE.sub(_include, markdown)
    markdown = _FENCE.sub(_unmark, markdown)
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, options_table())
    return markdown


def _present(nav: list[Any], files: Any) -> list[Any]:
    kept: list[Any] = []
    for entry in nav:
        if isinstance(entry, dict):
            (title, target), *_ = entry.items()
            if isinstance(target, list):
                section = _present(target, files)
                if section:
                    kept.append({title: section})
            elif target in PENDING_PAGES and files.get_file_from_path(target) is None:
                _log.info("page %s is not in this checkout yet: left out of the nav", target)
            else:
                kept.append(entry)
        elif isinstance(entry, str) and entry in PENDING_PAGES:
            if files.get_file_from_path(entry) is not None:
                kept.append(entry)
        else:
            kept.append(entry)
    return kept


def on_files(files: Any, config: Any) -> Any:
    """Leave out of the nav the pending pages this checkout does not have yet."""
    if config["nav"]:
        config["nav"] = _present(config["nav"], files)
    return files
