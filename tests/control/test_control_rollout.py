"""The rollout controller, advanced tick by tick on a fake clock (no sleeps), with a fake source.

The fake source draws binomial counts per window, so "healthy" means the same underlying rates
for candidate and baseline with sampling noise, and a regression is a worse underlying rate.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from control_services import RedisServer
from prometheus_client import CollectorRegistry

from kvplan.control import rollout
from kvplan.control.analysis import PoolWindow, Thresholds, analyse
from kvplan.control.metrics import RolloutMetrics
from kvplan.control.redis_store import RedisFlagStore
from kvplan.control.state import MemoryFlagStore, RolloutPhase
from kvplan.errors import InputError
from kvplan.plan import Plan

INTERVAL = 300.0
STEPS = (10, 25, 50, 100)


@dataclass
class Rates:
    error: float = 0.01
    ttft_fast: float = 0.9  # share of requests with TTFT under the bound
    itl_fast: float = 0.95


@dataclass
class FakeSource:
    """Per-interval traffic split by the bucket's current weight; binomial noise, seeded."""

    store: MemoryFlagStore
    seed: int
    per_interval: int = 2000
    candidate: Rates = field(default_factory=Rates)
    baseline: Rates = field(default_factory=Rates)
    candidate_silent: bool = False
    calls: list[tuple[str, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _binom(self, n: int, p: float) -> int:
        """Binomial draw (normal approximation: counts here are hundreds to tens of thousands)."""
        sd = (n * p * (1 - p)) ** 0.5
        return min(n, max(0, round(n * p + sd * self.rng.gauss())))

    async def window(self, bucket: str, pool: str, start: float, end: float) -> PoolWindow | None:
        self.calls.append((pool, start, end))
        flags = self.store.snapshot().buckets[bucket]
        is_cand = pool == flags.candidate
        share = flags.effective_weight / 100 if is_cand else 1 - flags.effective_weight / 100
        n = self._binom(self.per_interval, share)
        if is_cand and self.candidate_silent:
            n = 0
        r = self.candidate if is_cand else self.baseline
        return PoolWindow(
            requests=n,
            errors=self._binom(n, r.error),
            ttft_total=n,
            ttft_fast=self._binom(n, r.ttft_fast),
            itl_total=n * 20,
            itl_fast=self._binom(n * 20, r.itl_fast),
        )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def begin(plan: Plan, failure_limit: int, seed: int = 0):  # type: ignore[no-untyped-def]
    store = MemoryFlagStore(plan)
    clock = Clock()
    source = FakeSource(store, seed)
    metrics = RolloutMetrics([b.name for b in plan.buckets], registry=CollectorRegistry())
    ctl = rollout.RolloutController(store, source, clock=clock, metrics=metrics)
    d = rollout.start(store.snapshot().buckets["16k"], STEPS, INTERVAL, failure_limit, Thresholds(), clock())
    asyncio.run(rollout.apply(store, store.snapshot().buckets["16k"], d, "alice"))
    return store, clock, source, ctl


def tick(ctl: rollout.RolloutController, clock: Clock, seconds: float = INTERVAL) -> None:
    clock.now += seconds
    asyncio.run(ctl.tick())


@pytest.mark.parametrize("failure_limit", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "regression",
    [
        Rates(error=0.08),  # 8x the errors
        Rates(ttft_fast=0.7),  # TTFT under the bound 90% -> 70%
        Rates(itl_fast=0.85),  # ITL under the bound 95% -> 85%
    ],
    ids=["errors", "ttft", "itl"],
)
def test_a_regression_aborts_within_failure_limit_plus_one_intervals(
    plan: Plan, failure_limit: int, regression: Rates
) -> None:
    store, clock, source, ctl = begin(plan, failure_limit)
    tick(ctl, clock)  # healthy first step: 10 -> 25
    assert store.snapshot().buckets["16k"].weight == 25
    source.candidate = regression
    for i in range(1, failure_limit + 2):
        tick(ctl, clock)
        flags = store.snapshot().buckets["16k"]
        if i <= failure_limit:  # held at the same step, failure counted
            assert (flags.rollout, flags.weight, flags.progress.failures) == ("progressing", 25, i)  # type: ignore[union-attr]
    flags = store.snapshot().buckets["16k"]
    assert flags.rollout == RolloutPhase.ABORTED.value
    assert flags.weight == 0 and flags.killed and flags.effective_weight == 0
    assert ctl.metrics.aborts.labels("16k")._value.get() == 1  # type: ignore[union-attr]
    assert ctl.metrics.analyses.labels("16k", "fail")._value.get() == failure_limit + 1  # type: ignore[union-attr]
    assert ctl.metrics.weight.labels("16k")._value.get() == 0  # type: ignore[union-attr]


def test_no_data_counts_as_failure(plan: Plan) -> None:
    store, clock, source, ctl = begin(plan, failure_limit=1)
    source.candidate_silent = True
    tick(ctl, clock)
    assert store.snapshot().buckets["16k"].progress.last_reason.startswith("no data")  # type: ignore[union-attr]
    tick(ctl, clock)
    assert store.snapshot().buckets["16k"].rollout == "aborted"


@pytest.mark.parametrize("seed", range(20))
def test_healthy_noisy_ramps_never_abort(plan: Plan, seed: int) -> None:
    store, clock, source, ctl = begin(plan, failure_limit=1, seed=seed)
    # noisy but healthy: the same underlying rates, drawn anew per window, plus jittered per-ramp rates
    rng = random.Random(1000 + seed)
    base = Rates(
        error=rng.uniform(0.001, 0.03), ttft_fast=rng.uniform(0.8, 0.99), itl_fast=rng.uniform(0.9, 0.99)
    )
    source.candidate, source.baseline = base, base
    weights = [store.snapshot().buckets["16k"].weight]
    for _ in range(len(STEPS) - 1):
        tick(ctl, clock)
        weights.append(store.snapshot().buckets["16k"].weight)
    flags = store.snapshot().buckets["16k"]
    assert weights == list(STEPS), flags.progress
    assert flags.rollout == "succeeded" and not flags.killed


def test_analysis_windows_are_the_same_for_both_pools_and_one_interval_long(plan: Plan) -> None:
    _store, clock, source, ctl = begin(plan, failure_limit=1)
    tick(ctl, clock)
    (p1, s1, e1), (p2, s2, e2) = source.calls
    assert {p1, p2} == {"b16k-int4", "b16k-bf16"} and (s1, e1) == (s2, e2) and e1 - s1 == INTERVAL


def test_nothing_happens_before_the_interval_is_over(plan: Plan) -> None:
    store, clock, source, ctl = begin(plan, failure_limit=1)
    tick(ctl, clock, INTERVAL - 1)
    assert store.snapshot().buckets["16k"].weight == 10 and source.calls == []


def test_every_change_has_exactly_one_audit_entry(plan: Plan) -> None:
    store, clock, _source, ctl = begin(plan, failure_limit=1)
    for _ in range(5):  # 3 advances, then nothing more to do
        tick(ctl, clock)
    hist = asyncio.run(store.history("16k"))
    assert [h.action for h in hist] == [
        "rollout:start",
        "rollout:advance",
        "rollout:advance",
        "rollout:complete",
    ]
    assert [h.version for h in hist] == [1, 2, 3, 4]
    assert [h.after.weight for h in hist] == [10, 25, 50, 100]


def test_pause_resume_and_operator_abort(plan: Plan) -> None:
    store, clock, _source, ctl = begin(plan, failure_limit=1)
    flags = store.snapshot().buckets["16k"]
    asyncio.run(rollout.apply(store, flags, rollout.pause(flags), "bob"))
    tick(ctl, clock)
    tick(ctl, clock)
    assert store.snapshot().buckets["16k"].weight == 10  # paused: no analysis, no step
    flags = store.snapshot().buckets["16k"]
    asyncio.run(rollout.apply(store, flags, rollout.resume(flags, clock()), "bob"))
    tick(ctl, clock)
    assert store.snapshot().buckets["16k"].weight == 25
    flags = store.snapshot().buckets["16k"]
    asyncio.run(rollout.apply(store, flags, rollout.abort(flags, "operator"), "bob"))
    flags = store.snapshot().buckets["16k"]
    assert (flags.rollout, flags.weight, flags.killed) == ("aborted", 0, True)


def test_an_operator_kill_between_read_and_write_wins(plan: Plan) -> None:
    store, clock, _source, _ctl = begin(plan, failure_limit=1)
    stale = store.snapshot().buckets["16k"]
    asyncio.run(rollout.apply(store, stale, rollout.pause(stale), "bob"))
    clock.now += INTERVAL
    verdict = analyse(PoolWindow(200, 0, 200, 190), PoolWindow(1800, 0, 1800, 1700), Thresholds())
    with pytest.raises(rollout.WriteConflict):
        asyncio.run(rollout.apply(store, stale, rollout.decide(stale, verdict, clock()), "controller"))
    assert store.snapshot().buckets["16k"].rollout == "paused"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10,5,100", "strictly increasing"),
        ("10,10,100", "strictly increasing"),
        ("0,50,100", "within 1..100"),
        ("10,50,101", "within 1..100"),
        ("ten,100", "comma-separated integers"),
    ],
)
def test_bad_steps_are_refused(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        rollout.parse_steps(text)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("2.5", 2.5)])
def test_intervals(text: str, seconds: float) -> None:
    assert rollout.parse_interval(text) == seconds


