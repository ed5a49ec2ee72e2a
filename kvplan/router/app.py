"""The gateway: request dispatch, the streaming proxy, and the router's lifecycle.

Hot path for a completion: parse the body once -> `RouteTable.decide` (bucket, policy, pool) ->
the bucket's endpoint policy over the pool's endpoints -> write the request on a pooled keep-alive
connection -> stream the response bytes to the client as they arrive. Retries happen only
before the first response byte reaches the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, generate_latest

from kvplan.control.state import FlagStore, MemoryFlagStore
from kvplan.metric_names import router as rm
from kvplan.plan import Plan, load_plan
from kvplan.router import admin
from kvplan.router.api_errors import ApiError
from kvplan.router.endpoint_policy import Pick
from kvplan.router.endpoints import Endpoint, Saturation, all_full
from kvplan.router.flags import close_store, start_store
from kvplan.router.inputs import CHAT, COMPLETION, parse
from kvplan.router.metric_types import CounterChild, HistogramChild
from kvplan.router.metrics import RouterMetrics
from kvplan.router.monitor import probe_all
from kvplan.router.provenance import ProvenanceLog, now
from kvplan.router.routes import PoolRoute, Route, RouteTable
from kvplan.router.server import Connection, Request, serve
from kvplan.router.upstream import FailKind, UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from kvplan.control.rollout import RolloutController

log = logging.getLogger("kvplan.router")

PASS_HEADERS = (b"authorization", b"traceparent", b"tracestate", b"x-session-id", b"accept")
JSON = (b"content-type", b"application/json")
_PATHS = {b"/v1/chat/completions": CHAT, b"/v1/completions": COMPLETION}


@dataclass(frozen=True)
class Limits:
    max_body: int = 4 * 1024 * 1024  # bytes; larger bodies get 413
    connect_timeout: float = 2.0
    first_byte_timeout: float = 300.0  # a non-streaming response's head comes after the whole generation
    idle_timeout: float = 120.0  # between two upstream bytes once the response started
    max_attempts: int = 3  # upstream tries per request, all before the first byte
    max_in_flight: int = 256  # per endpoint, when the plan's pool sets no max_concurrency
    retry_after: int = 1  # seconds, in 429s from the router
    probe_interval: float = 1.0
    probe_timeout: float = 1.0
    reload_interval: float = 1.0
    ejection_seconds: float = 5.0  # minimum time out of rotation after a passive ejection
    controller_poll: float = 1.0  # embedded rollout controller: seconds between ticks


@dataclass
class Settings:
    limits: Limits = field(default_factory=Limits)
    saturation: Saturation = field(default_factory=Saturation)
    cohort_header: bytes | None = None  # lower-case header name whose value is the cohort key
    admin_token: str | None = None
    provenance_path: str | None = None


class _Observed:
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


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (429, 503):
        return "backpressure"
    return "upstream_error" if status >= 500 else "client_error"


class _TokenGaps:
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


class _Forward:
    """Called by the upstream connection when a response head arrives: forward it, or decline so
    the proxy retries elsewhere (5xx/429/503 while another endpoint can still be tried)."""

    __slots__ = ("conn", "ep", "may_retry", "obs", "request_id", "router", "stream")

    def __init__(
        self,
        router: Router,
        conn: Connection,
        obs: _Observed,
        request_id: bytes,
        ep: Endpoint,
        may_retry: bool,
        stream: bool,
    ) -> None:
        self.router = router
        self.conn = conn
        self.obs = obs
        self.request_id = request_id
        self.ep = ep
        self.may_retry = may_retry
        self.stream = stream

    def __call__(self, up: UpstreamConnection) -> bool:
        status = up.status
        if status >= 500 or status == 429:
            if status in (429, 503):  # backpressure: never an endpoint fault
                self.router.metrics.upstream_errors.labels(self.ep.pool, "backpressure").inc()
            else:
                self.router._endpoint_failed(self.ep, "http_5xx")
            if self.may_retry:
                return False
        elif status < 400:
            self.ep.failures = 0
        out = up.forward_headers()
        out.append((b"x-kvplan-pool", self.obs.pool_header))
        out.append((b"x-kv-regime", self.obs.regime_header))
        if not any(h[0] == b"x-request-id" for h in out):
            out.append((b"x-request-id", self.request_id))
        conn = self.conn
        conn.start(status, out, up.content_length)
        conn.upstream = up.transport
        if self.stream and status < 400:
            up.attach(_TokenGaps(conn.write, self.obs.itl, asyncio.get_running_loop().time))
        else:
            up.attach(conn.write)
        return True


class Router:
    def __init__(
        self, plan: Plan, store: FlagStore, settings: Settings, plan_path: Path | None = None
    ) -> None:
        self.plan_path = plan_path
        self.settings = settings
        self.limits = settings.limits
        self.sat = settings.saturation
        self.store = store
        self.metrics = RouterMetrics(plan)
        self.table = RouteTable(
            plan, plan_path.parent if plan_path else None, None, self.limits.max_in_flight
        )
        self.upstream = UpstreamPool(self.limits.connect_timeout)
        self.provenance = ProvenanceLog(settings.provenance_path)
        self._observed: dict[tuple[str, str], _Observed] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._plan_stat = self._stat()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.Server | None = None
        self._controller_stop = asyncio.Event()
        self.controller: RolloutController | None = None

    # -- lifecycle --
    async def start(self, host: str, port: int, **kw: Any) -> asyncio.Server:
        self._loop = asyncio.get_running_loop()
        # bind first (a taken port fails at once); requests before the first probe round see
        # stale load, so they go to baselines
        self.server = await serve(self.handle, host, port, self.limits.max_body, **kw)
        await start_store(self.store)
        await probe_all(self.table.endpoints.values(), self.upstream, self.limits.probe_timeout)
        self.provenance.start()
        for coro in (self._probe_loop(), self._sweep_loop(), self._reload_loop()):
            self._tasks.append(self._loop.create_task(coro))
        if isinstance(self.store, MemoryFlagStore):
            self._start_controller()
        return self.server

    def _start_controller(self) -> None:
        """Embedded mode: the rollout controller runs in this process on the router's own counters.

        With a shared (Redis) store it runs separately (`kvplan rollout run`), once for the fleet.
        It is not re-created on plan reload: its SLO bounds must match the histogram edges, and
        those (like the in-memory store's buckets) are fixed when the router starts.
        """
        from kvplan.control.embedded import embedded_controller

        assert self._loop is not None
        self.controller = embedded_controller(
            self.store, self.table.plan, self.metrics, registry=self.metrics.registry
        )
        self._tasks.append(
            self._loop.create_task(
                self.controller.run(self._controller_stop, poll_s=self.limits.controller_poll)
            )
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._controller_stop.set()
        if self.server is not None:
            self.server.close()
        for task in self._tasks:
            task.cancel()
        self.upstream.close()
        self.provenance.close()
        await close_store(self.store)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.probe_interval)
            try:
                await probe_all(self.table.endpoints.values(), self.upstream, self.limits.probe_timeout)
            except Exception:
                log.exception("probe round failed")

    async def _sweep_loop(self) -> None:
        assert self._loop is not None
        while True:
            await asyncio.sleep(0.25)
            self.upstream.sweep(self._loop.time())

    # -- plan reload --
    def _stat(self) -> tuple[int, int] | None:
        if self.plan_path is None:
            return None
        try:
            st = os.stat(self.plan_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.reload_interval)
            stat = self._stat()
            if stat is not None and stat != self._plan_stat:
                self._plan_stat = stat
                self.reload()

    def reload(self) -> bool:
        """Re-read the plan file; a bad file keeps the current plan. In-flight requests are untouched."""
        assert self.plan_path is not None
        try:
            plan = load_plan(self.plan_path)
            table = RouteTable(
                plan, self.plan_path.parent, self.table.endpoints, self.limits.max_in_flight, self.table.pools
            )
        except Exception as exc:  # a broken file must never take the router down
            log.error("plan reload failed, keeping the current plan: %s", exc)
            self.metrics.plan_reloads.labels("error").inc()
            return False
        self.metrics.declare(plan)
        self._observed.clear()
        self.table = table
        self.metrics.plan_reloads.labels("ok").inc()
        log.info(
            "plan reloaded from %s: %d buckets, %d pools", self.plan_path, len(plan.buckets), len(plan.pools)
        )
        return True

    # -- dispatch --
    async def handle(self, req: Request, conn: Connection) -> None:
        path = req.raw_path
        try:
            if req.too_large:
                raise ApiError(
                    413,
                    f"Request body exceeds the limit of {self.limits.max_body} bytes.",
                    code="body_too_large",
                    reason="body_too_large",
                )
            kind = _PATHS.get(path)
            if kind is not None:
                if req.method != b"POST":
                    raise ApiError(405, f"Use POST for {req.path}.", reason="invalid_request")
                await self.proxy(req, conn, kind)
            elif path == b"/v1/models":
                conn.respond(200, [JSON], self.table.models_body)
            elif path == b"/health":
                conn.respond(200, [JSON], b'{"status":"ok"}')
            elif path == b"/ready":
                self._ready(conn)
            elif path == b"/metrics":
                self._metrics(conn)
            elif path.startswith(b"/admin"):
                await admin.handle(self, req, conn)
            else:
                raise ApiError(404, f"Unknown path {req.path}.", reason="not_found")
        except ApiError as err:
            self.metrics.rejected.labels(err.reason).inc()
            conn.respond(err.status, [JSON, *err.headers], err.body())

    def _ready(self, conn: Connection) -> None:
        missing = [
            b.name
            for b in self.table.plan.buckets
            if not any(ep.healthy for p in b.pools for ep in self.table.pools[p.name].endpoints)
        ]
        if missing:
            body = (
                b'{"ready":false,"buckets_without_healthy_endpoint":%s}'
                % str(missing).replace("'", '"').encode()
            )
            conn.respond(503, [JSON], body)
        else:
            conn.respond(200, [JSON], b'{"ready":true}')

    def _metrics(self, conn: Connection) -> None:
        m, snap = self.metrics, self.store.snapshot()
        m.flag_version.set(snap.version)
        for name, flags in self.table.defaults.items():
            f = snap.buckets.get(name, flags)
            m.bucket_weight.labels(name).set(f.effective_weight)
            m.bucket_killed.labels(name).set(1 if f.killed else 0)
        now_ = asyncio.get_running_loop().time()
        for pool in self.table.pools.values():
            m.in_flight.labels(pool.name).set(sum(ep.in_flight for ep in pool.endpoints))
            m.prefix_table_blocks.labels(pool.name).set(pool.chooser.table_size())
            for ep in pool.endpoints:
                m.endpoint_healthy.labels(pool.name, ep.url).set(1 if ep.healthy else 0)
                saturated = ep.full() or ep.overloaded(now_, self.sat)
                m.endpoint_saturated.labels(pool.name, ep.url).set(1 if saturated else 0)
                m.endpoint_waiting.labels(pool.name, ep.url).set(ep.waiting)
                m.endpoint_kv_usage.labels(pool.name, ep.url).set(ep.kv_usage)
        # the default registry carries the flag store's health (kvplan.control.metrics) and process metrics
        body = generate_latest(m.registry) + generate_latest(REGISTRY)
        conn.respond(200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], body)

    def _observe(self, route: Route) -> _Observed:
        key = (route.bucket.bucket.name, route.pool.name)
        obs = self._observed.get(key)
        if obs is None:
            obs = self._observed[key] = _Observed(self.metrics, key[0], route.pool)
        return obs

    def _cohort_key(self, req: Request, user: str | None, request_id: bytes) -> str:
        if self.settings.cohort_header is not None:
            value = req.headers.get(self.settings.cohort_header)
            if value:
                return value.decode("latin-1")
        if user:
            return user
        auth = req.headers.get(b"authorization")
        if auth:
            return auth.decode("latin-1").removeprefix("Bearer ").strip()
        return request_id.decode("latin-1")  # anonymous: no stickiness to keep

    # -- the proxy --
    async def proxy(self, req: Request, conn: Connection, kind: str) -> None:
        loop = asyncio.get_running_loop()
        request_id = req.headers.get(b"x-request-id") or os.urandom(12).hex().encode()
        comp = parse(kind, req.body)
        table = self.table
        route = table.decide(
            comp, self._cohort_key(req, comp.user, request_id), self.store.snapshot(), loop.time(), self.sat
        )
        obs = self._observe(route)
        obs.decisions[route.reason].inc()
        obs.prompt_tokens.observe(route.prompt_tokens)

        headers = [b"x-request-id: %s\r\n" % request_id]
        for name in PASS_HEADERS:
            value = req.headers.get(name)
            if value is not None:
                headers.append(b"%s: %s\r\n" % (name, value))
        tail = b"content-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
            len(req.body),
            b"".join(headers),
            req.body,
        )
        first_line = b"POST %s HTTP/1.1\r\nhost: " % req.raw_path

        pool = route.pool
        tried: list[Endpoint] = []
        attempts = 0
        status = 0
        outcome = "upstream_error"
        ttft = 0.0
        ep: Endpoint | None = None
        held: Endpoint | None = None  # the endpoint whose in-flight count this request holds
        up: UpstreamConnection | None = None
        last_error: ApiError | None = None
        try:
            while attempts < self.limits.max_attempts:
                choice = pool.chooser.select(pool.endpoints, Pick(route.tokens, loop.time(), self.sat), tried)
                if choice is None:
                    ep = None
                    baseline = table.pools[route.bucket.bucket.baseline.name]
                    if pool is not baseline and any(e.healthy for e in baseline.endpoints):
                        # nothing left to try in the candidate: the baseline serves (no byte sent yet)
                        pool, tried = baseline, []
                        route = route._replace(pool=baseline, reason="retry")
                        obs = self._observe(route)
                        obs.decisions["retry"].inc()
                        continue
                    last_error = last_error or self._no_endpoint(pool)
                    break
                ep = choice.endpoint
                attempts += 1
                obs.choices[choice.reason].inc()
                if attempts > 1:
                    obs.retries.inc()
                ep.in_flight += 1
                held = ep
                may_retry = attempts < self.limits.max_attempts and any(
                    e.healthy and e is not ep and e not in tried for e in pool.endpoints
                )
                try:
                    up = await self.upstream.acquire(ep.address)
                    if attempts == 1:
                        self.metrics.overhead.observe(loop.time() - req.received_at)
                    # The response head is handled in the connection's callback (`_Forward`), so a
                    # response that will not be retried streams to the client with no task switch.
                    up.send(
                        first_line + ep.host_header + b"\r\n" + tail,
                        self.limits.first_byte_timeout,
                        self.limits.idle_timeout,
                        _Forward(self, conn, obs, request_id, ep, may_retry, comp.stream),
                    )
                    forwarded = await up.done
                except UpstreamError as exc:
                    if up is not None and up.forwarded:
                        if conn.unsent():  # the head was held back with no body yet: still retryable
                            conn.reset_response()
                        else:  # bytes reached the client: no retry possible
                            status = up.status
                            self.metrics.upstream_errors.labels(ep.pool, exc.kind.value).inc()
                            outcome = "stream_broken"
                            conn.abandon()
                            break
                    ep.in_flight -= 1
                    held = None
                    if up is not None:
                        self.upstream.discard(up)
                        up = None
                    if exc.reused:  # a stale keep-alive connection: try again, not the endpoint's fault
                        attempts -= 1
                        continue
                    self._endpoint_failed(ep, exc.kind.value)
                    tried.append(ep)
                    last_error = ApiError(
                        502,
                        f"upstream {ep.url} failed: {exc}",
                        type="upstream_error",
                        reason="no_healthy_endpoint",
                    )
                    continue
                if not forwarded:  # a 5xx/429/503 head while another endpoint can still be tried
                    ep.in_flight -= 1
                    held = None
                    self.upstream.discard(up)
                    up = None
                    tried.append(ep)
                    continue
                status = up.status
                outcome = _outcome(status)
                conn.finish()
                ttft = (up.first_body_at or loop.time()) - req.received_at
                break
            else:
                last_error = last_error or self._no_endpoint(pool)
            if last_error is not None and status == 0:
                outcome = "backpressure" if last_error.status == 429 else "upstream_error"
                conn.respond(
                    last_error.status,
                    [JSON, *last_error.headers, (b"x-request-id", request_id)],
                    last_error.body(),
                )
                status = last_error.status
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if up is not None:
                conn.upstream = None
                if outcome == "cancelled":
                    self.upstream.discard(up)
                else:
                    self.upstream.release(up)
            if held is not None:
                held.in_flight -= 1
            e2e = loop.time() - req.received_at
            obs.outcome[outcome].inc()
            if status and status < 400:
                obs.ttft.observe(ttft)
                obs.e2e.observe(e2e)
            self.provenance.append(
                (
                    now(),
                    request_id.decode("latin-1"),
                    route.bucket.bucket.name,
                    route.pool.name,
                    route.pool.regime,
                    ep.url if ep is not None else None,
                    route.reason,
                    route.prompt_tokens,
                    route.needed_tokens,
                    status,
                    outcome,
                    attempts,
                    ttft,
                    e2e,
                    comp.stream,
                )
            )

    def _no_endpoint(self, pool: PoolRoute) -> ApiError:
        if all_full(pool.endpoints):
            return ApiError(
                429,
                f"Every endpoint of pool {pool.name} is at its concurrency limit; retry shortly.",
                type="rate_limit_error",
                code="pool_saturated",
                reason="no_healthy_endpoint",
                headers=((b"retry-after", str(self.limits.retry_after).encode()),),
            )
        return ApiError(
            503,
            f"No healthy endpoint in pool {pool.name}.",
            type="service_unavailable",
            code="no_healthy_endpoint",
            reason="no_healthy_endpoint",
            headers=((b"retry-after", str(self.limits.retry_after).encode()),),
        )

    def _endpoint_failed(self, ep: Endpoint, kind: str) -> None:
        """Passive ejection: a refused connection at once, 5xx/timeouts after 3 in a row; /health
        probes bring the endpoint back after `ejection_seconds`."""
        self.metrics.upstream_errors.labels(ep.pool, kind).inc()
        ep.failures += 1
        if (kind == FailKind.CONNECT.value or ep.failures >= 3) and ep.healthy:
            ep.healthy = False
            ep.ejected_until = asyncio.get_running_loop().time() + self.limits.ejection_seconds
            log.warning("endpoint %s of pool %s ejected after %s", ep.url, ep.pool, kind)
