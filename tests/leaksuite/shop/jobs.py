"""Background work started by requests: threads and thread pools."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="shop-pool")


def _thumbnail(size: int) -> bytes:
    return bytes(size // 8)


def make_thumbnails(sizes: list[int]) -> int:
    """Resizes on the shared pool and waits for the results."""
    return sum(len(data) for data in _pool.map(_thumbnail, sizes))


def make_thumbnails_own_pool(sizes: list[int]) -> int:
    """Resizes on a pool of its own, shut down on the way out."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return sum(len(data) for data in pool.map(_thumbnail, sizes))


def send_email_in_background(address: str) -> None:
    """Sends from a thread and joins it before answering."""
    outbox: list[str] = []
    worker = threading.Thread(target=outbox.append, args=(f"mail to {address}",))
    worker.start()
    worker.join()


def _watch(updates: queue.Queue[str], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            updates.get(timeout=0.5)
        except queue.Empty:
            continue


def watch_inventory(sku: str) -> queue.Queue[str]:
    """Starts a watcher thread per request; nothing ever stops it."""
    updates: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    args, name = (updates, stop), f"watch-{sku}"
    watcher = threading.Thread(target=_watch, args=args, name=name)  # LEAK: thread_per_call
    watcher.daemon = True
    watcher.start()
    return updates
