"""Every Prometheus metric name kvplan exports or reads, and their label values, defined once.

Three families, each a namespace read like a module:

    from kvplan.metric_names import vllm as vm      # vLLM 0.32-0.33's own /metrics
    from kvplan.metric_names import router as rm    # `kvplan serve`
    from kvplan.metric_names import control as cm   # flag stores and the rollout controller

The router, the flag stores, the simulated worker, the rollout analysis, the dashboards and the
alert rules all import from here; nothing else spells a metric name. Plain strings and the
standard library only, so any part of kvplan (the planner included) may import it.
Label values that code branches on are str-enums: they render as the same label text.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How a routed request ended: the `outcome` label of `kvplan_router_requests`."""

    OK = "ok"  # upstream answered 2xx
    CLIENT_ERROR = "client_error"  # upstream 4xx other than 429 (the client's fault, never the endpoint's)
    BACKPRESSURE = "backpressure"  # 429/503 from upstream, or every endpoint of the pool full (router's 429)
    UPSTREAM_ERROR = "upstream_error"  # 5xx, connection failure or timeout after all retries
    STREAM_BROKEN = "stream_broken"  # upstream failed after the first byte was sent (no retry possible)
    CANCELLED = "cancelled"  # the client went away


# What the rollout analysis counts: neither a pool's success nor its fault, and its faults.
EXCLUDED_OUTCOMES = (Outcome.CANCELLED, Outcome.CLIENT_ERROR)
ERROR_OUTCOMES = (Outcome.UPSTREAM_ERROR, Outcome.STREAM_BROKEN)


class RejectReason(StrEnum):
    """Why the router refused a request before choosing a pool: `kvplan_router_rejected{reason}`."""

    INVALID_REQUEST = "invalid_request"  # malformed JSON, wrong types, bad values
    MODEL_NOT_FOUND = "model_not_found"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    BODY_TOO_LARGE = "body_too_large"
    NOT_FOUND = "not_found"  # unknown path
    NO_HEALTHY_ENDPOINT = "no_healthy_endpoint"
    FORBIDDEN = "forbidden"  # X-Kvplan-Force-Pool without the admin token
    POOL_NOT_FOUND = "pool_not_found"  # X-Kvplan-Force-Pool naming no pool of the model


class ErrorKind(StrEnum):
    """An upstream failure: `kvplan_router_upstream_errors{kind}`."""

    CONNECT = "connect"  # refused / unreachable / connect timeout
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    HTTP_5XX = "http_5xx"
    BACKPRESSURE = "backpressure"  # 429 or 503 from the endpoint
    PROTOCOL = "protocol"  # connection reset or malformed response


class DecisionReason(StrEnum):
    """Why the policy chose a pool: `kvplan_router_decisions{reason}`."""

    WEIGHT = "weight"  # the cohort's percentile vs the bucket's rollout weight chose this pool
    KILLED = "killed"  # kill switch on: baseline
    FALLBACK = "fallback"  # candidate unhealthy or saturated: baseline
    STALE = "stale"  # candidate's scraped load is stale: baseline
    NO_CANDIDATE = "no_candidate"  # the bucket has no candidate pool
    RETRY = "retry"  # re-routed to baseline after the candidate failed before the first byte
    FORCED = "forced"  # an authorised caller named the pool (X-Kvplan-Force-Pool; kvplan eval)
    PRECISION_HEADER = "precision_header"  # kept off the candidate: X-KV-Precision: high (policy precision)
    PRECISION_RULE = "precision_rule"  # kept off the candidate: the plan's rule for the bucket (tools, JSON)
    PRECISION_PROMPT = "precision_prompt"  # kept off the candidate: a long prompt citing many sources


class ShadowDrop(StrEnum):
    """Why a shadow copy was never compared: `kvplan_router_shadow_dropped{reason}`."""

    QUEUE_FULL = "queue_full"  # the bounded shadow queue was full: dropped at once, the client never waits
    CANDIDATE_FAILED = "candidate_failed"  # the candidate answered an error, timed out or was unreachable
    BASELINE_FAILED = "baseline_failed"  # no baseline answer to pair with (client error, failed replay)
    TOKENIZE_FAILED = "tokenize_failed"  # the pool's /tokenize did not answer


class AgreementMeasure(StrEnum):
    """How a candidate's answer agrees with the baseline's: `kvplan_router_shadow_agreement{measure}`
    (computed in kvplan.quality.compare)."""

    EXACT = "exact"
    PREFIX = "prefix"
    TOKENS = "tokens"
    LENGTH = "length"


# The measure the rollout's quality gate and the quality alert read.
GATED_MEASURE = AgreementMeasure.TOKENS


