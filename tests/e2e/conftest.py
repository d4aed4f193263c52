"""Whole-cluster tests: `ccmkit up` run as users run it, in its own process, driven over HTTP and with kubectl.

These tests start the real command line, so they cover what in-process fixtures cannot: start-up, the kubeconfig
it writes, signals and exit codes, and state that must survive the process dying."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import CcmkitUp


@pytest.fixture
def ccmkit_up(tmp_path: Path) -> Iterator[CcmkitUp]:
    """A started `ccmkit up` on a sqlite store under tmp_path/data."""
    up = CcmkitUp(tmp_path / "data").start()
    try:
        yield up
    finally:
        up.kill()


@pytest.fixture
def kubectl_for(tmp_path: Path):
    """Run the kubectl on PATH against a given kubeconfig; returns the CompletedProcess."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")

    def run(kubeconfig: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
        return subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=env, timeout=60)

    return run

