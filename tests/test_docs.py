"""The documentation: every code block runs or is checked, and every table says what the code does.

Blocks come from ``docs/**/*.md``, ``README.md`` and ``CONTRIBUTING.md``. A fence says how its
block is checked (``CONTRIBUTING.md`` has the table): a plain ``python`` block runs in this
process (``#>`` lines are the output it must print) and the guard is reset after it; other
blocks carry ``test="..."`` in the fence, and ``test="skip"`` needs a ``reason``.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import importlib.util
import inspect
import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pytest_examples import CodeExample, EvalExample

import runtime_guard
from runtime_guard import signals as guard_signals
from runtime_guard.cli.main import build_parser
from runtime_guard.config import Config, env_name
from runtime_guard.integrations._http import MIDDLEWARE_OPTIONS, MiddlewareBase
from runtime_guard.testing import reset
from runtime_guard.tracking import tracked_names, untrack

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SOURCES = sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)
SOURCES += [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]

_FENCE = re.compile(r"^(?P<indent> *)(?P<ticks>```+)\s*(?P<lang>[^\s`]*)(?P<rest>.*)$")
_SETTING = re.compile(r'(\w+)="([^"]*)"')
_CHECKS = {"pytest", "daemon", "syntax", "cli", "skip"}
_PARSERS = {"yaml", "toml", "ini", "json"}


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int
    """Line of the opening fence, from 1."""
    lang: str
    settings: dict[str, str]
    source: str

    @property
    def check(self) -> str:
        """How the block is checked: the fence's ``test``; a block titled "(configuration)"
        is parsed only; other Python runs."""
        if "test" in self.settings:
            return self.settings["test"]
        if "(configuration)" in self.settings.get("title", ""):
            return "syntax"
        return "run" if self.lang == "python" else ""

    @property
    def reason(self) -> str:
        """Why the block is not run: its ``reason``, or the title that calls it configuration."""
        if "(configuration)" in self.settings.get("title", ""):
            return "configuration"
        return self.settings.get("reason", "")

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def find_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, their content dedented to the fence."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, ticks = opening["indent"], opening["ticks"]
        close = re.compile(rf"^{indent}{ticks}\s*$")
        end = index + 1
        while end < len(lines) and not close.match(lines[end]):
            end += 1
        body = [line[len(indent) :] for line in lines[index + 1 : end]]
        lang = {"py": "python", "bash": "sh", "console": "sh", "shell": "sh"}.get(
            opening["lang"], opening["lang"]
        )
        settings = dict(_SETTING.findall(opening["rest"]))
        blocks.append(Block(path, index + 1, lang, settings, "\n".join(body) + "\n"))
        index = end + 1
    return blocks


BLOCKS = [block for path in SOURCES for block in find_blocks(path)]


def _blocks(check: str) -> list[Any]:
    return [pytest.param(b, id=str(b)) for b in BLOCKS if b.check == check]


def test_every_block_says_how_it_is_checked() -> None:
    """Each block is Python that runs, or names a known check; a skipped block says why."""
    unchecked = [str(b) for b in BLOCKS if b.check not in _CHECKS | {"run"}]
    assert unchecked == [], "add test=... to these fences (see CONTRIBUTING.md)"
    unexplained = [str(b) for b in BLOCKS if b.check == "skip" and not b.reason]
    assert unexplained == [], "a skipped block needs reason=..."
    syntax = [b for b in BLOCKS if b.check == "syntax"]
    unparsed = [str(b) for b in syntax if b.lang not in _PARSERS | {"python"}]
    assert unparsed == [], "test='syntax' parses python, yaml, toml, ini or json only"
    unexplained = [str(b) for b in syntax if b.lang == "python" and not b.reason]
    assert unexplained == [], "a Python block only compiled needs reason=..."
    assert len(BLOCKS) > 50 and sum(b.check == "run" for b in BLOCKS) > 25


# -- Python blocks run in this process --------------------------------------------------------


def _celery_signals() -> list[Any]:
    module = sys.modules.get("celery.signals")
    if module is None:
        return []
    from celery.utils.dispatch import Signal

    return [value for value in vars(module).values() if isinstance(value, Signal)]


@pytest.fixture
def isolated() -> Iterator[None]:
    """Put back what an example changes in this process: the guard, tracked classes, the
    ``__main__`` module (pytest-examples runs each example as ``__main__``), an imported
    ``runtime_guard.auto`` and receivers connected to Celery's signals."""
    main = sys.modules["__main__"]
    tracked = set(tracked_names())
    kept = {id(r) for signal in _celery_signals() for r in signal.receivers}
    yield
    sys.modules["__main__"] = main
    sys.modules.pop("runtime_guard.auto", None)
    reset()
    for name in set(tracked_names()) - tracked:
        untrack(name)
    for celery_signal in _celery_signals():
        celery_signal.receivers[:] = [r for r in celery_signal.receivers if id(r) in kept]
        celery_signal.sender_receivers_cache.clear()


