"""`kvplan serve` with an admin token (and shadow options), the shadow metrics the quality
tests read, and one quality-gated rollout step (the vLLM test and bench/quality_vllm_cpu.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from support.router import RouterProcess

from kvplan.control.analysis import Thresholds
from kvplan.metric_names import DecisionReason

if TYPE_CHECKING:
    from kvplan.plan import Plan

TOKEN = "quality-test-token"
# The quality gate of the real-vLLM rollouts: mean shadow token agreement. Measured on these pools
# with the 16 prompts at 24 tokens: INT8 0.90 (13/16 identical), INT4 (Hadamard) 0.55 (3/16); in
# bench/results/quality_vllm_cpu.md INT8 0.816 (12/16), INT4 0.504 (1/16).
GATE = Thresholds(min_requests=4, min_agreement=0.75, min_pairs=12)


@contextmanager
def serve(workdir: Path, plan: dict[str, Any], *extra: str) -> Iterator[RouterProcess]:
    """`kvplan serve` on free ports (admin token TOKEN): `.url` its OpenAI API, `.admin_url` its
    admin API and /metrics; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "pools.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    # The CPU engines share two cores with the router and the test: a busy one can take seconds to
    # answer its /metrics, and the default 1 s probe / 3 s staleness would then divert its cohort
    # to the baseline (counted, `diversions`), which these tests are not about.
    slow_engines = ("--probe-timeout", "5", "--load-stale-after", "30")
    router = RouterProcess(path, "--log-level", "warning", *slow_engines, *extra, name="router", token=TOKEN)
    try:
        yield router
    finally:
        router.stop()


