"""Detection of resources that run out before memory, on apps written as users write them.

Each scenario is a small Flask app under gunicorn (gthread), a FastAPI app under uvicorn or
a scheduler script, against a real PostgreSQL and Redis, under load from another process
(``tests/loadgen.py``). Every leaky app has a clean twin that differs only in the fix. Each
runs twice: with ``import runtime_guard.auto`` (short thresholds so a run takes seconds),
and without the guard, where what a user would otherwise see is looked for: SQLAlchemy's
and psycopg_pool's own timeouts and warnings, and for the event loop asyncio's debug mode
(switched on at start-up: uvicorn passes ``debug=False`` to its loop, so
``PYTHONASYNCIODEBUG=1`` is ignored there), which names slow callbacks at a cost no one runs
in production.

Prints one row per scenario and the recall and false alarms of both.

    python benchmarks/eval_resources.py [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import servers  # noqa: E402  (tests/servers.py: the real servers the tests use)

GUARD_ENV = {
    "RUNTIME_GUARD_INTERVAL": "0.25",
    "RUNTIME_GUARD_CHECKOUT_WARN_AFTER": "3",
    "RUNTIME_GUARD_POOL_EXHAUSTED_AFTER": "2",
    "RUNTIME_GUARD_RESOURCE_WINDOW": "1.5",
    "RUNTIME_GUARD_LOOP_LAG_THRESHOLD": "0.3",
    "RUNTIME_GUARD_LEAK_DETECTION": "false",
}
# What the guard says, by kind; a clean app saying any of these is a false alarm.
GUARD_SAYS = {
    "checkout_held": r"has been held .* checked out at (\S+)",
    "pool_exhausted": r"exhausted for .*longest holders:\n\s+\S+ s\s+(\S+)",
    "threads": r"threads pile up: .* most made at (\S+)",
    "tasks": r"tasks pile up: .* most made at (\S+)",
    "loop_blocked": r"event loop ran .* blocked by (\S+)",
    "work_stuck": r"past its deadline .*\n(?:\s+.*\n)*?\s+(\S*app\.py:\d+) in job",
}
ANY_REPORT = r"has been held|exhausted for|pile up|event loop ran|past its deadline"

FLASK_HEAD = """
import os, threading, time
{guard}
import flask, sqlalchemy, psycopg_pool, redis
app = flask.Flask(__name__)
URL = os.environ["PG_URL"].replace("postgresql://", "postgresql+psycopg://")
"""

APPS = {
    # -- a SQLAlchemy session left open: its connection stays checked out, in a transaction
    "session_left_open": (
        """
from sqlalchemy.orm import scoped_session, sessionmaker
engine = sqlalchemy.create_engine(URL, pool_size=10)
db = scoped_session(sessionmaker(engine))

@app.get("/user")
def user():
    row = db.execute(sqlalchemy.text("select 1")).scalar_one()  # MARK
    return {"id": row}
""",
        """
@app.teardown_appcontext
def close_session(exc):
    db.remove()
""",
    ),
    # -- psycopg_pool: getconn() without putconn()
    "getconn_never_returned": (
        """
pool = psycopg_pool.ConnectionPool(
    os.environ["PG_DSN"], min_size=2, max_size=20, timeout=5, open=True
)

@app.get("/user")
def user():
    conn = pool.getconn()  # MARK
    try:
        return {"id": conn.execute("select 1").fetchone()[0]}
    finally:
        FIX
""",
        "pool.putconn(conn)",
    ),
    # -- a pool smaller than the load, slow queries: requests queue for connections
    "pool_exhausted_slow_queries": (
        """
engine = sqlalchemy.create_engine(URL, pool_size=SIZE, max_overflow=0, pool_timeout=60)

@app.get("/report")
def report():
    with engine.connect() as conn:  # MARK
        return {"n": conn.execute(sqlalchemy.text("select pg_sleep(0.4), 1")).all()[0][1]}
""",
        "SIZE=12",
    ),
    # -- redis: a connection taken from the pool and kept
    "redis_connection_kept": (
        """
r = redis.Redis.from_url(os.environ["REDIS_URL"])
KEPT = []

@app.get("/hits")
def hits():
    conn = r.connection_pool.get_connection()  # MARK
    KEPT.append(conn)
    FIX
    return {"hits": r.incr("hits")}
""",
        "r.connection_pool.release(KEPT.pop())",
    ),
    # -- a thread started per request that never ends
    "thread_per_request": (
        """
from concurrent.futures import ThreadPoolExecutor
POOL = ThreadPoolExecutor(max_workers=4)

def poll(key):
    while True:
        time.sleep(1)

