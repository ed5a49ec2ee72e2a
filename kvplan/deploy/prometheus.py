"""Prometheus scrape configuration for static targets (compose stack, `kvplan demo`).

Each vLLM target carries the plan's pool labels (kvplan.deploy.labels), exactly as the
Kubernetes PodMonitor relabels them, so dashboards and rules read the same series everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvplan.deploy.router_server import METRICS_PATH

ROUTER_JOB = "kvplan-router"
VLLM_JOB = "kvplan-vllm"
CONTROLLER_JOB = "kvplan-rollout"


@dataclass(frozen=True)
class PoolTargets:
    labels: dict[str, str]
    targets: tuple[str, ...]  # host:port


def config(
    router_targets: Sequence[str],
    pools: Sequence[PoolTargets],
    rule_files: Sequence[str],
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    controller_targets: Sequence[str] = (),
) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = (
        [
            {
                "job_name": CONTROLLER_JOB,
                "metrics_path": METRICS_PATH,
                "static_configs": [{"targets": list(controller_targets)}],
            }
        ]
        if controller_targets
        else []
    )
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {
                "job_name": ROUTER_JOB,
                "metrics_path": METRICS_PATH,
                "static_configs": [{"targets": list(router_targets)}],
            },
            {
                "job_name": VLLM_JOB,
                "metrics_path": METRICS_PATH,
                "static_configs": [{"targets": list(p.targets), "labels": dict(p.labels)} for p in pools],
            },
            *jobs,
        ],
    }
