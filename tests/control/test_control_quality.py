"""The rollout's quality gate: shadow agreement in the analysis, the controller acting on it
(tick by tick), and both metrics sources reading the router's shadow histogram."""

from __future__ import annotations

import asyncio

import pytest
from control_services import RedisServer
from prometheus_client import CollectorRegistry, generate_latest

from kvplan.control import rollout
from kvplan.control.analysis import PoolWindow, Thresholds, analyse
from kvplan.control.embedded import rollout_admin
from kvplan.control.metrics import RolloutMetrics
from kvplan.control.redis_store import RedisFlagStore
from kvplan.control.sources import totals_from_router, totals_from_text
from kvplan.control.state import FlagStore, InvalidWeight, MemoryFlagStore
from kvplan.errors import InputError
from kvplan.plan import Plan
from kvplan.router.metrics import RouterMetrics

GATE = Thresholds(min_requests=10, min_agreement=0.85, min_pairs=8)
BASE = PoolWindow(requests=100, errors=0, ttft_total=100, ttft_fast=100)


def _cand(pairs: float, mean: float) -> PoolWindow:
    return PoolWindow(requests=100, errors=0, ttft_total=100, ttft_fast=100, shadow_pairs=pairs,
                      shadow_agreement_sum=pairs * mean)  # fmt: skip


def test_a_drifting_candidate_fails_however_fast_and_error_free() -> None:
    v = analyse(_cand(16, 0.55), BASE, GATE)
    assert not v.passed
    assert v.reason == "shadow_agreement candidate 0.550 vs baseline 1.000 (allowed 0.150)"
    assert analyse(_cand(16, 0.97), BASE, GATE).passed


def test_too_few_pairs_is_no_data_and_the_gate_off_ignores_them() -> None:
    v = analyse(_cand(3, 1.0), BASE, GATE)
    assert not v.passed and v.reason.startswith("no data: shadow_agreement has 3 pairs (< 8")
    assert analyse(PoolWindow(100, 0, 100, 100), BASE, GATE).reason.startswith(
        "no data: shadow_agreement has 0"
    )
    assert analyse(_cand(0, 0.0), BASE, Thresholds(min_requests=10)).passed  # min_agreement 0: no gate
    no_floor = Thresholds(min_requests=10, min_agreement=0.85, min_pairs=0)
    v = analyse(_cand(0, 0.0), BASE, no_floor)  # no pair at all: no mean to gate on
    assert v.reason.startswith("no data: shadow_agreement has 0 pairs (< 1")
    assert analyse(_cand(1, 0.9), BASE, no_floor).passed


class ShadowSource:
    """Every window the same healthy latency; the candidate's agreement as set."""

    def __init__(self, mean: float) -> None:
        self.mean = mean

    async def window(self, bucket: str, pool: str, start: float, end: float) -> PoolWindow | None:
        return _cand(20, self.mean) if pool.endswith("int4") else BASE


@pytest.mark.parametrize(("mean", "phase", "weight"), [(0.5, "aborted", 0), (0.96, "succeeded", 100)])
def test_the_controller_aborts_a_drifting_ramp_and_promotes_a_faithful_one(
    plan: Plan, mean: float, phase: str, weight: int
) -> None:
    store = MemoryFlagStore(plan)
    now = [1_000_000.0]
    metrics = RolloutMetrics([b.name for b in plan.buckets], registry=CollectorRegistry())
    ctl = rollout.RolloutController(store, ShadowSource(mean), clock=lambda: now[0], metrics=metrics)
    body = {"steps": "50,100", "interval": "60s", "failure_limit": 0, "thresholds": GATE.to_dict()}
    asyncio.run(rollout_admin(store, "16k", "start", body))
    now[0] = store.snapshot().buckets["16k"].progress.next_check_at  # type: ignore[union-attr]
    asyncio.run(ctl.tick())
    flags = store.snapshot().buckets["16k"]
    assert (flags.rollout, flags.weight, flags.killed) == (phase, weight, phase == "aborted")
    last = asyncio.run(store.history("16k"))[-1]
    assert last.action == ("rollout:abort" if phase == "aborted" else "rollout:complete")
    assert ("shadow_agreement candidate 0.500" in last.reason) == (phase == "aborted")


def test_rollout_start_refuses_an_agreement_bound_above_one(plan: Plan) -> None:
    store = MemoryFlagStore(plan)
    with pytest.raises(InputError, match=r"min_agreement is a share within 0\.\.1"):
        asyncio.run(rollout_admin(store, "16k", "start", {"thresholds": {"min_agreement": 85}}))


def test_both_router_readings_see_the_gated_measure_only(plan: Plan) -> None:
    m = RouterMetrics(plan)
    for value in (1.0, 0.5, 0.75):
        m.shadow_agreement.labels("16k", "b16k-int4", "tokens").observe(value)
    m.shadow_agreement.labels("16k", "b16k-int4", "exact").observe(0.0)
    m.requests.labels("16k", "b16k-int4", "int4", "ok").inc(3)
    direct = totals_from_router(m, plan.slo)[("16k", "b16k-int4")]
    parsed = totals_from_text(generate_latest(m.registry).decode(), plan.slo)[("16k", "b16k-int4")]
    for w in (direct, parsed):
        assert (w.shadow_pairs, w.shadow_agreement_sum) == (3, 2.25)
    assert totals_from_router(m, plan.slo)[("16k", "b16k-bf16")].shadow_pairs is None  # baselines: none


def test_the_shadow_share_is_a_flag_validated_audited_and_off_while_killed(
    plan: Plan, redis_server: RedisServer
) -> None:
    async def check(store: FlagStore) -> None:
        await store.start()
        try:
            assert store.snapshot().buckets["16k"].shadow == 0  # the plan's default
            after = await store.set_shadow("16k", 10, "alice", "watch int4")
            assert (after.shadow, after.effective_shadow, after.weight) == (10, 10, 0)
            entry = (await store.history("16k"))[-1]
            assert (entry.action, entry.actor, entry.reason) == ("set-shadow", "alice", "watch int4")
            with pytest.raises(InvalidWeight, match=r"shadow share must be an integer within 0\.\.100"):
                await store.set_shadow("16k", 101, "alice")
            killed = await store.kill("16k", "bob")
            assert (killed.shadow, killed.effective_shadow) == (10, 0)
        finally:
            await store.close()

    asyncio.run(check(MemoryFlagStore(plan)))
    asyncio.run(check(RedisFlagStore(redis_server.url, plan)))

    async def read() -> int:  # a second process sees the stored share
        reader = RedisFlagStore(redis_server.url, plan)
        await reader.start()
        try:
            return reader.snapshot().buckets["16k"].shadow
        finally:
            await reader.close()

    assert asyncio.run(read()) == 10
