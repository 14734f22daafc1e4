"""Load from another process: ``python tests/loadgen.py PORT SECONDS PATH [PATH ...]``.

One client thread per PATH given (repeat a path for more concurrency), each sending GET
requests for SECONDS, back to back or with ``LOADGEN_PAUSE`` seconds between them; prints
``requests N errors E slowest S``.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
import time


def main() -> None:
    port, seconds, paths = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    counts = {"requests": 0, "errors": 0}
    slowest = [0.0]
    lock = threading.Lock()
    end = time.monotonic() + seconds
    pause = float(os.environ.get("LOADGEN_PAUSE", "0"))

    def client(path: str) -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                conn.close()
                failed = response.status >= 500
            except OSError:
                failed = True
            with lock:
                counts["requests"] += 1
                counts["errors"] += failed
                slowest[0] = max(slowest[0], time.monotonic() - started)
            if pause:
                time.sleep(pause)

    threads = [threading.Thread(target=client, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"requests {counts['requests']} errors {counts['errors']} slowest {slowest[0]:.3f}")


if __name__ == "__main__":
    main()
