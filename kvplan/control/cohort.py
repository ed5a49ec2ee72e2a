"""Sticky cohorts: Unleash-compatible percentiles, so a user keeps their pool as weights grow.

percentile = murmur3_32(f"{group}:{key}", seed 0, unsigned) % 100 + 1, in the rollout when
percentile <= weight. Cohorts nest: everyone in at 10% is still in at 25%, 50% and 100%.
Unleash's own vectors: key "174" in group "Feature.flexibleRollout.10" -> 10; key "499" -> 32.
"""

from __future__ import annotations

import mmh3


def percentile(key: str, group: str) -> int:
    """The stable 1..100 percentile of a cohort key within a group (the bucket's rollout)."""
    return int(mmh3.hash(f"{group}:{key}", seed=0, signed=False)) % 100 + 1


def in_rollout(key: str, group: str, weight: int) -> bool:
    """Whether this key falls inside a rollout at `weight` percent."""
    return weight > 0 and percentile(key, group) <= weight
