"""Flag state per bucket, and the interface every flag store implements.

Routers read `FlagStore.snapshot()` on every request: a local, immutable value with no I/O.
Writes go through the store (atomic, versioned, audited). This module is the contract between
the router (reads) and the control plane (writes, propagation, rollout).
"""

from __future__ import annotations

import enum
import json
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from kvplan.errors import InputError, KvplanError, NotFound
from kvplan.plan import Plan


class RolloutPhase(enum.StrEnum):
    """Where a bucket's rollout is (stored and shown as its value)."""

    IDLE = "idle"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"


class UnknownBucket(NotFound, KeyError):
    """A write named a bucket the plan does not have (also a KeyError for dict-style callers)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InvalidWeight(InputError, ValueError):
    """A weight outside 0..100."""


class StoreUnavailable(KvplanError):
    """The flag store's backend (Redis) cannot be reached; the message names its URL."""


class EmptyStore(StoreUnavailable):
    """The backend answers but holds no state (Redis restarted without persistence), and this
    process may not seed it (see `Seeding`)."""


class Seeding(enum.Enum):
    """Who may write a new epoch into a backend that lost its state (docs/facts.md §6).

    Writing a state one did not read is how a read-only command or a one-shot write would bring
    the plan's defaults back over a kill it never saw; the processes that follow the store keep
    the last state it had, so they re-seed it."""

    NEVER = "never"  # one-shot commands (kvplan flags / rollout on the store): read what is there
    LAST_KNOWN = "last-known"  # long-running followers (the rollout controller): the state they hold
    DEFAULTS = "defaults"  # routers: the state they hold, else the plan's defaults (a first start)


class WriteConflict(KvplanError):
    """A conditional write found the bucket changed since it was read (e.g. an operator paused)."""


@dataclass(frozen=True)
class RolloutProgress:
    """Where a rollout stands; kept with the bucket so a restarted controller resumes from it."""

    steps: tuple[int, ...]  # weights, strictly increasing, the last one 100
    interval_s: float  # one analysis per interval
    step: int = 0  # index into steps of the weight now applied
    failures: int = 0  # failed analyses so far in this rollout
    failure_limit: int = 1  # abort when failures exceed this
    next_check_at: float = 0.0  # unix seconds of the next analysis
    started_at: float = 0.0
    last_reason: str = ""  # the last analysis verdict, for `rollout status`
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def encode(self) -> str:
        data = asdict(self)
        data["steps"] = list(self.steps)
        data["thresholds"] = dict(self.thresholds)
        return json.dumps(data, sort_keys=True)  # sorted: equal progress compares equal as text

    @classmethod
    def decode(cls, text: str) -> RolloutProgress:
        data = json.loads(text)
        data["steps"] = tuple(data["steps"])
        return cls(**data)


@dataclass(frozen=True)
class BucketFlags:
    """Runtime routing state of one bucket."""

    bucket: str
    baseline: str  # pool name
    candidate: str | None  # pool name; None when the bucket has no candidate
    weight: int = 0  # percent of cohorts sent to the candidate, 0..100
    killed: bool = False  # overrides weight: everyone goes to baseline
    rollout: RolloutPhase = RolloutPhase.IDLE
    progress: RolloutProgress | None = None  # the rollout's details, None when none ever ran
    shadow: int = 0  # percent of the baseline's requests also sent to the candidate, 0..100

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 100:
            raise ValueError(f"weight must be within 0..100, got {self.weight}")
        if not 0 <= self.shadow <= 100:
            raise ValueError(f"shadow share must be within 0..100, got {self.shadow}")

    @property
    def effective_shadow(self) -> int:
        """Shadowing stops with the kill switch: a killed candidate gets no traffic at all."""
        return 0 if self.killed or self.candidate is None else self.shadow

    @property
    def effective_weight(self) -> int:
        return 0 if self.killed or self.candidate is None else self.weight


def flags_to_record(flags: BucketFlags) -> dict[str, Any]:
    """The stored form: flat JSON scalars (the Redis Lua script merges and compares fields)."""
    return {
        "bucket": flags.bucket,
        "baseline": flags.baseline,
        "candidate": flags.candidate,
        "weight": flags.weight,
        "killed": flags.killed,
        "rollout": flags.rollout.value,
        "progress": flags.progress.encode() if flags.progress else None,
        "shadow": flags.shadow,
    }


def flags_from_record(rec: Mapping[str, Any]) -> BucketFlags:
    progress = rec.get("progress")
    return BucketFlags(
        bucket=str(rec["bucket"]),
        baseline=str(rec["baseline"]),
        candidate=None if rec.get("candidate") is None else str(rec["candidate"]),
        weight=int(rec.get("weight", 0)),
        killed=bool(rec.get("killed", False)),
        rollout=RolloutPhase(rec.get("rollout", RolloutPhase.IDLE)),
        progress=_progress(progress),
        shadow=int(rec.get("shadow", 0)),
    )


