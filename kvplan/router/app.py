"""The gateway: request dispatch and the router's lifecycle (probes, sweeps, plan reload).

Hot path for a completion: parse the body once -> `RouteTable.decide` (bucket, policy, pool) ->
`Proxy.forward` (kvplan.router.proxy), which tries endpoints of the pool (chosen by the bucket's
endpoint policy) as `kvplan.router.failover` decides and streams the response through the
injected transport.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from prometheus_client import REGISTRY, generate_latest

from kvplan.control.state import FlagStore, MemoryFlagStore
from kvplan.metric_names import AuthFailure, RefusalReason, RejectReason
from kvplan.plan import Plan, load_plan
from kvplan.router import admin, openapi
from kvplan.router.admin import AdminView
from kvplan.router.api_errors import ApiError
from kvplan.router.flags import close_store, start_store
from kvplan.router.inputs import CHAT, COMPLETION, parse
from kvplan.router.metrics import RouterMetrics
from kvplan.router.monitor import probe_all
from kvplan.router.provenance import ProvenanceLog
from kvplan.router.proxy import Proxy, Tee
from kvplan.router.routes import RouteTable, forced_pool, precision_high
from kvplan.router.server import Connection, Listener, Request, serve
from kvplan.router.settings import Listen, Settings
from kvplan.router.shadow import ShadowSender
from kvplan.router.transport import Transport

if TYPE_CHECKING:
    from kvplan.control.rollout import RolloutController

log = logging.getLogger("kvplan.router")

JSON = (b"content-type", b"application/json")
_PATHS = {b"/v1/chat/completions": CHAT, b"/v1/completions": COMPLETION}
_GET = (b"GET", b"HEAD")
_POST = (b"POST",)
_ELSEWHERE = (b"/metrics", b"/admin")


def _allow(req: Request, methods: tuple[bytes, ...]) -> None:
    if req.method not in methods:
        allowed = ", ".join(m.decode() for m in methods)
        raise ApiError(
            405,
            f"Method {req.method.decode('latin-1')[:20]} is not allowed for {req.path[:200]}; use {allowed}.",
            code="method_not_allowed",
            reason=RejectReason.INVALID_REQUEST,
            headers=((b"allow", allowed.encode()),),
        )


def _healthy(conn: Connection) -> None:
    conn.respond(200, [JSON], b'{"status":"ok"}')


class Router:
    """Dispatch and lifecycle around the proxy; the upstream transport is given, not built here."""

    def __init__(
        self,
        plan: Plan,
        store: FlagStore,
        settings: Settings,
        plan_path: Path | None = None,
        *,
        transport: Transport,
        tees: Sequence[Tee] = (),
        shadow_transport: httpx.AsyncBaseTransport | None = None,
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
        self.upstream = transport
        self.provenance = ProvenanceLog(settings.provenance_path)
        self.shadow = ShadowSender(
            self.metrics,
            settings.shadow,
            snapshot=store.snapshot,
            table=lambda: self.table,
            transport=shadow_transport,
        )
        tees = (*tees, self.shadow.tee)
        self.proxy = Proxy(transport, self.metrics, self.limits, self.sat, self.provenance, tees=tees)
        auth_failures = {f: self.metrics.admin_auth_failures.labels(f) for f in AuthFailure}
        self.admin = AdminView(
            store,
            lambda: self.table,
            self.reload if plan_path is not None else None,
            settings.admin_token,
            lambda failure: auth_failures[failure].inc(),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._plan_stat = self._stat()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listeners: dict[str, Listener] = {}  # "api", "admin", "metrics"
        refusals = {r: self.metrics.client_refusals.labels(r) for r in RefusalReason}
        self._on_refusal = lambda reason: refusals[reason].inc()
        self._api_pages: dict[bytes, Callable[[Connection], None]] = {
            b"/v1/models": lambda conn: conn.respond(200, [JSON], self.table.models_body),
            b"/health": _healthy,
            b"/ready": self._ready,
            b"/openapi.json": lambda conn: conn.respond(200, [JSON], openapi.api_document()),
        }
        self._admin_pages: dict[bytes, Callable[[Connection], None]] = {
            b"/metrics": self._metrics,
            b"/health": _healthy,
            b"/openapi.json": lambda conn: conn.respond(200, [JSON], openapi.admin_document()),
        }
        self._controller_stop = asyncio.Event()
        self.controller: RolloutController | None = None

    # -- lifecycle --
    async def start(self, api: Listen, admin: Listen | None = None, metrics: Listen | None = None) -> None:
        """Listen for the OpenAI API on `api`, the admin API and /metrics on `admin`, and /metrics
        alone on `metrics`; then serve."""
        self._loop = asyncio.get_running_loop()
        # bind first (a taken port fails at once); requests before the first probe round see
        # stale load, so they go to baselines
        handlers = {"api": self.handle_api, "admin": self.handle_admin, "metrics": self.handle_metrics}
        for name, where in (("api", api), ("admin", admin), ("metrics", metrics)):
            if where is None:
                continue
            try:
                self.listeners[name] = await serve(
                    handlers[name], where.host, where.port, self.settings.http, self._on_refusal
                )
            except OSError as exc:
                raise OSError(f"{where.host}:{where.port} ({name}): {exc.strerror or exc}") from exc
        await start_store(self.store)
        await self._probe_round()
        self.provenance.start()
        self.shadow.start()
        for coro in (self._probe_loop(), self._sweep_loop(), self._reload_loop()):
            self._tasks.append(self._loop.create_task(coro))
        if isinstance(self.store, MemoryFlagStore):
            self._start_controller()

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
        return self.listeners["api"].port

    def url(self, listener: str = "api") -> str:
        sock = self.listeners[listener].server.sockets[0].getsockname()  # type: ignore[union-attr]
        return f"http://{sock[0]}:{sock[1]}"

    def stop_listening(self) -> None:
        for listener in self.listeners.values():
            listener.close()

    async def close(self) -> None:
        self._controller_stop.set()
        self.stop_listening()
        for task in self._tasks:
            task.cancel()
        self.upstream.close()
        self.provenance.close()
        await self.shadow.close()
        await close_store(self.store)

    async def _probe_round(self) -> None:
        lim = self.limits
        await probe_all(self.table.endpoints.values(), self.upstream, lim.probe_timeout, lim.probe_failures)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.limits.probe_interval)
            try:
                await self._probe_round()
            except Exception:
                log.exception("probe round failed")

    async def _sweep_loop(self) -> None:
        assert self._loop is not None
        while True:
            await asyncio.sleep(0.25)
            now_ = self._loop.time()
            self.upstream.sweep(now_)
            for listener in self.listeners.values():
                listener.sweep(now_)

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
        self.proxy.observed.clear()
        self.table = table
        self.metrics.plan_reloads.labels("ok").inc()
        log.info(
            "plan reloaded from %s: %d buckets, %d pools", self.plan_path, len(plan.buckets), len(plan.pools)
        )
        return True

    # -- dispatch --
    async def handle_api(self, req: Request, conn: Connection) -> None:
        """The OpenAI API, /health, /ready and the API's OpenAPI document."""
        path = req.raw_path
        try:
            kind = _PATHS.get(path)
            if kind is not None:
                _allow(req, _POST)
                await self._complete(req, conn, kind)
            else:
                self._page(self._api_pages, req, conn)
        except ApiError as err:
            self._refused(conn, err)

    async def handle_admin(self, req: Request, conn: Connection) -> None:
        """The admin API (bearer token), /metrics and the admin OpenAPI document: loopback by default."""
        try:
            if req.raw_path.startswith(b"/admin"):
                await admin.handle(self.admin, req, conn)
            else:
                self._page(self._admin_pages, req, conn)
        except ApiError as err:
            self._refused(conn, err)

    async def handle_metrics(self, req: Request, conn: Connection) -> None:
        try:
            self._page({b"/metrics": self._metrics, b"/health": _healthy}, req, conn)
        except ApiError as err:
            self._refused(conn, err)

    def _page(self, pages: dict[bytes, Callable[[Connection], None]], req: Request, conn: Connection) -> None:
        page = pages.get(req.raw_path)
        if page is None:
            elsewhere = req.raw_path.startswith(_ELSEWHERE)
            hint = " (the admin API and /metrics have their own listener)" if elsewhere else ""
            raise ApiError(
                404, f"Unknown path {req.path[:200]}{hint}.", code="not_found", reason=RejectReason.NOT_FOUND
            )
        _allow(req, _GET)
        page(conn)

    def _refused(self, conn: Connection, err: ApiError) -> None:
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

    # -- completions --
    async def _complete(self, req: Request, conn: Connection, kind: str) -> None:
        request_id = req.headers.get(b"x-request-id") or os.urandom(12).hex().encode()
        comp = parse(kind, req.body)
        table = self.table
        cohort = self._cohort_key(req, comp.user, request_id)
        now_ = asyncio.get_running_loop().time()
        high = precision_high(req.headers)
        force = forced_pool(req.headers, self.settings.admin_token)
        route = table.decide(
            comp, cohort, self.store.snapshot(), now_, self.sat, precision_high=high, force=force
        )
        # a forced pool answers itself or fails: it is its own fallback
        baseline = route.pool if force is not None else table.pools[route.bucket.bucket.baseline.name]
        await self.proxy.forward(req, conn, route, baseline, comp.stream, request_id)
