"""Prometheus recording and alerting rules, generated from the metric-name modules.

Two rule files: `kvplan.rules.yml` depends only on the plan's SLO bounds (histogram edges are
exact, so `le="<bound>"` selects the share under the SLO); `plan.rules.yml` carries the plan's
facts as constant series (which pool is a bucket's baseline or candidate, its KV format and the
planner's predicted KV capacity) so that alerts and dashboards can join on them.

Error-budget burn follows the multi-window pattern: page when the budget burns 14.4x too fast over
both 1 h and 5 min (2% of a 30-day budget in an hour), ticket at 6x over 6 h and 30 min.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.utils import floatToGoString

from kvplan.deploy import labels
from kvplan.metric_names import ERROR_OUTCOMES, EXCLUDED_OUTCOMES, GATED_MEASURE
from kvplan.metric_names import control as cm
from kvplan.metric_names import router as rm
from kvplan.metric_names import vllm as vm
from kvplan.plan import Plan, Pool, Slo

Group = dict[str, Any]

# Objectives: the share of requests that must succeed / start streaming within the TTFT bound.
AVAILABILITY_OBJECTIVE = 0.995
TTFT_OBJECTIVE = 0.99
BURN_WINDOWS = (("fast", "1h", "5m", 14.4, "page"), ("slow", "6h", "30m", 6.0, "ticket"))
KV_USAGE_LIMIT = 0.90
PREEMPTIONS_PER_SECOND = 0.05  # sustained 3 a minute: the pool is over-admitted for its KV budget
STALE_FLAG_SECONDS = 60
# Candidate vs baseline: absolute margins, and enough candidate traffic to judge.
ERROR_MARGIN = 0.01
TTFT_SHARE_MARGIN = 0.05
MIN_CANDIDATE_RPS = 0.05
# Candidate quality: mean shadow agreement (the rollout gate's measure) and enough pairs to judge.
QUALITY_BOUND = 0.85
MIN_SHADOW_PAIRS = 20  # per 30 min

WINDOWS = ("5m", "30m", "1h", "6h")

REQUESTS_TOTAL = f"{rm.REQUESTS}_total"
POOL_INFO = "kvplan:plan_pool_info"
PREDICTED_KV_BLOCKS = "kvplan:plan_predicted_kv_blocks"


def le(bound: float) -> str:
    """A histogram bucket's `le` value as prometheus_client writes it (2.0 -> "2.0")."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _outcomes(values: tuple[str, ...]) -> str:
    return "|".join(values)


def error_ratio(window: str) -> str:
    return f"pool:kvplan_router_errors:ratio_rate{window}"


def ttft_bad_ratio(window: str) -> str:
    return f"pool:kvplan_router_ttft_over_slo:ratio_rate{window}"


def shadow_agreement(window: str) -> str:
    return f"pool:{rm.SHADOW_AGREEMENT}:mean{window}"


SHADOW_SUM = f'{rm.SHADOW_AGREEMENT}_sum{{measure="{GATED_MEASURE}"}}'
SHADOW_COUNT = f'{rm.SHADOW_AGREEMENT}_count{{measure="{GATED_MEASURE}"}}'


def recording_rules(slo: Slo) -> list[dict[str, Any]]:
    ttft_bucket = f"{rm.TTFT_SECONDS}_bucket"
    ttft_count = f"{rm.TTFT_SECONDS}_count"
    rules: list[dict[str, Any]] = [
        {
            "record": "pool:kvplan_router_requests:rate5m",
            "expr": f'sum by (bucket, pool) (rate({REQUESTS_TOTAL}{{outcome!="cancelled"}}[5m]))',
        }
    ]
    for w in WINDOWS:
        # 0/0 (no traffic) is NaN: no alert fires on an idle pool, and none goes missing on a busy one.
        rules.append(
            {
                "record": error_ratio(w),
                "expr": (
                    f"sum by (bucket, pool) (rate({REQUESTS_TOTAL}"
                    f'{{outcome=~"{_outcomes(ERROR_OUTCOMES)}"}}[{w}]))\n'
                    f"/\nsum by (bucket, pool) (rate({REQUESTS_TOTAL}"
                    f'{{outcome!~"{_outcomes(EXCLUDED_OUTCOMES)}"}}[{w}]))'
                ),
            }
        )
        rules.append(
            {
                "record": ttft_bad_ratio(w),
                "expr": (
                    f"1 - (\n  sum by (bucket, pool) (rate({ttft_bucket}"
                    f'{{le="{le(slo.ttft_seconds)}"}}[{w}]))\n'
                    f"  /\n  sum by (bucket, pool) (rate({ttft_count}[{w}]))\n)"
                ),
            }
        )
    for w in ("5m", "30m"):
        rules.append(
            {
                "record": shadow_agreement(w),
                "expr": (
                    f"sum by (bucket, pool) (rate({SHADOW_SUM}[{w}]))\n/\n"
                    f"sum by (bucket, pool) (rate({SHADOW_COUNT}[{w}]))"
                ),
            }
        )
    return rules


