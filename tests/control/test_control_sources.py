"""The embedded metrics source reads the router's own counters (the router's real metric classes)."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from kvplan.control.sources import RouterCounterSource, totals_from_router, totals_from_text
from kvplan.formats import get_format
from kvplan.plan import Plan
from kvplan.router.metrics import RouterMetrics


def serve(m: RouterMetrics, pool: str, fmt: str, ok: int, errors: int, fast: int, slow: int) -> None:
    regime = get_format(fmt).regime
    m.requests.labels("16k", pool, regime, "ok").inc(ok)
    m.requests.labels("16k", pool, regime, "upstream_error").inc(errors)
    m.requests.labels("16k", pool, regime, "client_error").inc(7)  # the client's fault: not counted
    for _ in range(fast):
        m.ttft.labels("16k", pool, regime).observe(0.1)
    for _ in range(slow):
        m.ttft.labels("16k", pool, regime).observe(0.9)


def test_a_window_is_the_difference_of_two_readings(plan: Plan) -> None:
    m = RouterMetrics(plan)
    now = [1000.0]
    source = RouterCounterSource(lambda: _text(m), plan.slo, clock=lambda: now[0])

    async def main() -> None:
        serve(m, "b16k-int4", "int4", ok=50, errors=5, fast=40, slow=10)
        await source.observe()
        assert not source.covers(999.0) and source.covers(1000.0)
        now[0] = 1300.0
        serve(m, "b16k-int4", "int4", ok=90, errors=10, fast=60, slow=30)
        serve(m, "b16k-bf16", "bf16", ok=900, errors=1, fast=880, slow=20)
        cand = await source.window("16k", "b16k-int4", 1000.0, 1300.0)
        base = await source.window("16k", "b16k-bf16", 1000.0, 1300.0)
        assert cand is not None and base is not None
        assert (cand.requests, cand.errors, cand.ttft_total, cand.ttft_fast) == (100, 10, 90, 60)
        assert (base.requests, base.errors, base.ttft_fast) == (901, 1, 880)
        assert cand.itl_total == 0  # no streamed responses: nothing observed (analysis skips ITL)

    asyncio.run(main())


async def _text(m: RouterMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_the_ttft_share_uses_the_slo_edge_exactly(plan: Plan) -> None:
    m = RouterMetrics(plan)
    serve(m, "b16k-int4", "int4", ok=10, errors=0, fast=3, slow=7)
    totals = totals_from_text(generate_latest(m.registry).decode(), plan.slo)
    w = totals[("16k", "b16k-int4")]
    assert (w.ttft_total, w.ttft_fast) == (10, 3)  # plan.slo.ttft_seconds = 0.5 is an edge


def test_the_itl_share_reads_the_routers_histogram_at_the_slo_edge(plan: Plan) -> None:
    m = RouterMetrics(plan)
    regime = get_format("int4").regime
    m.requests.labels("16k", "b16k-int4", regime, "ok").inc(4)
    for gap in (0.01, 0.02, plan.slo.itl_seconds, 0.2, 0.3):  # the bound itself counts as under it
        m.itl.labels("16k", "b16k-int4", regime).observe(gap)
    w = totals_from_text(generate_latest(m.registry).decode(), plan.slo)[("16k", "b16k-int4")]
    assert (w.itl_total, w.itl_fast) == (5, 3)


def test_in_process_reading_equals_the_text_reading(plan: Plan) -> None:
    """The router's embedded controller reads metric objects; a remote one parses /metrics."""
    m = RouterMetrics(plan)
    serve(m, "b16k-int4", "int4", ok=50, errors=5, fast=40, slow=10)
    serve(m, "b16k-bf16", "bf16", ok=70, errors=1, fast=60, slow=9)
    m.requests.labels("16k", "b16k-int4", get_format("int4").regime, "stream_broken").inc(2)
    m.requests.labels("16k", "b16k-int4", get_format("int4").regime, "cancelled").inc(4)
    for gap in (0.01, 0.04, 0.05, 0.06, 1.5, 99.0):
        m.itl.labels("16k", "b16k-bf16", get_format("bf16").regime).observe(gap)
    direct = totals_from_router(m, plan.slo)
    assert direct == totals_from_text(generate_latest(m.registry).decode(), plan.slo)
    cand, base = direct[("16k", "b16k-int4")], direct[("16k", "b16k-bf16")]
    assert (cand.requests, cand.errors, cand.ttft_fast, cand.itl_total) == (57, 7, 40, 0)
    assert (base.itl_total, base.itl_fast) == (6, 3)

    async def main() -> None:
        now = [50.0]
        source = RouterCounterSource.in_process(m, plan.slo, clock=lambda: now[0])
        await source.observe()
        now[0] = 60.0
        serve(m, "b16k-int4", "int4", ok=10, errors=0, fast=10, slow=0)
        w = await source.window("16k", "b16k-int4", 50.0, 60.0)
        assert w is not None and (w.requests, w.errors, w.ttft_fast) == (10, 0, 10)

    asyncio.run(main())
