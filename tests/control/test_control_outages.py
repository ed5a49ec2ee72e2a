"""The flag store through Redis outages, with a real redis-server and real `kvplan serve` processes.

- A read never writes, and a one-shot write never seeds: with Redis restarted empty and every
  router paused, `kvplan flags show` and `set-weight` leave Redis empty, and the routers re-seed
  it from their last known state when they resume (a killed bucket stays killed).
- The first write after Redis dropped the connection (CLIENT KILL, Redis's idle `timeout`, a
  restart) succeeds: it is retried once.
- A write whose reply is lost after it was applied is reported as applied, never twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_services import TOKEN, RedisServer, Router
from support.cli import kvplan
from support.faults import LossyProxy
from support.waiting import apoll, poll

from kvplan.control.redis_store import RedisFlagStore
from kvplan.control.state import EmptyStore, Seeding
from kvplan.plan import Plan

ROUTERS = 8
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def admin_state(router: Router) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{router.admin_url}/admin/state", headers=ADMIN, timeout=5).json()
    return state


@pytest.fixture
def fleet(redis_server: RedisServer, plan_file: Path, tmp_path: Path) -> Iterator[list[Router]]:
    with ThreadPoolExecutor(ROUTERS) as pool:  # started together: each takes seconds to import
        routers = list(
            pool.map(lambda i: Router(tmp_path, f"router{i}", plan_file, redis_server.url), range(ROUTERS))
        )
    try:
        yield routers
    finally:
        for r in routers:
            r.stop()


def test_redis_restarted_empty_under_paused_routers_keeps_the_kill(
    fleet: list[Router], redis_server: RedisServer, plan_file: Path
) -> None:
    kill = httpx.post(
        f"{fleet[0].admin_url}/admin/buckets/32k/kill",
        json={"actor": "oncall", "reason": "bad"},
        headers=ADMIN,
    )
    assert kill.status_code == 200, kill.text
    poll(lambda: all(admin_state(r)["buckets"]["32k"]["killed"] for r in fleet), 10, "the kill everywhere")
    epoch = admin_state(fleet[0])["epoch"]

    for r in fleet:
        r.pause()
    redis_server.stop()
    redis_server.start()  # no persistence: empty
    common = ["--plan", str(plan_file), "--flag-store", redis_server.url]
    shown = kvplan("flags", "show", *common)
    assert shown.returncode == 2 and "holds no state" in shown.stderr, shown.stdout + shown.stderr
    weighted = kvplan("flags", "set-weight", "--bucket", "32k", "--weight", "10", *common)
    assert weighted.returncode == 2 and "holds no state" in weighted.stderr, weighted.stdout + weighted.stderr
    assert redis_server.cli("DBSIZE").strip() == "0"  # neither wrote a thing

    for r in fleet:
        r.resume()

    def reseeded() -> bool:
        states = [admin_state(r) for r in fleet]
        return all(s["epoch"] != epoch and s["source"] == "redis" for s in states)

    poll(reseeded, 20, "every router on the re-seeded epoch")
    for r in fleet:
        b = admin_state(r)["buckets"]["32k"]
        assert b["killed"] is True and b["effective_weight"] == 0, (r.name, b)
    stored = json.loads(redis_server.cli("HGET", "kvplan:state", "b:32k"))
    assert stored["killed"] is True

    # Redis drops every router's connection: the next admin write through each one still succeeds
    redis_server.cli("CLIENT", "KILL", "TYPE", "normal")
    for i, r in enumerate(fleet):
        resp = httpx.post(
            f"{r.admin_url}/admin/buckets/8k/weight", json={"weight": i + 1, "actor": "t"}, headers=ADMIN
        )
        assert resp.status_code == 200, (r.name, resp.text)


@pytest.mark.parametrize("drop", ["client kill", "idle timeout", "restart"])
def test_the_first_write_after_redis_dropped_the_connection_succeeds(
    seeded_redis: RedisServer, plan: Plan, drop: str
) -> None:
    async def main() -> None:
        store = RedisFlagStore(seeded_redis.url, plan)
        await store.start()
        try:
            await store.set_weight("8k", 5, "t")
            if drop == "client kill":
                seeded_redis.cli("CLIENT", "KILL", "TYPE", "normal")
            elif drop == "idle timeout":
                seeded_redis.cli("CONFIG", "SET", "timeout", "1")

                def idle_one_closed() -> bool:  # the follower, blocked in XREAD, is never idle
                    rows = seeded_redis.cli("CLIENT", "LIST").splitlines()
                    return not [r for r in rows if "kvplan-follower" not in r and "cmd=client|list" not in r]

                await apoll(idle_one_closed, 10, "Redis to close the idle command connection", 0.1)
            else:
                seeded_redis.stop()
                seeded_redis.start()
            after = await store.set_weight("8k", 7, "t")
            assert after.weight == 7
        finally:
            await store.close()

    asyncio.run(main())


def test_a_write_whose_reply_is_lost_is_reported_as_applied_once(
    seeded_redis: RedisServer, plan: Plan
) -> None:
    proxy = LossyProxy(seeded_redis.port)

    async def main() -> None:
        store = RedisFlagStore(f"redis://127.0.0.1:{proxy.port}/0", plan)
        await store.start()
        try:
            await store.set_weight("8k", 5, "t")  # loads the write script
            proxy.lose_reply_to(b"EVALSHA")
            after = await store.set_weight("8k", 30, "alice", "step")
            assert proxy.lost == 1 and after.weight == 30
            entries = [e for e in await store.history("8k") if e.actor == "alice"]
            assert len(entries) == 1 and entries[0].after.weight == 30  # applied once, not retried
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        proxy.close()


def test_a_read_only_store_refuses_an_empty_redis(redis_server: RedisServer, plan: Plan) -> None:
    async def main() -> None:
        store = RedisFlagStore(redis_server.url, plan, seeding=Seeding.NEVER)
        with pytest.raises(EmptyStore):
            await store.start()
        await store.close()

    asyncio.run(main())
    assert redis_server.cli("DBSIZE").strip() == "0"
