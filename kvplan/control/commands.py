"""What `kvplan flags ...` and `kvplan rollout ...` do, against a flag store or a router's admin API.

The CLI module only parses options; everything here is async and returns plain data or text.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kvplan.control import rollout
from kvplan.control.analysis import Thresholds
from kvplan.control.embedded import rollout_admin
from kvplan.control.metrics import RolloutMetrics
from kvplan.control.sources import PrometheusSource, RouterCounterSource
from kvplan.control.state import (
    AuditEntry,
    BucketFlags,
    FlagSnapshot,
    FlagStore,
    Seeding,
    StoreUnavailable,
    check_history_limit,
    flags_from_record,
    flags_to_record,
    unknown_bucket,
)
from kvplan.control.stores import open_store
from kvplan.errors import InputError, KvplanError
from kvplan.plan import Plan, load_plan

ADMIN_TIMEOUT_ENV = "KVPLAN_ADMIN_TIMEOUT"  # seconds a router's admin API has to answer (default 10)


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Where:
    """Which state a command acts on: a flag store URL, or a router's admin API."""

    plan_path: Path | None
    store_url: str | None
    router_url: str | None = None
    token: str | None = None

    def plan(self) -> Plan:
        if self.plan_path is None:
            raise InputError("give the pool plan with --plan (or $KVPLAN_PLAN)")
        return load_plan(self.plan_path)


@asynccontextmanager
async def opened(where: Where, seeding: Seeding = Seeding.NEVER) -> AsyncIterator[FlagStore]:
    """The store, read once. A command never seeds a store that lost its state: that would write
    the plan's defaults over a kill it never saw (the routers re-seed from their last state)."""
    if where.store_url in (None, "memory"):
        raise InputError(
            "the in-memory flag store lives inside one router: pass --router URL (its admin API) "
            "or --flag-store redis://host:port/db"
        )
    store = open_store(where.store_url, where.plan(), seeding=seeding)
    try:
        await store.start()
        yield store
    finally:
        await store.close()


# -- router admin API --------------------------------------------------------------------------