@app.get("/watch")
def watch():
    threading.Thread(target=poll, args=("k",), daemon=True).start()  # MARK
    return {"ok": True}
""",
        "",
    ),
}

FASTAPI_APPS = {
    "blocking_call_in_async_handler": (
        """
import asyncio, time
{guard}
from fastapi import FastAPI
app = FastAPI(lifespan=LIFESPAN)

@app.get("/items")
async def items():
    await asyncio.sleep(0.01)
    return {"ok": True}

@app.get("/export")
async def export():
    time.sleep(0.5)  # MARK
    return {"ok": True}
""",
        ("time.sleep(0.5)  # MARK", "await asyncio.sleep(0.5)  # MARK"),
    ),
    "tasks_never_awaited": (
        """
import asyncio
{guard}
from fastapi import FastAPI
app = FastAPI(lifespan=LIFESPAN)
EVENT = asyncio.Event()

async def notify():
    await EVENT.wait()

@app.get("/order")
async def order():
    asyncio.create_task(notify())  # MARK
    return {"ok": True}
""",
        ("await EVENT.wait()", "await asyncio.sleep(0.05)"),
    ),
}

# A periodic job that asks a server which never answers: without a timeout it hangs.
# What a user turns on to find a blocked loop without the guard: asyncio's debug mode.
DEBUG_LIFESPAN = """
import asyncio, contextlib, logging
logging.basicConfig()

@contextlib.asynccontextmanager
async def debug_lifespan(app):
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.3
    yield
"""

JOB = """
import os, socket, threading, time
{guard}
from runtime_guard import no_overlap

@no_overlap(deadline=2)
def job():
    with socket.create_connection(("127.0.0.1", int(os.environ["SILENT_PORT"]))) as s:
        s.settimeout(TIMEOUT)
        s.sendall(b"ping")
        try:
            s.recv(10)  # MARK
        except TimeoutError:
            pass

for _ in range(24):
    threading.Thread(target=job, daemon=True).start()
    time.sleep(0.5)
