"""Garbage-collector settings for ccmkit's long-running component processes.

CPython starts a full collection each time the objects that survived into its oldest generation have grown by a
quarter. A controller manager, scheduler or kubelet pool keeps every watched object in an informer cache (a million
and more dicts and lists at 10,000 pods) and replaces them as they change, so it kept re-scanning that whole heap:
in bench/controllers the collector took 14% of the API server's CPU and a third of the controller manager's,
scheduler's and kubelet pool's — and those full collections freed nothing, because API objects decoded from JSON
hold no reference cycles. So the components collect the young generation less often and the whole heap on a
timer instead of on growth, which still reclaims what cycles there are (exceptions kept with their tracebacks,
closed-over futures) within a period.

Only the `ccmkit` entry points call this: a program that embeds the API server or uses the test fixtures keeps
Python's defaults. ``CCMKIT_PYTHON_GC=default`` turns it off (to compare, or to rule it out).
"""

from __future__ import annotations

import gc
import os
import threading
import time

YOUNG_THRESHOLD = 100_000  # allocations between young collections (CPython's default: 700)
NEVER = 1_000_000_000  # as the oldest generation's threshold: no full collection triggered by growth
FULL_COLLECTION_PERIOD = 30.0  # seconds between full collections

_collector: threading.Thread | None = None


def tune_for_service(period: float = FULL_COLLECTION_PERIOD) -> bool:
    """Apply the settings above to this process (once); False when ``CCMKIT_PYTHON_GC=default`` asks not to."""
    global _collector
    if os.environ.get("CCMKIT_PYTHON_GC", "") == "default":
        return False
    if _collector is not None:
        return True
    _, middle, _ = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, NEVER)
    _collector = threading.Thread(target=_collect_every, args=(period,), name="ccmkit-gc", daemon=True)
    _collector.start()
    return True


def _collect_every(period: float) -> None:
    while True:
        time.sleep(period)
        gc.collect()


__all__ = ["FULL_COLLECTION_PERIOD", "YOUNG_THRESHOLD", "tune_for_service"]