def test_start_refuses_a_killed_bucket_or_a_running_rollout(plan: Plan) -> None:
    store, clock, _source, _ctl = begin(plan, failure_limit=1)
    with pytest.raises(InputError, match="already has a rollout progressing"):
        rollout.start(store.snapshot().buckets["16k"], STEPS, INTERVAL, 1, Thresholds(), clock())
    asyncio.run(store.kill("8k", "bob"))
    with pytest.raises(InputError, match="is killed"):
        rollout.start(store.snapshot().buckets["8k"], STEPS, INTERVAL, 1, Thresholds(), clock())


def test_a_restarted_controller_resumes_from_the_store(plan: Plan, redis_server: RedisServer) -> None:
    clock = Clock()

    async def controller_life(ticks: int) -> tuple[int, str]:
        store = RedisFlagStore(redis_server.url, plan)  # a fresh process's view: only what Redis holds
        await store.start()
        flags = store.snapshot().buckets["16k"]
        if flags.rollout == "idle":
            d = rollout.start(flags, STEPS, INTERVAL, 1, Thresholds(), clock())
            await rollout.apply(store, flags, d, "alice")
        source = FakeSource(store, seed=3)  # type: ignore[arg-type]
        ctl = rollout.RolloutController(store, source, clock=clock)
        for _ in range(ticks):
            clock.now += INTERVAL
            await ctl.tick()
        after = store.snapshot().buckets["16k"]
        await store.close()
        return after.weight, after.rollout

    assert asyncio.run(controller_life(1)) == (25, "progressing")
    assert asyncio.run(controller_life(1)) == (50, "progressing")  # picked up at step 2, not from scratch
    assert asyncio.run(controller_life(1)) == (100, "succeeded")
