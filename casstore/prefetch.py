"""An iterator run on a helper thread and read through a short queue.

Why: obstore's writer pulls its input from inside its own runtime, where no
other obstore call may run (it panics: "Cannot start a runtime from within a
runtime"); a stream whose items need obstore reads (chunks read back, a pack
being repacked) is produced on another thread instead. It also overlaps the
producing (cutting, hashing) with the writing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator


class Prefetched:
    """An iterator run on a helper thread, read here through a queue of a few items."""

    _END = object()

    def __init__(self, source: Iterator[bytes], depth: int = 4) -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), name="chunker", daemon=True)

    def _run(self, source: Iterator[bytes]) -> None:
        try:
            for item in source:
                if not self._offer(item):
                    return
            self._offer(self._END)
        except BaseException as exc:  # handed to the reading side, raised there
            self._offer(exc)

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self) -> Iterator[bytes]:
        self._thread.start()
        return self._items()

    def _items(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:  # the source must have been read to its end (its hashes are complete)
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, BaseException):
                    raise item
