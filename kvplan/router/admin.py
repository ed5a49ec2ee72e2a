"""The admin API under /admin: read the plan and the flag state, set weights, kill and unkill,
and start, pause, resume or abort a rollout (POST /admin/buckets/<bucket>/rollout/<op>).

Every call needs `Authorization: Bearer <token>` (compared in constant time); without a
configured token the API refuses everything. Every mutation goes through the flag store (which
audits it) and is logged here with actor, before, after and reason.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from kvplan.control.embedded import OPS, rollout_admin
from kvplan.control.state import (
    BucketFlags,
    FlagStore,
    StoreUnavailable,
    UnknownBucket,
    WriteConflict,
    check_history_limit,
)
from kvplan.errors import InputError
from kvplan.router.api_errors import ApiError, invalid
from kvplan.router.routes import RouteTable

if TYPE_CHECKING:
    from kvplan.router.server import Connection, Request

log = logging.getLogger("kvplan.router.admin")
JSON = (b"content-type", b"application/json")


@dataclass(frozen=True)
class AdminView:
    """What the admin API may touch: the flag store, the current route table, a plan reload."""

    store: FlagStore
    table: Callable[[], RouteTable]  # the table in use now (a reload replaces it)
    reload: Callable[[], bool] | None  # re-read the plan file; None when not started from one
    token: str | None  # None: the admin API refuses every call


def _authorize(view: AdminView, req: Request) -> None:
    token = view.token
    given = req.headers.get(b"authorization", b"")
    scheme, _, value = given.partition(b" ")
    if token is None:
        raise ApiError(
            401,
            "The admin API is disabled: start the router with --admin-token-file or KVPLAN_ADMIN_TOKEN.",
            type="authentication_error",
            code="admin_disabled",
        )
    if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), token.encode()):
        raise ApiError(
            401,
            "Missing or wrong admin token: send 'Authorization: Bearer <token>'.",
            type="authentication_error",
            code="invalid_api_key",
        )


def _flags(f: BucketFlags) -> dict[str, Any]:
    return {**asdict(f), "effective_weight": f.effective_weight}


def state(view: AdminView) -> dict[str, Any]:
    snap = view.store.snapshot()
    buckets = {name: _flags(view.table().flags(snap, name)) for name in view.table().defaults}
    endpoints = [
        {
            "pool": ep.pool,
            "url": ep.url,
            "healthy": ep.healthy,
            "in_flight": ep.in_flight,
            "max_in_flight": ep.max_in_flight,
            "waiting": ep.waiting,
            "kv_cache_usage": ep.kv_usage,
        }
        for ep in view.table().endpoints.values()
    ]
    return {
        "version": snap.version,
        "epoch": snap.epoch,
        "source": snap.source,
        "buckets": buckets,
        "endpoints": endpoints,
    }


def _body(req: Request) -> dict[str, Any]:
    if not req.body:
        return {}
    try:
        data = json.loads(req.body)
    except ValueError as exc:
        raise invalid(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    return data


def _text(data: dict[str, Any], name: str, default: str) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise invalid(f"'{name}' must be a string", param=name)
    return value


def _known_bucket(view: AdminView, bucket: str) -> None:
    if bucket not in view.table().defaults:
        known = ", ".join(view.table().defaults)
        raise ApiError(
            404, f"Unknown bucket '{bucket}'. Buckets: {known}", param="bucket", code="bucket_not_found"
        )


def _logged(
    view: AdminView,
    bucket: str,
    action: str,
    actor: str,
    reason: str,
    before: BucketFlags,
    after: BucketFlags,
) -> dict[str, Any]:
    log.warning(
        "admin %s bucket=%s actor=%s reason=%r before=%s after=%s",
        action,
        bucket,
        actor,
        reason,
        json.dumps(_flags(before)),
        json.dumps(_flags(after)),
    )
    return {
        "bucket": bucket,
        "before": _flags(before),
        "after": _flags(after),
        "version": view.store.snapshot().version,
    }


async def _mutate(view: AdminView, req: Request, bucket: str, action: str) -> dict[str, Any]:
    data = _body(req)
    actor = _text(data, "actor", "admin-api")
    reason = _text(data, "reason", "")
    _known_bucket(view, bucket)
    before = view.table().flags(view.store.snapshot(), bucket)
    weight = data.get("weight")
    if action == "weight" and (
        isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100
    ):
        raise invalid(f"'weight' must be an integer within 0..100, got {weight!r}", param="weight")
    write_id = _text(data, "write_id", "")  # the caller's, to find its write if the reply is lost
    try:
        if action == "weight":
            assert isinstance(weight, int)
            after = await view.store.set_weight(bucket, weight, actor, reason, write_id)
        elif action == "kill":
            after = await view.store.kill(bucket, actor, reason, write_id)
        else:
            after = await view.store.unkill(bucket, actor, reason, write_id)
    except InputError as exc:  # the store refused the audit note (control characters, length)
        raise invalid(str(exc)) from exc
    except StoreUnavailable as exc:
        raise ApiError(503, f"The flag store is unavailable: {exc}", type="service_unavailable") from exc
    except WriteConflict as exc:
        raise ApiError(409, f"Concurrent change, retry: {exc}", type="conflict") from exc
    return _logged(view, bucket, action, actor, reason, before, after)


async def _rollout(view: AdminView, req: Request, bucket: str, op: str) -> dict[str, Any]:
    """start, pause, resume, abort: the control plane's own transition (kvplan.control.embedded)."""
    data = _body(req)
    actor = _text(data, "actor", "admin-api")
    reason = _text(data, "reason", "")
    _known_bucket(view, bucket)
    if op not in OPS:
        raise ApiError(
            404,
            f"Unknown rollout operation '{op}': one of {', '.join(OPS)}.",
            code="not_found",
            reason="not_found",
        )
    before = view.table().flags(view.store.snapshot(), bucket)
    try:
        after = await rollout_admin(view.store, bucket, op, data)
    except UnknownBucket as exc:  # in the plan but not in the flag store's state
        raise ApiError(404, str(exc), param="bucket", code="bucket_not_found") from exc
    except InputError as exc:
        raise invalid(str(exc)) from exc
    except StoreUnavailable as exc:
        raise ApiError(503, f"The flag store is unavailable: {exc}", type="service_unavailable") from exc
    except WriteConflict as exc:
        raise ApiError(409, f"Concurrent change, retry: {exc}", type="conflict") from exc
    return _logged(view, bucket, f"rollout:{op}", actor, reason, before, after)


