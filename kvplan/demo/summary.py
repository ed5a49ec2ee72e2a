"""The demo's live summary per pool: requests and TTFT from the router, KV usage from each worker."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from kvplan.demo.config import POOLS
from kvplan.demo.load import LoadStats
from kvplan.metric_names import router as rm
from kvplan.metric_names import vllm as vm


@dataclass
class PoolSummary:
    requests: float = 0.0
    ttft_p50: float = math.nan
    kv_usage: float = math.nan
    running: float = 0.0


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus-style histogram_quantile over cumulative (le, count) pairs."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


async def summarize(
    client: httpx.AsyncClient, router: str, workers: dict[str, str]
) -> dict[str, PoolSummary]:
    """Requests and TTFT p50 per pool from the router's /metrics, KV usage from each worker's."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {name: PoolSummary() for name in workers}
    ttft: dict[str, dict[float, float]] = {name: {} for name in workers}
    text = (await client.get(f"{router}/metrics")).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            pool = s.labels.get("pool", "")
            if pool not in out:
                continue
            if s.name == f"{rm.REQUESTS}_total":
                out[pool].requests += s.value
            elif s.name == f"{rm.TTFT_SECONDS}_bucket":
                le = float(s.labels["le"])
                ttft[pool][le] = ttft[pool].get(le, 0.0) + s.value
    for pool, url in workers.items():
        out[pool].ttft_p50 = _quantile(0.5, list(ttft[pool].items()))
        for family in text_string_to_metric_families((await client.get(f"{url}/metrics")).text):
            for s in family.samples:
                if s.name == vm.KV_CACHE_USAGE:
                    out[pool].kv_usage = s.value
                elif s.name == vm.NUM_REQUESTS_RUNNING:
                    out[pool].running = s.value
    return out


def table(summary: dict[str, PoolSummary], stats: LoadStats) -> Any:
    from rich.table import Table

    table = Table(title=f"requests sent {stats.sent}, ok {stats.ok}, failed {stats.failed}", expand=False)
    for col in ("pool", "format", "requests", "TTFT p50", "KV usage", "running"):
        table.add_column(col, justify="left" if col in ("pool", "format") else "right")
    formats = {p.name: p.kv_format for p in POOLS}
    for pool, s in summary.items():
        ttft = "-" if math.isnan(s.ttft_p50) else f"{s.ttft_p50 * 1000:.0f} ms"
        kv = "-" if math.isnan(s.kv_usage) else f"{s.kv_usage:.1%}"
        table.add_row(pool, formats[pool], f"{s.requests:.0f}", ttft, kv, f"{s.running:.0f}")
    return table


def line(summary: dict[str, PoolSummary]) -> str:
    parts = []
    for pool, s in summary.items():
        ttft = "-" if math.isnan(s.ttft_p50) else f"{s.ttft_p50 * 1000:.0f}ms"
        kv = "-" if math.isnan(s.kv_usage) else f"{s.kv_usage:.1%}"
        parts.append(f"{pool}: {s.requests:.0f} req, ttft p50 {ttft}, kv {kv}")
    return "; ".join(parts)
