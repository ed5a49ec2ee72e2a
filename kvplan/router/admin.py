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
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from kvplan.control.state import BucketFlags, StoreUnavailable, UnknownBucket, WriteConflict
from kvplan.errors import InputError
from kvplan.router.api_errors import ApiError, invalid

if TYPE_CHECKING:
    from kvplan.router.app import Router
    from kvplan.router.server import Connection, Request

log = logging.getLogger("kvplan.router.admin")
JSON = (b"content-type", b"application/json")


def _authorize(router: Router, req: Request) -> None:
    token = router.settings.admin_token
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


def state(router: Router) -> dict[str, Any]:
    snap = router.store.snapshot()
    buckets = {name: _flags(router.table.flags(snap, name)) for name in router.table.defaults}
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
        for ep in router.table.endpoints.values()
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


def _known_bucket(router: Router, bucket: str) -> None:
    if bucket not in router.table.defaults:
        known = ", ".join(router.table.defaults)
        raise ApiError(
            404, f"Unknown bucket '{bucket}'. Buckets: {known}", param="bucket", code="bucket_not_found"
        )


def _logged(
    router: Router, bucket: str, action: str, actor: str, reason: str, before: BucketFlags, after: BucketFlags
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
        "version": router.store.snapshot().version,
    }


async def _mutate(router: Router, req: Request, bucket: str, action: str) -> dict[str, Any]:
    data = _body(req)
    actor = _text(data, "actor", "admin-api")
    reason = _text(data, "reason", "")
    _known_bucket(router, bucket)
    before = router.table.flags(router.store.snapshot(), bucket)
    weight = data.get("weight")
    if action == "weight" and (
        isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100
    ):
        raise invalid(f"'weight' must be an integer within 0..100, got {weight!r}", param="weight")
    try:
        if action == "weight":
            assert isinstance(weight, int)
            after = await router.store.set_weight(bucket, weight, actor, reason)
        elif action == "kill":
            after = await router.store.kill(bucket, actor, reason)
        else:
            after = await router.store.unkill(bucket, actor, reason)
    except StoreUnavailable as exc:
        raise ApiError(503, f"The flag store is unavailable: {exc}", type="service_unavailable") from exc
    except WriteConflict as exc:
        raise ApiError(409, f"Concurrent change, retry: {exc}", type="conflict") from exc
    return _logged(router, bucket, action, actor, reason, before, after)


async def _rollout(router: Router, req: Request, bucket: str, op: str) -> dict[str, Any]:
    """start, pause, resume, abort: the control plane's own transition (kvplan.control.embedded)."""
    from kvplan.control.embedded import OPS, rollout_admin

    data = _body(req)
    actor = _text(data, "actor", "admin-api")
    reason = _text(data, "reason", "")
    _known_bucket(router, bucket)
    if op not in OPS:
        raise ApiError(
            404,
            f"Unknown rollout operation '{op}': one of {', '.join(OPS)}.",
            code="not_found",
            reason="not_found",
        )
    before = router.table.flags(router.store.snapshot(), bucket)
    try:
        after = await rollout_admin(router.store, bucket, op, data)
    except UnknownBucket as exc:  # in the plan but not in the flag store's state
        raise ApiError(404, str(exc), param="bucket", code="bucket_not_found") from exc
    except InputError as exc:
        raise invalid(str(exc)) from exc
    except StoreUnavailable as exc:
        raise ApiError(503, f"The flag store is unavailable: {exc}", type="service_unavailable") from exc
    except WriteConflict as exc:
        raise ApiError(409, f"Concurrent change, retry: {exc}", type="conflict") from exc
    return _logged(router, bucket, f"rollout:{op}", actor, reason, before, after)


async def handle(router: Router, req: Request, conn: Connection) -> None:
    _authorize(router, req)
    parts = req.path.strip("/").split("/")  # ["admin", ...]
    method = req.method
    result: Any
    if method == b"GET" and parts == ["admin", "plan"]:
        result = json.loads(router.table.plan.model_dump_json())
    elif method == b"GET" and parts == ["admin", "state"]:
        result = state(router)
    elif method == b"GET" and parts == ["admin", "history"]:
        query = parse_qs(req.query)
        bucket = query.get("bucket", [None])[0]
        try:
            limit = int(query.get("limit", ["100"])[0])
        except ValueError:
            raise invalid("'limit' must be an integer", param="limit") from None
        try:
            entries = await router.store.history(bucket, limit)
        except StoreUnavailable as exc:
            raise ApiError(503, f"The flag store is unavailable: {exc}", type="service_unavailable") from exc
        result = {"entries": [asdict(e) for e in entries]}
    elif (
        method == b"POST"
        and len(parts) == 4
        and parts[1] == "buckets"
        and parts[3] in ("weight", "kill", "unkill")
    ):
        result = await _mutate(router, req, parts[2], parts[3])
    elif method == b"POST" and len(parts) == 5 and parts[1] == "buckets" and parts[3] == "rollout":
        result = await _rollout(router, req, parts[2], parts[4])
    elif method == b"POST" and parts == ["admin", "reload"]:
        if router.plan_path is None:
            raise invalid("This router was not started from a plan file.")
        if not router.reload():
            raise invalid("The plan file is invalid; the current plan stays (see the router log).")
        result = {"reloaded": True, "buckets": [b.name for b in router.table.plan.buckets]}
    else:
        raise ApiError(
            404, f"Unknown admin call {method.decode()} {req.path}.", code="not_found", reason="not_found"
        )
    conn.respond(200, [JSON], json.dumps(result).encode())
