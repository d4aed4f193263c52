"""Helpers shared by the API server's acceptance tests: polling with a deadline, Status checks, a line reader for
streaming subprocesses. Tests never sleep to synchronise; they poll a condition until a generous deadline."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 20.0, message: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {message or condition}")
        time.sleep(0.02)  # a polling interval, not a synchronisation point


def status_of(response: httpx.Response) -> dict[str, Any]:
    """The Status object of an error response, checked to be a well-formed one."""
    body = response.json()
    assert body.get("kind") == "Status", body
    assert body.get("apiVersion") == "v1", body
    assert body.get("status") == "Failure", body
    assert body.get("code") == response.status_code, body
    return body


def watcher_count(apiserver: Any, group: str, version: str, plural: str) -> int:
    """How many watches the server is serving on a resource: lets a test wait until a client (kubectl wait, an
    informer) is really watching before it makes the change the client must see."""
    return apiserver.server.state.stores[(group, version, plural)].cacher.watcher_count()


class LineReader:
    """Reads a subprocess's stdout on a thread so a test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        """The first line (from those not yet consumed) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout}s; saw {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the process ended before a matching line; saw {self.lines}")
            self.lines.append(line)
            if predicate(line):
                return line

    def stop(self) -> str:
        """Terminate the process and return its stderr."""
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""
