"""Round robin over the endpoints that can take a request (a load-blind baseline)."""

from __future__ import annotations

from collections.abc import Sequence

from kvplan.router.endpoint_policy.base import Choice, Pick, Stateless
from kvplan.router.endpoints import Endpoint, eligible


class RoundRobinPolicy(Stateless):
    name = "round-robin"

    def __init__(self) -> None:
        self.turn = 0

    def select(
        self, endpoints: Sequence[Endpoint], pick: Pick, exclude: Sequence[Endpoint] = ()
    ) -> Choice | None:
        candidates = eligible(endpoints, exclude)
        if not candidates:
            return None
        self.turn += 1
        return Choice(candidates[self.turn % len(candidates)], "rotation")