def _progress(value: Any) -> RolloutProgress | None:
    """Stored as JSON text; admin APIs may hand it over already decoded."""
    if isinstance(value, str):
        return RolloutProgress.decode(value)
    if isinstance(value, Mapping):
        return RolloutProgress.decode(json.dumps(dict(value)))
    return None


# An audit note is one line of text: a newline in a reason would print as another history entry.
REASON_MAX = 1000
ACTOR_MAX = 200
HISTORY_MAX = 10_000  # entries one history call returns at most


def check_note(name: str, value: str, limit: int) -> str:
    """`value` when it is at most `limit` printable characters on one line (InputError else)."""
    if not isinstance(value, str):
        raise InputError(f"{name} must be a string, got {value!r}")
    if len(value) > limit:
        raise InputError(f"{name} is {len(value):,} characters long; at most {limit}")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise InputError(f"{name} must be one line of printable text, got {bad!r} in {value[:60]!r}")
    return value


def check_history_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= HISTORY_MAX:
        raise InputError(f"limit must be an integer within 1..{HISTORY_MAX}, got {limit!r}")
    return limit


@dataclass(frozen=True)
class FlagChange:
    """A partial change of one bucket's flags: the fields given change, None leaves one as it is.

    Also the condition of a conditional write (`expect`): each field given must still hold."""

    weight: int | None = None
    killed: bool | None = None
    rollout: RolloutPhase | None = None
    progress: RolloutProgress | None = None
    shadow: int | None = None  # percent of the baseline's requests mirrored to the candidate

    def __post_init__(self) -> None:
        w = self.weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 100):
            raise InvalidWeight(f"weight must be an integer within 0..100, got {w!r}")
        v = self.shadow
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100):
            raise InvalidWeight(f"shadow share must be an integer within 0..100, got {v!r}")
        if self.killed is not None and not isinstance(self.killed, bool):
            raise InputError(f"killed must be true or false, got {self.killed!r}")
        if self.rollout is not None and not isinstance(self.rollout, RolloutPhase):
            raise InputError(f"rollout must be one of {', '.join(RolloutPhase)}, got {self.rollout!r}")

    def record(self) -> dict[str, Any]:
        """The fields given, in the stored form (flat JSON scalars, as `flags_to_record`)."""
        out: dict[str, Any] = {}
        if self.weight is not None:
            out["weight"] = self.weight
        if self.killed is not None:
            out["killed"] = self.killed
        if self.rollout is not None:
            out["rollout"] = self.rollout.value
        if self.progress is not None:
            out["progress"] = self.progress.encode()
        if self.shadow is not None:
            out["shadow"] = self.shadow
        return out


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

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "epoch": self.epoch,
            "source": self.source,
            "age_seconds": round(time.monotonic() - self.loaded_at, 3),
            "buckets": {name: flags_to_record(f) for name, f in self.buckets.items()},
        }


@dataclass(frozen=True)
class AuditEntry:
    """One change: who, when, what changed from and to, and why."""

    version: int
    bucket: str
    actor: str
    action: str  # "set-weight", "kill", "unkill", "rollout:<what>", "seed"
    before: BucketFlags | None
    after: BucketFlags
    reason: str = ""
    at: float = field(default_factory=time.time)  # unix seconds
    epoch: str = ""
    write_id: str = ""  # chosen by the writer, so it can find its write after a lost reply

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "epoch": self.epoch,
            "bucket": self.bucket,
            "actor": self.actor,
            "action": self.action,
            "reason": self.reason,
            "at": self.at,
            "before": flags_to_record(self.before) if self.before else None,
            "after": flags_to_record(self.after),
            "write_id": self.write_id,
        }


def defaults_from_plan(plan: Plan) -> dict[str, BucketFlags]:
    """Initial state: the plan's baseline, its first candidate, and the plan's rollout section."""
    return {
        b.name: BucketFlags(
            bucket=b.name,
            baseline=b.baseline.name,
            candidate=b.candidates[0].name if b.candidates else None,
            weight=b.rollout.weight if b.candidates else 0,
            killed=b.rollout.killed,
            shadow=b.rollout.shadow if b.candidates else 0,
        )
        for b in plan.buckets
    }


def unknown_bucket(bucket: str, known: Mapping[str, object]) -> UnknownBucket:
    return UnknownBucket(f"unknown bucket {bucket!r}; buckets: {', '.join(known)}")


