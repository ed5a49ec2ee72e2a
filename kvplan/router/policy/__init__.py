"""Routing policies by name. Adding one: a file with a class that has `name` and `select`, and a line here.

A "dual" rollout (for example INT4 for <=16K and INT8 for 16-32K) needs no policy of its own: it
is two buckets in the plan whose candidates use different KV formats.
"""

from __future__ import annotations

from kvplan.errors import NotFound, closest
from kvplan.router.policy.base import Decision, Policy, PolicyInput
from kvplan.router.policy.baseline_only import BaselineOnlyPolicy
from kvplan.router.policy.length_bucket import LengthBucketPolicy

POLICIES: dict[str, type[Policy]] = {
    LengthBucketPolicy.name: LengthBucketPolicy,
    BaselineOnlyPolicy.name: BaselineOnlyPolicy,
}

DEFAULT_POLICY = LengthBucketPolicy.name


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        known = ", ".join(POLICIES)
        raise NotFound(
            f"unknown routing policy {name!r}; known: {known}{closest(name, list(POLICIES))}"
        ) from None


__all__ = ["DEFAULT_POLICY", "POLICIES", "Decision", "Policy", "PolicyInput", "get_policy"]
