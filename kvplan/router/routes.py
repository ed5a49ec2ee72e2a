"""The route table built from a plan, and the routing decision: bucket, then pool.

Pure: `decide` reads the plan-derived table, the flag snapshot and the endpoints' state, and
returns a `Route`; it does no I/O, so it is tested without a server.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kvplan import headers
from kvplan.control.cohort import percentile
from kvplan.control.state import BucketFlags, FlagSnapshot, defaults_from_plan
from kvplan.metric_names import DecisionReason, RejectReason
from kvplan.plan import Bucket, EndpointChoice, Plan, Pool
from kvplan.router.api_errors import ApiError
from kvplan.router.endpoint_policy import EndpointPolicy, endpoint_policy
from kvplan.router.endpoints import Availability, Endpoint, Saturation, availability
from kvplan.router.inputs import CHAT, Completion
from kvplan.router.policy import Policy, PolicyInput, RequestSignals, get_policy
from kvplan.router.tokens import (
    EstimateCounter,
    PromptTokens,
    TokenCounter,
    TokenizerCounter,
    chat_prompt,
    completion_prompt,
)


@dataclass(frozen=True)
class PoolRoute:
    pool: Pool
    regime: str  # X-KV-Regime, from kvplan.formats
    endpoints: tuple[Endpoint, ...]
    choice: EndpointChoice  # the bucket's endpoint policy and its settings
    chooser: EndpointPolicy  # this pool's instance of it (its own state, e.g. a prefix table)

    @property
    def name(self) -> str:
        return self.pool.name


@dataclass(frozen=True)
class BucketRoute:
    bucket: Bucket
    policy: Policy
    model: str


class Route(NamedTuple):
    bucket: BucketRoute
    pool: PoolRoute
    reason: DecisionReason
    tokens: PromptTokens
    needed_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return self.tokens.count


EndpointKey = tuple[str, str]  # (pool, url)


class RouteTable:
    """Everything derived from one plan. A reload builds a new table; endpoint state carries over,
    and so does a pool's endpoint policy (its prefix table) while the plan keeps its settings."""

    def __init__(
        self,
        plan: Plan,
        plan_dir: Path | None = None,
        previous: Mapping[EndpointKey, Endpoint] | None = None,
        default_max_in_flight: int = 256,
        previous_pools: Mapping[str, PoolRoute] | None = None,
    ) -> None:
        self.plan = plan
        self.defaults = defaults_from_plan(plan)
        previous = previous or {}
        self.endpoints: dict[EndpointKey, Endpoint] = {}
        self.pools: dict[str, PoolRoute] = {}
        for bucket in plan.buckets:
            for pool in bucket.pools:
                eps = []
                for url in pool.endpoints:
                    ep = previous.get((pool.name, url)) or Endpoint(pool.name, url, default_max_in_flight)
                    ep.max_in_flight = pool.max_concurrency or default_max_in_flight
                    self.endpoints[(pool.name, url)] = ep
                    eps.append(ep)
                choice = bucket.endpoint_choice
                old = (previous_pools or {}).get(pool.name)
                chooser = old.chooser if old is not None and old.choice == choice else endpoint_policy(choice)
                chooser.endpoints_changed(eps)
                regime = pool.format.regime
                self.pools[pool.name] = PoolRoute(pool, regime, tuple(eps), choice, chooser)
        self.buckets: dict[str, list[BucketRoute]] = {}  # model -> buckets by max_tokens
        for bucket in plan.buckets:
            model = bucket.baseline.model_name
            self.buckets.setdefault(model, []).append(
                BucketRoute(bucket, get_policy(bucket.policy, bucket), model)
            )
        self.models = tuple(self.buckets)
        self.pool_bucket = {
            p.name: br for brs in self.buckets.values() for br in brs for p in br.bucket.pools
        }
        self.counters: dict[str, TokenCounter] = {m: EstimateCounter() for m in self.models}
        for pool in plan.pools:
            if pool.tokenizer and isinstance(self.counters.get(pool.model_name), EstimateCounter):
                path = Path(pool.tokenizer)
                if not path.is_absolute() and plan_dir is not None:
                    path = plan_dir / path
                self.counters[pool.model_name] = TokenizerCounter(str(path))
        max_len = {m: max(b.bucket.max_tokens for b in bs) for m, bs in self.buckets.items()}
        self.models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "object": "model",
                        "created": 0,
                        "owned_by": "kvplan",
                        "max_model_len": max_len[m],
                    }
                    for m in self.models
                ],
            }
        ).encode()

    def flags(self, snapshot: FlagSnapshot, bucket: str) -> BucketFlags:
        """The snapshot's flags; a bucket new in a reloaded plan, unknown to the store, uses the plan's."""
        return snapshot.buckets.get(bucket) or self.defaults[bucket]

    def tokens(self, comp: Completion) -> PromptTokens:
        counter = self.counters[comp.model]
        if comp.kind == CHAT:
            assert comp.messages is not None
            return chat_prompt(counter, comp.messages)
        return completion_prompt(counter, comp.prompt)

    def decide(
        self,
        comp: Completion,
        cohort_key: str,
        snapshot: FlagSnapshot,
        now: float,
        sat: Saturation,
        *,
        precision_high: bool = False,
        force: str | None = None,
    ) -> Route:
        buckets = self.buckets.get(comp.model)
        if buckets is None:
            known = ", ".join(self.models)
            raise ApiError(
                404,
                f"The model '{comp.model}' does not exist. Available models: {known}",
                param="model",
                code="model_not_found",
                reason=RejectReason.MODEL_NOT_FOUND,
            )
        tokens = self.tokens(comp)
        prompt = tokens.count
        needed = prompt + (comp.max_tokens or self.plan.default_max_tokens)
        if force is not None:
            return self._forced(comp, force, tokens, needed)
        chosen = next((b for b in buckets if needed <= b.bucket.max_tokens), None)
        if chosen is None:
            raise _too_long(comp, buckets[-1].bucket.max_tokens, prompt, needed)
        name = chosen.bucket.name
        pools = self.pools

        def pool_state(pool: str) -> Availability:
            return availability(pools[pool].endpoints, now, sat)

        signals = RequestSignals(precision_high, comp.structured, prompt, lambda: prompt_text(comp))
        decision = chosen.policy.select(
            PolicyInput(name, self.flags(snapshot, name), percentile(cohort_key, name), pool_state, signals)
        )
        pool = pools.get(decision.pool)
        if pool is None:  # the store names a pool this plan no longer has: serve from the plan's baseline
            return Route(chosen, pools[chosen.bucket.baseline.name], DecisionReason.FALLBACK, tokens, needed)
        return Route(chosen, pool, decision.reason, tokens, needed)

    def _forced(self, comp: Completion, pool: str, tokens: PromptTokens, needed: int) -> Route:
        """An authorised caller (kvplan eval) names the pool: that pool or an error, never another."""
        bucket = self.pool_bucket.get(pool)
        if bucket is None or bucket.model != comp.model:
            known = ", ".join(p for p, b in self.pool_bucket.items() if b.model == comp.model)
            raise ApiError(
                404,
                f"Pool '{pool}' does not serve model '{comp.model}'. Its pools: {known}",
                param=headers.name(headers.FORCE_POOL),
                code="pool_not_found",
                reason=RejectReason.POOL_NOT_FOUND,
            )
        if needed > bucket.bucket.max_tokens:
            raise _too_long(comp, bucket.bucket.max_tokens, tokens.count, needed)
        return Route(bucket, self.pools[pool], DecisionReason.FORCED, tokens, needed)


