"""The policy interface: given a bucket's flags, the cohort and the pools' availability, pick a pool.

A policy is pure: loads and flags are pushed in (`PolicyInput`), it never fetches anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from kvplan.control.state import BucketFlags
from kvplan.metric_names import DecisionReason
from kvplan.router.endpoints import Availability


class PolicyInput(NamedTuple):
    bucket: str
    flags: BucketFlags
    percentile: int  # the cohort's stable 1..100 percentile within this bucket (docs/facts.md §6)
    availability: Callable[[str], Availability]  # pool name -> how that pool looks right now


class Decision(NamedTuple):
    pool: str
    reason: DecisionReason


class Policy(Protocol):
    """One required method. Policies are registered by name in kvplan.router.policy."""

    name: str

    def select(self, inp: PolicyInput) -> Decision: ...
