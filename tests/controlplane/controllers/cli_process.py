"""Test helpers for running a `ccmkit` subcommand as its own process and stopping it as an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def ccmkit(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "controlplane.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM (SIGKILL after 30 s); the exit code and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err
