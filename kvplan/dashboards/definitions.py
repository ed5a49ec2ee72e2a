"""kvplan's three dashboards: router overview, pools and KV, rollout.

Metric names are imported from the modules that define them (router, control, vLLM); recording
rule and plan-series names from `rules`. Every vLLM series carries the plan's `pool`, `bucket`,
`kv_format` and `role` labels, added at scrape time (see kvplan.deploy.labels).
"""

from __future__ import annotations

from kvplan.dashboards import rules
from kvplan.dashboards.grafana import Annotation, Dashboard, Panel, Query, Row, Variable
from kvplan.metric_names import ERROR_OUTCOMES, EXCLUDED_OUTCOMES
from kvplan.metric_names import control as cm
from kvplan.metric_names import router as rm
from kvplan.metric_names import vllm as vm
from kvplan.plan import Slo

RATE = "$__rate_interval"
ROUTER = 'bucket=~"$bucket", pool=~"$pool"'
VLLM = 'model_name=~"$model", bucket=~"$bucket", pool=~"$pool"'
ERRORS = "|".join(ERROR_OUTCOMES)
TOKENS_PER_S = "suffix: tok/s"
ROLE = f"on (bucket, pool) group_left (role) {rules.POOL_INFO}"
ERROR_REQUESTS = f'{ROUTER}, outcome=~"{ERRORS}"'
SERVED_REQUESTS = f'{ROUTER}, outcome!~"{"|".join(EXCLUDED_OUTCOMES)}"'
BUCKET_ONLY = 'bucket=~"$bucket"'
FALLBACKS = f'{ROUTER}, reason=~"fallback|stale|retry"'


def variables(slo: Slo) -> tuple[Variable, ...]:
    return (
        Variable("datasource", "Data source", kind="datasource", multi=False),
        Variable("model", "Model", f"label_values({vm.NUM_REQUESTS_RUNNING}, model_name)"),
        Variable("bucket", "Bucket", f"label_values({rm.REQUESTS}_total, bucket)"),
        Variable("pool", "Pool", f'label_values({rm.REQUESTS}_total{{bucket=~"$bucket"}}, pool)'),
        # SLO bounds are exact histogram edges (the router adds them), so `le` selects them exactly.
        Variable("ttft_slo", "TTFT SLO", kind="constant", value=rules.le(slo.ttft_seconds)),
        Variable("e2e_slo", "E2E SLO", kind="constant", value=rules.le(slo.e2e_seconds)),
        Variable("itl_slo", "ITL SLO", kind="constant", value=rules.le(slo.itl_seconds)),
    )


def _rate(metric: str, matchers: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{matchers}}}[{RATE}]))"


def _quantile(q: float, histogram: str, matchers: str, by: str) -> str:
    return f"histogram_quantile({q:g}, {_rate(histogram + '_bucket', matchers, 'le, ' + by)})"


def _share_under(histogram: str, bound_var: str, matchers: str, by: str) -> str:
    under = f'{matchers}, le="${bound_var}"'
    return f"{_rate(histogram + '_bucket', under, by)}\n/\n{_rate(histogram + '_count', matchers, by)}"


def _error_ratio(by: str) -> str:
    req = f"{rm.REQUESTS}_total"
    return f"{_rate(req, ERROR_REQUESTS, by)}\n/\n{_rate(req, SERVED_REQUESTS, by)}"


def _quantiles(histogram: str, matchers: str, by: str, legend: str) -> tuple[Query, ...]:
    return tuple(
        Query(_quantile(q, histogram, matchers, by), f"p{round(q * 100)} {legend}") for q in (0.5, 0.9, 0.99)
    )


