"""Pausing Python's cycle collector while a burst of short-lived objects is made.

Reading a gallery makes many small objects (the real index: about 100,000 nodes, values,
entries and rows) that hold no reference cycles, so reference counting frees each of
them. The cycle collector cannot know that: the objects it sees pile up and about once
per sync it walks every object of the process (Django's alone are over 100,000: 70 to
90 ms on the benchmark machine, most of a sync of the real index) and frees nothing.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Threads share one collector: the first to pause it stops it, the last to leave starts
# it again, and only if it was running when the first came.
_lock = threading.Lock()
_pauses = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cycle collector stopped (reference counting goes on).

    Only for work whose objects hold no cycles: garbage in cycles made meanwhile, by
    this thread or another, waits for the collector's next run after the block.
    """
    global _pauses, _was_enabled
    with _lock:
        if not _pauses:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if not _pauses and _was_enabled:
                gc.enable()
