"""The admin API under /admin: read the plan and the flag state, set weights, kill and unkill,
and start, pause, resume or abort a rollout (POST /admin/buckets/<bucket>/rollout/<op>), and set the
share of baseline requests shadowed to the candidate (POST /admin/buckets/<bucket>/shadow).

Every call needs `Authorization: Bearer <token>` (compared in constant time); without a
configured token the API refuses everything. Every mutation goes through the flag store (which
audits it) and is logged here with actor, before, after and reason.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

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
from kvplan.metric_names import AuthFailure, RejectReason
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
    count_failure: Callable[[AuthFailure], None] = lambda failure: None  # a refused token, by kind


class _FailureLog:
    """Failed logins, logged with the caller's address and never the token: at most one line per
    `interval` seconds (a guessing client cannot flood the log), the rest counted into the next."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.last = -1e18
        self.suppressed = 0

    def __call__(self, failure: AuthFailure, req: Request) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last line)" if self.suppressed else ""
        log.warning("admin login refused (%s) from %s for %s%s", failure, req.peer, req.path[:200], more)
        self.last, self.suppressed = now, 0


_failures = _FailureLog()


def _authorize(view: AdminView, req: Request) -> None:
    token = view.token
    given = req.headers.get(b"authorization", b"")
    scheme, _, value = given.partition(b" ")
    if token is None:
        failure = AuthFailure.DISABLED
    elif scheme.lower() != b"bearer" or not value.strip():
        failure = AuthFailure.MISSING
    elif not hmac.compare_digest(value.strip(), token.encode()):
        failure = AuthFailure.WRONG
    else:
        return
    view.count_failure(failure)
    _failures(failure, req)
    if failure is AuthFailure.DISABLED:
        raise ApiError(
            401,
            "The admin API is disabled: start the router with --admin-token-file or KVPLAN_ADMIN_TOKEN.",
            type="authentication_error",
            code="admin_disabled",
        )
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
        data = orjson.loads(req.body)  # nesting beyond 1024 levels is a decode error, not a RecursionError
    except orjson.JSONDecodeError as exc:
        raise invalid(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object.")
    return data


def _text(data: dict[str, Any], name: str, default: str) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise invalid(f"'{name}' must be a string", param=name)
    return value


MAX_ACTOR = 128


def _actor(data: dict[str, Any]) -> str:
    """Who made a change: it goes into log lines and the audit history, so one printable line."""
    actor = _text(data, "actor", "admin-api")
    if not actor or len(actor) > MAX_ACTOR or not actor.isprintable():
        raise invalid(
            f"'actor' must be 1 to {MAX_ACTOR} printable characters (no line breaks or control characters)",
            param="actor",
        )
    return actor


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
    actor = _actor(data)
    reason = _text(data, "reason", "")
    _known_bucket(view, bucket)
    before = view.table().flags(view.store.snapshot(), bucket)
    field = "share" if action == "shadow" else "weight"
    value = data.get(field)
    if action in ("weight", "shadow") and (
        isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100
    ):
        raise invalid(f"'{field}' must be an integer within 0..100, got {value!r}", param=field)
    write_id = _text(data, "write_id", "")  # the caller's, to find its write if the reply is lost
    try:
        if action == "weight":
            assert isinstance(value, int)
            after = await view.store.set_weight(bucket, value, actor, reason, write_id)
        elif action == "shadow":
            assert isinstance(value, int)
            after = await view.store.set_shadow(bucket, value, actor, reason, write_id)
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
    actor = _actor(data)
    reason = _text(data, "reason", "")
    _known_bucket(view, bucket)
    if op not in OPS:
        raise ApiError(
            404,
            f"Unknown rollout operation '{op}': one of {', '.join(OPS)}.",
            code="not_found",
            reason=RejectReason.NOT_FOUND,
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


def _reload(view: AdminView) -> dict[str, Any]:
    if view.reload is None:
        raise invalid("This router was not started from a plan file.")
    if not view.reload():
        raise invalid("The plan file is invalid; the current plan stays (see the router log).")
    return {"reloaded": True, "buckets": [b.name for b in view.table().plan.buckets]}


def _call(parts: list[str]) -> tuple[bytes, str] | None:
    """(method, call) for an admin path (["admin", ...]), None when there is no such call."""
    if parts in (["admin", "plan"], ["admin", "state"], ["admin", "history"]):
        return b"GET", parts[1]
    if parts == ["admin", "reload"]:
        return b"POST", "reload"
    if len(parts) == 4 and parts[1] == "buckets" and parts[3] in ("weight", "shadow", "kill", "unkill"):
        return b"POST", "mutate"
    if len(parts) == 5 and parts[1] == "buckets" and parts[3] == "rollout":
        return b"POST", "rollout"
    return None


async def handle(view: AdminView, req: Request, conn: Connection) -> None:
    _authorize(view, req)
    parts = req.path.strip("/").split("/")  # ["admin", ...]
    call = _call(parts)
    if call is None:
        method = req.method.decode("latin-1")[:20]
        raise ApiError(
            404,
            f"Unknown admin call {method} {req.path[:200]}.",
            code="not_found",
            reason=RejectReason.NOT_FOUND,
        )
    if req.method != call[0]:
        raise ApiError(
            405,
            f"Use {call[0].decode()} for {req.path[:200]}.",
            code="method_not_allowed",
            reason=RejectReason.INVALID_REQUEST,
            headers=((b"allow", call[0]),),
        )
    result: Any
    match call[1]:
        case "plan":
            result = json.loads(view.table().plan.model_dump_json())
        case "state":
            result = state(view)
        case "history":
            result = await _history(view, req)
        case "reload":
            result = _reload(view)
        case "mutate":
            result = await _mutate(view, req, parts[2], parts[3])
        case _:
            result = await _rollout(view, req, parts[2], parts[4])
    conn.respond(200, [JSON], json.dumps(result).encode())
