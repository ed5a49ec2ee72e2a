"""Endpoints of a pool and their live state.

The state is written by the proxy (in-flight, passive ejection) and by the monitor (health
probes, scraped vLLM load and cache size); the functions here and the endpoint policies
(kvplan/router/endpoint_policy/) only read it and take the clock as an argument, so they are
tested without any I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Saturation:
    """When an endpoint counts as saturated (besides being at its concurrency bound)."""

    waiting: float = 8.0  # scraped vllm:num_requests_waiting at or above this
    kv_usage: float = 0.95  # scraped vllm:kv_cache_usage_perc at or above this
    stale_after: float = 3.0  # seconds without a successful scrape: stale, counts as saturated


class Endpoint:
    """One vLLM server of one pool."""

    __slots__ = (
        "address",
        "block_size",
        "cache_blocks",
        "ejected_until",
        "failures",
        "healthy",
        "host_header",
        "in_flight",
        "kv_usage",
        "max_in_flight",
        "pool",
        "probe_failures",
        "probed",
        "scraped_at",
        "url",
        "waiting",
    )

    def __init__(self, pool: str, url: str, max_in_flight: int) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"endpoint {url!r}: only plain http:// endpoints are supported")
        self.pool = pool
        self.url = url
        self.address = (parts.hostname, parts.port or 80)
        self.host_header = parts.netloc.encode()
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.healthy = True  # until a probe or a request says otherwise
        self.failures = 0  # consecutive gateway errors (kvplan.router.outlier)
        self.ejected_until = 0.0  # loop time: a passive ejection holds at least this long
        self.probe_failures = 0  # consecutive failed health probes
        self.probed = False  # a health probe has answered 200 at least once
        self.waiting = 0.0
        self.kv_usage = 0.0
        self.scraped_at = -1e18  # loop time of the last successful scrape (never: stale)
        self.block_size = 0  # scraped from vllm:cache_config_info (0: not reported yet)
        self.cache_blocks = 0  # its num_gpu_blocks: how many blocks its prefix cache can hold

    def stale(self, now: float, sat: Saturation) -> bool:
        return now - self.scraped_at > sat.stale_after

    def full(self) -> bool:
        return self.in_flight >= self.max_in_flight

    def overloaded(self, now: float, sat: Saturation) -> bool:
        """Saturated by scraped load (stale load counts as saturated)."""
        return self.stale(now, sat) or self.waiting >= sat.waiting or self.kv_usage >= sat.kv_usage

    def score(self, now: float, sat: Saturation) -> float:
        """Lower is better: own in-flight plus the endpoint's queue; stale load is worst."""
        if self.stale(now, sat):
            return 1e9 + self.in_flight
        return self.in_flight + 2.0 * self.waiting + (8.0 if self.kv_usage >= sat.kv_usage else 0.0)

    def __repr__(self) -> str:
        return f"Endpoint({self.pool}, {self.url}, healthy={self.healthy}, in_flight={self.in_flight})"


class Availability(enum.Enum):
    """A pool as the policy sees it."""

    AVAILABLE = "available"
    SATURATED = "saturated"  # every healthy endpoint full or loaded
    STALE = "stale"  # no fresh load data for any healthy endpoint
    UNHEALTHY = "unhealthy"  # no healthy endpoint


def availability(endpoints: Sequence[Endpoint], now: float, sat: Saturation) -> Availability:
    healthy = fresh = room = 0
    for e in endpoints:
        if not e.healthy:
            continue
        healthy += 1
        if now - e.scraped_at > sat.stale_after:
            continue
        fresh += 1
        if e.in_flight < e.max_in_flight and e.waiting < sat.waiting and e.kv_usage < sat.kv_usage:
            room += 1
    if not healthy:
        return Availability.UNHEALTHY
    if not fresh:
        return Availability.STALE
    return Availability.AVAILABLE if room else Availability.SATURATED


def eligible(endpoints: Sequence[Endpoint], exclude: Sequence[Endpoint] = ()) -> list[Endpoint]:
    """Endpoints a request may be sent to: healthy, below their concurrency bound, not yet tried."""
    return [e for e in endpoints if e.healthy and e.in_flight < e.max_in_flight and e not in exclude]


def all_full(endpoints: Sequence[Endpoint]) -> bool:
    """Every healthy endpoint at its concurrency bound (the router answers 429, not 503)."""
    healthy = [e for e in endpoints if e.healthy]
    return bool(healthy) and all(e.full() for e in healthy)
