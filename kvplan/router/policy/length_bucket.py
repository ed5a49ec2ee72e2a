"""The default policy: sticky percentage rollout of the bucket's candidate, with kill switch and fallback.

A cohort whose percentile is within the rollout weight goes to the candidate, unless the bucket
is killed (everyone to baseline) or the candidate cannot take it right now (unhealthy,
saturated, or its load data is stale), in which case the baseline serves it.
"""

from __future__ import annotations

from kvplan.metric_names import DecisionReason
from kvplan.plan import Bucket
from kvplan.router.endpoints import Availability
from kvplan.router.policy.base import Decision, PolicyInput

_FALLBACK_REASON = {
    Availability.UNHEALTHY: DecisionReason.FALLBACK,
    Availability.SATURATED: DecisionReason.FALLBACK,
    Availability.STALE: DecisionReason.STALE,
}


class LengthBucketPolicy:
    name = "length-bucket"

    def __init__(self, bucket: Bucket | None = None) -> None:
        """Stateless: the flags carry everything it needs."""

    def select(self, inp: PolicyInput) -> Decision:
        flags = inp.flags
        if flags.candidate is None:
            return Decision(flags.baseline, DecisionReason.NO_CANDIDATE)
        if flags.killed:
            return Decision(flags.baseline, DecisionReason.KILLED)
        if inp.percentile > flags.weight:
            return Decision(flags.baseline, DecisionReason.WEIGHT)
        state = inp.availability(flags.candidate)
        if state is not Availability.AVAILABLE:
            return Decision(flags.baseline, _FALLBACK_REASON[state])
        return Decision(flags.candidate, DecisionReason.WEIGHT)
