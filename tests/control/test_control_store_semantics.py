"""Store semantics on a real redis-server: audit, concurrency, cohorts, metrics, outage, epoch."""

from __future__ import annotations

import asyncio
import itertools
import random

from control_services import RedisServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.waiting import apoll

from kvplan.control.cohort import in_rollout, percentile
from kvplan.control.redis_store import RedisFlagStore
from kvplan.control.state import MemoryFlagStore
from kvplan.metric_names import control as metrics
from kvplan.plan import Plan


def test_unleash_test_vectors() -> None:
    assert percentile("174", "Feature.flexibleRollout.10") == 10
    assert percentile("499", "Feature.flexibleRollout.10") == 32
    assert in_rollout("174", "Feature.flexibleRollout.10", 10)
    assert not in_rollout("499", "Feature.flexibleRollout.10", 31)
    assert not in_rollout("174", "Feature.flexibleRollout.10", 0)


@given(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["8k", "16k", "32k"]),
    st.integers(0, 100),
    st.integers(0, 100),
)
def test_cohorts_nest_as_the_weight_grows(key: str, group: str, w1: int, w2: int) -> None:
    lo, hi = sorted((w1, w2))
    if in_rollout(key, group, lo):
        assert in_rollout(key, group, hi)


def test_a_cohort_share_matches_its_weight() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    for weight in (10, 25, 50):
        share = sum(in_rollout(k, "16k", weight) for k in keys) / len(keys)
        assert abs(share - weight / 100) < 0.015


def test_concurrent_writers_never_lose_an_update(redis_server: RedisServer, plan: Plan) -> None:
    """Four writers, each on its own connection, change different fields of one bucket at once."""

    async def main() -> None:
        writers = [RedisFlagStore(redis_server.url, plan, label=f"w{i}") for i in range(4)]
        for w in writers:
            await w.start()
        weights = list(range(1, 101))
        random.Random(0).shuffle(weights)

        async def set_weights(w: RedisFlagStore, values: list[int]) -> None:
            for v in values:
                await w.set_weight("16k", v, actor=w.stats.label)

        async def flip(w: RedisFlagStore, n: int) -> None:
            for i in range(n):
                await (w.kill if i % 2 == 0 else w.unkill)("16k", actor=w.stats.label)

        await asyncio.gather(
            set_weights(writers[0], weights[:50]),
            set_weights(writers[1], weights[50:]),
            flip(writers[2], 41),  # odd: ends killed
            flip(writers[3], 0),
        )
        hist = [h for h in await writers[3].history("16k", limit=1000) if h.action != "seed"]
        assert len(hist) == 100 + 41  # every change is one entry; none merged, none lost
        assert sorted(h.version for h in hist) == list(range(1, 142))
        for a, b in itertools.pairwise(hist):  # each entry starts where the previous ended
            assert a.after == b.before
        await apoll(lambda: writers[3].snapshot().version == 141)
        final = writers[3].snapshot().buckets["16k"]
        assert final.killed  # the flipper's last write survived the weight writers
        last_weight = [h for h in hist if h.action == "set-weight"][-1].after.weight
        assert final.weight == last_weight
        for w in writers:
            await w.close()

    asyncio.run(main())


def test_a_write_that_changes_nothing_is_not_a_change(redis_server: RedisServer, plan: Plan) -> None:
    async def main() -> None:
        store = RedisFlagStore(redis_server.url, plan)
        await store.start()
        await store.kill("8k", actor="a")
        await store.kill("8k", actor="b")
        assert store.snapshot().version == 1
        assert [h.actor for h in await store.history("8k") if h.action == "kill"] == ["a"]
        await store.close()

    asyncio.run(main())


def _sample(name: str, label: str) -> float:
    for fam in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for s in fam.samples:
            if s.name == name and s.labels.get("store") == label:
                return float(s.value)
    raise AssertionError(f"{name}{{store={label}}} not exported")


def test_outage_keeps_last_state_and_reports_age_and_health(redis_server: RedisServer, plan: Plan) -> None:
    async def main() -> None:
        writer = RedisFlagStore(redis_server.url, plan, label="writer")
        reader = RedisFlagStore(redis_server.url, plan, label="reader", resync_s=0.5)
        await writer.start()
        await reader.start()
        await writer.set_weight("16k", 50, actor="a")
        await apoll(lambda: reader.snapshot().buckets["16k"].weight == 50)
        assert _sample(metrics.SOURCE_UP, "reader") == 1 and _sample(metrics.STATE_LOADED, "reader") == 1
        before = reader.snapshot()
        redis_server.stop()
        await apoll(lambda: _sample(metrics.SOURCE_UP, "reader") == 0, 3)
        await apoll(lambda: _sample(metrics.STATE_AGE, "reader") > 1.0, 5)
        assert reader.snapshot().buckets == before.buckets  # traffic keeps the last known state
        redis_server.start()  # empty
        t = await apoll(lambda: reader.snapshot().epoch != before.epoch, 2)
        assert t < 1.0
        assert reader.snapshot().buckets["16k"].weight == 50  # re-seeded from the last known state
        assert _sample(metrics.EPOCH_CHANGES + "_total", "reader") == 1
        assert _sample(metrics.SOURCE_UP, "reader") == 1 and _sample(metrics.STATE_AGE, "reader") < 1.0
        await writer.close()
        await reader.close()

    asyncio.run(main())


def test_a_fresh_process_after_data_loss_seeds_from_the_plan(redis_server: RedisServer, plan: Plan) -> None:
    async def main() -> None:
        a = RedisFlagStore(redis_server.url, plan)
        await a.start()
        await a.set_weight("8k", 70, actor="x")
        await a.close()
        redis_server.cli("FLUSHALL")
        b = RedisFlagStore(redis_server.url, plan)  # never held state: plan defaults
        await b.start()
        assert b.snapshot().buckets["8k"].weight == 0 and b.snapshot().version == 0
        await b.close()

    asyncio.run(main())


def test_memory_store_has_the_same_write_semantics(plan: Plan) -> None:
    async def main() -> None:
        store = MemoryFlagStore(plan)
        await store.start()
        await store.set_weight("16k", 30, actor="a")
        await store.kill("16k", actor="a")
        await store.kill("16k", actor="b")  # no change
        snap = store.snapshot()
        assert snap.version == 2 and snap.buckets["16k"].effective_weight == 0
        assert [h.action for h in await store.history("16k")] == ["set-weight", "kill"]
        await store.close()

    asyncio.run(main())
