"""The router's Prometheus metrics: names and label sets defined once.

Dashboards and alert rules (kvplan/dashboards) import these names; nothing else spells them.
Every label combination the plan allows is created at start (and on plan reload), so ratios
such as candidate errors / candidate requests read 0 instead of going missing.
Histogram buckets always contain the plan's SLO bounds as exact edges: the share of requests
under an SLO bound is only exact when the bound is a bucket edge (facts.md §6).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from kvplan.router.metric_types import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from kvplan.plan import Plan

PREFIX = "kvplan_router"

# -- names (counters are exposed with a `_total` suffix, histograms with _bucket/_sum/_count) --
REQUESTS = f"{PREFIX}_requests"  # counter {bucket, pool, regime, outcome}
REJECTED = f"{PREFIX}_rejected"  # counter {reason}: refused before a pool was chosen
TTFT_SECONDS = f"{PREFIX}_ttft_seconds"  # histogram {bucket, pool, regime}: to first upstream byte
E2E_SECONDS = f"{PREFIX}_e2e_seconds"  # histogram {bucket, pool, regime}: to last byte
# histogram {bucket, pool, regime}: gap between consecutive upstream body chunks of a streamed 2xx
# response (one SSE event per chunk from vLLM), observed for every chunk after the first
ITL_SECONDS = f"{PREFIX}_itl_seconds"
PROMPT_TOKENS = f"{PREFIX}_prompt_tokens"  # histogram {bucket}
OVERHEAD_SECONDS = f"{PREFIX}_overhead_seconds"  # histogram: request parsed -> sent upstream
RETRIES = f"{PREFIX}_retries"  # counter {bucket, pool}: attempts after the first
UPSTREAM_ERRORS = f"{PREFIX}_upstream_errors"  # counter {pool, kind}
IN_FLIGHT = f"{PREFIX}_in_flight"  # gauge {pool}
ENDPOINT_HEALTHY = f"{PREFIX}_endpoint_healthy"  # gauge {pool, endpoint}: 1 healthy, 0 ejected
ENDPOINT_SATURATED = f"{PREFIX}_endpoint_saturated"  # gauge {pool, endpoint}: 1 when full/stale
ENDPOINT_WAITING = f"{PREFIX}_endpoint_requests_waiting"  # gauge {pool, endpoint}: scraped vLLM
ENDPOINT_KV_USAGE = f"{PREFIX}_endpoint_kv_cache_usage"  # gauge {pool, endpoint}: scraped, 0-1
DECISIONS = f"{PREFIX}_decisions"  # counter {bucket, pool, reason}
ENDPOINT_CHOICES = f"{PREFIX}_endpoint_choices"  # counter {pool, policy, reason}: endpoint policy picks
PREFIX_TABLE_BLOCKS = f"{PREFIX}_prefix_table_blocks"  # gauge {pool}: (block, endpoint) pairs remembered
FLAG_VERSION = f"{PREFIX}_flag_version"  # gauge: version of the flag snapshot in use
BUCKET_WEIGHT = f"{PREFIX}_bucket_weight"  # gauge {bucket}: effective candidate weight, 0-100
BUCKET_KILLED = f"{PREFIX}_bucket_killed"  # gauge {bucket}: 1 when the kill switch is on
PLAN_RELOADS = f"{PREFIX}_plan_reloads"  # counter {result}

# -- label values --
OUTCOMES = (
    "ok",  # upstream answered 2xx
    "client_error",  # upstream answered 4xx other than 429 (the client's fault, never the endpoint's)
    "backpressure",  # 429/503 from upstream, or every endpoint of the pool full (router's 429)
    "upstream_error",  # 5xx, connection failure or timeout after all retries
    "stream_broken",  # upstream failed after the first byte was sent (no retry possible)
    "cancelled",  # the client went away
)
REJECT_REASONS = (
    "invalid_request",  # malformed JSON, wrong types, bad values
    "model_not_found",
    "context_length_exceeded",
    "body_too_large",
    "not_found",  # unknown path
    "no_healthy_endpoint",
)
ERROR_KINDS = (
    "connect",  # refused / unreachable / connect timeout
    "first_byte_timeout",
    "idle_timeout",
    "http_5xx",
    "backpressure",  # 429 or 503 from the endpoint
    "protocol",  # connection reset or malformed response
)
DECISION_REASONS = (
    "weight",  # the cohort's percentile vs the bucket's rollout weight chose this pool
    "killed",  # kill switch on: baseline
    "fallback",  # candidate unhealthy or saturated: baseline
    "stale",  # candidate's scraped load is stale: baseline
    "no_candidate",  # the bucket has no candidate pool
    "retry",  # re-routed to baseline after the candidate failed before the first byte
)
ENDPOINT_CHOICE_REASONS = (
    "load",  # power of two choices (or prefix-cache with a prompt shorter than one block)
    "rotation",  # round robin
    "prefix",  # prefix-cache: an endpoint holding leading blocks of the prompt, within the load bound
    "new_prefix",  # prefix-cache: nobody holds its first block; rendezvous hash within the bound
    "over_bound",  # prefix-cache: the holders were over the load bound; a less loaded endpoint
)
RELOAD_RESULTS = ("ok", "error")

# -- label names --
REQUEST_LABELS = ("bucket", "pool", "regime", "outcome")
LATENCY_LABELS = ("bucket", "pool", "regime")
DECISION_LABELS = ("bucket", "pool", "reason")
CHOICE_LABELS = ("pool", "policy", "reason")
ENDPOINT_LABELS = ("pool", "endpoint")

_ITL_EDGES = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LATENCY_EDGES = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD_EDGES = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
_TOKEN_EDGES = tuple(float(2**k) for k in range(6, 18))  # 64 .. 131072


def with_edges(base: Iterable[float], *bounds: float) -> tuple[float, ...]:
    """Histogram buckets = `base` plus each SLO bound as an exact edge, sorted, unique."""
    return tuple(sorted({*base, *bounds}))


class RouterMetrics:
    """All router metrics on one registry (one per router, so tests can run several)."""

    def __init__(self, plan: Plan, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        slo = plan.slo
        self.requests = Counter(REQUESTS, "Routed requests by outcome", REQUEST_LABELS, registry=r)
        self.rejected = Counter(REJECTED, "Requests refused before routing", ("reason",), registry=r)
        self.ttft = Histogram(
            TTFT_SECONDS,
            "Time to the first upstream byte (TTFT when streaming)",
            LATENCY_LABELS,
            buckets=with_edges(_LATENCY_EDGES, slo.ttft_seconds),
            registry=r,
        )
        self.e2e = Histogram(
            E2E_SECONDS,
            "Time to the last byte",
            LATENCY_LABELS,
            buckets=with_edges(_LATENCY_EDGES, slo.ttft_seconds, slo.e2e_seconds),
            registry=r,
        )
        self.itl = Histogram(
            ITL_SECONDS,
            "Gap between streamed upstream chunks (inter-token latency)",
            LATENCY_LABELS,
            buckets=with_edges(_ITL_EDGES, slo.itl_seconds),
            registry=r,
        )
        self.prompt_tokens = Histogram(
            PROMPT_TOKENS,
            "Prompt tokens as counted by the router",
            ("bucket",),
            buckets=_TOKEN_EDGES,
            registry=r,
        )
        self.overhead = Histogram(
            OVERHEAD_SECONDS,
            "Router time from parsed request to upstream send",
            buckets=_OVERHEAD_EDGES,
            registry=r,
        )
        self.retries = Counter(RETRIES, "Upstream attempts after the first", ("bucket", "pool"), registry=r)
        self.upstream_errors = Counter(UPSTREAM_ERRORS, "Upstream failures", ("pool", "kind"), registry=r)
        self.in_flight = Gauge(IN_FLIGHT, "Requests in flight", ("pool",), registry=r)
        self.endpoint_healthy = Gauge(ENDPOINT_HEALTHY, "Endpoint health", ENDPOINT_LABELS, registry=r)
        self.endpoint_saturated = Gauge(
            ENDPOINT_SATURATED, "Endpoint full or its load stale", ENDPOINT_LABELS, registry=r
        )
        self.endpoint_waiting = Gauge(
            ENDPOINT_WAITING, "Scraped vllm:num_requests_waiting", ENDPOINT_LABELS, registry=r
        )
        self.endpoint_kv_usage = Gauge(
            ENDPOINT_KV_USAGE, "Scraped vllm:kv_cache_usage_perc", ENDPOINT_LABELS, registry=r
        )
        self.decisions = Counter(DECISIONS, "Routing decisions by reason", DECISION_LABELS, registry=r)
        self.endpoint_choices = Counter(
            ENDPOINT_CHOICES, "Endpoint choices inside a pool by policy and reason", CHOICE_LABELS, registry=r
        )
        self.prefix_table_blocks = Gauge(
            PREFIX_TABLE_BLOCKS, "Prompt blocks the pool's prefix table remembers", ("pool",), registry=r
        )
        self.flag_version = Gauge(FLAG_VERSION, "Flag snapshot version in use", registry=r)
        self.bucket_weight = Gauge(BUCKET_WEIGHT, "Effective candidate weight", ("bucket",), registry=r)
        self.bucket_killed = Gauge(BUCKET_KILLED, "Kill switch state", ("bucket",), registry=r)
        self.plan_reloads = Counter(PLAN_RELOADS, "Plan file reloads", ("result",), registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for result in RELOAD_RESULTS:
            self.plan_reloads.labels(result)
        self.declare(plan)

    def declare(self, plan: Plan) -> None:
        """Create every label combination the plan allows (idempotent; called again on reload)."""
        from kvplan.formats import get_format

        for bucket in plan.buckets:
            self.prompt_tokens.labels(bucket.name)
            self.bucket_weight.labels(bucket.name)
            self.bucket_killed.labels(bucket.name)
            for pool in bucket.pools:
                regime = get_format(pool.kv_format).regime
                for outcome in OUTCOMES:
                    self.requests.labels(bucket.name, pool.name, regime, outcome)
                self.ttft.labels(bucket.name, pool.name, regime)
                self.e2e.labels(bucket.name, pool.name, regime)
                self.itl.labels(bucket.name, pool.name, regime)
                self.retries.labels(bucket.name, pool.name)
                for reason in DECISION_REASONS:
                    self.decisions.labels(bucket.name, pool.name, reason)
                for reason in ENDPOINT_CHOICE_REASONS:
                    self.endpoint_choices.labels(pool.name, bucket.endpoint_choice.policy, reason)
                self.prefix_table_blocks.labels(pool.name)
        for pool in plan.pools:
            self.in_flight.labels(pool.name)
            for kind in ERROR_KINDS:
                self.upstream_errors.labels(pool.name, kind)
            for url in pool.endpoints:
                for gauge in (
                    self.endpoint_healthy,
                    self.endpoint_saturated,
                    self.endpoint_waiting,
                    self.endpoint_kv_usage,
                ):
                    gauge.labels(pool.name, url)