class FlagStore(Protocol):
    """A source of flag state. `snapshot` is local and cheap; the rest may do I/O.

    `update` is the one write: it applies `change` to the bucket's current stored state
    atomically (so concurrent writers never lose each other's fields), bumps the version and
    appends exactly one audit entry, or does nothing when nothing changes. With `expect`, it
    writes only if those fields still hold those values (else WriteConflict).
    """

    def snapshot(self) -> FlagSnapshot: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def update(
        self,
        bucket: str,
        change: FlagChange,
        *,
        action: str,
        actor: str,
        reason: str = "",
        expect: FlagChange | None = None,
        write_id: str = "",
    ) -> BucketFlags: ...

    async def set_weight(
        self, bucket: str, weight: int, actor: str, reason: str = "", write_id: str = ""
    ) -> BucketFlags: ...

    async def kill(self, bucket: str, actor: str, reason: str = "", write_id: str = "") -> BucketFlags: ...

    async def set_shadow(
        self, bucket: str, share: int, actor: str, reason: str = "", write_id: str = ""
    ) -> BucketFlags: ...

    async def unkill(self, bucket: str, actor: str, reason: str = "", write_id: str = "") -> BucketFlags: ...

    async def history(self, bucket: str | None = None, limit: int = 100) -> list[AuditEntry]: ...


class StoreWrites:
    """The named writes, expressed once through `update` (mixed into each store)."""

    async def update(
        self,
        bucket: str,
        change: FlagChange,
        *,
        action: str,
        actor: str,
        reason: str = "",
        expect: FlagChange | None = None,
        write_id: str = "",
    ) -> BucketFlags:
        raise NotImplementedError

    async def set_weight(
        self, bucket: str, weight: int, actor: str, reason: str = "", write_id: str = ""
    ) -> BucketFlags:
        change = FlagChange(weight=weight)
        return await self.update(
            bucket, change, action="set-weight", actor=actor, reason=reason, write_id=write_id
        )

    async def kill(self, bucket: str, actor: str, reason: str = "", write_id: str = "") -> BucketFlags:
        change = FlagChange(killed=True)
        return await self.update(bucket, change, action="kill", actor=actor, reason=reason, write_id=write_id)

    async def set_shadow(
        self, bucket: str, share: int, actor: str, reason: str = "", write_id: str = ""
    ) -> BucketFlags:
        change = FlagChange(shadow=share)
        return await self.update(
            bucket, change, action="set-shadow", actor=actor, reason=reason, write_id=write_id
        )

    async def unkill(self, bucket: str, actor: str, reason: str = "", write_id: str = "") -> BucketFlags:
        change = FlagChange(killed=False)
        return await self.update(
            bucket, change, action="unkill", actor=actor, reason=reason, write_id=write_id
        )


def check_write(actor: str, reason: str, write_id: str) -> None:
    """What every store checks before a write: the audit entry's free text."""
    check_note("actor", actor, ACTOR_MAX)
    check_note("reason", reason, REASON_MAX)
    check_note("write_id", write_id, 64)


def merge(current: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record after `change`, or None when nothing changes (no version, no audit entry)."""
    after = dict(current)
    after.update(change)
    return None if after == dict(current) else after


def check_expect(current: Mapping[str, Any], expect: FlagChange | None, bucket: str) -> None:
    for key, value in (expect.record() if expect else {}).items():
        if current.get(key) != value:
            raise WriteConflict(f"bucket {bucket!r} changed meanwhile: {key} is {current.get(key)!r}")


class MemoryFlagStore(StoreWrites):
    """The embedded default: one process, no Redis. Writes are applied and audited in place."""

    def __init__(self, plan: Plan) -> None:
        self._snap = FlagSnapshot(defaults_from_plan(plan), version=0, epoch="memory", source="memory")
        self._audit: list[AuditEntry] = []

    def snapshot(self) -> FlagSnapshot:
        return self._snap

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def update(
        self,
        bucket: str,
        change: FlagChange,
        *,
        action: str,
        actor: str,
        reason: str = "",
        expect: FlagChange | None = None,
        write_id: str = "",
    ) -> BucketFlags:
        check_write(actor, reason, write_id)
        before = self._snap.buckets.get(bucket)
        if before is None:
            raise unknown_bucket(bucket, self._snap.buckets)
        current = flags_to_record(before)
        check_expect(current, expect, bucket)
        merged = merge(current, change.record())
        if merged is None:
            return before
        after = flags_from_record(merged)
        version = self._snap.version + 1
        buckets = dict(self._snap.buckets)
        buckets[bucket] = after
        self._snap = replace(self._snap, buckets=buckets, version=version, loaded_at=time.monotonic())
        entry = AuditEntry(
            version, bucket, actor, action, before, after, reason, epoch="memory", write_id=write_id
        )
        self._audit.append(entry)
        return after

    async def history(self, bucket: str | None = None, limit: int = 100) -> list[AuditEntry]:
        check_history_limit(limit)
        rows = [a for a in self._audit if bucket is None or a.bucket == bucket]
        return rows[-limit:]