"""


@dataclass
class Result:
    scenario: str
    kind: str
    guard_leaky: str
    guard_clean: str
    baseline_leaky: str
    baseline_clean: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.1)


def serve(
    directory: Path, command: list[str], env: dict[str, str], port: int, paths: list[str]
) -> str:
    # Requests a user's clients would send: paced, so that a thread per request is tens a
    # second rather than as many as a loop on loopback can make.
    log = directory / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=directory, env=env, stdout=out, stderr=out)
    try:
        wait_up(port, proc, log)
        loader = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "loadgen.py"), str(port), "8", *paths],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env={**os.environ, "LOADGEN_PAUSE": "0.02"},
        )
        time.sleep(1.0)
        return log.read_text() + "\nLOAD " + loader.stdout
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def mark_line(source: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if "# MARK" in line)


def verdict(text: str, kind: str, line: int) -> str:
    found = re.search(GUARD_SAYS[kind], text)
    if found is None:
        return "missed" if not re.search(ANY_REPORT, text) else "other report"
    return "yes, line" if found.group(1).endswith(f"app.py:{line}") else "yes, wrong line"


def alarm(text: str) -> str:
    return "ALARM" if re.search(ANY_REPORT, text) else "quiet"


def baseline_says(text: str, kind: str) -> str:
    """Whether the stack without the guard told the user anything about the problem."""
    signs = {
        "checkout_held": r"QueuePool limit|PoolTimeout|garbage collector is trying|Too many",
        "pool_exhausted": r"QueuePool limit|PoolTimeout|timed out",
        "loop_blocked": r"Executing <.*took [\d.]+ seconds",
    }
    pattern = signs.get(kind)
    if pattern is None:
        return "nothing"
    return "says so" if re.search(pattern, text) else "nothing"


def run(only: str | None) -> list[Result]:
    postgres, redis_server = servers.start_postgres(), servers.start_redis()
    silent = socket.create_server(("127.0.0.1", 0))
    silent.listen(100)
    results: list[Result] = []
    base_env = {
        **os.environ,
        "PG_URL": postgres.url,
        "PG_DSN": postgres.dsn,
        "REDIS_URL": redis_server.url,
        "SILENT_PORT": str(silent.getsockname()[1]),
    }
    cases = []
    kinds = {
        "session_left_open": "checkout_held",
        "getconn_never_returned": "checkout_held",
        "pool_exhausted_slow_queries": "pool_exhausted",
        "redis_connection_kept": "checkout_held",
        "thread_per_request": "threads",
        "blocking_call_in_async_handler": "loop_blocked",
        "tasks_never_awaited": "tasks",
        "hung_periodic_job": "work_stuck",
    }
    for name, (body, fix) in APPS.items():
        path = {"session_left_open": "/user", "getconn_never_returned": "/user"}.get(name)
        path = (
            path
            or {
                "pool_exhausted_slow_queries": "/report",
                "redis_connection_kept": "/hits",
                "thread_per_request": "/watch",
            }[name]
        )
        leaky = FLASK_HEAD + body.replace("FIX", "pass").replace("SIZE", "2")
        if name == "pool_exhausted_slow_queries":
            clean = FLASK_HEAD + body.replace("SIZE", "12")
        elif name == "thread_per_request":
            clean = FLASK_HEAD + body.replace(
                'threading.Thread(target=poll, args=("k",), daemon=True).start()',
                "POOL.submit(time.sleep, 0.2)",
            )
        elif name == "session_left_open":
            clean = FLASK_HEAD + body + fix
        else:
            clean = FLASK_HEAD + body.replace("FIX", fix)
        cases.append((name, "flask", leaky, clean, [path] * 8))
    for name, (body, (old, new)) in FASTAPI_APPS.items():
        paths = ["/items"] * 6 + ["/export"] if name.startswith("blocking") else ["/order"] * 4
        cases.append((name, "fastapi", body, body.replace(old, new), paths))
    job_leaky, job_clean = JOB.replace("TIMEOUT", "None"), JOB.replace("TIMEOUT", "0.5")
    cases.append(("hung_periodic_job", "job", job_leaky, job_clean, []))
    try:
        for name, server, leaky, clean, paths in cases:
            if only and only != name:
                continue
            kind = kinds[name]
            texts = {}
            for variant, source in (("leaky", leaky), ("clean", clean)):
                for guarded in (True, False):
                    texts[(variant, guarded)] = run_one(server, source, guarded, paths, base_env)
            line = mark_line(leaky.replace("{guard}", "import runtime_guard.auto"))
            results.append(
                Result(
                    name,
                    kind,
                    verdict(texts[("leaky", True)], kind, line),
                    alarm(texts[("clean", True)]),
                    baseline_says(texts[("leaky", False)], kind),
                    baseline_says(texts[("clean", False)], kind),
                )
            )
            print_row(results[-1])
    finally:
        silent.close()
        postgres.stop()
        redis_server.stop()
    return results


def run_one(
    server: str,
    source: str,
    guarded: bool,
    paths: list[str],
    base_env: dict[str, str],
) -> str:
    # One line either way keeps every line where it is in the guarded run.
    if guarded:
        text = source.replace("{guard}", "import runtime_guard.auto")
    else:
        text = source.replace("{guard}", "from rg_debug import debug_lifespan")
    text = text.replace("LIFESPAN", "None" if guarded else "debug_lifespan")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "app.py").write_text(textwrap.dedent(text))
        (directory / "rg_debug.py").write_text(DEBUG_LIFESPAN)
        env = {**base_env, "PYTHONPATH": tmp, **(GUARD_ENV if guarded else {})}
        port = free_port()
        if server == "flask":
            command = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "8"]
            command += ["-w", "1", "-b", f"127.0.0.1:{port}", "app:app"]
            return serve(directory, command, env, port, paths)
        if server == "fastapi":
            command = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)]
            command += ["--loop", "asyncio", "--log-level", "warning"]
            return serve(directory, command, env, port, paths)
        done = subprocess.run(
            [sys.executable, "app.py"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done.stdout + done.stderr


def print_row(r: Result) -> None:
    print(
        f"{r.scenario:<32} {r.kind:<15} {r.guard_leaky:<16} {r.guard_clean:<8} "
        f"{r.baseline_leaky:<9} {r.baseline_clean:<9}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="run one scenario")
    args = parser.parse_args()
    print(
        f"{'scenario':<32} {'kind':<15} {'guard: leaky':<16} {'clean':<8} "
        f"{'no guard':<9} {'clean':<9}"
    )
    results = run(args.only)
    found = sum(r.guard_leaky == "yes, line" for r in results)
    alarms = sum(r.guard_clean == "ALARM" for r in results)
    seen = sum(r.baseline_leaky == "says so" for r in results)
    base_alarms = sum(r.baseline_clean == "says so" for r in results)
    print()
    print(
        f"guard:    {found}/{len(results)} leaky apps reported at the right line, "
        f"{alarms}/{len(results)} clean apps with a false alarm"
    )
    print(
        f"no guard: {seen}/{len(results)} leaky apps where the stack itself said anything, "
        f"{base_alarms}/{len(results)} clean apps where it did"
    )


if __name__ == "__main__":
    main()
