"""Shared helpers for the client tests: waiting on a condition with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def _eventually(condition: Callable[[], object], timeout: float = 5.0, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or condition}")
        await asyncio.sleep(0.005)  # a polling interval, not a synchronisation point


@pytest.fixture
def eventually() -> Callable[..., object]:
    """``await eventually(lambda: cond, timeout=5)``: poll until true, fail at the deadline."""
    return _eventually