class EndpointChoiceReason(StrEnum):
    """How a pool's endpoint policy picked: `kvplan_router_endpoint_choices{reason}`."""

    LOAD = "load"  # power of two choices (or prefix-cache with a prompt shorter than one prefix key)
    ROTATION = "rotation"  # round robin
    PREFIX = "prefix"  # prefix-cache: an endpoint holding leading blocks of the prompt, within the load bound
    NEW_PREFIX = "new_prefix"  # prefix-cache: nobody holds its first block; rendezvous hash within the bound
    OVER_BOUND = "over_bound"  # prefix-cache: the holders were over the load bound; a less loaded endpoint


class RefusalReason(StrEnum):
    """Why the router's HTTP layer refused a request or closed a client connection:
    `kvplan_router_client_refusals{reason}` (on every listener: API, admin, metrics)."""

    REQUEST_LINE_TOO_LONG = "request_line_too_long"  # 414
    HEADERS_TOO_LARGE = "headers_too_large"  # 431: the header block over its byte bound
    TOO_MANY_HEADERS = "too_many_headers"  # 431: more header fields than allowed
    BODY_TOO_LARGE = "body_too_large"  # 413
    HEADER_TIMEOUT = "header_timeout"  # 408: the headers did not arrive in time (slowloris)
    BODY_TIMEOUT = "body_timeout"  # 408: a body stalled (e.g. Content-Length longer than the body)
    PIPELINE = "pipeline"  # 429: more pipelined requests than allowed ahead of the one served
    MALFORMED = "malformed"  # 400: not HTTP/1.1, or an upgrade
    IDLE_TIMEOUT = "idle_timeout"  # an idle keep-alive connection closed (no response owed)
    SEND_TIMEOUT = "send_timeout"  # the client stopped reading its response: connection aborted


class AuthFailure(StrEnum):
    """A refused admin call: `kvplan_router_admin_auth_failures{reason}`."""

    MISSING = "missing"  # no bearer token
    WRONG = "wrong"  # a token that does not match
    DISABLED = "disabled"  # the router runs without an admin token


class ReloadResult(StrEnum):
    OK = "ok"
    ERROR = "error"


class AnalysisVerdict(StrEnum):
    """A rollout analysis' verdict: `kvplan_rollout_analyses{verdict}`."""

    PASS = "pass"
    FAIL = "fail"


class ResyncReason(StrEnum):
    """Why a flag store reloaded its whole state: `kvplan_flag_resyncs{reason}`."""

    STARTUP = "startup"
    PERIODIC = "periodic"
    RECONNECT = "reconnect"
    GAP = "gap"  # the change stream skipped versions
    EPOCH = "epoch"  # the source's data was lost and re-seeded


class vllm:
    """vLLM's Prometheus metrics (vLLM 0.32-0.33, `/metrics`). The router scrapes some, the
    simulated worker exports all of them with vLLM's label conventions, dashboards query them."""

    # gauges
    KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"  # 0-1 (the old vllm:gpu_cache_usage_perc is gone)
    NUM_REQUESTS_RUNNING = "vllm:num_requests_running"
    NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
    CACHE_CONFIG_INFO = "vllm:cache_config_info"  # labels include num_gpu_blocks, block_size, cache_dtype
    # counters (exposed with the _total suffix)
    NUM_PREEMPTIONS = "vllm:num_preemptions"
    PROMPT_TOKENS = "vllm:prompt_tokens"
    GENERATION_TOKENS = "vllm:generation_tokens"
    REQUEST_SUCCESS = "vllm:request_success"
    PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries"
    PREFIX_CACHE_HITS = "vllm:prefix_cache_hits"
    # histograms
    TIME_TO_FIRST_TOKEN = "vllm:time_to_first_token_seconds"
    INTER_TOKEN_LATENCY = "vllm:inter_token_latency_seconds"
    E2E_REQUEST_LATENCY = "vllm:e2e_request_latency_seconds"
    REQUEST_QUEUE_TIME = "vllm:request_queue_time_seconds"
    REQUEST_PROMPT_TOKENS = "vllm:request_prompt_tokens"
    REQUEST_GENERATION_TOKENS = "vllm:request_generation_tokens"

    # vLLM's histogram buckets (vllm/v1/metrics/loggers.py), so quantiles read the same everywhere.
    TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
    ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)  # fmt: skip
    REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                               50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip

    LABELS = ("model_name", "engine")

    @staticmethod
    def token_count_buckets(max_model_len: int) -> tuple[int, ...]:
        """vLLM's 1-2-5 buckets up to max_model_len for the per-request token histograms."""
        out: list[int] = []
        exponent = 0
        while True:
            for mantissa in (1, 2, 5):
                value = mantissa * 10**exponent
                if value > max_model_len:
                    return tuple(out)
                out.append(value)
            exponent += 1


