"""What the embedded control plane costs the router: the ITL sink per streamed chunk, and the
embedded rollout controller's once-a-second reading of the router's counters.

Micro-measurements (min of several repeats, so other jobs on the machine inflate them less than
an end-to-end latency run would): the proxy's body sink without and with the inter-token
histogram, side by side; the controller's in-process reading (`totals_from_router`) next to
the same reading through the exposition text (`generate_latest` + `totals_from_text`).

    .venv/bin/python bench/router_itl_overhead.py   # prints markdown; --out FILE to save it
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import generate_latest

from kvplan.control.sources import totals_from_router, totals_from_text
from kvplan.plan import parse_plan
from kvplan.router.metrics import RouterMetrics
from kvplan.router.proxy import TokenGaps

CHUNKS = 200_000
REPEATS = 7


def plan_text(buckets: int) -> str:
    rows = ["version: 1", "slo: {ttft_seconds: 0.5, itl_seconds: 0.05}", "buckets:"]
    for i in range(buckets):
        rows += [
            f"  - name: b{i}",
            f"    max_tokens: {4096 * (i + 1)}",
            f"    baseline: {{name: p{i}-bf16, model: llama-3.1-8b, max_model_len: {4096 * (i + 1)},"
            f' endpoints: ["http://127.0.0.1:{9000 + 2 * i}"]}}',
            "    candidates:",
            f"      - {{name: p{i}-int8, model: llama-3.1-8b, kv_format: int8, max_model_len:"
            f' {4096 * (i + 1)}, endpoints: ["http://127.0.0.1:{9001 + 2 * i}"]}}',
        ]
    return "\n".join(rows) + "\n"


def best(fn: object, n: int) -> float:
    """Seconds per call, min over REPEATS runs of n calls."""
    assert callable(fn)
    out = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return min(out)


async def sink_costs(m: RouterMetrics) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    chunk = b'data: {"choices":[{"delta":{"content":"tok "}}]}\n\n'
    written: list[int] = [0]

    def write(data: bytes) -> None:  # stands in for Connection.write (identical in both arms)
        written[0] += 1

    plain = best(lambda: write(chunk), CHUNKS)
    gaps = TokenGaps(write, m.itl.labels("b0", "p0-int8", "int8"), loop.time)
    with_itl = best(lambda: gaps(chunk), CHUNKS)
    return plain, with_itl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buckets", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    plan = parse_plan(plan_text(args.buckets))
    m = RouterMetrics(plan)
    try:
        import uvloop

        plain, with_itl = uvloop.run(sink_costs(m))
        loop_name = "uvloop"
    except ImportError:
        plain, with_itl = asyncio.run(sink_costs(m))
        loop_name = "asyncio"
    direct = best(lambda: totals_from_router(m, plan.slo), 2000)
    via_text = best(lambda: totals_from_text(generate_latest(m.registry).decode(), plan.slo), 50)
    load = os.getloadavg()
    lines = [
        "# Router: cost of the embedded control plane",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; device: {platform.machine()} {os.cpu_count()} cores"
        f" (shared), Python {platform.python_version()}, {loop_name}; load average {load[0]:.1f}",
        f"- command: `.venv/bin/python bench/router_itl_overhead.py --buckets {args.buckets}`",
        f"- plan: {args.buckets} buckets x 2 pools; min of {REPEATS} repeats",
        "",
        "| what | cost |",
        "|---|---|",
        f"| body sink per upstream chunk, plain write | {plain * 1e9:.0f} ns |",
        f"| body sink per chunk with the ITL histogram (streamed 2xx only) | {with_itl * 1e9:.0f} ns |",
        f"| added per streamed chunk | {(with_itl - plain) * 1e9:.0f} ns |",
        f"| controller reading per tick, in process (`totals_from_router`, what the router runs) | "
        f"{direct * 1e3:.3f} ms |",
        f"| same reading through the exposition text (render /metrics + parse; rejected) | "
        f"{via_text * 1e3:.2f} ms |",
        "",
        "Non-streamed responses keep the plain sink (no per-chunk work added). The controller's"
        " reading runs on the router's event loop once per second (a request arriving meanwhile"
        " waits that long), which is why it reads the metric objects instead of the text.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
