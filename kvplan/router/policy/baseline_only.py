"""Pin a bucket to its baseline pool whatever the flags say (e.g. while a candidate is being rebuilt)."""

from __future__ import annotations

from kvplan.router.policy.base import Decision, PolicyInput


class BaselineOnlyPolicy:
    name = "baseline-only"

    def select(self, inp: PolicyInput) -> Decision:
        reason = "killed" if inp.flags.killed else "no_candidate" if inp.flags.candidate is None else "weight"
        return Decision(inp.flags.baseline, reason)