def _burn_alerts(slo: Slo) -> list[dict[str, Any]]:
    alerts = []
    budgets = (
        ("PoolErrorBudgetBurn", error_ratio, 1 - AVAILABILITY_OBJECTIVE, "errors"),
        ("PoolTTFTBudgetBurn", ttft_bad_ratio, 1 - TTFT_OBJECTIVE, f"over-{slo.ttft_seconds:g}s-TTFT"),
    )
    for name, series, budget, what in budgets:
        for speed, long, short, factor, severity in BURN_WINDOWS:
            threshold = round(factor * budget, 6)
            alerts.append(
                {
                    "alert": f"{name}{speed.capitalize()}",
                    "expr": f"{series(long)} > {threshold:g}\nand\n{series(short)} > {threshold:g}",
                    "for": "2m" if speed == "fast" else "15m",
                    "labels": {"severity": severity},
                    "annotations": {
                        "summary": f"Pool {{{{ $labels.pool }}}} burns its {what} budget "
                        f"{factor:g}x too fast",
                        "description": f"{{{{ $value | humanizePercentage }}}} {what} over {long} "
                        f"(budget {budget:.1%}).",
                    },
                }
            )
    return alerts


def _candidate_vs_baseline() -> list[dict[str, Any]]:
    def role(series: str, r: str, by: str) -> str:
        return f'max by ({by}) ({series} and on (bucket, pool) {POOL_INFO}{{role="{r}"}})'

    busy = f"pool:kvplan_router_requests:rate5m > {MIN_CANDIDATE_RPS:g}"

    def worse(series: str, margin: float) -> str:
        return (
            f"{role(series, 'candidate', 'bucket, pool')}\n> on (bucket) group_left ()\n"
            f"({role(series, 'baseline', 'bucket')} + {margin:g})\nand on (bucket, pool) ({busy})"
        )

    worse_errors = worse(error_ratio("30m"), ERROR_MARGIN)
    worse_ttft = worse(ttft_bad_ratio("30m"), TTFT_SHARE_MARGIN)
    common = "hold or abort the rollout."
    return [
        {
            "alert": "CandidateErrorsWorseThanBaseline",
            "expr": worse_errors,
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "Candidate {{ $labels.pool }} fails more than the baseline of bucket "
                "{{ $labels.bucket }}",
                "description": f"Error ratio {{{{ $value | humanizePercentage }}}}, "
                f"over {ERROR_MARGIN:.0%} above the baseline's; {common}",
            },
        },
        {
            "alert": "CandidateTTFTWorseThanBaseline",
            "expr": worse_ttft,
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "Candidate {{ $labels.pool }} misses the TTFT SLO more than the baseline "
                "of bucket {{ $labels.bucket }}",
                "description": f"{{{{ $value | humanizePercentage }}}} over the TTFT SLO, over "
                f"{TTFT_SHARE_MARGIN:.0%} above the baseline's; {common}",
            },
        },
    ]


def _quality_alerts() -> list[dict[str, Any]]:
    return [
        {
            "alert": "CandidateQualityBelowBound",
            "expr": (
                f"{shadow_agreement('30m')} < {QUALITY_BOUND:g}\nand on (bucket, pool)\n"
                f"sum by (bucket, pool) (increase({SHADOW_COUNT}[30m])) >= {MIN_SHADOW_PAIRS}"
            ),
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "Candidate {{ $labels.pool }} answers unlike the baseline of "
                "bucket {{ $labels.bucket }}",
                "description": f"Mean shadow agreement {{{{ $value | humanizePercentage }}}} over 30 min, "
                f"below {QUALITY_BOUND:.0%}: its KV format changes the answers; hold or abort the rollout.",
            },
        }
    ]


