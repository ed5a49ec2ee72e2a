"""Power of two choices: the lower-loaded of two endpoints drawn at random (the default)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from kvplan.router.endpoint_policy.base import Choice, Pick, Stateless
from kvplan.router.endpoints import Endpoint, Saturation, eligible


def two_choices(candidates: Sequence[Endpoint], now: float, sat: Saturation, rng: random.Random) -> Endpoint:
    """The better-scored of two distinct random candidates (`candidates` not empty)."""
    n = len(candidates)
    if n == 1:
        return candidates[0]
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    a, b = candidates[i], candidates[j]
    return a if a.score(now, sat) <= b.score(now, sat) else b


class PowerOfTwoPolicy(Stateless):
    name = "power-of-two"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def select(
        self, endpoints: Sequence[Endpoint], pick: Pick, exclude: Sequence[Endpoint] = ()
    ) -> Choice | None:
        candidates = eligible(endpoints, exclude)
        if not candidates:
            return None
        return Choice(two_choices(candidates, pick.now, pick.sat, self.rng), "load")
