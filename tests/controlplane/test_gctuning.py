"""The component processes' collector settings (controlplane/gctuning.py), each case in a fresh interpreter so the
test process keeps its own: growth of a long-lived heap no longer triggers full collections, reference cycles are
still reclaimed by the periodic one, and CCMKIT_PYTHON_GC=default leaves Python's defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

GROW = """
import gc, json
from controlplane.gctuning import tune_for_service
tuned = tune_for_service(period=3600)
before = gc.get_stats()[2]["collections"]
cache = [{"metadata": {"name": str(i), "labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]}}
         for i in range(300_000)]  # an informer cache's worth of decoded objects
print(json.dumps({"tuned": tuned, "threshold": gc.get_threshold(),
                  "full_collections": gc.get_stats()[2]["collections"] - before}))
"""

CYCLE = """
import gc, json, time, weakref
from controlplane.gctuning import tune_for_service
tune_for_service(period=0.1)
class Node: pass
a, b = Node(), Node()
a.peer, b.peer = b, a
ref = weakref.ref(a)
del a, b  # unreachable now, but only a collection can tell
deadline = time.monotonic() + 10
while ref() is not None and time.monotonic() < deadline:
    time.sleep(0.02)  # waiting for the collector thread, which runs on its own timer
print(json.dumps({"reclaimed": ref() is None}))
"""


def run(code: str, **env: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


def test_a_growing_long_lived_heap_triggers_no_full_collection() -> None:
    tuned = run(GROW)
    assert tuned["tuned"] is True and tuned["threshold"][0] == 100_000
    assert tuned["full_collections"] == 0
    # Python's defaults re-scan the whole heap as it grows: what the components no longer pay for.
    default = run(GROW, CCMKIT_PYTHON_GC="default")
    assert default["tuned"] is False and default["threshold"] == [700, 10, 10]
    assert default["full_collections"] >= 1


def test_reference_cycles_are_still_reclaimed_by_the_timer() -> None:
    # Nothing allocates while the script waits, so no young collection comes either (with Python's defaults the
    # pair would stay until enough allocations): only the periodic full collection can find it.
    assert run(CYCLE) == {"reclaimed": True}
