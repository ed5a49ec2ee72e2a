"""Routing policies by name. Adding one: a file with a class that has `name` and `select`, and a line here.

A "dual" rollout (for example INT4 for <=16K and INT8 for 16-32K) needs no policy of its own: it
is two buckets in the plan whose candidates use different KV formats.
"""

from __future__ import annotations

from collections.abc import Callable

from kvplan.errors import NotFound, closest
from kvplan.plan import Bucket
from kvplan.router.policy.base import Decision, Policy, PolicyInput, RequestSignals
from kvplan.router.policy.baseline_only import BaselineOnlyPolicy
from kvplan.router.policy.length_bucket import LengthBucketPolicy
from kvplan.router.policy.precision import PrecisionPolicy

POLICIES: dict[str, Callable[[Bucket | None], Policy]] = {
    LengthBucketPolicy.name: LengthBucketPolicy,
    BaselineOnlyPolicy.name: BaselineOnlyPolicy,
    PrecisionPolicy.name: PrecisionPolicy,
}

DEFAULT_POLICY = LengthBucketPolicy.name


def get_policy(name: str, bucket: Bucket | None = None) -> Policy:
    """The named policy, built for one bucket (its plan section configures it)."""
    build = POLICIES.get(name)
    if build is None:
        known = ", ".join(POLICIES)
        raise NotFound(f"unknown routing policy {name!r}; known: {known}{closest(name, list(POLICIES))}")
    return build(bucket)


__all__ = ["DEFAULT_POLICY", "POLICIES", "Decision", "Policy", "PolicyInput", "RequestSignals", "get_policy"]
