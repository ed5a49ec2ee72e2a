"""Rollouts end to end: real Prometheus (real PromQL) scraping a real router and simulated vLLM
workers, the controller on the real clock, state in a real Redis.

Two rollouts run at once under one controller: bucket 8k's candidate is as fast as its baseline
and must be promoted to 100%; bucket 16k's candidate decodes 10x slower (an injected inter-token
latency regression) and must be aborted within (failure limit + 1) intervals.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from control_services import Prometheus, RedisServer, Router, SimWorker

from kvplan.control import rollout
from kvplan.control.analysis import Thresholds
from kvplan.control.redis_store import RedisFlagStore
from kvplan.control.sources import PrometheusSource, totals_from_text
from kvplan.plan import load_plan

INTERVAL = 4.0
FAILURE_LIMIT = 1


def two_bucket_plan(urls: dict[str, str]) -> str:
    def pool(name: str, fmt: str, url: str) -> str:
        return (
            f"{{name: {name}, model: llama-3.1-8b, served_model_name: m, kv_format: {fmt}, "
            f'max_model_len: 32768, endpoints: ["{url}"]}}'
        )

    return f"""\
version: 1
slo: {{ttft_seconds: 0.5, itl_seconds: 0.05}}
buckets:
  - name: 8k
    max_tokens: 8192
    baseline: {pool("b8k-bf16", "bf16", urls["b8k-bf16"])}
    candidates: [{pool("b8k-int8", "int8", urls["b8k-int8"])}]
  - name: 16k
    max_tokens: 16384
    baseline: {pool("b16k-bf16", "bf16", urls["b16k-bf16"])}
    candidates: [{pool("b16k-int4", "int4", urls["b16k-int4"])}]
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[RedisServer, Router, Prometheus, Path]]:
    redis = RedisServer(tmp_path)
    redis.start()
    speeds = {"b8k-bf16": 1.0, "b8k-int8": 1.0, "b16k-bf16": 1.0, "b16k-int4": 10.0}
    fmts = {"b8k-bf16": "bf16", "b8k-int8": "int8", "b16k-bf16": "bf16", "b16k-int4": "int4"}
    sims = {p: SimWorker(tmp_path, p, fmts[p], speed=s, mean_output_tokens=12) for p, s in speeds.items()}
    plan_path = tmp_path / "pools.yaml"
    plan_path.write_text(two_bucket_plan({p: s.url for p, s in sims.items()}))
    router = Router(tmp_path, "router", plan_path, redis.url)
    prom = Prometheus(
        tmp_path,
        {"router": [(router.admin_url, {})], "vllm": [(s.url, {"pool": p}) for p, s in sims.items()]},
    )
    try:
        yield redis, router, prom, plan_path
    finally:
        prom.stop()
        router.stop()
        for s in sims.values():
            s.stop()
        redis.stop()


async def traffic(url: str, stop: asyncio.Event, failures: list[str]) -> None:
    async def worker(k: int, max_tokens: int) -> None:
        n = 0
        async with httpx.AsyncClient(timeout=60) as client:
            while not stop.is_set():
                n += 1
                body = {
                    "model": "m",
                    "max_tokens": max_tokens,
                    "user": f"u{k}-{n}",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
                    text = "".join([c async for c in resp.aiter_text()])
                    if resp.status_code != 200 or "[DONE]" not in text:
                        failures.append(f"{resp.status_code} {text[:200]}")

    # 8k traffic: short answers; 16k traffic: a large max_tokens puts it in 16k, EOS ends it early
    await asyncio.gather(*(worker(k, 32) for k in range(6)), *(worker(100 + k, 9000) for k in range(24)))


def test_slow_candidate_is_aborted_and_healthy_one_promoted(
    stack: tuple[RedisServer, Router, Prometheus, Path],
) -> None:
    redis, router, prom, plan_path = stack
    plan = load_plan(plan_path)

    async def main() -> dict[str, list[tuple[float, str, str]]]:
        store = RedisFlagStore(redis.url, plan)
        await store.start()
        source = PrometheusSource(prom.url, plan.slo)
        ctl = rollout.RolloutController(store, source)
        stop_traffic, failures = asyncio.Event(), []
        load = asyncio.create_task(traffic(router.url, stop_traffic, failures))
        await asyncio.sleep(3)  # let Prometheus see traffic: load shape, not synchronisation
        th = Thresholds(min_requests=3)
        started = time.time()
        for bucket in ("8k", "16k"):
            flags = store.snapshot().buckets[bucket]
            d = rollout.start(flags, (50, 100), INTERVAL, FAILURE_LIMIT, th, started)
            await rollout.apply(store, flags, d, "test")
        events: dict[str, list[tuple[float, str, str]]] = {"8k": [], "16k": []}
        deadline = started + (FAILURE_LIMIT + 1) * INTERVAL + 3.0
        while time.time() < deadline:
            for bucket, d in await ctl.tick():
                events[bucket].append((time.time() - started, d.action, d.reason))
            phases = {b: store.snapshot().buckets[b].rollout for b in events}
            if phases == {"8k": "succeeded", "16k": "aborted"}:
                break
            await asyncio.sleep(0.2)
        stop_traffic.set()
        await load
        assert not failures, failures[:3]
        router_totals = totals_from_text(httpx.get(f"{router.admin_url}/metrics").text, plan.slo)
        assert router_totals[("16k", "b16k-int4")].requests > 0
        await source.close()
        await store.close()
        return events

    events = asyncio.run(main())
    assert [e[1] for e in events["8k"]] == ["rollout:complete"], events
    assert [e[1] for e in events["16k"]] == ["rollout:hold", "rollout:abort"], events
    abort_at, _, reason = events["16k"][-1]
    print(f"16k aborted {abort_at:.1f} s after start; 8k promoted {events['8k'][-1][0]:.1f} s after start")
    assert abort_at <= (FAILURE_LIMIT + 1) * INTERVAL + 2.0, events  # + one tick and the queries
    assert "itl_under_slo" in reason, reason  # the regression was seen, not mere silence
