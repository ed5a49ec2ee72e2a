"""The kill switch across real router processes (`kvplan serve`) sharing a real redis-server.

Eight routers follow the store; two simulated vLLM workers (`kvplan worker sim`) are the
bucket's baseline (bf16) and candidate (int8) pools. Each router's store writes one trace line
per change it applies, which is how propagation is timed without polling the routers.
Tests run in file order on one fleet; the Redis outage comes last.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from control_services import TOKEN, RedisServer, Router, SimWorker, routed_plan
from support.waiting import apoll, poll

from kvplan.control.cohort import in_rollout
from kvplan.control.redis_store import RedisFlagStore
from kvplan.plan import Plan, load_plan

REPLICAS = 8
FALLBACKS = ("fallback", "stale", "retry")  # the router's reasons for sending a request to baseline
BUCKET = "16k"
BASELINE, CANDIDATE = "b16k-bf16", "b16k-int8"


@dataclass
class Fleet:
    redis: RedisServer
    plan: Plan
    routers: list[Router]
    workdir: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    redis = RedisServer(workdir)
    redis.start()
    sims = [SimWorker(workdir, "bf16", "bf16"), SimWorker(workdir, "int8", "int8")]
    plan_path = workdir / "pools.yaml"
    plan_path.write_text(routed_plan(sims[0].url, sims[1].url))
    routers: list[Router] = []
    try:
        routers = [Router(workdir, f"router{i}", plan_path, redis.url) for i in range(REPLICAS)]
        yield Fleet(redis, load_plan(plan_path), routers, workdir)
    finally:
        for proc in [*routers, *sims]:
            proc.stop()
        redis.stop()


def all_applied(routers: list[Router], version: int) -> bool:
    return all(version in r.applied() for r in routers)


def test_kill_switch_reaches_8_routers_p99_under_100ms(fleet: Fleet) -> None:
    async def main() -> list[float]:
        writer = RedisFlagStore(fleet.redis.url, fleet.plan)
        await writer.start()
        await apoll(lambda: all_applied(fleet.routers, writer.snapshot().version), 10, "routers loaded")
        per_flip = []
        for i in range(200):
            t0 = time.time()
            flags = await (writer.kill if i % 2 == 0 else writer.unkill)(BUCKET, "test", f"flip {i}")
            version = writer.snapshot().version
            assert flags.killed == (i % 2 == 0)
            await apoll(lambda v=version: all_applied(fleet.routers, v), 2.0, f"flip {i} on every router")
            per_flip.append(max(r.applied()[version] for r in fleet.routers) - t0)
        await writer.close()
        return per_flip

    per_flip = asyncio.run(main())
    p50, p99 = statistics.quantiles(per_flip, n=100)[49], statistics.quantiles(per_flip, n=100)[98]
    worst = max(per_flip)
    print(f"to {REPLICAS} routers: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {worst * 1e3:.1f} ms")
    assert p99 < 0.100 and worst < 0.250, (p50, p99, worst)


def _follower_ids(redis: RedisServer) -> list[str]:
    ids = []
    for line in redis.cli("CLIENT", "LIST").splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if fields.get("name") == "kvplan-follower":
            ids.append(fields["id"])
    return ids


def test_connections_cut_just_before_a_flip_converge_within_1s(fleet: Fleet) -> None:
    async def main() -> list[float]:
        writer = RedisFlagStore(fleet.redis.url, fleet.plan)
        await writer.start()
        took = []
        for i in range(5):
            ids = _follower_ids(fleet.redis)
            assert len(ids) >= REPLICAS
            for cid in ids:
                fleet.redis.cli("CLIENT", "KILL", "ID", cid)
            await (writer.kill if i % 2 == 0 else writer.unkill)(BUCKET, "test", "after a cut")
            version = writer.snapshot().version
            took.append(await apoll(lambda v=version: all_applied(fleet.routers, v), 1.0, "converge"))
        await writer.close()
        return took

    took = asyncio.run(main())
    print(f"converged after a connection cut: {[round(t * 1e3) for t in took]} ms")
    assert max(took) < 1.0, took


@dataclass
class Done:
    url: str
    user: str
    pool: str
    status: int
    error: str = ""


async def stream_one(client: httpx.AsyncClient, url: str, user: str) -> Done:
    body = {
        "model": "m",
        "stream": True,
        "max_tokens": 32,
        "user": user,
        "messages": [{"role": "user", "content": "hello there"}],
    }
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        chunks = [c async for c in resp.aiter_text()]
        text = "".join(chunks)
        ok = resp.status_code == 200 and "[DONE]" in text
        pool = resp.headers.get("x-kvplan-pool", "")
        return Done(url, user, pool, 200 if ok else resp.status_code, "" if ok else text[:300])


async def load(urls: list[str], concurrency: int, stop: asyncio.Event, out: list[Done]) -> None:
    async def worker(k: int) -> None:
        n = 0
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                n += 1
                out.append(await stream_one(client, urls[(k + n) % len(urls)], f"user-{k}-{n}"))

    await asyncio.gather(*(worker(k) for k in range(concurrency)))


def test_50_flips_under_64_streams_fail_nothing_and_route_right(fleet: Fleet) -> None:
    bound = 0.25  # the propagation bound asserted above (worst case)
    routers = fleet.routers[:2]  # two routers carry the load; all 8 follow the flips

    async def main() -> tuple[list[Done], list[tuple[float, bool]]]:
        writer = RedisFlagStore(fleet.redis.url, fleet.plan)
        await writer.start()
        await writer.unkill(BUCKET, "test")
        await writer.set_weight(BUCKET, 100, "test")
        flips: list[tuple[float, bool]] = [(0.0, False)]
        done: list[Done] = []
        stop = asyncio.Event()
        traffic = asyncio.create_task(load([r.url for r in routers], 64, stop, done))
        await apoll(lambda: len(done) >= 64, 60, "traffic flowing")
        for i in range(50):
            killed = i % 2 == 0
            flips.append((time.time(), killed))
            await (writer.kill if killed else writer.unkill)(BUCKET, "test", f"flip {i}")
            await asyncio.sleep(0.3)  # pacing of the operator, not synchronisation
        stop.set()
        await traffic
        await writer.close()
        return done, flips

    done, flips = asyncio.run(main())
    failed = [d for d in done if d.status != 200]
    assert not failed, failed[:5]
    records: list[dict[str, object]] = []
    for r in routers:
        poll(lambda r=r: len(r.records()) >= sum(1 for d in done if d.url == r.url), 10, "provenance")
        records += r.records()
    judged, fallbacks = 0, 0
    wrong: list[tuple[int, float, object, object]] = []
    for rec in records:
        admitted = float(rec["ts"]) - float(rec["e2e_s"])  # type: ignore[arg-type]
        before = [f for f in flips if f[0] <= admitted]
        if admitted - before[-1][0] < bound:
            continue  # admitted within the propagation bound of a flip: either pool is allowed
        judged += 1
        killed = before[-1][1]
        if killed:  # every cohort on the baseline
            ok = rec["pool"] == BASELINE
        else:  # the candidate, unless the router's own health rules sent it back (saturated, stale, retry)
            fallbacks += rec["reason"] in FALLBACKS
            ok = rec["pool"] == CANDIDATE or rec["reason"] in FALLBACKS
        if not ok:
            wrong.append((len(before) - 1, round(admitted - before[-1][0], 3), rec["pool"], rec["reason"]))
    assert judged > 200 and not wrong, (judged, len(wrong), wrong[:8])
    print(f"{len(done)} streams ok; {judged} judged after the bound, 0 wrong, {fallbacks} health fallbacks")
    assert fallbacks < judged * 0.2, (fallbacks, judged)


def test_redis_outage_changes_nothing_and_a_restart_is_resynced(fleet: Fleet) -> None:
    outage = 30.0

    async def main() -> None:
        writer = RedisFlagStore(fleet.redis.url, fleet.plan)
        await writer.start()
        await writer.unkill(BUCKET, "test")
        await writer.set_weight(BUCKET, 40, "test", "before the outage")
        version = writer.snapshot().version
        old_epoch = writer.snapshot().epoch
        await apoll(lambda: all_applied(fleet.routers, version), 2, "state everywhere")
        await writer.close()

        done: list[Done] = []
        stop = asyncio.Event()
        traffic = asyncio.create_task(load([r.url for r in fleet.routers[:2]], 8, stop, done))
        fleet.redis.stop()
        down_at = time.monotonic()
        while time.monotonic() - down_at < outage:
            await asyncio.sleep(0.5)
        fleet.redis.start()  # empty: no persistence
        up_at = time.time()
        stop.set()
        await traffic
        assert done and all(d.status == 200 for d in done), [d for d in done if d.status != 200][:5]
        group = f"{BUCKET}"
        wrong = [d for d in done if d.pool != (CANDIDATE if in_rollout(d.user, group, 40) else BASELINE)]
        assert not wrong, wrong[:5]

        def new_epoch_everywhere() -> bool:
            for r in fleet.routers:
                lines = r.trace.read_text().split("\n")[:-1]
                if not lines or lines[-1].split()[1] == old_epoch:
                    return False
            return True

        await apoll(new_epoch_everywhere, 5.0, "new epoch on every router")
        latest = [float(r.trace.read_text().split("\n")[:-1][-1].split()[2]) - up_at for r in fleet.routers]
        print(f"new epoch on all routers {max(latest) * 1e3:.0f} ms after the empty restart; {len(done)} ok")
        assert max(latest) < 1.0, latest
        async with httpx.AsyncClient(timeout=5) as client:
            for r in fleet.routers:
                state = (
                    await client.get(
                        f"{r.admin_url}/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                ).json()
                assert state["epoch"] != old_epoch
                assert state["buckets"][BUCKET]["weight"] == 40  # re-seeded from the routers' last state
            denied = await client.get(f"{fleet.routers[0].admin_url}/admin/state")
            assert denied.status_code == 401 and "token" in denied.json()["error"]["message"]

    asyncio.run(main())
