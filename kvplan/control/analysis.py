"""Rollout analysis: candidate against baseline over the same window. Pure: data in, verdict out.

Three checks, each "the candidate is not worse than the baseline by more than a tolerance":
error ratio, share of requests whose TTFT is under the SLO bound, share of tokens whose
inter-token latency is under its bound. Shares under an exact histogram edge show a regression
that percentiles on coarse buckets hide (docs/facts.md §6). A pool with too few requests in the window
is "no data", which fails (Flagger's rule: silence is not health).

A fourth, quality, when `min_agreement` is set: the candidate's mean shadow agreement with the
baseline over the window (kvplan.quality.compare, the gated measure) must be at least that bound,
over at least `min_pairs` shadow pairs; fewer pairs is "no data", a failure like the others. Fast
and error-free is not enough: an INT4 pool that drifts from its baseline's answers fails here.

Why a noise margin: at 200 requests a 1% error ratio has a standard error of 0.7 points, so a
bare 1-point tolerance fails healthy candidates about one window in six. Each check therefore
allows tolerance + z * standard error of the difference of the two shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class PoolWindow:
    """What one pool did during the analysis window (increases of counters, not rates)."""

    requests: float  # finished requests that count (cancelled and client errors excluded)
    errors: float  # upstream errors and broken streams
    ttft_total: float  # TTFT observations
    ttft_fast: float  # of those, at or under the TTFT bound
    itl_total: float | None = None  # inter-token gaps observed; None when the source has none
    itl_fast: float | None = None
    shadow_pairs: float | None = None  # shadow answer pairs compared (a candidate's); None: no source
    shadow_agreement_sum: float | None = None  # sum of their agreement (mean = sum / pairs)


@dataclass(frozen=True)
class Thresholds:
    min_requests: float = 20  # per pool and window; fewer is "no data"
    max_error_increase: float = 0.01  # candidate error ratio may exceed the baseline's by this
    max_ttft_share_drop: float = 0.05  # share under the TTFT bound may be this much lower
    max_itl_share_drop: float = 0.05
    z: float = 2.0  # noise margin in standard errors
    min_agreement: float = 0.0  # mean shadow agreement the candidate must keep; 0 = no quality check
    min_pairs: float = 20  # shadow pairs per window for the quality check; fewer is "no data"

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> Thresholds:
        known = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    candidate: float
    baseline: float
    allowed: float  # the largest tolerated difference in this window (tolerance + noise margin)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    checks: tuple[Check, ...] = ()


def _margin(p1: float, n1: float, p2: float, n2: float, z: float) -> float:
    return z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)


def _worse(
    name: str,
    cand: tuple[float, float],
    base: tuple[float, float],
    tol: float,
    z: float,
    higher_is_worse: bool,
) -> Check:
    """(hits, total) per pool; fails when the candidate is worse by more than tol + noise."""
    pc, pb = cand[0] / cand[1], base[0] / base[1]
    allowed = tol + _margin(pc, cand[1], pb, base[1], z)
    worse_by = pc - pb if higher_is_worse else pb - pc
    return Check(name, worse_by <= allowed, pc, pb, allowed)


def _quality(candidate: PoolWindow, th: Thresholds) -> Check | str:
    """The quality check, or the "no data" reason."""
    pairs, total = candidate.shadow_pairs or 0.0, candidate.shadow_agreement_sum or 0.0
    least = max(th.min_pairs, 1.0)  # min_pairs 0 still needs one pair to take a mean of
    if pairs < least:
        return f"no data: shadow_agreement has {pairs:g} pairs (< {least:g}; is the shadow share 0?)"
    mean = total / pairs
    # the baseline agrees with itself: 1; allowed is the largest tolerated distance from it
    return Check("shadow_agreement", mean >= th.min_agreement, mean, 1.0, 1.0 - th.min_agreement)


def analyse(candidate: PoolWindow | None, baseline: PoolWindow | None, th: Thresholds) -> Verdict:
    for label, w in (("candidate", candidate), ("baseline", baseline)):
        if w is None or w.requests < th.min_requests:
            got = 0 if w is None else int(w.requests)
            return Verdict(False, f"no data: {label} served {got} requests (< {th.min_requests:g})")
    assert candidate is not None and baseline is not None
    checks = [
        _worse(
            "error_ratio",
            (candidate.errors, candidate.requests),
            (baseline.errors, baseline.requests),
            th.max_error_increase,
            th.z,
            higher_is_worse=True,
        )
    ]
    for name, c, b, tol in (
        (
            "ttft_under_slo",
            (candidate.ttft_fast, candidate.ttft_total),
            (baseline.ttft_fast, baseline.ttft_total),
            th.max_ttft_share_drop,
        ),
        (
            "itl_under_slo",
            (candidate.itl_fast, candidate.itl_total),
            (baseline.itl_fast, baseline.itl_total),
            th.max_itl_share_drop,
        ),
    ):
        if name == "itl_under_slo" and not c[1] and not b[1]:
            # this source does not measure inter-token latency, or neither pool streamed a response
            # in this window (the router's ITL histogram only sees streamed responses)
            continue
        if not c[1] or not b[1] or c[0] is None or b[0] is None:
            return Verdict(False, f"no data: {name} has no observations", tuple(checks))
        checks.append(_worse(name, (c[0], c[1]), (b[0], b[1]), tol, th.z, higher_is_worse=False))
    if th.min_agreement > 0:
        quality = _quality(candidate, th)
        if isinstance(quality, str):
            return Verdict(False, quality, tuple(checks))
        checks.append(quality)
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "; ".join(
            f"{c.name} candidate {c.candidate:.3f} vs baseline {c.baseline:.3f} (allowed {c.allowed:.3f})"
            for c in failed
        )
        return Verdict(False, reason, tuple(checks))
    return Verdict(
        True,
        "candidate within thresholds: "
        + ", ".join(f"{c.name} {c.candidate:.3f}/{c.baseline:.3f}" for c in checks),
        tuple(checks),
    )
