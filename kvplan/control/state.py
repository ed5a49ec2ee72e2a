"""Flag state per bucket, and the interface every flag store implements.

Routers read `FlagStore.snapshot()` on every request: a local, immutable value with no I/O.
Writes go through the store (atomic, versioned, audited). This module is the contract between
the router (reads) and the control plane (writes, propagation, rollout).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from kvplan.plan import Plan


class RolloutPhase(enum.Enum):
    IDLE = "idle"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"


@dataclass(frozen=True)
class BucketFlags:
    """Runtime routing state of one bucket."""

    bucket: str
    baseline: str  # pool name
    candidate: str | None  # pool name; None when the bucket has no candidate
    weight: int = 0  # percent of cohorts sent to the candidate, 0..100
    killed: bool = False  # overrides weight: everyone goes to baseline
    rollout: str = RolloutPhase.IDLE.value  # RolloutPhase value; details live with the controller

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 100:
            raise ValueError(f"weight must be within 0..100, got {self.weight}")

    @property
    def effective_weight(self) -> int:
        return 0 if self.killed or self.candidate is None else self.weight


@dataclass(frozen=True)
class FlagSnapshot:
    """Everything a router needs to route, as last known. `loaded_at` is monotonic seconds."""

    buckets: Mapping[str, BucketFlags]
    version: int = 0
    epoch: str = ""
    loaded_at: float = field(default_factory=time.monotonic)
    source: str = "plan"  # "plan" (defaults, never loaded), "memory", "redis"

    def get(self, bucket: str) -> BucketFlags | None:
        return self.buckets.get(bucket)


@dataclass(frozen=True)
class AuditEntry:
    """One change: who, when, what changed from and to, and why."""

    version: int
    bucket: str
    actor: str
    action: str  # "set-weight", "kill", "unkill", "rollout:<step>", "seed"
    before: BucketFlags | None
    after: BucketFlags
    reason: str = ""
    at: float = field(default_factory=time.time)  # unix seconds


def defaults_from_plan(plan: Plan) -> dict[str, BucketFlags]:
    """Initial state: the plan's baseline, its first candidate, and the plan's rollout section."""
    return {
        b.name: BucketFlags(
            bucket=b.name,
            baseline=b.baseline.name,
            candidate=b.candidates[0].name if b.candidates else None,
            weight=b.rollout.weight if b.candidates else 0,
            killed=b.rollout.killed,
        )
        for b in plan.buckets
    }


class FlagStore(Protocol):
    """A source of flag state. `snapshot` is local and cheap; the rest may do I/O."""

    def snapshot(self) -> FlagSnapshot: ...

    async def set_weight(self, bucket: str, weight: int, actor: str, reason: str = "") -> BucketFlags: ...

    async def kill(self, bucket: str, actor: str, reason: str = "") -> BucketFlags: ...

    async def unkill(self, bucket: str, actor: str, reason: str = "") -> BucketFlags: ...

    async def history(self, bucket: str | None = None, limit: int = 100) -> list[AuditEntry]: ...


class MemoryFlagStore:
    """The embedded default: one process, no Redis. Writes are applied and audited in place."""

    def __init__(self, plan: Plan) -> None:
        self._snap = FlagSnapshot(defaults_from_plan(plan), version=0, epoch="memory", source="memory")
        self._audit: list[AuditEntry] = []

    def snapshot(self) -> FlagSnapshot:
        return self._snap

    def _apply(self, bucket: str, action: str, actor: str, reason: str, **change: object) -> BucketFlags:
        before = self._snap.buckets.get(bucket)
        if before is None:
            known = ", ".join(self._snap.buckets)
            raise KeyError(f"unknown bucket {bucket!r}; buckets: {known}")
        after = replace(before, **change)  # type: ignore[arg-type]
        version = self._snap.version + 1
        buckets = dict(self._snap.buckets)
        buckets[bucket] = after
        self._snap = replace(self._snap, buckets=buckets, version=version, loaded_at=time.monotonic())
        self._audit.append(AuditEntry(version, bucket, actor, action, before, after, reason))
        return after

    async def set_weight(self, bucket: str, weight: int, actor: str, reason: str = "") -> BucketFlags:
        return self._apply(bucket, "set-weight", actor, reason, weight=weight)

    async def kill(self, bucket: str, actor: str, reason: str = "") -> BucketFlags:
        return self._apply(bucket, "kill", actor, reason, killed=True)

    async def unkill(self, bucket: str, actor: str, reason: str = "") -> BucketFlags:
        return self._apply(bucket, "unkill", actor, reason, killed=False)

    async def history(self, bucket: str | None = None, limit: int = 100) -> list[AuditEntry]:
        rows = [a for a in self._audit if bucket is None or a.bucket == bucket]
        return rows[-limit:]