async def _history(view: AdminView, req: Request) -> dict[str, Any]:
    query = parse_qs(req.query)
    bucket = query.get("bucket", [None])[0]
    raw = query.get("limit", ["100"])[0]
    try:
        limit = check_history_limit(int(raw))
    except ValueError:
        raise invalid(f"'limit' must be an integer, got {raw!r}", param="limit") from None
    except InputError as exc:
        raise invalid(str(exc), param="limit") from None
    try:
        entries = await view.store.history(bucket, limit)
    except StoreUnavailable as exc:
        raise ApiError(503, f"The flag store is unavailable: {exc}", type="service_unavailable") from exc
    return {"entries": [asdict(e) for e in entries]}


async def handle(view: AdminView, req: Request, conn: Connection) -> None:
    _authorize(view, req)
    parts = req.path.strip("/").split("/")  # ["admin", ...]
    method = req.method
    result: Any
    if method == b"GET" and parts == ["admin", "plan"]:
        result = json.loads(view.table().plan.model_dump_json())
    elif method == b"GET" and parts == ["admin", "state"]:
        result = state(view)
    elif method == b"GET" and parts == ["admin", "history"]:
        result = await _history(view, req)
    elif (
        method == b"POST"
        and len(parts) == 4
        and parts[1] == "buckets"
        and parts[3] in ("weight", "kill", "unkill")
    ):
        result = await _mutate(view, req, parts[2], parts[3])
    elif method == b"POST" and len(parts) == 5 and parts[1] == "buckets" and parts[3] == "rollout":
        result = await _rollout(view, req, parts[2], parts[4])
    elif method == b"POST" and parts == ["admin", "reload"]:
        if view.reload is None:
            raise invalid("This router was not started from a plan file.")
        if not view.reload():
            raise invalid("The plan file is invalid; the current plan stays (see the router log).")
        result = {"reloaded": True, "buckets": [b.name for b in view.table().plan.buckets]}
    else:
        raise ApiError(
            404, f"Unknown admin call {method.decode()} {req.path}.", code="not_found", reason="not_found"
        )
    conn.respond(200, [JSON], json.dumps(result).encode())
