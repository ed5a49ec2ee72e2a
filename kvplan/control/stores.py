"""Choose a flag store from a URL: the one place that knows which stores exist."""

from __future__ import annotations

from kvplan.control.state import FlagStore, MemoryFlagStore, Seeding
from kvplan.errors import InputError
from kvplan.plan import Plan


def open_store(
    url: str | None,
    plan: Plan,
    *,
    require_at_start: bool = True,
    label: str | None = None,
    seeding: Seeding = Seeding.DEFAULTS,
) -> FlagStore:
    """None or "memory" -> in-process store; "redis://host:port/db" (or rediss://) -> Redis store.

    Call `await store.start()` before use and `await store.close()` at the end. A Redis store
    that cannot be reached at start raises StoreUnavailable naming the URL, unless
    `require_at_start=False` (routers may then serve the plan's defaults until Redis answers).
    `seeding` says whether this process may re-seed a Redis that lost its state (routers: yes).
    """
    if url is None or url == "memory":
        return MemoryFlagStore(plan)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from kvplan.control.redis_store import RedisFlagStore  # redis-py only where a URL names Redis

        return RedisFlagStore(url, plan, require_at_start=require_at_start, label=label, seeding=seeding)
    raise InputError(f"unknown flag store {url!r}: use 'memory' or redis://host:port/db")
