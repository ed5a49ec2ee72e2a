"""The proxy loop: one routed request, tried where `failover` says, bytes streamed through the
injected transport.

Hot path: build the upstream request bytes once -> `Failover.next` -> take an exchange from the
transport -> write -> the response head is judged in the exchange's callback (`_Forward`), so a
response that will not be retried streams to the client with no task switch. Retries happen
only before the first response byte reaches the client.

Tees see every routed request before its first try (for instance to mirror it to another pool
off the client's path); they get the request bytes and the route, never the client connection.
A tee may hand back a `TeeCopy` to follow that one response: the body bytes of a 1xx-3xx answer
as they pass to the client, and how the request ended. No copy: nothing extra happens per chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from kvplan import headers as kv_headers
from kvplan.metric_names import DecisionReason, ErrorKind, Outcome, RejectReason
from kvplan.metric_names import router as rm
from kvplan.router.api_errors import ApiError, upstream_error
from kvplan.router.endpoint_policy import Pick
from kvplan.router.endpoints import Endpoint, Saturation
from kvplan.router.failover import Failover, GiveUp, Head, NextEndpoint, SwitchToBaseline, head_of
from kvplan.router.metric_types import CounterChild, HistogramChild
from kvplan.router.metrics import RouterMetrics
from kvplan.router.outlier import PassiveHealth
from kvplan.router.provenance import ProvenanceLog, now
from kvplan.router.routes import PoolRoute, Route
from kvplan.router.settings import Limits
from kvplan.router.transport import Exchange, Transport, UpstreamError

if TYPE_CHECKING:
    from kvplan.router.server import Connection, Request

log = logging.getLogger("kvplan.router")

PASS_HEADERS = (b"authorization", b"traceparent", b"tracestate", b"x-session-id", b"accept")
JSON = (b"content-type", b"application/json")


def outcome_of(status: int) -> Outcome:
    if status < 400:
        return Outcome.OK
    if status in (429, 503):
        return Outcome.BACKPRESSURE
    return Outcome.UPSTREAM_ERROR if status >= 500 else Outcome.CLIENT_ERROR


class Observed:
    """Pre-bound metric children for one (bucket, pool) route: no label lookup on the hot path."""

    def __init__(self, m: RouterMetrics, bucket: str, pool: PoolRoute) -> None:
        labels = (bucket, pool.name, pool.regime)
        self.outcome: dict[str, CounterChild] = {o: m.requests.labels(*labels, o) for o in rm.OUTCOMES}
        self.ttft = m.ttft.labels(*labels)
        self.e2e = m.e2e.labels(*labels)
        self.itl = m.itl.labels(*labels)
        self.retries = m.retries.labels(bucket, pool.name)
        self.decisions: dict[str, CounterChild] = {
            r: m.decisions.labels(bucket, pool.name, r) for r in rm.DECISION_REASONS
        }
        self.choices: dict[str, CounterChild] = {
            r: m.endpoint_choices.labels(pool.name, pool.chooser.name, r) for r in rm.ENDPOINT_CHOICE_REASONS
        }
        self.prompt_tokens = m.prompt_tokens.labels(bucket)
        self.pool_header = pool.name.encode()
        self.regime_header = pool.regime.encode()


class ObservedRoutes:
    """`Observed` per (bucket, pool), made on first use; cleared when the plan is reloaded."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self._cache: dict[tuple[str, str], Observed] = {}

    def get(self, route: Route) -> Observed:
        key = (route.bucket.bucket.name, route.pool.name)
        obs = self._cache.get(key)
        if obs is None:
            obs = self._cache[key] = Observed(self.metrics, key[0], route.pool)
        return obs

    def clear(self) -> None:
        self._cache.clear()


class TokenGaps:
    """Body sink of a streamed 2xx response: forwards each upstream chunk and observes the gap
    since the previous one (inter-token latency; vLLM sends one SSE event per chunk). Per chunk:
    one clock read and one histogram increment."""

    __slots__ = ("clock", "hist", "last", "write")

    def __init__(
        self, write: Callable[[bytes], None], hist: HistogramChild, clock: Callable[[], float]
    ) -> None:
        self.write = write
        self.hist = hist
        self.clock = clock
        self.last = 0.0

    def __call__(self, data: bytes) -> None:
        now = self.clock()
        if self.last:
            self.hist.observe(now - self.last)
        self.last = now
        self.write(data)


