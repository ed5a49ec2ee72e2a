"""Passive health: what a failed or successful upstream exchange does to its endpoint.

The proxy reports each exchange here; the health probes (kvplan.router.monitor) bring an
ejected endpoint back once its ejection time is over.
"""

from __future__ import annotations

import asyncio
import logging

from kvplan.metric_names import ErrorKind
from kvplan.router.endpoints import Endpoint
from kvplan.router.metric_types import Counter

log = logging.getLogger("kvplan.router")

CONSECUTIVE_FAILURES = 3  # 5xx or timeouts in a row that eject an endpoint


class PassiveHealth:
    """A refused connection ejects at once; 5xx and timeouts after `CONSECUTIVE_FAILURES` in a row."""

    def __init__(self, upstream_errors: Counter, ejection_seconds: float) -> None:
        self.upstream_errors = upstream_errors
        self.ejection_seconds = ejection_seconds

    def failed(self, ep: Endpoint, kind: ErrorKind) -> None:
        self.upstream_errors.labels(ep.pool, kind).inc()
        ep.failures += 1
        if (kind == ErrorKind.CONNECT or ep.failures >= CONSECUTIVE_FAILURES) and ep.healthy:
            ep.healthy = False
            ep.ejected_until = asyncio.get_running_loop().time() + self.ejection_seconds
            log.warning("endpoint %s of pool %s ejected after %s", ep.url, ep.pool, kind)

    def succeeded(self, ep: Endpoint) -> None:
        ep.failures = 0
