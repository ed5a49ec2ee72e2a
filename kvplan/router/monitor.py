"""Background I/O: health probes and vLLM load scrapes of every endpoint (about once a second).

A failed /health (or no connection) marks the endpoint unhealthy; the next 200 brings it back,
so probes double as recovery probes for endpoints the proxy ejected.
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


async def probe(ep: Endpoint, transport: Transport, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        status, _ = await asyncio.wait_for(fetch(transport, ep.address, "/health", timeout), timeout)
        healthy = status == 200
    except Exception:  # any failure to answer /health means unhealthy
        healthy = False
    if healthy and not ep.healthy and loop.time() < ep.ejected_until:
        healthy = False  # ejected for failing real requests: /health alone does not bring it back yet
    if healthy != ep.healthy:
        log.warning(
            "endpoint %s of pool %s is now %s", ep.url, ep.pool, "healthy" if healthy else "unhealthy"
        )
    ep.healthy = healthy
    if healthy:
        ep.failures = 0
    else:
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


async def probe_all(endpoints: Iterable[Endpoint], transport: Transport, timeout: float) -> None:
    await asyncio.gather(*(probe(ep, transport, timeout) for ep in endpoints))