def _where(error: BaseException, block: Block) -> str:
    # pytest-examples rewrites the traceback onto the Markdown file; formatting such a
    # traceback can itself fail on Python 3.11, so only its file names and lines are read.
    lines = [f"{block} raised {type(error).__name__}: {error}"]
    tb = error.__traceback__
    while tb is not None:
        lines.append(f"  {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}")
        tb = tb.tb_next
    return "\n".join(lines)


@pytest.mark.parametrize("block", _blocks("run"))
def test_python_block_runs(block: Block, eval_example: EvalExample, isolated: None) -> None:
    """A Python block runs as written, and prints what its ``#>`` lines say."""
    example = CodeExample.create(
        block.source, path=block.path, start_line=block.line, prefix=block.lang
    )
    failure = None
    try:
        if "#>" in block.source:
            eval_example.run_print_check(example)
        else:
            eval_example.run(example)
    except Exception as error:
        failure = _where(error, block)
    finally:
        for name in re.findall(r'track\(\s*"([\w.]+)"', block.source):
            untrack(name)
    if failure is not None:
        pytest.fail(failure, pytrace=False)


# -- blocks that need a process of their own --------------------------------------------------

_PYTEST_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.mark.parametrize("block", _blocks("pytest"))
def test_pytest_block_passes_or_fails_as_the_page_says(block: Block, tmp_path: Path) -> None:
    """A test file on a page passes under pytest, or fails with the message the page shows."""
    name = block.settings.get("title", f"test_example_{block.line}.py")
    (tmp_path / name).write_text(block.source)
    (tmp_path / "pytest.ini").write_text(_PYTEST_INI)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    expected = {"passed": 0, "failed": 1}[block.settings.get("outcome", "passed")]
    assert result.returncode == expected, output
    assert block.settings.get("expect", "") in output


@pytest.mark.parametrize("block", _blocks("daemon"))
def test_daemon_block_serves_and_stops_on_sigterm(block: Block, tmp_path: Path) -> None:
    """A daemon on a page starts, prints that it serves, and exits 0 on SIGTERM."""
    script = tmp_path / block.settings.get("title", "daemon.py")
    script.write_text(block.source)
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout = process.stdout
    assert stdout is not None
    first_line: list[str] = []
    reader = threading.Thread(target=lambda: first_line.append(stdout.readline()))
    reader.start()
    reader.join(timeout=60)
    try:
        assert first_line and first_line[0].strip(), "the daemon printed nothing"
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, errors


# -- configuration and commands, checked without running ----------------------------------


@pytest.mark.parametrize("block", _blocks("syntax"))
def test_configuration_block_parses(block: Block) -> None:
    """A configuration block is valid in its language."""
    if block.lang == "python":
        compile(block.source, str(block), "exec")
    elif block.lang == "yaml":
        assert list(yaml.safe_load_all(block.source))
    elif block.lang == "toml":
        tomllib.loads(block.source)
    elif block.lang == "ini":
        configparser.ConfigParser().read_string(block.source)
    else:
        json.loads(block.source)


@pytest.mark.parametrize("block", _blocks("cli"))
def test_command_lines_are_accepted_by_the_command(block: Block) -> None:
    """Each ``runtime-guard`` line parses with the command's own parser, its options valid."""
    commands = [shlex.split(line, comments=True) for line in block.source.splitlines()]
    commands = [words for words in commands if words]
    assert commands and all(words[0] == "runtime-guard" for words in commands), block.source
    for words in commands:
        try:
            args = build_parser().parse_args(words[1:])
        except SystemExit as exit_:  # --version prints and exits 0; a bad line exits 2
            assert exit_.code == 0, words
            continue
        if args.command_name == "run":
            options = {name: getattr(args, name) for name, _, _ in Config.describe()}
            Config.from_options({k: v for k, v in options.items() if v is not None}, environ={})
            assert args.command, words


# -- tables that must say what the code does ------------------------------------------------


def _table(page: Path, marker: str) -> list[list[str]]:
    text = page.read_text(encoding="utf-8")
    body = text.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
    rows = [line.strip().strip("|").split(" | ") for line in body.strip().splitlines()]
    return [[cell.strip() for cell in row] for row in rows[2:]]


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_middleware_options_table_matches_the_middleware() -> None:
    """The middleware options table lists every keyword with its real default."""
    rows = _table(DOCS / "guide" / "middleware.md", "middleware-options")
    parameters = inspect.signature(MiddlewareBase.__init__).parameters
    documented = {_code(row[0])[0]: ast.literal_eval(_code(row[1])[0]) for row in rows}
    assert set(documented) == set(MIDDLEWARE_OPTIONS) | {"guard"}
    for name, default in documented.items():
        assert parameters[name].default == default, name