def _pool_alerts() -> list[dict[str, Any]]:
    return [
        {
            "alert": "KVCacheNearlyFull",
            "expr": f'max by (bucket, pool, instance) ({vm.KV_CACHE_USAGE}{{pool!=""}}) > {KV_USAGE_LIMIT:g}',
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "KV cache of {{ $labels.instance }} (pool {{ $labels.pool }}) above 90%",
                "description": "{{ $value | humanizePercentage }} for 10 min; "
                "add replicas or use a smaller KV format.",
            },
        },
        {
            "alert": "PreemptionsRising",
            "expr": (
                f'sum by (bucket, pool) (rate({vm.NUM_PREEMPTIONS}_total{{pool!=""}}[10m])) '
                f"> {PREEMPTIONS_PER_SECOND:g}"
            ),
            "for": "10m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": 'Pool {{ $labels.pool }} preempts {{ printf "%.2f" $value }} requests/s',
                "description": "vLLM ran out of KV blocks mid-decode: "
                "the pool admits more than its KV holds.",
            },
        },
    ]


def _control_alerts() -> list[dict[str, Any]]:
    return [
        {
            "alert": "KillSwitchEngaged",
            "expr": f"max by (bucket) ({rm.BUCKET_KILLED}) == 1",
            "for": "1m",
            "labels": {"severity": "info"},
            "annotations": {
                "summary": "Kill switch on for bucket {{ $labels.bucket }}: "
                "every request goes to the baseline",
                "description": "See `kvplan flags history` for who and why.",
            },
        },
        {
            "alert": "RolloutAborted",
            "expr": f"increase({cm.ROLLOUT_ABORTS}_total[15m]) > 0",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "Rollout of bucket {{ $labels.bucket }} aborted",
                "description": "The candidate's weight went to 0; see `kvplan rollout status`.",
            },
        },
        {
            "alert": "FlagStateStale",
            "expr": f"max by (instance, store) ({cm.STATE_AGE}) > {STALE_FLAG_SECONDS}",
            "for": "2m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "Router {{ $labels.instance }} routes on flag state "
                "{{ $value | humanizeDuration }} old",
                "description": "Store {{ $labels.store }} is not confirming: "
                "a kill switch would not reach it.",
            },
        },
        {
            "alert": "FlagStateNeverLoaded",
            "expr": f"max by (instance, store) ({cm.STATE_LOADED}) == 0",
            "for": "5m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "Router {{ $labels.instance }} routes on the plan's defaults",
                "description": "The flag store never answered since the router started.",
            },
        },
    ]


def _endpoint_alerts() -> list[dict[str, Any]]:
    return [
        {
            "alert": "EndpointDown",
            "expr": 'up{job=~".*kvplan.*"} == 0',
            "for": "2m",
            "labels": {"severity": "page"},
            "annotations": {
                "summary": "{{ $labels.job }} target {{ $labels.instance }} is down",
                "description": "Prometheus cannot scrape it for 2 minutes.",
            },
        },
        {
            "alert": "EndpointEjected",
            "expr": f"min by (pool, endpoint) ({rm.ENDPOINT_HEALTHY}) == 0",
            "for": "2m",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "The router ejected {{ $labels.endpoint }} from pool {{ $labels.pool }}",
                "description": "Its /health failed or it returned errors; the pool runs on fewer replicas.",
            },
        },
    ]


def rule_groups(slo: Slo) -> list[Group]:
    """The plan-independent rules (they depend only on the SLO bounds)."""
    return [
        {"name": "kvplan-recording", "rules": recording_rules(slo)},
        {
            "name": "kvplan-alerts",
            "rules": [
                *_burn_alerts(slo),
                *_candidate_vs_baseline(),
                *_quality_alerts(),
                *_pool_alerts(),
                *_control_alerts(),
                *_endpoint_alerts(),
            ],
        },
    ]


def predicted_kv_blocks(pool: Pool) -> int | None:
    """The planner's vLLM block count for one replica of the pool (None: model not in the catalog),
    from `capacity_of`, the one place `kvplan workers status` and the planner read it too."""
    from kvplan.errors import KvplanError
    from kvplan.planner.capacity import capacity_of

    try:
        return capacity_of(pool).num_blocks
    except KvplanError:
        return None


def plan_rule_groups(plan: Plan) -> list[Group]:
    """Constant series describing the plan, joined by alerts (role) and dashboards (capacity)."""
    rules: list[dict[str, Any]] = []
    for bucket in plan.buckets:
        for pool in bucket.pools:
            info = {
                **labels.pool_labels(bucket, pool),
                "regime": pool.format.regime,
                "model": pool.model_name,
                "gpu": pool.gpu,
            }
            rules.append({"record": POOL_INFO, "expr": "vector(1)", "labels": info})
            blocks = predicted_kv_blocks(pool)
            if blocks is not None:
                rules.append(
                    {
                        "record": PREDICTED_KV_BLOCKS,
                        "expr": f"vector({blocks})",
                        "labels": {labels.POOL: pool.name, labels.BUCKET: bucket.name},
                    }
                )
    return [{"name": "kvplan-plan", "rules": rules}]
