"""Waiting for a condition with a deadline, never a fixed sleep standing in for synchronisation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def poll(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition",
         interval: float = 0.02) -> float:  # fmt: skip
    """Until `condition()` is truthy; the seconds it took. AssertionError after `timeout` s."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


async def apoll(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition",
                interval: float = 0.01) -> float:  # fmt: skip
    """`poll` inside an event loop (other tasks run while it waits)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - start
