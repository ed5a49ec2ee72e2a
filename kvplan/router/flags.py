"""The seam to the flag store: the control part's factory when it is installed, else the embedded store."""

from __future__ import annotations

import inspect
from typing import Any

from kvplan.control.state import FlagStore, MemoryFlagStore
from kvplan.errors import InputError
from kvplan.plan import Plan


def open_flag_store(url: str | None, plan: Plan) -> FlagStore:
    try:
        from kvplan.control.stores import open_store
    except ImportError:
        if url in (None, "", "memory", "memory://"):
            return MemoryFlagStore(plan)
        raise InputError(f"flag store {url!r} is not supported by this build; use 'memory'") from None
    store: FlagStore = open_store(url, plan)
    return store


async def _maybe(store: FlagStore, method: str) -> None:
    fn: Any = getattr(store, method, None)
    if fn is None:
        return
    result = fn()
    if inspect.isawaitable(result):
        await result


async def start_store(store: FlagStore) -> None:
    await _maybe(store, "start")


async def close_store(store: FlagStore) -> None:
    await _maybe(store, "close")
