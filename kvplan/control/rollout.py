"""The rollout controller: a state machine advanced once per interval (Flagger / Argo model).

The decision (`decide`) is pure: bucket state + verdict + time -> the change to write. The
controller only reads metrics, calls `analyse` and `decide`, and writes the change with a
condition (the bucket's progress must be what it read), so an operator's pause or kill in the
meantime wins, and several controllers (one per router replica) never double-step.

    idle/succeeded/aborted --start--> progressing --pass at last step--> succeeded
    progressing --pass--> progressing (next step)
    progressing --fail, failures <= limit--> progressing (same step, retried next interval)
    progressing --fail, failures > limit--> aborted (weight 0, killed, at once)
    progressing <--pause/resume--> paused;  progressing|paused --abort--> aborted
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from kvplan.control.analysis import PoolWindow, Thresholds, Verdict, analyse
from kvplan.control.metrics import RolloutMetrics
from kvplan.control.state import (
    BucketFlags,
    FlagChange,
    FlagStore,
    RolloutPhase,
    RolloutProgress,
    WriteConflict,
)
from kvplan.errors import InputError
from kvplan.metric_names import AnalysisVerdict

log = logging.getLogger("kvplan.control.rollout")

PROGRESSING = RolloutPhase.PROGRESSING
PAUSED = RolloutPhase.PAUSED
ACTIVE = (PROGRESSING, PAUSED)


@dataclass(frozen=True)
class Decision:
    """A change to write to one bucket, with its audit action and reason."""

    change: FlagChange
    action: str
    reason: str


def parse_steps(text: str | Sequence[int]) -> tuple[int, ...]:
    """'10,25,50,100' -> (10, 25, 50, 100); strictly increasing weights within 1..100."""
    try:
        steps = tuple(int(s) for s in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise InputError(f"steps must be comma-separated integers, got {text!r}") from None
    if not steps:
        raise InputError("steps must name at least one weight")
    if any(not 1 <= s <= 100 for s in steps):
        raise InputError(f"steps must be weights within 1..100, got {list(steps)}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise InputError(f"steps must be strictly increasing, got {list(steps)}")
    return steps


def parse_interval(text: str) -> float:
    """'30s', '5m', '1h' or plain seconds -> seconds (> 0)."""
    units = {"s": 1, "m": 60, "h": 3600}
    raw = text.strip()
    try:
        value = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        raise InputError(f"interval must look like 30s, 5m or 1h, got {text!r}") from None
    if value <= 0:
        raise InputError(f"interval must be positive, got {text!r}")
    return value


# -- pure transitions ---------------------------------------------------------------------------


def start(
    flags: BucketFlags,
    steps: tuple[int, ...],
    interval_s: float,
    failure_limit: int,
    th: Thresholds,
    now: float,
) -> Decision:
    if flags.candidate is None:
        raise InputError(f"bucket {flags.bucket!r} has no candidate pool to roll out")
    if flags.rollout in ACTIVE:
        raise InputError(f"bucket {flags.bucket!r} already has a rollout {flags.rollout}; abort it first")
    if flags.killed:
        raise InputError(f"bucket {flags.bucket!r} is killed; unkill it before starting a rollout")
    if failure_limit < 0:
        raise InputError(f"failure limit must be >= 0, got {failure_limit}")
    progress = RolloutProgress(
        steps=steps,
        interval_s=interval_s,
        failure_limit=failure_limit,
        next_check_at=now + interval_s,
        started_at=now,
        thresholds=th.to_dict(),
        last_reason="started",
    )
    done = len(steps) == 1
    phase = RolloutPhase.SUCCEEDED if done else PROGRESSING
    change = FlagChange(weight=steps[0], rollout=phase, progress=progress)
    return Decision(change, "rollout:start", f"steps {list(steps)}")


def _next_check(p: RolloutProgress, now: float) -> float:
    """One interval after the check that was due, so late ticks do not drift the schedule;
    after a long stall (controller down), one full interval from now."""
    planned = p.next_check_at + p.interval_s
    return planned if planned > now else now + p.interval_s


def decide(flags: BucketFlags, verdict: Verdict, now: float) -> Decision:
    """The next state of a progressing rollout after one analysis."""
    p = flags.progress
    assert p is not None and flags.rollout == PROGRESSING
    if verdict.passed:
        step = p.step + 1
        last = step == len(p.steps) - 1
        progress = replace(p, step=step, next_check_at=_next_check(p, now), last_reason=verdict.reason)
        phase = RolloutPhase.SUCCEEDED if last else PROGRESSING
        action = "rollout:complete" if last else "rollout:advance"
        return Decision(
            FlagChange(weight=p.steps[step], rollout=phase, progress=progress), action, verdict.reason
        )
    failures = p.failures + 1
    progress = replace(p, failures=failures, next_check_at=_next_check(p, now), last_reason=verdict.reason)
    if failures > p.failure_limit:
        return abort(replace(flags, progress=progress), f"analysis failed {failures}x: {verdict.reason}")
    return Decision(
        FlagChange(progress=progress),
        "rollout:hold",
        f"failure {failures}/{p.failure_limit}: {verdict.reason}",
    )


def abort(flags: BucketFlags, reason: str) -> Decision:
    if flags.rollout not in ACTIVE:
        raise InputError(f"bucket {flags.bucket!r} has no rollout in progress (it is {flags.rollout})")
    progress = replace(flags.progress, last_reason=reason) if flags.progress else None
    change = FlagChange(weight=0, killed=True, rollout=RolloutPhase.ABORTED, progress=progress)
    return Decision(change, "rollout:abort", reason)


def pause(flags: BucketFlags) -> Decision:
    if flags.rollout != PROGRESSING:
        raise InputError(f"bucket {flags.bucket!r} has no progressing rollout (it is {flags.rollout})")
    return Decision(FlagChange(rollout=PAUSED), "rollout:pause", "")


def resume(flags: BucketFlags, now: float) -> Decision:
    if flags.rollout != PAUSED or flags.progress is None:
        raise InputError(f"bucket {flags.bucket!r} has no paused rollout (it is {flags.rollout})")
    # a fresh full window: what happened while paused is not judged at the current step
    progress = replace(flags.progress, next_check_at=now + flags.progress.interval_s)
    return Decision(FlagChange(rollout=PROGRESSING, progress=progress), "rollout:resume", "")


def wait(flags: BucketFlags, now: float) -> Decision:
    """The metrics source started after this window began: judge a full window later."""
    assert flags.progress is not None
    reason = "waiting for a full metrics window (controller restarted)"
    progress = replace(flags.progress, next_check_at=now + flags.progress.interval_s, last_reason=reason)
    return Decision(FlagChange(progress=progress), "rollout:wait", reason)


def due(flags: BucketFlags, now: float) -> bool:
    return flags.rollout == PROGRESSING and flags.progress is not None and now >= flags.progress.next_check_at


# -- I/O edge -----------------------------------------------------------------------------------


class MetricsSource(Protocol):
    """Counts of one pool of one bucket over [start, end]; None when there is nothing."""

    async def window(self, bucket: str, pool: str, start: float, end: float) -> PoolWindow | None: ...


async def apply(store: FlagStore, flags: BucketFlags, d: Decision, actor: str) -> BucketFlags:
    """Write a decision only if the bucket is still as it was read (else WriteConflict)."""
    # progress None is not checked: the phase check already catches a rollout started meanwhile
    expect = FlagChange(rollout=flags.rollout, progress=flags.progress)
    return await store.update(
        flags.bucket, d.change, action=d.action, actor=actor, reason=d.reason, expect=expect
    )


class RolloutController:
    def __init__(
        self,
        store: FlagStore,
        source: MetricsSource,
        *,
        clock: Callable[[], float] = time.time,
        actor: str = "rollout-controller",
        metrics: RolloutMetrics | None = None,
    ) -> None:
        self.store, self.source, self.clock, self.actor = store, source, clock, actor
        self.metrics = metrics

    async def tick(self) -> list[tuple[str, Decision]]:
        """Analyse every rollout that is due; return what was written."""
        done: list[tuple[str, Decision]] = []
        now = self.clock()
        observe = getattr(self.source, "observe", None)
        if observe is not None:  # sources that difference counters need a reading every tick
            await observe()
        for flags in list(self.store.snapshot().buckets.values()):
            if not due(flags, now) or flags.progress is None or flags.candidate is None:
                continue
            window = (now - flags.progress.interval_s, now)
            covers = getattr(self.source, "covers", None)
            if covers is not None and not covers(window[0]):
                d = wait(flags, now)
            else:
                cand = await self.source.window(flags.bucket, flags.candidate, *window)
                base = await self.source.window(flags.bucket, flags.baseline, *window)
                verdict = analyse(cand, base, Thresholds.from_dict(flags.progress.thresholds))
                d = decide(flags, verdict, now)
                if self.metrics is not None:
                    label = AnalysisVerdict.PASS if verdict.passed else AnalysisVerdict.FAIL
                    self.metrics.analyses.labels(flags.bucket, label).inc()
            try:
                await apply(self.store, flags, d, self.actor)
            except WriteConflict as exc:  # someone else acted (operator, another controller)
                log.info("rollout %s: skipped, %s", flags.bucket, exc)
                continue
            log.warning("rollout %s: %s %s", flags.bucket, d.action, d.reason)
            if self.metrics is not None and d.action == "rollout:abort":
                self.metrics.aborts.labels(flags.bucket).inc()
            done.append((flags.bucket, d))
        if self.metrics is not None:
            for name, f in self.store.snapshot().buckets.items():
                self.metrics.weight.labels(name).set(f.effective_weight)
        return done

    async def run(self, stop: asyncio.Event, poll_s: float = 1.0) -> None:
        """Tick until `stop` is set; errors are logged and retried next tick."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # the controller outlives a Prometheus or Redis hiccup
                log.warning("rollout controller tick failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