def router_overview(slo: Slo) -> Dashboard:
    req = f"{rm.REQUESTS}_total"
    traffic = Row(
        "Traffic",
        (
            Panel(
                "Requests/s by bucket, pool and regime",
                "reqps",
                (Query(_rate(req, ROUTER, "bucket, pool, regime"), "{{bucket}} {{pool}} ({{regime}})"),),
                "Every routed request, by where it went and which KV format served it.",
                stack=True,
            ),
            Panel(
                "Error ratio by pool",
                "percentunit",
                (Query(_error_ratio("bucket, pool, regime"), "{{bucket}} {{pool}} ({{regime}})"),),
                "Upstream failures over requests the pool was responsible for (4xx and cancels excluded).",
                min=0,
                thresholds=((1 - rules.AVAILABILITY_OBJECTIVE, "red"),),
            ),
            Panel(
                "Outcomes",
                "reqps",
                (Query(_rate(req, ROUTER, "outcome"), "{{outcome}}"),),
                "ok, client_error, backpressure (429/503), upstream_error, stream_broken, cancelled.",
                stack=True,
            ),
            Panel(
                "Rejected before routing",
                "reqps",
                (Query(_rate(f"{rm.REJECTED}_total", "", "reason"), "{{reason}}"),),
                "Invalid requests, unknown models, prompts longer than the largest bucket.",
                stack=True,
            ),
        ),
    )
    latency = Row(
        "Latency and SLO",
        (
            Panel(
                "Time to first token",
                "s",
                _quantiles(rm.TTFT_SECONDS, ROUTER, "pool", "{{pool}}"),
                "Quantiles on coarse buckets hide regressions; read the SLO share next to it.",
                thresholds=((slo.ttft_seconds, "red"),),
            ),
            Panel(
                "Share under the TTFT SLO",
                "percentunit",
                (
                    Query(
                        _share_under(rm.TTFT_SECONDS, "ttft_slo", ROUTER, "bucket, pool"),
                        "{{bucket}} {{pool}}",
                    ),
                ),
                f"Requests whose first token came within {slo.ttft_seconds:g} s (an exact bucket edge). "
                f"Objective {rules.TTFT_OBJECTIVE:.0%}.",
                min=0,
                max=1,
            ),
            Panel(
                "End-to-end latency",
                "s",
                _quantiles(rm.E2E_SECONDS, ROUTER, "pool", "{{pool}}"),
                "From the request to the last byte.",
            ),
            Panel(
                "Share under the end-to-end SLO",
                "percentunit",
                (
                    Query(
                        _share_under(rm.E2E_SECONDS, "e2e_slo", ROUTER, "bucket, pool"), "{{bucket}} {{pool}}"
                    ),
                ),
                f"Requests finished within {slo.e2e_seconds:g} s.",
                min=0,
                max=1,
            ),
            Panel(
                "Router overhead",
                "s",
                tuple(
                    Query(
                        f"histogram_quantile({q:g}, {_rate(rm.OVERHEAD_SECONDS + '_bucket', '', 'le')})",
                        f"p{p}",
                    )
                    for q, p in ((0.5, 50), (0.99, 99))
                ),
                "Time the router spends between a parsed request and the upstream send.",
            ),
            Panel(
                "In flight by pool",
                "short",
                (Query(f'sum by (pool) ({rm.IN_FLIGHT}{{pool=~"$pool"}})', "{{pool}}"),),
                "Requests the router has open towards each pool.",
            ),
        ),
    )
    shape = Row(
        "Requests, retries and fallbacks",
        (
            Panel(
                "Prompt length by bucket",
                "suffix: tok",
                tuple(
                    Query(
                        f"histogram_quantile({q:g}, "
                        f"{_rate(rm.PROMPT_TOKENS + '_bucket', BUCKET_ONLY, 'le, bucket')})",
                        f"p{p} {{{{bucket}}}}",
                    )
                    for q, p in ((0.5, 50), (0.99, 99))
                ),
                "Prompt tokens as the router counted them, by bucket.",
            ),
            Panel(
                "Prompt-length distribution",
                "short",
                (
                    Query(
                        f'sum by (le) (increase({rm.PROMPT_TOKENS}_bucket{{bucket=~"$bucket"}}[$__range]))',
                        "{{le}}",
                        instant=True,
                        format="heatmap",
                    ),
                ),
                "Requests per prompt-length bucket edge (cumulative, tokens) over the time range.",
                kind="bargauge",
            ),
            Panel(
                "Retries",
                "reqps",
                (Query(_rate(f"{rm.RETRIES}_total", ROUTER, "pool"), "{{pool}}"),),
                "Attempts after the first, made only before the first byte.",
            ),
            Panel(
                "Fallbacks to the baseline",
                "reqps",
                (
                    Query(
                        _rate(f"{rm.DECISIONS}_total", FALLBACKS, "bucket, reason"),
                        "{{bucket}} {{reason}}",
                    ),
                ),
                "Requests the policy would have sent to the candidate but sent to the baseline.",
                stack=True,
            ),
            Panel(
                "Upstream errors by kind",
                "reqps",
                (
                    Query(
                        _rate(f"{rm.UPSTREAM_ERRORS}_total", 'pool=~"$pool"', "pool, kind"),
                        "{{pool}} {{kind}}",
                    ),
                ),
                "Connect failures, timeouts, 5xx and backpressure seen by the router, retries included.",
            ),
        ),
    )
    return Dashboard(
        "kvplan-router",
        "kvplan / Router overview",
        "Requests, errors, latency against the SLO, prompt lengths, retries and fallbacks, "
        "by bucket and pool.",
        (traffic, latency, shape),
        variables(slo),
    )


