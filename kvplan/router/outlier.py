"""Passive health (outlier detection in Envoy's style): what an upstream exchange says about its endpoint.

Only gateway errors count against an endpoint: a refused connection, a timeout, a reset or
malformed response, a 502 or 504. A 4xx is the client's; a 429 or 503 is backpressure; a plain
500 may be provoked by the request itself (a prompt the worker rejects), so it is retried
elsewhere but is not the endpoint's fault. An endpoint is ejected after `consecutive` gateway
errors in a row (each from a different request: a request never tries an endpoint twice), a
refused connection at once; any other answer resets the count. Requests alone never eject more
than `max_percent` of a pool's endpoints (counting those the probes found down), so a client
cannot take a pool offline; the health probes (kvplan.router.monitor) still can, and they bring an
ejected endpoint back once `seconds` are over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kvplan.metric_names import ErrorKind
from kvplan.router.endpoints import Endpoint
from kvplan.router.metric_types import Counter

log = logging.getLogger("kvplan.router")


@dataclass(frozen=True)
class Ejection:
    consecutive: int = 5  # gateway errors in a row that eject (Envoy's consecutive_gateway_failure)
    max_percent: int = 50  # at most this share of a pool ejected by requests (at least one of two)
    seconds: float = 5.0  # minimum time out of rotation


def may_eject(endpoints: Sequence[Endpoint], max_percent: int) -> bool:
    """Whether one more endpoint of this pool may be taken out by requests alone."""
    down = sum(1 for e in endpoints if not e.healthy)
    return (down + 1) * 100 <= max_percent * len(endpoints)


class PassiveHealth:
    def __init__(self, upstream_errors: Counter, ejection: Ejection) -> None:
        self.upstream_errors = upstream_errors
        self.ejection = ejection

    def gateway_error(self, ep: Endpoint, kind: ErrorKind, pool: Sequence[Endpoint]) -> None:
        """An exchange with `ep` failed in a way only the endpoint (or the path to it) explains."""
        self.upstream_errors.labels(ep.pool, kind).inc()
        ep.failures += 1
        threshold = 1 if kind is ErrorKind.CONNECT else self.ejection.consecutive
        if ep.healthy and ep.failures >= threshold and may_eject(pool, self.ejection.max_percent):
            ep.healthy = False
            ep.ejected_until = asyncio.get_running_loop().time() + self.ejection.seconds
            log.warning("endpoint %s of pool %s ejected after %d x %s", ep.url, ep.pool, ep.failures, kind)

    def answered(self, ep: Endpoint) -> None:
        """`ep` answered with something other than a gateway error: it works."""
        ep.failures = 0
