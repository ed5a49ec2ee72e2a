"""The failover decision for one request: the next endpoint, a switch to the baseline pool, or give
up with this error. No I/O: it reads the endpoints' state and asks the pool's endpoint policy
with the request and the clock it is given, so every path is tested without a server.

Every try happens before the first response byte reaches the client (the proxy never retries
after that). A stale keep-alive connection that the endpoint closed while idle does not count
as a try.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from kvplan.metric_names import EndpointChoiceReason, RejectReason
from kvplan.router.api_errors import ApiError
from kvplan.router.endpoint_policy import Pick
from kvplan.router.endpoints import Endpoint, all_full
from kvplan.router.routes import PoolRoute


class NextEndpoint(NamedTuple):
    endpoint: Endpoint
    reason: EndpointChoiceReason | str  # how the pool's endpoint policy picked it


class SwitchToBaseline(NamedTuple):
    pool: PoolRoute


class GiveUp(NamedTuple):
    error: ApiError


Step = NextEndpoint | SwitchToBaseline | GiveUp


class Head(enum.Enum):
    """What an upstream response status says, before any byte of it is forwarded."""

    OK = "ok"  # 1xx-3xx: the endpoint works
    CLIENT_ERROR = "client_error"  # 4xx other than 429: the request's fault, never the endpoint's
    BACKPRESSURE = "backpressure"  # 429, 503: busy, not broken
    GATEWAY_ERROR = "gateway_error"  # 502, 504: the endpoint (or what is behind it) is broken
    SERVER_ERROR = "server_error"  # other 5xx: may be provoked by the request itself

    @property
    def retryable(self) -> bool:
        return self is Head.BACKPRESSURE or self is Head.SERVER_ERROR or self is Head.GATEWAY_ERROR


def head_of(status: int) -> Head:
    if status < 400:
        return Head.OK
    if status in (429, 503):
        return Head.BACKPRESSURE
    if status in (502, 504):
        return Head.GATEWAY_ERROR
    return Head.SERVER_ERROR if status >= 500 else Head.CLIENT_ERROR


def no_endpoint(pool: PoolRoute, retry_after: int) -> ApiError:
    """The error when a pool has nothing left to try: 429 when it is full, else 503."""
    headers = ((b"retry-after", str(retry_after).encode()),)
    if all_full(pool.endpoints):
        return ApiError(
            429,
            f"Every endpoint of pool {pool.name} is at its concurrency limit; retry shortly.",
            type="rate_limit_error",
            code="pool_saturated",
            reason=RejectReason.NO_HEALTHY_ENDPOINT,
            headers=headers,
        )
    return ApiError(
        503,
        f"No healthy endpoint in pool {pool.name}.",
        type="service_unavailable",
        code="no_healthy_endpoint",
        reason=RejectReason.NO_HEALTHY_ENDPOINT,
        headers=headers,
    )


class Failover:
    """The tries of one request: started on its routed pool, moved to the baseline at most once."""

    __slots__ = ("attempts", "baseline", "last_error", "max_attempts", "pool", "retry_after", "tried")

    def __init__(self, pool: PoolRoute, baseline: PoolRoute, max_attempts: int, retry_after: int) -> None:
        self.pool = pool
        self.baseline = baseline
        self.max_attempts = max_attempts
        self.retry_after = retry_after
        self.attempts = 0
        self.tried: list[Endpoint] = []
        self.last_error: ApiError | None = None

    def next(self, pick: Pick) -> Step:
        if self.attempts >= self.max_attempts:
            return GiveUp(self.last_error or no_endpoint(self.pool, self.retry_after))
        choice = self.pool.chooser.select(self.pool.endpoints, pick, self.tried)
        if choice is not None:
            self.attempts += 1
            return NextEndpoint(choice.endpoint, choice.reason)
        if self.pool is not self.baseline and any(e.healthy for e in self.baseline.endpoints):
            # nothing left to try in the candidate: the baseline serves (no byte was sent yet)
            self.pool, self.tried = self.baseline, []
            return SwitchToBaseline(self.baseline)
        return GiveUp(self.last_error or no_endpoint(self.pool, self.retry_after))

    def may_retry(self, ep: Endpoint) -> bool:
        """Whether a retryable head from `ep` should be declined: another try is left and possible,
        on this pool or (from a candidate) on the baseline."""
        if self.attempts >= self.max_attempts:
            return False
        if any(e.healthy and e is not ep and e not in self.tried for e in self.pool.endpoints):
            return True
        return self.pool is not self.baseline and any(e.healthy for e in self.baseline.endpoints)

    def declined(self, ep: Endpoint) -> None:
        """`ep` answered a retryable status that was not forwarded."""
        self.tried.append(ep)

    def failed(self, ep: Endpoint, error: ApiError) -> None:
        """`ep` failed (connection, timeout, reset); `error` answers the client if nothing else serves."""
        self.tried.append(ep)
        self.last_error = error

    def stale(self) -> None:
        """A reused keep-alive connection was closed under us: that try does not count."""
        self.attempts -= 1
