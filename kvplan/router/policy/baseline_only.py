"""Pin a bucket to its baseline pool whatever the flags say (e.g. while a candidate is being rebuilt)."""

from __future__ import annotations

from kvplan.metric_names import DecisionReason
from kvplan.plan import Bucket
from kvplan.router.policy.base import Decision, PolicyInput


class BaselineOnlyPolicy:
    name = "baseline-only"

    def __init__(self, bucket: Bucket | None = None) -> None:
        """Stateless: the flags carry everything it needs."""

    def select(self, inp: PolicyInput) -> Decision:
        if inp.flags.killed:
            return Decision(inp.flags.baseline, DecisionReason.KILLED)
        if inp.flags.candidate is None:
            return Decision(inp.flags.baseline, DecisionReason.NO_CANDIDATE)
        return Decision(inp.flags.baseline, DecisionReason.WEIGHT)
