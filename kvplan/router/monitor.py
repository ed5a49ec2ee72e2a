"""Background I/O: health probes and vLLM load scrapes of every endpoint (about once a second).

An endpoint is marked unhealthy after several failed /health probes in a row (`judge`); the next
200 brings it back, so probes double as recovery probes for endpoints the proxy ejected.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable

from kvplan.metric_names import vllm as vllm_metrics
from kvplan.router.endpoints import Endpoint
from kvplan.router.transport import Transport, UpstreamError, fetch

log = logging.getLogger("kvplan.router")


def parse_load(text: str) -> tuple[float, float]:
    """(requests waiting summed over engines, highest KV-cache usage) from a vLLM /metrics page."""
    waiting, kv_usage = 0.0, 0.0
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        for name in (vllm_metrics.NUM_REQUESTS_WAITING, vllm_metrics.KV_CACHE_USAGE):
            if line.startswith(name) and line[len(name)] in "{ ":
                value = float(line.rpartition("}")[2].split()[0] if "}" in line else line.split()[1])
                if name == vllm_metrics.NUM_REQUESTS_WAITING:
                    waiting += value
                else:
                    kv_usage = max(kv_usage, value)
    return waiting, kv_usage


_CONFIG_LABEL = re.compile(r'[{,](block_size|num_gpu_blocks)="(\d+)"')


def parse_cache_config(text: str) -> tuple[int, int]:
    """(block_size, num_gpu_blocks) from `vllm:cache_config_info`'s labels; 0 where not reported."""
    start = text.find(vllm_metrics.CACHE_CONFIG_INFO + "{")
    if start < 0:
        return 0, 0
    line = text[start : text.find("\n", start)]
    found = dict(_CONFIG_LABEL.findall(line))
    return int(found.get("block_size", 0)), int(found.get("num_gpu_blocks", 0))


def judge(ep: Endpoint, answered: bool, now: float, failures_to_down: int) -> bool:
    """An endpoint's health after one probe. A healthy endpoint goes down after `failures_to_down`
    failed probes in a row (one missed 1-s probe on a busy worker is not an outage); one that never
    answered yet goes down at once; a 200 brings it back unless a passive ejection still holds."""
    if answered:
        ep.probe_failures = 0
        ep.probed = True
        return ep.healthy or now >= ep.ejected_until
    ep.probe_failures += 1
    return ep.healthy and ep.probed and ep.probe_failures < failures_to_down


async def probe(ep: Endpoint, transport: Transport, timeout: float, failures_to_down: int = 3) -> None:
    loop = asyncio.get_running_loop()
    try:
        status, _ = await asyncio.wait_for(fetch(transport, ep.address, "/health", timeout), timeout)
        answered = status == 200
    except Exception:  # any failure to answer /health is a failed probe
        answered = False
    healthy = judge(ep, answered, loop.time(), failures_to_down)
    if healthy != ep.healthy:
        log.warning(
            "endpoint %s of pool %s is now %s", ep.url, ep.pool, "healthy" if healthy else "unhealthy"
        )
        if healthy:
            ep.failures = 0
    ep.healthy = healthy
    if not answered:
        return
    try:
        status, body = await asyncio.wait_for(fetch(transport, ep.address, "/metrics", timeout), timeout)
    except (UpstreamError, TimeoutError, OSError):
        return
    if status == 200:
        try:
            text = body.decode("utf-8", "replace")
            ep.waiting, ep.kv_usage = parse_load(text)
            ep.block_size, ep.cache_blocks = parse_cache_config(text)
        except (ValueError, IndexError):
            return
        ep.scraped_at = loop.time()


async def probe_all(
    endpoints: Iterable[Endpoint], transport: Transport, timeout: float, failures_to_down: int = 3
) -> None:
    await asyncio.gather(*(probe(ep, transport, timeout, failures_to_down) for ep in endpoints))