class Outgoing:
    """The upstream request, built once per client request; only the host header differs per endpoint."""

    __slots__ = ("body", "head", "path", "request_id", "stream", "tail")

    def __init__(self, req: Request, request_id: bytes, stream: bool) -> None:
        headers = [b"x-request-id: %s\r\n" % request_id]
        for name in PASS_HEADERS:
            value = req.headers.get(name)
            if value is not None:
                headers.append(b"%s: %s\r\n" % (name, value))
        self.path = req.raw_path
        self.body = req.body
        self.head = b"POST %s HTTP/1.1\r\nhost: " % req.raw_path
        self.tail = b"content-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
            len(req.body),
            b"".join(headers),
            req.body,
        )
        self.request_id = request_id
        self.stream = stream

    def to(self, ep: Endpoint) -> bytes:
        return self.head + ep.host_header + b"\r\n" + self.tail


class TeeCopy(Protocol):
    """A tee's follower of one response (kvplan.router.shadow keeps the client's greedy answer)."""

    def write(self, data: bytes) -> None: ...  # a body chunk of a forwarded 1xx-3xx response

    def reset(self) -> None: ...  # the chunks so far were held back and discarded: a retry follows

    def finished(self, route: Route, status: int, outcome: Outcome) -> None: ...


Tee = Callable[[Route, Outgoing], TeeCopy | None]


class _Copied:
    """Body sink that hands each chunk to the tees' copies, then to the client."""

    __slots__ = ("copies", "sink")

    def __init__(self, sink: Callable[[bytes], None], copies: list[TeeCopy]) -> None:
        self.sink = sink
        self.copies = copies

    def __call__(self, data: bytes) -> None:
        for c in self.copies:
            c.write(data)
        self.sink(data)


class _Flight:
    """The mutable state of one proxied request."""

    __slots__ = (
        "copies", "ep", "error", "failover", "held", "obs", "outcome", "route", "status", "ttft", "up",
    )  # fmt: skip

    def __init__(self, route: Route, obs: Observed, failover: Failover, copies: list[TeeCopy]) -> None:
        self.copies = copies
        self.route = route
        self.obs = obs
        self.failover = failover
        self.status = 0
        self.outcome: Outcome = Outcome.UPSTREAM_ERROR
        self.ttft = 0.0
        self.ep: Endpoint | None = None  # the last endpoint tried
        self.held: Endpoint | None = None  # the endpoint whose in-flight count this request holds
        self.up: Exchange | None = None
        self.error: ErrorBody | None = None  # an upstream error response being collected

    def hold(self, ep: Endpoint) -> None:
        self.ep = self.held = ep
        ep.in_flight += 1

    def drop(self, transport: Transport) -> None:
        """Give back the endpoint and close the exchange of a try that will not be forwarded."""
        if self.held is not None:
            self.held.in_flight -= 1
            self.held = None
        if self.up is not None:
            transport.discard(self.up)
            self.up = None
        self.error = None


class ErrorBody:
    """Sink of an upstream error response: kept (up to 64 KiB) to be answered in OpenAI's shape."""

    __slots__ = ("chunks", "headers", "size", "status")
    LIMIT = 64 * 1024

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers
        self.chunks: list[bytes] = []
        self.size = 0

    def __call__(self, data: bytes) -> None:
        if self.size < self.LIMIT:
            self.chunks.append(data)
            self.size += len(data)


