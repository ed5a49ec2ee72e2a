"""The default policy: sticky percentage rollout of the bucket's candidate, with kill switch and fallback.

A cohort whose percentile is within the rollout weight goes to the candidate, unless the bucket
is killed (everyone to baseline) or the candidate cannot take it right now (unhealthy,
saturated, or its load data is stale), in which case the baseline serves it.
"""

from __future__ import annotations

from kvplan.router.endpoints import Availability
from kvplan.router.policy.base import Decision, PolicyInput

_FALLBACK_REASON = {
    Availability.UNHEALTHY: "fallback",
    Availability.SATURATED: "fallback",
    Availability.STALE: "stale",
}


class LengthBucketPolicy:
    name = "length-bucket"

    def select(self, inp: PolicyInput) -> Decision:
        flags = inp.flags
        if flags.candidate is None:
            return Decision(flags.baseline, "no_candidate")
        if flags.killed:
            return Decision(flags.baseline, "killed")
        if inp.percentile > flags.weight:
            return Decision(flags.baseline, "weight")
        state = inp.availability(flags.candidate)
        if state is not Availability.AVAILABLE:
            return Decision(flags.baseline, _FALLBACK_REASON[state])
        return Decision(flags.candidate, "weight")