class router:
    """`kvplan serve`'s metrics. Counters are exposed with a `_total` suffix, histograms with
    `_bucket`/`_sum`/`_count`; the label sets are in braces."""

    PREFIX = "kvplan_router"
    REQUESTS = f"{PREFIX}_requests"  # counter {bucket, pool, regime, outcome}
    REJECTED = f"{PREFIX}_rejected"  # counter {reason}: refused before a pool was chosen
    TTFT_SECONDS = f"{PREFIX}_ttft_seconds"  # histogram {bucket, pool, regime}: to first upstream byte
    E2E_SECONDS = f"{PREFIX}_e2e_seconds"  # histogram {bucket, pool, regime}: to last byte
    # histogram {bucket, pool, regime}: gap between consecutive upstream body chunks of a streamed
    # 2xx response (one SSE event per chunk from vLLM), observed for every chunk after the first
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
    PREFIX_TABLE_BLOCKS = f"{PREFIX}_prefix_table_blocks"  # gauge {pool}: (key, endpoint) pairs remembered
    FLAG_VERSION = f"{PREFIX}_flag_version"  # gauge: version of the flag snapshot in use
    BUCKET_WEIGHT = f"{PREFIX}_bucket_weight"  # gauge {bucket}: effective candidate weight, 0-100
    BUCKET_KILLED = f"{PREFIX}_bucket_killed"  # gauge {bucket}: 1 when the kill switch is on
    PLAN_RELOADS = f"{PREFIX}_plan_reloads"  # counter {result}
    CLIENT_REFUSALS = f"{PREFIX}_client_refusals"  # counter {reason}: the HTTP layer's refusals
    ADMIN_AUTH_FAILURES = f"{PREFIX}_admin_auth_failures"  # counter {reason}: refused admin calls
    # Shadow traffic (kvplan/router/shadow.py); `pool` is the candidate the copy went to.
    SHADOW_SAMPLED = f"{PREFIX}_shadow_sampled"  # counter {bucket, pool}: baseline requests picked
    SHADOW_PAIRS = f"{PREFIX}_shadow_pairs"  # counter {bucket, pool}: answer pairs compared
    SHADOW_DROPPED = f"{PREFIX}_shadow_dropped"  # counter {bucket, pool, reason}: picked, never compared
    SHADOW_AGREEMENT = f"{PREFIX}_shadow_agreement"  # histogram {bucket, pool, measure}: 0-1 per pair

    # label values
    OUTCOMES = tuple(Outcome)
    REJECT_REASONS = tuple(RejectReason)
    ERROR_KINDS = tuple(ErrorKind)
    DECISION_REASONS = tuple(DecisionReason)
    ENDPOINT_CHOICE_REASONS = tuple(EndpointChoiceReason)
    RELOAD_RESULTS = tuple(ReloadResult)
    REFUSAL_REASONS = tuple(RefusalReason)
    AUTH_FAILURES = tuple(AuthFailure)
    SHADOW_DROP_REASONS = tuple(ShadowDrop)
    SHADOW_MEASURES = tuple(AgreementMeasure)

    # label names
    REQUEST_LABELS = ("bucket", "pool", "regime", "outcome")
    LATENCY_LABELS = ("bucket", "pool", "regime")
    DECISION_LABELS = ("bucket", "pool", "reason")
    CHOICE_LABELS = ("pool", "policy", "reason")
    ENDPOINT_LABELS = ("pool", "endpoint")


class control:
    """The control plane's metrics: flag-store health (every router's /metrics) and the rollout
    controller's series (`kvplan rollout run --metrics-port`)."""

    # flag store {store}
    STATE_AGE = "kvplan_flag_state_age_seconds"  # since the state was last confirmed by its source
    SOURCE_UP = "kvplan_flag_source_up"  # 1 when the last contact with the source succeeded
    STATE_LOADED = "kvplan_flag_state_loaded"  # 0 while routing on plan defaults (never loaded)
    STATE_VERSION = "kvplan_flag_state_version"
    RESYNCS = "kvplan_flag_resyncs"  # full reloads {store, reason}: ResyncReason
    UPDATES = "kvplan_flag_updates"  # changes applied from the stream
    EPOCH_CHANGES = "kvplan_flag_epoch_changes"
    # rollout controller
    ROLLOUT_WEIGHT = "kvplan_rollout_weight"  # gauge {bucket}: the weight the controller last saw/set
    ROLLOUT_ANALYSES = "kvplan_rollout_analyses"  # counter {bucket, verdict}: AnalysisVerdict
    ROLLOUT_ABORTS = "kvplan_rollout_aborts"  # counter {bucket}: automatic aborts
    VERDICTS = tuple(AnalysisVerdict)
    RESYNC_REASONS = tuple(ResyncReason)