class _Forward:
    """Called by the exchange when a response head arrives: forward it, or decline so the proxy
    tries elsewhere (5xx/429/503 while another endpoint can still be tried). Error responses are
    kept whole and answered in OpenAI's shape once complete (`Proxy._answer_error`)."""

    __slots__ = ("conn", "ep", "f", "health", "may_retry", "out", "pool", "upstream_errors")

    def __init__(self, proxy: Proxy, conn: Connection, f: _Flight, out: Outgoing, ep: Endpoint) -> None:
        self.health = proxy.health
        self.upstream_errors = proxy.metrics.upstream_errors
        self.conn = conn
        self.f = f
        self.out = out
        self.ep = ep
        self.pool = f.failover.pool.endpoints
        self.may_retry = f.failover.may_retry(ep)

    def __call__(self, up: Exchange) -> bool:
        status = up.status
        head = head_of(status)
        if head is Head.GATEWAY_ERROR:
            self.health.gateway_error(self.ep, ErrorKind.HTTP_5XX, self.pool)
        else:
            self.health.answered(self.ep)
            if head is Head.BACKPRESSURE:  # never an endpoint fault
                self.upstream_errors.labels(self.ep.pool, ErrorKind.BACKPRESSURE).inc()
            elif head is Head.SERVER_ERROR:  # counted, but the request may have provoked it
                self.upstream_errors.labels(self.ep.pool, ErrorKind.HTTP_5XX).inc()
        if head.retryable and self.may_retry:
            return False
        obs = self.f.obs
        out = up.forward_headers()
        out.append((kv_headers.POOL, obs.pool_header))
        out.append((kv_headers.REGIME, obs.regime_header))
        if not any(h[0] == b"x-request-id" for h in out):
            out.append((b"x-request-id", self.out.request_id))
        if status >= 400:
            self.f.error = ErrorBody(status, [h for h in out if h[0] != b"content-type"])
            up.attach(self.f.error)
            return True
        conn = self.conn
        conn.start(status, out, up.content_length)
        conn.upstream = up
        sink: Callable[[bytes], None] = conn.write
        if self.out.stream:
            sink = TokenGaps(conn.write, obs.itl, asyncio.get_running_loop().time)
        if self.f.copies:
            sink = _Copied(sink, self.f.copies)
        up.attach(sink)
        return True


