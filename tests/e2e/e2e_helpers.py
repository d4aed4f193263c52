"""Helpers for whole-cluster tests: a `ccmkit up` subprocess with its own data dir, and polling with a deadline."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 30.0, message: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {message or condition}")
        time.sleep(0.02)  # a polling interval, not a synchronisation point


class CcmkitUp:
    """One `ccmkit up` process on a free port with its own data dir; stopped by PID at the end of the test."""

    def __init__(self, data_dir: Path, store: str = "sqlite", extra: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.store = store
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.log_path: Path | None = None
        self.starts = 0

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"

    @property
    def url(self) -> str:
        config = yaml.safe_load(self.kubeconfig.read_text())
        return config["clusters"][0]["cluster"]["server"]

    def start(self, timeout: float = 30.0) -> CcmkitUp:
        """Start the process and wait until it has written its kubeconfig (it does so only once it serves)."""
        self.kubeconfig.unlink(missing_ok=True)
        self.log_path = self.data_dir.parent / f"ccmkit-up-{self.starts}.log"
        self.starts += 1
        # Output goes to a file, not a pipe nobody drains: a chatty server must never block on a full pipe.
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controlplane.cli", "up", "--data-dir", str(self.data_dir), "--port", "0",
                 "--store", self.store, *self.extra],
                stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.kubeconfig.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"ccmkit up exited with {self.proc.returncode} before it was ready:\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"ccmkit up wrote no kubeconfig within {timeout}s:\n{self.output()}")
            time.sleep(0.02)  # a polling interval, not a synchronisation point
        return self

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path is not None else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for the process to end; returns (exit code, its output)."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        return code, self.output()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
