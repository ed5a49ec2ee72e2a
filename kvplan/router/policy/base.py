"""The policy interface: given a bucket's flags, the cohort and the pools' availability, pick a pool.

A policy is pure: loads and flags are pushed in (`PolicyInput`), it never fetches anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from kvplan.control.state import BucketFlags
from kvplan.metric_names import DecisionReason
from kvplan.router.endpoints import Availability


def _no_text() -> str:
    return ""


class RequestSignals(NamedTuple):
    """What a request says about itself that a policy may weigh (all cheap; the text is lazy)."""

    precision_high: bool = False  # the client sent X-KV-Precision: high
    structured: bool = False  # it offers tools or asks for a JSON response format
    prompt_tokens: int = 0
    text: Callable[[], str] = _no_text  # the prompt's text, built only if a policy asks


class PolicyInput(NamedTuple):
    bucket: str
    flags: BucketFlags
    percentile: int  # the cohort's stable 1..100 percentile within this bucket (docs/facts.md §6)
    availability: Callable[[str], Availability]  # pool name -> how that pool looks right now
    request: RequestSignals = RequestSignals()


class Decision(NamedTuple):
    pool: str
    reason: DecisionReason


class Policy(Protocol):
    """One required method. Policies are registered by name in kvplan.router.policy and built
    once per bucket as `cls(bucket)` (the bucket's plan section; most policies ignore it)."""

    name: str

    def select(self, inp: PolicyInput) -> Decision: ...
