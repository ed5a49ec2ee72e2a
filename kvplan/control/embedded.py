"""Seams for a router that carries the control plane itself (the embedded, in-memory mode).

- `rollout_admin`: what `POST /admin/buckets/<bucket>/rollout/<op>` does (op: start, pause,
  resume, abort), so `kvplan rollout ... --router URL` works without Redis.
- `embedded_controller`: a rollout controller fed by the router's own counters (no Prometheus).
  Run it as a task next to the router: `asyncio.create_task(ctl.run(stop))`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kvplan.control import rollout
from kvplan.control.analysis import Thresholds
from kvplan.control.state import BucketFlags, FlagStore, unknown_bucket
from kvplan.errors import InputError
from kvplan.plan import Plan

OPS = ("start", "pause", "resume", "abort")


async def rollout_admin(store: FlagStore, bucket: str, op: str, body: Mapping[str, Any]) -> BucketFlags:
    """Validate an admin request body and apply one rollout transition (raises InputError)."""
    if op not in OPS:
        raise InputError(f"unknown rollout operation {op!r}; one of {', '.join(OPS)}")
    flags = store.snapshot().buckets.get(bucket)
    if flags is None:
        raise unknown_bucket(bucket, store.snapshot().buckets)
    actor = str(body.get("actor") or "admin-api")
    reason = str(body.get("reason") or "")
    now = time.time()
    if op == "start":
        steps = rollout.parse_steps(body.get("steps", "10,25,50,100"))
        interval = rollout.parse_interval(str(body.get("interval", "5m")))
        limit = body.get("failure_limit", 1)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InputError(f"failure_limit must be an integer, got {limit!r}")
        th = Thresholds.from_dict(body.get("thresholds") or {})
        d = rollout.start(flags, steps, interval, limit, th, now)
    elif op == "pause":
        d = rollout.pause(flags)
    elif op == "resume":
        d = rollout.resume(flags, now)
    else:
        d = rollout.abort(flags, reason or f"aborted by {actor}")
    return await rollout.apply(store, flags, rollout.Decision(d.change, d.action, reason or d.reason), actor)


def embedded_controller(
    store: FlagStore, plan: Plan, metrics_text: Callable[[], str]
) -> rollout.RolloutController:
    """A controller reading the router's counters in process (`metrics_text`: its exposition)."""
    from kvplan.control.metrics import RolloutMetrics
    from kvplan.control.sources import RouterCounterSource

    async def read() -> str:
        return metrics_text()

    source = RouterCounterSource(read, plan.slo)
    return rollout.RolloutController(
        store,
        source,
        actor="rollout-controller@router",
        metrics=RolloutMetrics([b.name for b in plan.buckets]),
    )