def test_signals_table_lists_every_signal() -> None:
    """The signals table lists every signal the guard sends, and its payload names."""
    rows = _table(DOCS / "concepts" / "signals.md", "signals-table")
    documented = {_code(row[0])[0] for row in rows}
    sent = {
        name
        for name in guard_signals.__all__
        if getattr(guard_signals, name) is guard_signals.namespace.get(name)
    }
    assert documented == sent
    for row in rows:
        doc = getattr(guard_signals, _code(row[0])[0]).__doc__ or ""
        for payload in re.findall(r"``(\w+):", doc):
            assert f"`{payload}`" in row[1], (row[0], payload)


def test_metrics_table_lists_every_metric() -> None:
    """The metrics table lists every metric a scrape returns, with its type."""
    from runtime_guard.integrations import prometheus

    rows = _table(DOCS / "operations" / "metrics.md", "metrics-table")
    documented = {_code(row[0])[0].split("{")[0]: row[1] for row in rows}
    runtime_guard.install(interval=60, track_clients=False)
    prometheus.install_metrics()
    _, body = prometheus.render()
    scraped: dict[str, str] = {}
    for name, kind in re.findall(r"^# TYPE (runtime_guard_\w+) (\w+)$", body.decode(), re.M):
        scraped[name] = kind
    assert documented == scraped


def test_pytest_options_table_matches_the_plugin() -> None:
    """The plugin's options table names each flag, ini key and variable the plugin has."""
    rows = _table(DOCS / "pytest.md", "pytest-options")
    help_text = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    ).stdout
    flags = set(re.findall(r"(--leak-check[\w-]*)", help_text))
    assert {_code(row[0])[0].split("=")[0] for row in rows} == flags
    for row in rows:
        ini, variable = _code(row[1])[0], _code(row[2])[0]
        assert re.search(rf"^  {ini} \(", help_text, re.M), ini
        assert variable == env_name(ini), variable


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "_hooks" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_reference_lists_every_option() -> None:
    """The options reference, as the site renders it, lists every Config option with its
    default and variable, and nothing else."""
    hooks = _hooks()
    page = (DOCS / "reference" / "options.md").read_text()
    assert hooks.OPTIONS_MARKER in page
    rendered = hooks.on_page_markdown(page, None, None, None)
    table = rendered.partition("## Every option")[2].partition("\n## ")[0]
    rows = re.findall(r'^\| <code title="(\w+)">(\w+)</code> \| ([^|]+) \|', table, re.M)
    described = {name: default for name, default, _ in Config.describe()}
    assert [name for _, name, _ in rows] == list(described)
    for variable, name, shown in rows:
        assert variable == env_name(name)
        assert shown.strip("` ") == described[name].strip("'").lower(), name


def test_limits_table_figures_are_the_code() -> None:
    """Each cap in the limits table is the value of the constant or option named beside it,
    and each test named there exists."""
    rows = _table(DOCS / "reference" / "limits.md", "limits-table")
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    assert len(rows) >= 15
    for row in rows:
        what, cap, set_by, tests = row
        figure = re.match(r"(?:one per )?([\d,]+)", cap)
        names = _code(set_by)
        if set_by.startswith("option"):
            assert figure and int(figure[1].replace(",", "")) == defaults[names[0]], what
        elif len(names) == 1 and names[0].rsplit(".", 1)[-1].isupper():
            module, constant = names[0].rsplit(".", 1)
            value = getattr(importlib.import_module(module), constant)
            assert figure and int(figure[1].replace(",", "")) == value, what
        else:
            for name in names:
                assert importlib.util.find_spec(name) is not None, name
        for test_file in _code(tests):
            assert (ROOT / test_file).is_file(), test_file


def test_site_nav_and_pages_agree() -> None:
    """Every page in the site's nav exists (or is one awaited from another branch), and every
    page under docs/ is in the nav."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pending = _hooks().PENDING_PAGES

    def pages(nav: Any) -> Iterator[str]:
        for entry in nav:
            target = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(target, list):
                yield from pages(target)
            else:
                yield target

    in_nav = set(pages(config["nav"]))
    present = {str(p.relative_to(DOCS)) for p in SOURCES if DOCS in p.parents}
    assert in_nav - present <= pending
    assert present - in_nav == set()


# -- the README: short, with the two commands and the distribution warning -------------------


def test_readme_is_a_two_minute_read_whose_links_resolve() -> None:
    """The README stays under 200 lines and every relative link in it points at a file."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).is_file(), target
