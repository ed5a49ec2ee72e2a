"""Where rollout analysis gets its numbers: Prometheus (real PromQL) or a router's own counters.

Both give the same thing, `PoolWindow`: increases over [start, end] of the router's request
counter (by outcome) and TTFT histogram, and of an inter-token-latency histogram, for one pool
of one bucket. Histogram shares use the edge equal to the plan's SLO bound (the router puts
its bounds on exact edges; a missing edge is "no data", never an interpolated guess).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from kvplan.control.analysis import PoolWindow
from kvplan.metric_names import ERROR_OUTCOMES, EXCLUDED_OUTCOMES, GATED_MEASURE
from kvplan.metric_names import router as rm
from kvplan.metric_names import vllm as vm
from kvplan.plan import Slo

ROUTER_ITL = rm.ITL_SECONDS  # the router's own inter-token histogram (embedded mode)
SHADOW = rm.SHADOW_AGREEMENT  # histogram; its _count is the pairs, _sum the agreement


class CounterFamily(Protocol):
    @property
    def children(self) -> Mapping[tuple[str, ...], Any]: ...  # label values -> a child with `.value`


class HistogramFamily(Protocol):
    @property
    def edges(self) -> tuple[float, ...]: ...

    @property
    def children(self) -> Mapping[tuple[str, ...], Any]: ...  # label values -> `.counts` per edge, +Inf


class RouterCounters(Protocol):
    """What the embedded controller reads from a router's metric objects in process
    (kvplan.router.metrics.RouterMetrics has these; labels as in kvplan.metric_names.router)."""

    @property
    def requests(self) -> CounterFamily: ...  # {bucket, pool, regime, outcome}

    @property
    def ttft(self) -> HistogramFamily: ...  # {bucket, pool, regime}

    @property
    def itl(self) -> HistogramFamily: ...  # {bucket, pool, regime}

    @property
    def shadow_agreement(self) -> HistogramFamily: ...  # {bucket, pool, measure}: `.counts`, `.sum`


def _edge_count(buckets: Mapping[float, float], bound: float) -> float | None:
    """Observations <= bound, when bound is an exact edge."""
    for le, count in buckets.items():
        if math.isclose(le, bound, rel_tol=1e-9):
            return count
    return None


_EXCLUDED = "|".join(EXCLUDED_OUTCOMES)
_ERRORS = "|".join(ERROR_OUTCOMES)


@dataclass(frozen=True)
class Queries:
    """The PromQL, written once (str.format templates: {sel} bucket/pool selector, {w} seconds)."""

    requests: str = "sum(increase(" + rm.REQUESTS + '_total{{{sel},outcome!~"' + _EXCLUDED + '"}}[{w}s]))'
    errors: str = "sum(increase(" + rm.REQUESTS + '_total{{{sel},outcome=~"' + _ERRORS + '"}}[{w}s]))'
    ttft: str = "sum by (le) (increase(" + rm.TTFT_SECONDS + "_bucket{{{sel}}}[{w}s]))"
    # vLLM's own histogram; Prometheus labels each scraped vLLM target with its pool
    itl: str = "sum by (le) (increase(" + vm.INTER_TOKEN_LATENCY + '_bucket{{pool="{pool}"}}[{w}s]))'
    shadow_pairs: str = "sum(increase(" + SHADOW + '_count{{{sel},measure="' + GATED_MEASURE + '"}}[{w}s]))'
    shadow_sum: str = "sum(increase(" + SHADOW + '_sum{{{sel},measure="' + GATED_MEASURE + '"}}[{w}s]))'


class PrometheusSource:
    def __init__(self, url: str, slo: Slo, queries: Queries = Queries(), timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.slo = slo
        self.q = queries
        self._client = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def _query(self, promql: str, at: float) -> list[dict[str, Any]]:
        resp = await self._client.get(
            f"{self.url}/api/v1/query", params={"query": promql, "time": f"{at:.3f}"}
        )
        resp.raise_for_status()
        body = resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query failed: {body.get('error')}: {promql}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def _scalar(self, promql: str, at: float) -> float | None:
        rows = await self._query(promql, at)
        return float(rows[0]["value"][1]) if rows else None

    async def _histogram(self, promql: str, at: float) -> dict[float, float]:
        rows = await self._query(promql, at)
        return {float(r["metric"]["le"]): float(r["value"][1]) for r in rows if "le" in r["metric"]}

    async def window(self, bucket: str, pool: str, start: float, end: float) -> PoolWindow | None:
        w = max(1, round(end - start))
        sel = f'bucket="{bucket}",pool="{pool}"'
        requests = await self._scalar(self.q.requests.format(sel=sel, w=w), end)
        if requests is None:
            return None
        errors = await self._scalar(self.q.errors.format(sel=sel, w=w), end) or 0.0
        ttft = await self._histogram(self.q.ttft.format(sel=sel, w=w), end)
        itl = await self._histogram(self.q.itl.format(pool=pool, w=w), end)
        pairs = await self._scalar(self.q.shadow_pairs.format(sel=sel, w=w), end)
        agreement = await self._scalar(self.q.shadow_sum.format(sel=sel, w=w), end)
        return PoolWindow(
            requests=requests,
            errors=errors,
            ttft_total=ttft.get(math.inf, 0.0),
            ttft_fast=_edge_count(ttft, self.slo.ttft_seconds) or 0.0,
            itl_total=itl.get(math.inf) if itl else None,
            itl_fast=_edge_count(itl, self.slo.itl_seconds) if itl else None,
            shadow_pairs=pairs,
            shadow_agreement_sum=agreement,
        )


Totals = dict[tuple[str, str], PoolWindow]


def totals_from_text(text: str, slo: Slo) -> Totals:
    """Cumulative per-(bucket, pool) counts from a router's Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    req: dict[tuple[str, str], list[float]] = {}
    ttft: dict[tuple[str, str], dict[float, float]] = {}
    itl: dict[tuple[str, str], dict[float, float]] = {}
    shadow: dict[tuple[str, str], list[float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.labels.get("bucket", ""), s.labels.get("pool", ""))
            if s.name in (f"{SHADOW}_count", f"{SHADOW}_sum") and s.labels.get("measure") == GATED_MEASURE:
                shadow.setdefault(key, [0.0, 0.0])[s.name.endswith("_sum")] += s.value
            elif s.name == f"{rm.REQUESTS}_total":
                outcome = s.labels.get("outcome", "")
                if outcome in EXCLUDED_OUTCOMES:
                    continue
                r = req.setdefault(key, [0.0, 0.0])
                r[0] += s.value
                r[1] += s.value if outcome in ERROR_OUTCOMES else 0.0
            elif s.name in (f"{rm.TTFT_SECONDS}_bucket", f"{ROUTER_ITL}_bucket"):
                target = ttft if s.name.startswith(rm.TTFT_SECONDS) else itl
                le = float(s.labels["le"])
                h = target.setdefault(key, {})
                h[le] = h.get(le, 0.0) + s.value
    out: Totals = {}
    for key, (n, errors) in req.items():
        t, i = ttft.get(key, {}), itl.get(key)
        pairs, agreement = shadow.get(key, (None, None))
        out[key] = PoolWindow(
            requests=n,
            errors=errors,
            ttft_total=t.get(math.inf, 0.0),
            ttft_fast=_edge_count(t, slo.ttft_seconds) or 0.0,
            itl_total=i.get(math.inf) if i else None,
            itl_fast=_edge_count(i, slo.itl_seconds) if i else None,
            shadow_pairs=pairs,
            shadow_agreement_sum=agreement,
        )
    return out


def totals_from_router(m: RouterCounters, slo: Slo) -> Totals:
    """The same numbers as `totals_from_text`, read straight from a router's metric objects in
    process: microseconds instead of rendering and parsing the exposition text every tick."""
    req: dict[tuple[str, str], list[float]] = {}
    for (bucket, pool, _regime, outcome), child in m.requests.children.items():
        if outcome in EXCLUDED_OUTCOMES:
            continue
        value = child.value
        r = req.setdefault((bucket, pool), [0.0, 0.0])
        r[0] += value
        r[1] += value if outcome in ERROR_OUTCOMES else 0.0
    ttft, itl = _shares(m.ttft, slo.ttft_seconds), _shares(m.itl, slo.itl_seconds)
    shadow = {
        (bucket, pool): child
        for (bucket, pool, measure), child in m.shadow_agreement.children.items()
        if measure == GATED_MEASURE
    }
    out: Totals = {}
    for key, (n, errors) in req.items():
        t_total, t_fast = ttft.get(key, (0.0, None))
        i_total, i_fast = itl.get(key, (None, None))
        pairs = shadow.get(key)
        out[key] = PoolWindow(
            requests=n,
            errors=errors,
            ttft_total=t_total or 0.0,
            ttft_fast=t_fast or 0.0,
            itl_total=i_total,
            itl_fast=i_fast,
            shadow_pairs=float(sum(pairs.counts)) if pairs else None,
            shadow_agreement_sum=pairs.sum if pairs else None,
        )
    return out


def _shares(h: HistogramFamily, bound: float) -> dict[tuple[str, str], tuple[float, float | None]]:
    """(bucket, pool) -> (observations, observations <= bound when bound is an exact edge)."""
    at = next((i for i, e in enumerate(h.edges) if math.isclose(e, bound, rel_tol=1e-9)), None)
    out: dict[tuple[str, str], tuple[float, float | None]] = {}
    for labels, child in h.children.items():
        counts = child.counts
        total, fast = out.get((labels[0], labels[1]), (0.0, 0.0))
        out[(labels[0], labels[1])] = (
            total + sum(counts),
            None if at is None or fast is None else fast + sum(counts[: at + 1]),
        )
    return out


def _minus(a: PoolWindow, b: PoolWindow) -> PoolWindow:
    def d(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else max(0.0, x - y)

    return PoolWindow(
        requests=max(0.0, a.requests - b.requests),
        errors=max(0.0, a.errors - b.errors),
        ttft_total=max(0.0, a.ttft_total - b.ttft_total),
        ttft_fast=max(0.0, a.ttft_fast - b.ttft_fast),
        itl_total=d(a.itl_total, b.itl_total),
        itl_fast=d(a.itl_fast, b.itl_fast),
        shadow_pairs=d(a.shadow_pairs, b.shadow_pairs),
        shadow_agreement_sum=d(a.shadow_agreement_sum, b.shadow_agreement_sum),
    )


class RouterCounterSource:
    """Embedded mode: the router's own counters, read each tick; a window is a difference.

    `read` returns the router's metrics text (GET /metrics); inside the router, `in_process` reads
    its metric objects instead.
    Readings are kept for `keep_s`; a window whose start predates the first reading (a controller
    that just started) is not covered, and the controller waits for a full window instead of
    judging a partial one.
    """

    def __init__(
        self,
        read: Callable[[], Awaitable[str]] | None,
        slo: Slo,
        *,
        clock: Callable[[], float] = time.time,
        keep_s: float = 7200.0,
        direct: RouterCounters | None = None,
    ) -> None:
        if read is None and direct is None:
            raise ValueError("give the router's metrics text (read) or its metric objects (direct)")
        self._read, self.slo, self.clock, self.keep_s = read, slo, clock, keep_s
        self._direct = direct
        self._readings: list[tuple[float, Totals]] = []

    @classmethod
    def from_url(cls, metrics_url: str, slo: Slo, **kw: Any) -> RouterCounterSource:
        async def read() -> str:
            async with httpx.AsyncClient(timeout=5.0) as client:
                resp = await client.get(metrics_url)
                resp.raise_for_status()
                return resp.text

        return cls(read, slo, **kw)

    @classmethod
    def in_process(cls, metrics: RouterCounters, slo: Slo, **kw: Any) -> RouterCounterSource:
        """Inside the router (embedded mode): its metric objects, no exposition text."""
        return cls(None, slo, direct=metrics, **kw)

    async def _totals(self) -> Totals:
        if self._direct is not None:
            return totals_from_router(self._direct, self.slo)
        assert self._read is not None
        return totals_from_text(await self._read(), self.slo)

    async def observe(self) -> None:
        now = self.clock()
        self._readings.append((now, await self._totals()))
        self._readings = [r for r in self._readings if r[0] >= now - self.keep_s]

    def covers(self, start: float) -> bool:
        return bool(self._readings) and self._readings[0][0] <= start + 1e-6

    def _at(self, t: float) -> Totals | None:
        best = None
        for at, totals in self._readings:
            if at <= t + 1e-6:
                best = totals
        return best

    async def window(self, bucket: str, pool: str, start: float, end: float) -> PoolWindow | None:
        if not self._readings or self._readings[-1][0] < end - 1e-6:
            await self.observe()
        first, last = self._at(start), self._at(end)
        if first is None or last is None:
            return None
        a, b = last.get((bucket, pool)), first.get((bucket, pool))
        if a is None:
            return None
        return _minus(a, b) if b is not None else a
