"""The Redis flag store against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
from control_services import RedisServer, free_port
from support.waiting import apoll

from kvplan.control.redis_store import RedisFlagStore
from kvplan.control.state import InvalidWeight, StoreUnavailable, UnknownBucket
from kvplan.control.stores import open_store
from kvplan.plan import Plan


def test_fresh_redis_is_seeded_from_the_plan(redis_server: RedisServer, plan: Plan) -> None:
    async def main() -> None:
        store = open_store(redis_server.url, plan)
        await store.start()
        snap = store.snapshot()
        assert snap.source == "redis" and snap.epoch and snap.version == 0
        assert snap.buckets["32k"].weight == 10 and snap.buckets["8k"].weight == 0
        seeds = await store.history()
        assert [e.action for e in seeds] == ["seed"] * 3
        await store.close()

    asyncio.run(main())


def test_writes_propagate_to_another_replica(redis_server: RedisServer, plan: Plan) -> None:
    async def main() -> None:
        a, b = open_store(redis_server.url, plan), open_store(redis_server.url, plan)
        await a.start()
        await b.start()
        after = await a.set_weight("16k", 25, actor="alice", reason="first step")
        assert after.weight == 25 and a.snapshot().version == 1
        await apoll(lambda: b.snapshot().version == 1)
        assert b.snapshot().buckets["16k"].weight == 25
        await a.kill("16k", actor="bob", reason="ttft regression")
        await apoll(lambda: b.snapshot().buckets["16k"].killed)
        assert b.snapshot().buckets["16k"].effective_weight == 0
        hist = await b.history("16k")
        assert [(h.action, h.actor, h.version) for h in hist] == [
            ("seed", "kvplan", 0),
            ("set-weight", "alice", 1),
            ("kill", "bob", 2),
        ]
        assert hist[2].before is not None and not hist[2].before.killed and hist[2].after.killed
        assert hist[2].reason == "ttft regression"
        await a.close()
        await b.close()

    asyncio.run(main())


def test_bad_input_is_refused_without_a_write(redis_server: RedisServer, plan: Plan) -> None:
    async def main() -> None:
        store = open_store(redis_server.url, plan)
        await store.start()
        with pytest.raises(UnknownBucket, match="unknown bucket '64k'; buckets: 8k, 16k, 32k"):
            await store.kill("64k", actor="x")
        for bad in (-1, 101, 2.5, True):
            with pytest.raises(InvalidWeight, match=r"within 0\.\.100"):
                await store.set_weight("8k", bad, actor="x")  # type: ignore[arg-type]
        assert store.snapshot().version == 0
        await store.close()

    asyncio.run(main())


def test_unreachable_redis_at_startup_names_the_url(plan: Plan) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def main() -> None:
        store = open_store(url, plan)
        with pytest.raises(StoreUnavailable, match=f"cannot reach the flag store at {url}"):
            await store.start()
        await store.close()

    asyncio.run(main())


def test_never_loaded_routes_on_plan_defaults(plan: Plan) -> None:
    async def main() -> None:
        store = RedisFlagStore(f"redis://127.0.0.1:{free_port()}/0", plan, require_at_start=False)
        await store.start()
        snap = store.snapshot()
        assert snap.source == "plan" and snap.buckets["32k"].weight == 10
        await store.close()

    asyncio.run(main())