def _too_long(comp: Completion, largest: int, prompt: int, needed: int) -> ApiError:
    return ApiError(
        400,
        f"This model's maximum context length is {largest} tokens. However, you requested "
        f"{needed} tokens ({prompt} in the messages, {needed - prompt} in the completion). "
        "Please reduce the length of the messages or completion.",
        param="messages" if comp.kind == CHAT else "prompt",
        code="context_length_exceeded",
        reason=RejectReason.CONTEXT_LENGTH_EXCEEDED,
    )


def precision_high(request_headers: Mapping[bytes, bytes]) -> bool:
    """Whether the client sent `X-KV-Precision: high`; any other value is refused, not ignored."""
    value = request_headers.get(headers.PRECISION)
    if value is None:
        return False
    if value.strip().lower() == headers.PRECISION_HIGH:
        return True
    raise ApiError(
        400,
        f"{headers.name(headers.PRECISION)} takes only {headers.PRECISION_HIGH.decode()!r}, "
        f"got {value[:40].decode('latin-1')!r}.",
        param=headers.name(headers.PRECISION),
        code="invalid_header_value",
    )


def forced_pool(request_headers: Mapping[bytes, bytes], admin_token: str | None) -> str | None:
    """The pool an X-Kvplan-Force-Pool header names, once its X-Kvplan-Token is the admin token."""
    pool = request_headers.get(headers.FORCE_POOL)
    if pool is None:
        return None
    given = request_headers.get(headers.FORCE_TOKEN, b"")
    if admin_token is None or not hmac.compare_digest(given, admin_token.encode()):
        why = (
            "this router has no admin token"
            if admin_token is None
            else f"send the admin token in {headers.name(headers.FORCE_TOKEN)}"
        )
        raise ApiError(
            403,
            f"Forcing a pool with {headers.name(headers.FORCE_POOL)} needs authorisation: {why}.",
            type="permission_error",
            code="pool_forcing_forbidden",
            reason=RejectReason.FORBIDDEN,
        )
    return pool.decode("latin-1")


def prompt_text(comp: Completion) -> str:
    """The prompt's text (chat contents or completion prompt), for content heuristics."""
    if comp.messages is not None:
        parts: list[str] = []
        for m in comp.messages:
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [
                    p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                ]
        return "\n".join(parts)
    prompt = comp.prompt
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return ""  # token ids: nothing to read