def pools_kv(slo: Slo) -> Dashboard:
    kv = Row(
        "KV cache",
        (
            Panel(
                "KV cache usage",
                "percentunit",
                (Query(f"max by (pool, instance) ({vm.KV_CACHE_USAGE}{{{VLLM}}})", "{{pool}} {{instance}}"),),
                "vLLM's share of KV blocks in use, per replica. Above 90% requests queue and get preempted.",
                min=0,
                max=1,
                thresholds=((rules.KV_USAGE_LIMIT, "red"),),
            ),
            Panel(
                "KV capacity: measured vs planned",
                "short",
                (
                    Query(
                        # vLLM labels this info series with the cache config only (no model_name).
                        f"max by (pool, kv_format, cache_dtype, block_size, num_gpu_blocks) "
                        f"({vm.CACHE_CONFIG_INFO}{{{ROUTER}}})",
                        instant=True,
                        format="table",
                    ),
                    Query(
                        f'max by (pool) ({rules.PREDICTED_KV_BLOCKS}{{pool=~"$pool"}})',
                        instant=True,
                        format="table",
                    ),
                ),
                "Blocks vLLM allocated per replica (num_gpu_blocks of vllm:cache_config_info) next to "
                "the planner's prediction for the same model, GPU, format and length.",
                kind="table",
                transformations=(
                    {"id": "merge", "options": {}},
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True, "Value #A": True},
                            "renameByName": {
                                "num_gpu_blocks": "blocks (vLLM)",
                                "Value #B": "blocks (plan)",
                            },
                        },
                    },
                ),
            ),
            Panel(
                "Preemptions",
                "reqps",
                (Query(_rate(f"{vm.NUM_PREEMPTIONS}_total", VLLM, "pool"), "{{pool}}"),),
                "Requests evicted mid-decode for lack of KV blocks (recomputed later).",
            ),
            Panel(
                "KV usage seen by the router",
                "percentunit",
                (
                    Query(
                        f'max by (pool, endpoint) ({rm.ENDPOINT_KV_USAGE}{{pool=~"$pool"}})',
                        "{{pool}} {{endpoint}}",
                    ),
                ),
                "What the router's endpoint choice works from (scraped, may lag vLLM).",
                min=0,
                max=1,
            ),
        ),
    )
    load = Row(
        "Load and throughput",
        (
            Panel(
                "Running requests",
                "short",
                (Query(f"sum by (pool) ({vm.NUM_REQUESTS_RUNNING}{{{VLLM}}})", "{{pool}}"),),
                "Requests in the model's batches.",
            ),
            Panel(
                "Waiting requests",
                "short",
                (Query(f"sum by (pool) ({vm.NUM_REQUESTS_WAITING}{{{VLLM}}})", "{{pool}}"),),
                "Requests queued for KV blocks or batch slots.",
            ),
            Panel(
                "Generated tokens/s by pool and KV format",
                TOKENS_PER_S,
                (
                    Query(
                        _rate(f"{vm.GENERATION_TOKENS}_total", VLLM, "pool, kv_format"),
                        "{{pool}} ({{kv_format}})",
                    ),
                ),
                "Decode throughput.",
                stack=True,
            ),
            Panel(
                "Prompt tokens/s by pool and KV format",
                TOKENS_PER_S,
                (
                    Query(
                        _rate(f"{vm.PROMPT_TOKENS}_total", VLLM, "pool, kv_format"),
                        "{{pool}} ({{kv_format}})",
                    ),
                ),
                "Prefill throughput.",
                stack=True,
            ),
            Panel(
                "vLLM time to first token (p99)",
                "s",
                (Query(_quantile(0.99, vm.TIME_TO_FIRST_TOKEN, VLLM, "pool"), "{{pool}}"),),
                "Measured inside vLLM (queueing + prefill), without the router.",
                thresholds=((slo.ttft_seconds, "red"),),
            ),
            Panel(
                "Inter-token latency",
                "s",
                tuple(
                    Query(_quantile(q, vm.INTER_TOKEN_LATENCY, VLLM, "pool"), f"p{p} {{{{pool}}}}")
                    for q, p in ((0.5, 50), (0.99, 99))
                ),
                "Decode step time; quantized KV reads fewer bytes per step.",
                thresholds=((slo.itl_seconds, "red"),),
            ),
            Panel(
                "Endpoint health",
                "bool",
                (
                    Query(
                        f'min by (pool, endpoint) ({rm.ENDPOINT_HEALTHY}{{pool=~"$pool"}})',
                        "{{pool}} {{endpoint}}",
                    ),
                ),
                "1 while the router sends traffic to the endpoint, 0 when ejected.",
                step=True,
                min=0,
                max=1,
            ),
            Panel(
                "Prefix cache hit ratio",
                "percentunit",
                (
                    Query(
                        f"{_rate(f'{vm.PREFIX_CACHE_HITS}_total', VLLM, 'pool')}\n/\n"
                        f"{_rate(f'{vm.PREFIX_CACHE_QUERIES}_total', VLLM, 'pool')}",
                        "{{pool}}",
                    ),
                ),
                "Share of prompt tokens served from cached blocks.",
                min=0,
                max=1,
            ),
        ),
    )
    return Dashboard(
        "kvplan-pools",
        "kvplan / Pools and KV",
        "vLLM pools by bucket and KV format: KV usage and capacity against the plan, queues, preemptions, "
        "throughput.",
        (kv, load),
        variables(slo),
    )


