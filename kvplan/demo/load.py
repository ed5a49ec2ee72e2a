"""The demo's load generator: Poisson arrivals of streamed chats, short and long, from 200 users."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from dataclasses import dataclass, field

import httpx

from kvplan.demo.config import MODEL, DemoOptions


def _prompt(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens as the router estimates them (one per 3 bytes)."""
    words = ("kv", "cache", "page", "token", "head", "layer", "scale", "quant", "pool", "route")
    out: list[str] = []
    size = 0
    while size < tokens * 3:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def sample_request(rng: random.Random) -> tuple[int, int]:
    """(prompt tokens, max_tokens): 70% short chats for the 8k bucket, 30% long documents."""
    if rng.random() < 0.7:
        return int(rng.lognormvariate(math.log(1200), 0.8)) % 7000 + 50, rng.choice((64, 128, 256))
    return rng.randint(9000, 30000), rng.choice((64, 128))


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


async def _one(client: httpx.AsyncClient, rng: random.Random, stats: LoadStats, user: str) -> None:
    prompt_tokens, max_tokens = sample_request(rng)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": _prompt(rng, prompt_tokens)}],
        "max_tokens": max_tokens,
        "stream": True,
        "user": user,
    }
    stats.sent += 1
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for _ in resp.aiter_raw():
                pass
            stats.by_status[resp.status_code] = stats.by_status.get(resp.status_code, 0) + 1
            if resp.status_code == 200:
                stats.ok += 1
            else:
                stats.failed += 1
    except httpx.HTTPError:
        stats.failed += 1


async def generate_load(router: str, opts: DemoOptions, stats: LoadStats, stop: asyncio.Event) -> None:
    """Poisson arrivals at `rps` from 200 users (cohorts hash per user) until `stop`."""
    rng = random.Random(opts.seed)
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=router, timeout=120.0, limits=limits) as client:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.expovariate(opts.rps))
            if stop.is_set():
                break
            task = asyncio.create_task(_one(client, rng, stats, f"user-{rng.randrange(200)}"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
