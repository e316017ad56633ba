"""Python's cyclic garbage collector held off while one call builds its short-lived answer.

A search batch makes tens of thousands of container objects (the engine's scored points and UUIDs,
qdrant-client's `ScoredPoint`s) that are freed by reference counting, never by the collector. Each 700
allocations trigger a young-generation collection, and every few of those a full one that walks every live
object of the process (~250,000 once torch is imported): on an Edge shard of 18,891 keys that was ~45% of
`query_batch_points`' time a query. Pausing the collector for the call turns those collections into the one
the next allocation triggers after it; nothing the call drops is cyclic, so no memory waits on it.

The pause is counted across threads: the collector comes back when the last paused call ends, and only if
it was on when the first began (an application that turned it off keeps it off). A call of a few queries
(`paused_for`) is not paused: it allocates far fewer objects than the 700 that trigger a collection, and the
pause's own cost (a lock, twice) would be a tenth of what amips adds to a single query.
"""
from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

_lock = threading.Lock()
_paused_calls = 0
_was_enabled = False
PAUSE_FROM = 16  # queries a call must bring to be served with the collector paused
_NOT_PAUSED = nullcontext()


@contextmanager
def gc_paused() -> Iterator[None]:
    global _paused_calls, _was_enabled
    with _lock:
        if _paused_calls == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused_calls += 1
    try:
        yield
    finally:
        with _lock:
            _paused_calls -= 1
            if _paused_calls == 0 and _was_enabled:
                gc.enable()


def paused_for(queries: int) -> AbstractContextManager[None]:
    """`gc_paused()` for a call of at least PAUSE_FROM queries; nothing for a smaller one."""
    return gc_paused() if queries >= PAUSE_FROM else _NOT_PAUSED
