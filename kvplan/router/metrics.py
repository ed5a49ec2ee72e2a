"""The router's Prometheus metrics (names and label values: kvplan.metric_names.router).

Every label combination the plan allows is created at start (and on plan reload), so ratios
such as candidate errors / candidate requests read 0 instead of going missing.
Histogram buckets always contain the plan's SLO bounds as exact edges: the share of requests
under an SLO bound is only exact when the bound is a bucket edge (docs/facts.md §6).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from kvplan.metric_names import router as rm
from kvplan.router.metric_types import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from kvplan.plan import Plan

_ITL_EDGES = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LATENCY_EDGES = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD_EDGES = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
_TOKEN_EDGES = tuple(float(2**k) for k in range(6, 18))  # 64 .. 131072
# agreement 0-1: fine near 1, where a good candidate lives (0.99 separates "all but one token")
AGREEMENT_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


def with_edges(base: Iterable[float], *bounds: float) -> tuple[float, ...]:
    """Histogram buckets = `base` plus each SLO bound as an exact edge, sorted, unique."""
    return tuple(sorted({*base, *bounds}))


class RouterMetrics:
    """All router metrics on one registry (one per router, so tests can run several)."""

    def __init__(self, plan: Plan, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        slo = plan.slo
        self.requests = Counter(rm.REQUESTS, "Routed requests by outcome", rm.REQUEST_LABELS, registry=r)
        self.rejected = Counter(rm.REJECTED, "Requests refused before routing", ("reason",), registry=r)
        self.ttft = Histogram(
            rm.TTFT_SECONDS,
            "Time to the first upstream byte (TTFT when streaming)",
            rm.LATENCY_LABELS,
            buckets=with_edges(_LATENCY_EDGES, slo.ttft_seconds),
            registry=r,
        )
        self.e2e = Histogram(
            rm.E2E_SECONDS,
            "Time to the last byte",
            rm.LATENCY_LABELS,
            buckets=with_edges(_LATENCY_EDGES, slo.ttft_seconds, slo.e2e_seconds),
            registry=r,
        )
        self.itl = Histogram(
            rm.ITL_SECONDS,
            "Gap between streamed upstream chunks (inter-token latency)",
            rm.LATENCY_LABELS,
            buckets=with_edges(_ITL_EDGES, slo.itl_seconds),
            registry=r,
        )
        self.prompt_tokens = Histogram(
            rm.PROMPT_TOKENS,
            "Prompt tokens as counted by the router",
            ("bucket",),
            buckets=_TOKEN_EDGES,
            registry=r,
        )
        self.overhead = Histogram(
            rm.OVERHEAD_SECONDS,
            "Router time from parsed request to upstream send",
            buckets=_OVERHEAD_EDGES,
            registry=r,
        )
        self.retries = Counter(
            rm.RETRIES, "Upstream attempts after the first", ("bucket", "pool"), registry=r
        )
        self.upstream_errors = Counter(rm.UPSTREAM_ERRORS, "Upstream failures", ("pool", "kind"), registry=r)
        self.in_flight = Gauge(rm.IN_FLIGHT, "Requests in flight", ("pool",), registry=r)
        self.endpoint_healthy = Gauge(rm.ENDPOINT_HEALTHY, "Endpoint health", rm.ENDPOINT_LABELS, registry=r)
        self.endpoint_saturated = Gauge(
            rm.ENDPOINT_SATURATED, "Endpoint full or its load stale", rm.ENDPOINT_LABELS, registry=r
        )
        self.endpoint_waiting = Gauge(
            rm.ENDPOINT_WAITING, "Scraped vllm:num_requests_waiting", rm.ENDPOINT_LABELS, registry=r
        )
        self.endpoint_kv_usage = Gauge(
            rm.ENDPOINT_KV_USAGE, "Scraped vllm:kv_cache_usage_perc", rm.ENDPOINT_LABELS, registry=r
        )
        self.decisions = Counter(rm.DECISIONS, "Routing decisions by reason", rm.DECISION_LABELS, registry=r)
        self.endpoint_choices = Counter(
            rm.ENDPOINT_CHOICES,
            "Endpoint choices inside a pool by policy and reason",
            rm.CHOICE_LABELS,
            registry=r,
        )
        self.prefix_table_blocks = Gauge(
            rm.PREFIX_TABLE_BLOCKS, "Prompt blocks the pool's prefix table remembers", ("pool",), registry=r
        )
        self.flag_version = Gauge(rm.FLAG_VERSION, "Flag snapshot version in use", registry=r)
        self.bucket_weight = Gauge(rm.BUCKET_WEIGHT, "Effective candidate weight", ("bucket",), registry=r)
        self.bucket_killed = Gauge(rm.BUCKET_KILLED, "Kill switch state", ("bucket",), registry=r)
        self.plan_reloads = Counter(rm.PLAN_RELOADS, "Plan file reloads", ("result",), registry=r)
        self.client_refusals = Counter(
            rm.CLIENT_REFUSALS,
            "Client requests or connections the HTTP layer refused",
            ("reason",),
            registry=r,
        )
        self.admin_auth_failures = Counter(
            rm.ADMIN_AUTH_FAILURES, "Admin calls refused for their token", ("reason",), registry=r
        )
        shadow = ("bucket", "pool")
        self.shadow_sampled = Counter(
            rm.SHADOW_SAMPLED, "Baseline requests picked for shadowing", shadow, registry=r
        )
        self.shadow_pairs = Counter(rm.SHADOW_PAIRS, "Shadow answer pairs compared", shadow, registry=r)
        self.shadow_dropped = Counter(
            rm.SHADOW_DROPPED, "Shadow copies dropped before comparison", (*shadow, "reason"), registry=r
        )
        self.shadow_agreement = Histogram(
            rm.SHADOW_AGREEMENT,
            "Agreement of the candidate's shadow answer with the baseline's (1 = same)",
            (*shadow, "measure"),
            buckets=AGREEMENT_EDGES,
            registry=r,
        )
        for reason in rm.REJECT_REASONS:
            self.rejected.labels(reason)
        for result in rm.RELOAD_RESULTS:
            self.plan_reloads.labels(result)
        for refusal in rm.REFUSAL_REASONS:
            self.client_refusals.labels(refusal)
        for failure in rm.AUTH_FAILURES:
            self.admin_auth_failures.labels(failure)
        self.declare(plan)

    def declare(self, plan: Plan) -> None:
        """Create every label combination the plan allows (idempotent; called again on reload)."""

        for bucket in plan.buckets:
            self.prompt_tokens.labels(bucket.name)
            self.bucket_weight.labels(bucket.name)
            self.bucket_killed.labels(bucket.name)
            for pool in bucket.pools:
                regime = pool.format.regime
                for outcome in rm.OUTCOMES:
                    self.requests.labels(bucket.name, pool.name, regime, outcome)
                self.ttft.labels(bucket.name, pool.name, regime)
                self.e2e.labels(bucket.name, pool.name, regime)
                self.itl.labels(bucket.name, pool.name, regime)
                self.retries.labels(bucket.name, pool.name)
                for reason in rm.DECISION_REASONS:
                    self.decisions.labels(bucket.name, pool.name, reason)
                for choice in rm.ENDPOINT_CHOICE_REASONS:
                    self.endpoint_choices.labels(pool.name, bucket.endpoint_choice.policy, choice)
                self.prefix_table_blocks.labels(pool.name)
            for cand in bucket.candidates:
                self.shadow_sampled.labels(bucket.name, cand.name)
                self.shadow_pairs.labels(bucket.name, cand.name)
                for drop in rm.SHADOW_DROP_REASONS:
                    self.shadow_dropped.labels(bucket.name, cand.name, drop)
                for measure in rm.SHADOW_MEASURES:
                    self.shadow_agreement.labels(bucket.name, cand.name, measure)
        for pool in plan.pools:
            self.in_flight.labels(pool.name)
            for kind in rm.ERROR_KINDS:
                self.upstream_errors.labels(pool.name, kind)
            for url in pool.endpoints:
                for gauge in (
                    self.endpoint_healthy,
                    self.endpoint_saturated,
                    self.endpoint_waiting,
                    self.endpoint_kv_usage,
                ):
                    gauge.labels(pool.name, url)
