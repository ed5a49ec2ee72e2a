"""The router's use of the flag store: opened from a URL by the control part's factory.

A router starts even when Redis is away (it serves the plan's defaults, then the last known
state): routing must not depend on the flag backend being up (docs/facts.md §6).
"""

from __future__ import annotations

from kvplan.control.state import FlagStore
from kvplan.control.stores import open_store
from kvplan.plan import Plan


def open_flag_store(url: str | None, plan: Plan, label: str | None = None) -> FlagStore:
    return open_store(url, plan, require_at_start=False, label=label)


async def start_store(store: FlagStore) -> None:
    await store.start()


async def close_store(store: FlagStore) -> None:
    await store.close()
