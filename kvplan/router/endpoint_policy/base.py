"""The endpoint-policy interface: given a pool's endpoints and one request, pick an endpoint.

A policy is pure: the endpoints' load (in-flight count, scraped vLLM queue and KV usage) and the
request's tokens are pushed in; it never fetches anything. One required method, `select`; the
hooks have no-op defaults in `Stateless` for policies that keep no per-endpoint state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from kvplan.router.endpoints import Endpoint, Saturation
from kvplan.router.tokens import PromptTokens


class Pick(NamedTuple):
    """What a policy knows about the request and the moment."""

    tokens: PromptTokens
    now: float  # loop time: endpoint load older than `sat.stale_after` counts as saturated
    sat: Saturation


class Choice(NamedTuple):
    endpoint: Endpoint
    reason: str  # one of kvplan.metric_names.EndpointChoiceReason


class EndpointPolicy(Protocol):
    """Registered by name in kvplan.router.endpoint_policy; chosen per bucket in the plan."""

    name: str  # the `policy` label of kvplan_router_endpoint_choices

    def select(
        self, endpoints: Sequence[Endpoint], pick: Pick, exclude: Sequence[Endpoint] = ()
    ) -> Choice | None:
        """An endpoint for this request, None when every endpoint is unhealthy, full or excluded."""
        ...

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        """The pool's endpoint set changed (plan reload): forget state about removed endpoints."""
        ...

    def table_size(self) -> int:
        """Entries of per-prefix state held (kvplan_router_prefix_table_blocks)."""
        ...


class Stateless:
    """No-op hooks."""

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        return None

    def table_size(self) -> int:
        return 0