def admin_timeout() -> float:
    raw = os.environ.get(ADMIN_TIMEOUT_ENV, "10")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise InputError(f"${ADMIN_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


class Unconfirmed(StoreUnavailable):
    """A write was sent and no answer came back: it may or may not have been applied."""


def _why(exc: httpx.HTTPError, timeout: float) -> str:
    """What went wrong, in words (a timeout's own message is empty)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {timeout:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"connected, but no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__


def _sent(exc: httpx.HTTPError) -> bool:
    """Whether the request may have reached the router (then a write may have been applied)."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


async def admin_call(where: Where, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    assert where.router_url is not None
    url = where.router_url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {where.token}"} if where.token else {}
    timeout = admin_timeout()
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.request(method, url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        message = f"cannot reach the router at {where.router_url}: {_why(exc, timeout)}"
        if method == "POST" and _sent(exc):
            raise Unconfirmed(message) from exc
        raise StoreUnavailable(message) from exc
    if resp.status_code == 401:
        raise KvplanError(
            f"the router at {where.router_url} refused the admin call: give its token with "
            "--admin-token-file or $KVPLAN_ADMIN_TOKEN"
        )
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise InputError(f"router: {message}")
    return resp.json()


# -- flags -------------------------------------------------------------------------------------


async def flag_write(
    where: Where, bucket: str, op: str, actor: str, reason: str, value: int = 0
) -> dict[str, Any]:
    """op: kill, unkill, weight, shadow (`value`: the weight or the share). Returns {bucket, before, after,
    version}: what the store or the router answered, or, when the answer was lost, what the audit
    trail proves was written."""
    write_id = uuid.uuid4().hex
    if where.router_url:
        body: dict[str, Any] = {"actor": actor, "reason": reason, "write_id": write_id}
        if op == "weight":
            body["weight"] = value
        elif op == "shadow":
            body["share"] = value
        try:
            result: dict[str, Any] = await admin_call(where, "POST", f"/admin/buckets/{bucket}/{op}", body)
        except Unconfirmed as exc:
            return await _confirmed(where, bucket, write_id, exc)
        return result
    async with opened(where) as store:
        before = store.snapshot().buckets.get(bucket)
        if before is None:
            raise unknown_bucket(bucket, store.snapshot().buckets)
        if op == "kill":
            after = await store.kill(bucket, actor, reason, write_id)
        elif op == "unkill":
            after = await store.unkill(bucket, actor, reason, write_id)
        elif op == "shadow":
            after = await store.set_shadow(bucket, value, actor, reason, write_id)
        else:
            after = await store.set_weight(bucket, value, actor, reason, write_id)
        snap = store.snapshot()
        return {
            "bucket": bucket,
            "before": flags_to_record(before),
            "after": flags_to_record(after),
            "version": snap.version,
        }


async def _confirmed(where: Where, bucket: str, write_id: str, lost: Unconfirmed) -> dict[str, Any]:
    """The write's own audit entry, read back after its answer was lost; else say so plainly."""
    try:
        rows = await history(where, bucket, 50)
    except StoreUnavailable:
        rows = []
    entry = next((r for r in reversed(rows) if r.get("write_id") == write_id), None)
    if entry is None:
        raise Unconfirmed(
            f"{lost}; the write was sent but not confirmed, it may or may not have been applied: "
            f"check `kvplan flags history --bucket {bucket}`"
        ) from lost
    return {"bucket": bucket, "before": entry["before"], "after": entry["after"], "version": entry["version"]}


async def state(where: Where) -> dict[str, Any]:
    if where.router_url:
        result: dict[str, Any] = await admin_call(where, "GET", "/admin/state")
        return result
    async with opened(where) as store:
        return store.snapshot().to_json()


async def history(where: Where, bucket: str | None, limit: int) -> list[dict[str, Any]]:
    check_history_limit(limit)
    if where.router_url:
        q = f"?limit={limit}" + (f"&bucket={bucket}" if bucket else "")
        result = await admin_call(where, "GET", f"/admin/history{q}")
        entries: list[dict[str, Any]] = result["entries"]
        return entries
    async with opened(where) as store:
        if bucket is not None and bucket not in store.snapshot().buckets:
            raise unknown_bucket(bucket, store.snapshot().buckets)
        rows: list[AuditEntry] = await store.history(bucket, limit)
        return [r.to_json() for r in rows]


def format_state(data: Mapping[str, Any]) -> str:
    lines = [f"version {data.get('version')}  epoch {data.get('epoch')}  source {data.get('source')}"]
    lines.append(
        f"{'bucket':<8} {'baseline':<14} {'candidate':<14} {'weight':>6} {'shadow':>6} {'killed':>6}  rollout"
    )
    for name, b in data["buckets"].items():
        killed = "KILLED" if b.get("killed") else "-"
        lines.append(
            f"{name:<8} {b['baseline']:<14} {b.get('candidate') or '-':<14} {b['weight']:>6} "
            f"{b.get('shadow', 0):>6} {killed:>6}  {b.get('rollout', 'idle')}"
        )
    return "\n".join(lines)


_SHOWN = ("weight", "shadow", "killed", "rollout")


def _diff(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str:
    if not before:
        return ", ".join(f"{k}={after.get(k)}" for k in _SHOWN)
    changed = [f"{k} {before.get(k)} -> {after.get(k)}" for k in _SHOWN if before.get(k) != after.get(k)]
    return ", ".join(changed) or "rollout progress"


def _printable(text: str) -> str:
    """One line whatever was stored: control characters (a newline would print as another
    entry; entries written before the stores refused them) shown as escapes."""
    return "".join(
        c.encode("unicode_escape").decode() if unicodedata.category(c)[0] in "CZ" and c != " " else c
        for c in text
    )


def format_history(rows: list[Mapping[str, Any]]) -> str:
    out = []
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(r["at"])))
        reason = f"  ({_printable(r['reason'])})" if r.get("reason") else ""
        out.append(
            f"{when}Z  v{r['version']:<4} {r['bucket']:<6} {_printable(r['actor']):<24} {r['action']:<17} "
            f"{_diff(r.get('before'), r['after'])}{reason}"
        )
    return "\n".join(out) or "(no changes recorded)"


# -- rollout -----------------------------------------------------------------------------------


async def rollout_op(
    where: Where,
    bucket: str,
    op: str,
    actor: str,
    *,
    steps: str = "",
    interval: str = "",
    failure_limit: int = 1,
    thresholds: Thresholds | None = None,
    reason: str = "",
) -> BucketFlags:
    """start, pause, resume, abort: the pure transition, written conditionally. Both paths go
    through `kvplan.control.embedded.rollout_admin` (in the router, or here on the store)."""
    body: dict[str, Any] = {"actor": actor, "reason": reason}
    if op == "start":
        rollout.parse_steps(steps)  # bad input fails before any I/O
        rollout.parse_interval(interval)
        body |= {"steps": steps, "interval": interval, "failure_limit": failure_limit}
        body["thresholds"] = (thresholds or Thresholds()).to_dict()
    if where.router_url:  # a router carrying the control plane
        result = await admin_call(where, "POST", f"/admin/buckets/{bucket}/rollout/{op}", body)
        return flags_from_record(result["after"])
    async with opened(where) as store:
        return await rollout_admin(store, bucket, op, body)


def format_rollouts(snap: FlagSnapshot, bucket: str | None, now: float) -> str:
    lines = []
    for name, f in snap.buckets.items():
        if bucket is not None and name != bucket:
            continue
        p = f.progress
        if p is None:
            lines.append(f"{name}: {f.rollout}, weight {f.weight}{' (killed)' if f.killed else ''}")
            continue
        nxt = (
            f"next analysis in {max(0.0, p.next_check_at - now):.0f} s" if f.rollout == "progressing" else ""
        )
        lines.append(
            f"{name}: {f.rollout}, weight {f.weight}{' (killed)' if f.killed else ''}, step {p.step + 1}/"
            f"{len(p.steps)} of {list(p.steps)}, every {p.interval_s:g} s, failures {p.failures}/"
            f"{p.failure_limit}; {nxt}\n    last: {p.last_reason}"
        )
    return "\n".join(lines)


async def rollout_status(where: Where, bucket: str | None) -> str:
    if where.router_url:
        state = await admin_call(where, "GET", "/admin/state")
        buckets = {name: flags_from_record(rec) for name, rec in state["buckets"].items()}
        if bucket is not None and bucket not in buckets:
            raise unknown_bucket(bucket, buckets)
        return format_rollouts(FlagSnapshot(buckets, int(state["version"])), bucket, time.time())
    if bucket is not None and bucket not in {b.name for b in where.plan().buckets}:
        raise unknown_bucket(bucket, {b.name: None for b in where.plan().buckets})
    async with opened(where) as store:
        return format_rollouts(store.snapshot(), bucket, time.time())


async def run_controller(
    where: Where,
    prometheus: str | None,
    router_metrics: str | None,
    poll_s: float,
    stop: asyncio.Event,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    plan = where.plan()
    source: rollout.MetricsSource
    if prometheus:
        source = PrometheusSource(prometheus, plan.slo)
    elif router_metrics:
        source = RouterCounterSource.from_url(router_metrics, plan.slo)
    else:
        raise InputError("the controller needs metrics: --prometheus URL or --router-metrics URL/metrics")
    metrics = RolloutMetrics([b.name for b in plan.buckets])
    if metrics_port is not None:
        from prometheus_client import start_http_server

        if not 0 <= metrics_port <= 65535:
            raise InputError(f"--metrics-port must be within 0..65535, got {metrics_port}")
        try:
            start_http_server(metrics_port, addr=metrics_host)
        except OSError as exc:  # address not on this host, port taken, host name unknown
            raise InputError(
                f"cannot serve the controller's /metrics on {metrics_host}:{metrics_port}: "
                f"{exc.strerror or exc}"
            ) from exc
    async with opened(where, Seeding.LAST_KNOWN) as store:
        actor = f"rollout-controller@{socket.gethostname()}"
        ctl = rollout.RolloutController(store, source, actor=actor, metrics=metrics)
        await ctl.run(stop, poll_s)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