class Proxy:
    def __init__(
        self,
        transport: Transport,
        metrics: RouterMetrics,
        limits: Limits,
        sat: Saturation,
        provenance: ProvenanceLog,
        tees: Sequence[Tee] = (),
    ) -> None:
        self.transport = transport
        self.metrics = metrics
        self.limits = limits
        self.sat = sat
        self.provenance = provenance
        self.tees = tuple(tees)
        self.observed = ObservedRoutes(metrics)
        self.health = PassiveHealth(metrics.upstream_errors, limits.ejection)

    async def forward(
        self,
        req: Request,
        conn: Connection,
        route: Route,
        baseline: PoolRoute,
        stream: bool,
        request_id: bytes,
    ) -> None:
        lim = self.limits
        out = Outgoing(req, request_id, stream)
        copies = [c for tee in self.tees if (c := tee(route, out)) is not None]
        failover = Failover(route.pool, baseline, lim.max_attempts, lim.retry_after)
        f = _Flight(route, self.observed.get(route), failover, copies)
        f.obs.decisions[route.reason].inc()
        f.obs.prompt_tokens.observe(route.prompt_tokens)
        try:
            await self._serve(req, conn, f, out)
        except asyncio.CancelledError:
            f.outcome = Outcome.CANCELLED
            raise
        finally:
            self._settle(conn, f)
            self._record(req, f, stream, request_id)
            for c in f.copies:
                c.finished(f.route, f.status, f.outcome)

    async def _serve(self, req: Request, conn: Connection, f: _Flight, out: Outgoing) -> None:
        loop = asyncio.get_running_loop()
        while True:
            match f.failover.next(Pick(f.route.tokens, loop.time(), self.sat)):
                case NextEndpoint(ep, reason):
                    f.obs.choices[reason].inc()
                    if await self._attempt(req, conn, f, ep, out):
                        return
                case SwitchToBaseline(pool):
                    f.route = f.route._replace(pool=pool, reason=DecisionReason.RETRY)
                    f.obs = self.observed.get(f.route)
                    f.obs.decisions[DecisionReason.RETRY].inc()
                case GiveUp(error):
                    self._give_up(conn, f, error, out.request_id)
                    return

    async def _attempt(self, req: Request, conn: Connection, f: _Flight, ep: Endpoint, out: Outgoing) -> bool:
        """One try on `ep`; True when the request is finished (answered, or broken mid-stream)."""
        loop = asyncio.get_running_loop()
        f.hold(ep)
        first = f.failover.attempts == 1
        if not first:
            f.obs.retries.inc()
        forward = _Forward(self, conn, f, out, ep)
        try:
            f.up = up = await self.transport.acquire(ep.address)
            if first:
                self.metrics.overhead.observe(loop.time() - req.received_at)
            up.send(out.to(ep), self.limits.first_byte_timeout, self.limits.idle_timeout, forward)
            delivered = await up.done
        except UpstreamError as exc:
            return self._failed(conn, f, ep, exc)
        if not delivered:  # a retryable head while another endpoint can still be tried
            f.drop(self.transport)
            f.failover.declined(ep)
            return False
        f.status = up.status
        f.outcome = outcome_of(f.status)
        if f.error is not None:
            self._answer_error(conn, f.error)
        else:
            conn.finish()
        f.ttft = (up.first_body_at or loop.time()) - req.received_at
        return True

    def _failed(self, conn: Connection, f: _Flight, ep: Endpoint, exc: UpstreamError) -> bool:
        up = f.up
        if up is not None and up.forwarded:
            if f.error is None and not conn.unsent():  # bytes reached the client: no retry possible
                f.status = up.status
                self.metrics.upstream_errors.labels(ep.pool, exc.kind).inc()
                f.outcome = Outcome.STREAM_BROKEN
                conn.abandon()
                return True
            conn.reset_response()  # the head was held back with no body yet: still retryable
            for c in f.copies:
                c.reset()
        f.drop(self.transport)
        if exc.reused:  # a stale keep-alive connection: try again, not the endpoint's fault
            f.failover.stale()
            return False
        self.health.gateway_error(ep, exc.kind, f.failover.pool.endpoints)
        log.info("upstream %s of pool %s failed: %s", ep.url, ep.pool, exc)
        message = f"The upstream server of pool {ep.pool} failed ({exc.kind}); no other endpoint could serve."
        f.failover.failed(
            ep, ApiError(502, message, type="upstream_error", reason=RejectReason.NO_HEALTHY_ENDPOINT)
        )
        return False

    def _answer_error(self, conn: Connection, error: ErrorBody) -> None:
        body = upstream_error(error.status, b"".join(error.chunks))
        conn.respond(error.status, [JSON, *error.headers], body)

    def _give_up(self, conn: Connection, f: _Flight, error: ApiError, request_id: bytes) -> None:
        f.outcome = Outcome.BACKPRESSURE if error.status == 429 else Outcome.UPSTREAM_ERROR
        f.status = error.status
        conn.respond(error.status, [JSON, *error.headers, (b"x-request-id", request_id)], error.body())

    def _settle(self, conn: Connection, f: _Flight) -> None:
        if f.up is not None:
            conn.upstream = None
            if f.outcome is Outcome.CANCELLED:
                self.transport.discard(f.up)
            else:
                self.transport.release(f.up)
        if f.held is not None:
            f.held.in_flight -= 1

    def _record(self, req: Request, f: _Flight, stream: bool, request_id: bytes) -> None:
        e2e = asyncio.get_running_loop().time() - req.received_at
        f.obs.outcome[f.outcome].inc()
        if f.status and f.status < 400:
            f.obs.ttft.observe(f.ttft)
            f.obs.e2e.observe(e2e)
        route = f.route
        self.provenance.append(
            (
                now(),
                request_id.decode("latin-1"),
                route.bucket.bucket.name,
                route.pool.name,
                route.pool.regime,
                f.ep.url if f.ep is not None else None,
                route.reason,
                route.prompt_tokens,
                route.needed_tokens,
                f.status,
                f.outcome,
                f.failover.attempts,
                f.ttft,
                e2e,
                stream,
            )
        )
