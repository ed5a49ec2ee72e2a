"""Endpoint policies by name: how a request picks one endpoint of its pool.

Adding one: a file with a class that has `name` and `select` (hooks from `Stateless`), a member
of `kvplan.plan.EndpointPolicyName`, and a line here. The plan chooses one per bucket
(`endpoint_choice`); every pool of the bucket gets its own instance (its own state).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kvplan.plan import EndpointChoice, EndpointPolicyName
from kvplan.router.endpoint_policy.base import Choice, EndpointPolicy, Pick, Stateless
from kvplan.router.endpoint_policy.power_of_two import PowerOfTwoPolicy
from kvplan.router.endpoint_policy.prefix_cache import PrefixCachePolicy
from kvplan.router.endpoint_policy.round_robin import RoundRobinPolicy


def _prefix_cache(choice: EndpointChoice, rng: random.Random | None) -> EndpointPolicy:
    assert choice.load_bound is not None and choice.table_blocks is not None  # the plan fills them
    return PrefixCachePolicy(choice.load_bound, choice.table_blocks, rng)


ENDPOINT_POLICIES: dict[
    EndpointPolicyName, Callable[[EndpointChoice, random.Random | None], EndpointPolicy]
] = {
    EndpointPolicyName.POWER_OF_TWO: lambda _, rng: PowerOfTwoPolicy(rng),
    EndpointPolicyName.ROUND_ROBIN: lambda _, rng: RoundRobinPolicy(),
    EndpointPolicyName.PREFIX_CACHE: _prefix_cache,
}


def endpoint_policy(choice: EndpointChoice, rng: random.Random | None = None) -> EndpointPolicy:
    return ENDPOINT_POLICIES[choice.policy](choice, rng)


__all__ = ["ENDPOINT_POLICIES", "Choice", "EndpointPolicy", "Pick", "Stateless", "endpoint_policy"]
