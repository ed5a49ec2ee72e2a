"""Seams for a router that carries the control plane itself (the embedded, in-memory mode).

- `rollout_admin`: what `POST /admin/buckets/<bucket>/rollout/<op>` does (op: start, pause,
  resume, abort), so `kvplan rollout ... --router URL` works without Redis.
- `embedded_controller`: a rollout controller fed by the router's own counters (no Prometheus);
  `kvplan serve` with the in-memory store runs one (kvplan.router.app.Router._start_controller).
  Run it as a task next to the router: `asyncio.create_task(ctl.run(stop))`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from kvplan.control import rollout
from kvplan.control.analysis import Thresholds
from kvplan.control.metrics import RolloutMetrics
from kvplan.control.sources import RouterCounters, RouterCounterSource
from kvplan.control.state import BucketFlags, FlagStore, unknown_bucket
from kvplan.errors import InputError
from kvplan.plan import Plan

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

OPS = ("start", "pause", "resume", "abort")
START_FIELDS = ("steps", "interval", "failure_limit", "thresholds", "actor", "reason")


def _text(body: Mapping[str, Any], name: str, default: str) -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {value!r}")
    return value


def _thresholds(value: Any) -> Thresholds:
    if value is None:
        return Thresholds()
    if not isinstance(value, Mapping):
        raise InputError(f"thresholds must be an object, got {value!r}")
    known = [f.name for f in fields(Thresholds)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InputError(f"unknown thresholds {unknown}; known: {', '.join(known)}")
    for name, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise InputError(f"threshold {name} must be a non-negative number, got {v!r}")
    if value.get("min_agreement", 0) > 1:
        raise InputError(f"threshold min_agreement is a share within 0..1, got {value['min_agreement']!r}")
    return Thresholds.from_dict(value)


async def rollout_admin(store: FlagStore, bucket: str, op: str, body: Mapping[str, Any]) -> BucketFlags:
    """Validate an admin request body and apply one rollout transition (raises InputError)."""
    if op not in OPS:
        raise InputError(f"unknown rollout operation {op!r}; one of {', '.join(OPS)}")
    flags = store.snapshot().buckets.get(bucket)
    if flags is None:
        raise unknown_bucket(bucket, store.snapshot().buckets)
    actor = _text(body, "actor", "") or "admin-api"
    reason = _text(body, "reason", "")
    now = time.time()
    if op == "start":
        unknown = sorted(set(body) - set(START_FIELDS))
        if unknown:
            raise InputError(f"unknown fields {unknown}; rollout start takes {', '.join(START_FIELDS)}")
        raw_steps = body.get("steps", "10,25,50,100")
        if not isinstance(raw_steps, str) and not (
            isinstance(raw_steps, list) and all(type(s) is int for s in raw_steps)
        ):
            raise InputError(
                f"steps must be a string like '10,25,50,100' or a list of integers, got {raw_steps!r}"
            )
        steps = rollout.parse_steps(raw_steps)
        interval = body.get("interval", "5m")
        if isinstance(interval, bool) or not isinstance(interval, str | int | float):
            raise InputError(f"interval must look like 30s, 5m or 1h, got {interval!r}")
        seconds = rollout.parse_interval(str(interval))
        limit = body.get("failure_limit", 1)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InputError(f"failure_limit must be an integer, got {limit!r}")
        th = _thresholds(body.get("thresholds"))
        d = rollout.start(flags, steps, seconds, limit, th, now)
    elif op == "pause":
        d = rollout.pause(flags)
    elif op == "resume":
        d = rollout.resume(flags, now)
    else:
        d = rollout.abort(flags, reason or f"aborted by {actor}")
    return await rollout.apply(store, flags, rollout.Decision(d.change, d.action, reason or d.reason), actor)


def embedded_controller(
    store: FlagStore,
    plan: Plan,
    counters: Callable[[], str] | RouterCounters,
    registry: CollectorRegistry | None = None,
) -> rollout.RolloutController:
    """A controller reading the router's counters in process: its metric objects (cheap: the
    reading runs on the router's event loop every tick), or a callable giving its exposition text.

    Its own metrics go to `registry` (the router's, so its /metrics shows them), else the default.
    """
    if not callable(counters):
        source = RouterCounterSource.in_process(counters, plan.slo)
    else:
        text = counters

        async def read() -> str:
            return text()

        source = RouterCounterSource(read, plan.slo)
    names = [b.name for b in plan.buckets]
    return rollout.RolloutController(
        store,
        source,
        actor="rollout-controller@router",
        metrics=RolloutMetrics(names) if registry is None else RolloutMetrics(names, registry),
    )