def admin(router: RouterProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    r = httpx.request(method, router.admin_url + path, json=body, headers=router.admin, timeout=10)
    r.raise_for_status()
    return r.json()


def share_blocks(
    router: RouterProcess, bucket: str, shares: Sequence[int], prompts: Sequence[str]
) -> Iterator[tuple[int, str]]:
    """(share, prompt) per request in turn, prompts in a cycle; the bucket's shadow share is set
    (through the admin API) before each run of one share."""
    current = -1
    for i, share in enumerate(shares):
        if share != current:
            admin(router, "POST", f"/admin/buckets/{bucket}/shadow", {"share": share})
            current = share
        yield share, prompts[i % len(prompts)]


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def shadow_counts(router: RouterProcess, bucket: str, pool: str) -> dict[str, float]:
    from kvplan.metric_names import router as rm

    text = httpx.get(router.metrics_url + "/metrics", timeout=10).text
    out = {
        "sampled": metric(text, f"{rm.SHADOW_SAMPLED}_total", bucket=bucket, pool=pool),
        "pairs": metric(text, f"{rm.SHADOW_PAIRS}_total", bucket=bucket, pool=pool),
    }
    for reason in rm.SHADOW_DROP_REASONS:
        out[reason] = metric(text, f"{rm.SHADOW_DROPPED}_total", bucket=bucket, pool=pool, reason=reason)
    out["dropped"] = sum(out[r] for r in rm.SHADOW_DROP_REASONS)
    return out


# Decisions that send a request of the candidate's cohort to the baseline: the candidate could
# not take it right then (a busy CPU engine is slow to answer its metrics scrape: stale), or it
# failed before its first byte and the request was retried on the baseline.
DIVERSIONS = (DecisionReason.FALLBACK, DecisionReason.STALE, DecisionReason.RETRY)


def diversions(router: RouterProcess, bucket: str) -> dict[str, float]:
    """Requests the router's policy sent to the bucket's baseline instead of its candidate, by reason."""
    from kvplan.metric_names import router as rm

    text = httpx.get(router.metrics_url + "/metrics", timeout=10).text
    return {str(r): metric(text, f"{rm.DECISIONS}_total", bucket=bucket, reason=r) for r in DIVERSIONS}


def shadow_settled(router: RouterProcess, bucket: str, pool: str) -> Callable[[], bool]:
    """Every sampled copy was compared or dropped (none queued or in flight)."""

    def done() -> bool:
        c = shadow_counts(router, bucket, pool)
        return c["sampled"] > 0 and c["pairs"] + c["dropped"] == c["sampled"]

    return done


@dataclass(frozen=True)
class GatedRollout:
    """What one quality-gated rollout did: its traffic, the controller's decision, the store after it."""

    statuses: list[int]  # of every client request of the window
    pools: list[str]  # the pool that answered each
    candidate_requests: int  # requests of users the weight sends to the candidate
    diverted: dict[str, float]  # of those, served by the baseline, by the router's decision reason
    shadow: dict[str, float]  # shadow_counts of the candidate after the window
    action: str  # the controller's decision
    reason: str
    rollout: str  # the bucket's phase after it
    weight: int
    killed: bool
    audit_action: str  # the audit trail's last entry
    audit_reason: str


def users(bucket: str, weight: int, n_base: int, n_cand: int) -> tuple[list[str], list[str]]:
    """User keys the rollout's cohort hash sends to the baseline, and to the candidate, at `weight`."""
    from kvplan.control.cohort import percentile

    keys = [f"user-{i}" for i in range(2000)]
    base = [k for k in keys if percentile(k, bucket) > weight][:n_base]
    cand = [k for k in keys if percentile(k, bucket) <= weight][:n_cand]
    return base, cand


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _bucket_state(router: RouterProcess, bucket: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{router.admin_url}/admin/state", headers=router.admin)
        return dict(r.json()["buckets"][bucket])


async def gated_rollout(
    router: RouterProcess,
    store_url: str,
    plan: Plan,
    candidate: str,
    gate: Thresholds,
    prompts: Sequence[str],
    model: str,
    n_candidate: int = 6,
) -> GatedRollout:
    """One step of a rollout at 50% with the quality gate, the controller ticked on its own clock:
    every prompt once from a user of the baseline (shadowed by the plan's share), `n_candidate`
    from users of the candidate, every shadow copy settled, one window later a decision; returns
    once the router applied it."""
    from kvplan.control import rollout
    from kvplan.control.redis_store import RedisFlagStore
    from kvplan.control.sources import RouterCounterSource

    (bucket,) = (b.name for b in plan.buckets)
    now = [1_000_000.0]
    store = RedisFlagStore(store_url, plan)
    await store.start()
    try:
        source = RouterCounterSource.from_url(f"{router.metrics_url}/metrics", plan.slo, clock=lambda: now[0])
        ctl = rollout.RolloutController(store, source, clock=lambda: now[0])
        flags = store.snapshot().buckets[bucket]
        await rollout.apply(
            store, flags, rollout.start(flags, (50, 100), 60.0, 0, gate, now[0]), "quality-test"
        )

        async def routed() -> bool:
            b = await _bucket_state(router, bucket)
            return bool(b["weight"] == 50 and b["shadow"] == flags.shadow)

        await _until(routed, 30, "the router following the rollout's first step")
        await ctl.tick()  # the window's first reading; nothing is due yet
        base_users, cand_users = users(bucket, 50, len(prompts), n_candidate)
        sent = [*zip(base_users, prompts, strict=True), *zip(cand_users, prompts, strict=False)]
        answers = await _traffic(router.url, model, sent)
        settled = shadow_settled(router, bucket, candidate)
        await _until(lambda: asyncio.to_thread(settled), 900, "every shadow copy compared")
        counts = shadow_counts(router, bucket, candidate)
        diverted = diversions(router, bucket)
        now[0] += 60.0
        (decided,) = await ctl.tick()
        after = store.snapshot().buckets[bucket]
        last = (await store.history(bucket))[-1]
    finally:
        await store.close()

    async def applied() -> bool:  # every router follows the store: the kill switch reaches them
        b = await _bucket_state(router, bucket)
        return bool(b["rollout"] == after.rollout and b["killed"] == after.killed)

    await _until(applied, 30, "the router applying the rollout's outcome")
    return GatedRollout(
        [s for s, _ in answers], [p for _, p in answers], len(cand_users), diverted, counts,
        decided[1].action, decided[1].reason, after.rollout, after.weight, after.killed, last.action,
        last.reason,
    )  # fmt: skip


async def _traffic(url: str, model: str, sent: Sequence[tuple[str, str]]) -> list[tuple[int, str]]:
    gate = asyncio.Semaphore(4)

    async def one(client: httpx.AsyncClient, user: str, prompt: str) -> tuple[int, str]:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
                "temperature": 0, "user": user}  # fmt: skip
        async with gate:
            r = await client.post(f"{url}/v1/chat/completions", json=body)
        return r.status_code, r.headers.get("x-kvplan-pool", "")

    async with httpx.AsyncClient(timeout=600) as client:
        return list(await asyncio.gather(*(one(client, u, p) for u, p in sent)))