def rollout(slo: Slo) -> Dashboard:
    flags = Row(
        "Flags",
        (
            Panel(
                "Candidate weight by bucket",
                "percent",
                (Query(f'max by (bucket) ({rm.BUCKET_WEIGHT}{{bucket=~"$bucket"}})', "{{bucket}}"),),
                "Effective share of cohorts sent to the candidate (0 while killed).",
                min=0,
                max=100,
                step=True,
            ),
            Panel(
                "Kill switches",
                "bool",
                (Query(f'max by (bucket) ({rm.BUCKET_KILLED}{{bucket=~"$bucket"}})', "{{bucket}}"),),
                "1 while a bucket's kill switch is on: everyone goes to the baseline.",
                min=0,
                max=1,
                step=True,
                thresholds=((1, "red"),),
            ),
            Panel(
                "Flag version (audit events)",
                "short",
                (Query(f"max by (instance) ({rm.FLAG_VERSION})", "{{instance}}"),),
                "Each step is one audited change (weight, kill, unkill, rollout step); "
                "`kvplan flags history` lists who and why.",
                step=True,
            ),
            Panel(
                "Flag state age",
                "s",
                (Query(f"max by (instance, store) ({cm.STATE_AGE})", "{{instance}} {{store}}"),),
                "Seconds since the flag store confirmed the state; "
                f"alert above {rules.STALE_FLAG_SECONDS} s.",
                thresholds=((rules.STALE_FLAG_SECONDS, "red"),),
            ),
        ),
    )
    analysis = Row(
        "Candidate vs baseline",
        (
            Panel(
                "Error ratio, candidate vs baseline",
                "percentunit",
                (Query(f"({_error_ratio('bucket, pool')})\n* {ROLE}", "{{bucket}} {{role}} {{pool}}"),),
                "The rollout analysis compares these over the same window.",
                min=0,
            ),
            Panel(
                "Share under the TTFT SLO, candidate vs baseline",
                "percentunit",
                (
                    Query(
                        f"({_share_under(rm.TTFT_SECONDS, 'ttft_slo', ROUTER, 'bucket, pool')})\n* {ROLE}",
                        "{{bucket}} {{role}} {{pool}}",
                    ),
                ),
                "The SLO share shows a slowdown that coarse-bucket percentiles hide.",
                min=0,
                max=1,
            ),
            Panel(
                "Share under the ITL SLO, candidate vs baseline",
                "percentunit",
                (
                    Query(
                        f"({_share_under(vm.INTER_TOKEN_LATENCY, 'itl_slo', VLLM, 'bucket, pool')})\n"
                        f"* {ROLE}",
                        "{{bucket}} {{role}} {{pool}}",
                    ),
                ),
                f"Decode steps within {slo.itl_seconds:g} s (vLLM's inter-token latency, an exact edge of "
                "its buckets): the third check of the rollout analysis.",
                min=0,
                max=1,
            ),
            Panel(
                "TTFT p99, candidate vs baseline",
                "s",
                (
                    Query(
                        f"{_quantile(0.99, rm.TTFT_SECONDS, ROUTER, 'bucket, pool')}\n* {ROLE}",
                        "{{bucket}} {{role}} {{pool}}",
                    ),
                ),
                "Router-measured time to first token.",
            ),
            Panel(
                "Routing decisions",
                "reqps",
                (Query(_rate(f"{rm.DECISIONS}_total", ROUTER, "bucket, reason"), "{{bucket}} {{reason}}"),),
                "Why each request went where it went: weight, killed, fallback, stale, retry.",
                stack=True,
            ),
        ),
    )
    shadow = f"{rm.SHADOW_AGREEMENT}_sum{{{ROUTER}}}", f"{rm.SHADOW_AGREEMENT}_count{{{ROUTER}}}"
    quality = Row(
        "Quality (shadow traffic)",
        (
            Panel(
                "Shadow agreement with the baseline",
                "percentunit",
                (
                    Query(
                        f"sum by (bucket, pool, measure) (rate({shadow[0]}[{RATE}]))\n/\n"
                        f"sum by (bucket, pool, measure) (rate({shadow[1]}[{RATE}]))",
                        "{{bucket}} {{pool}} {{measure}}",
                    ),
                ),
                "Mean agreement of the candidate's greedy answers with the baseline's on shadowed requests "
                "(1 = the same answer): exact, common prefix, tokens, length. The rollout's quality gate "
                f"reads `tokens`; alert below {rules.QUALITY_BOUND:.0%}.",
                min=0,
                max=1,
            ),
            Panel(
                "Shadow pairs and drops",
                "reqps",
                (
                    Query(
                        _rate(f"{rm.SHADOW_PAIRS}_total", ROUTER, "bucket, pool"), "{{bucket}} {{pool}} pairs"
                    ),
                    Query(
                        _rate(f"{rm.SHADOW_DROPPED}_total", ROUTER, "bucket, pool, reason"),
                        "{{bucket}} {{pool}} dropped: {{reason}}",
                    ),
                ),
                "Copies compared per second, and copies dropped (queue full, candidate or baseline failed, "
                "tokenizer down). A drop never touches the client's request.",
            ),
            Panel(
                "Requests kept off the candidate (precision)",
                "reqps",
                (
                    Query(
                        _rate(f"{rm.DECISIONS}_total", f'{ROUTER}, reason=~"precision_.*"', "bucket, reason"),
                        "{{bucket}} {{reason}}",
                    ),
                ),
                "Risky requests the precision policy served from the safe pool: X-KV-Precision header, "
                "the plan's rule (tools, JSON), long prompts citing many sources.",
                stack=True,
            ),
        ),
    )
    controller = Row(
        "Rollout controller",
        (
            Panel(
                "Weight steps",
                "short",
                (
                    Query(
                        f"max by (bucket) (changes({rm.BUCKET_WEIGHT}{{{BUCKET_ONLY}}}[$__range]))",
                        "{{bucket}}",
                        instant=True,
                    ),
                ),
                "Changes of each bucket's effective weight over the time range: the controller's steps, "
                "manual set-weight, kills and aborts.",
                kind="bargauge",
            ),
            Panel(
                "Analyses by verdict",
                "short",
                (
                    Query(
                        f"sum by (bucket, verdict) "
                        f"(increase({cm.ROLLOUT_ANALYSES}_total{{{BUCKET_ONLY}}}[$__range]))",
                        "{{bucket}} {{verdict}}",
                        instant=True,
                    ),
                ),
                "Checks over the time range; a failure limit of failed checks aborts.",
                kind="bargauge",
            ),
            Panel(
                "Aborts",
                "short",
                (
                    Query(
                        f"sum by (bucket) (increase({cm.ROLLOUT_ABORTS}_total{{{BUCKET_ONLY}}}[$__range]))",
                        "{{bucket}}",
                        instant=True,
                    ),
                ),
                "Rollouts aborted over the time range (the weight went to 0 at once).",
                kind="stat",
                thresholds=((1, "red"),),
            ),
        ),
    )
    return Dashboard(
        "kvplan-rollout",
        "kvplan / Rollout",
        "Weights and kill switches per bucket over time, candidate against baseline, the controller's steps "
        "and aborts, audited flag changes.",
        (flags, analysis, quality, controller),
        variables(slo),
        annotations=(
            Annotation(
                "Flag changes", f"changes({rm.FLAG_VERSION}[1m]) > 0", "flag change (version {{instance}})"
            ),
            Annotation(
                "Kill switch", f"changes({rm.BUCKET_KILLED}[1m]) > 0", "kill switch {{bucket}}", "red"
            ),
        ),
    )


def dashboards(slo: Slo) -> dict[str, Dashboard]:
    """File name in dashboards/ -> dashboard."""
    return {
        "router-overview.json": router_overview(slo),
        "pools-kv.json": pools_kv(slo),
        "rollout.json": rollout(slo),
    }
