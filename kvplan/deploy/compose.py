"""A compose stack for one GPU host, from a pool plan (`kvplan deploy compose`).

The output directory is self-contained: compose.yaml, the plan with endpoints pointing at the
compose services, Prometheus (scrape config, generic and plan rules) and Grafana provisioning
with the dashboards. One vLLM service per pool (one replica each: a single host), each reserving
its own GPUs by device id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvplan.deploy import labels, prometheus, yaml_text
from kvplan.deploy.images import Images
from kvplan.deploy.router_server import (
    ADMIN_TOKEN_ENV,
    CONTROLLER_METRICS_PORT,
    HEALTH_PATH,
    PLAN_PATH,
    REDIS_PORT,
    ROUTER_ADMIN_PORT,
    ROUTER_METRICS_PORT,
    ROUTER_PORT,
    controller_args,
    router_args,
)
from kvplan.deploy.vllm_server import MODELS_DIR, VLLM_PORT, server_spec
from kvplan.errors import InputError
from kvplan.plan import Plan, Pool, dump_plan

COMPOSE_FILE = "compose.yaml"
PLAN_FILE = "pools.yaml"
GRAFANA_DASHBOARDS = "/var/lib/grafana/dashboards"


@dataclass(frozen=True)
class ComposeOptions:
    gpus: int = 8  # GPUs on the host
    images: Images = field(default_factory=Images)
    models_dir: str = "${KVPLAN_MODELS:-./models}"  # host directory mounted at /models


def service_name(pool: Pool) -> str:
    return f"vllm-{pool.name}"


def gpu_assignment(plan: Plan, gpus: int) -> dict[str, tuple[str, ...]]:
    """Pool name -> the host GPU ids it reserves, in plan order; too few GPUs is an input error."""
    need = sum(p.gpus_per_replica for p in plan.pools)
    if need > gpus:
        raise InputError(
            f"the plan needs {need} GPUs for one replica per pool; this host has {gpus} (--gpus): "
            "use Kubernetes (`kvplan deploy render`) or a plan with fewer pools"
        )
    out, next_id = {}, 0
    for pool in plan.pools:
        out[pool.name] = tuple(str(i) for i in range(next_id, next_id + pool.gpus_per_replica))
        next_id += pool.gpus_per_replica
    return out


def compose_plan(plan: Plan) -> Plan:
    data = plan.model_dump()
    for bucket in data["buckets"]:
        for pool in [bucket["baseline"], *bucket["candidates"]]:
            pool["endpoints"] = [f"http://vllm-{pool['name']}:{VLLM_PORT}"]
    return Plan.model_validate(data)


def _vllm_service(pool: Pool, gpu_ids: Sequence[str], opts: ComposeOptions) -> dict[str, Any]:
    spec = server_spec(pool)
    health = f"http://localhost:{VLLM_PORT}{HEALTH_PATH}"
    return {
        "image": opts.images.vllm,
        "entrypoint": list(spec.command),
        "command": list(spec.args),
        "environment": {**dict(spec.env), "HF_TOKEN": "${HF_TOKEN:-}"},
        "volumes": [f"{opts.models_dir}:{MODELS_DIR}"],
        "ipc": "host",  # NCCL and PyTorch workers share memory through /dev/shm
        "healthcheck": {
            "test": ["CMD", "python3", "-c", f"import urllib.request; urllib.request.urlopen('{health}')"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "15m",  # weights load and CUDA graphs capture first
        },
        "deploy": {
            "resources": {
                "reservations": {
                    "devices": [{"driver": "nvidia", "device_ids": list(gpu_ids), "capabilities": ["gpu"]}]
                }
            }
        },
        "restart": "unless-stopped",
    }


def render(
    plan: Plan, opts: ComposeOptions, generic_rules: str, plan_rules: str, dashboards: Mapping[str, Any]
) -> dict[str, str]:
    """Relative path in the output directory -> file content."""
    gpus = gpu_assignment(plan, opts.gpus)
    services: dict[str, Any] = {
        "redis": {
            "image": opts.images.redis,
            "command": ["redis-server", "--save", "", "--appendonly", "no"],
            "healthcheck": {
                "test": ["CMD", "redis-cli", "ping"],
                "interval": "5s",
                "timeout": "3s",
                "retries": 5,
            },
            "restart": "unless-stopped",
        },
        "router": {
            "image": opts.images.router,
            "entrypoint": ["kvplan"],
            # The admin API listens on the container's interface but is published on the host's
            # loopback only: `kvplan flags --router http://127.0.0.1:8081` from the host.
            "command": list(router_args(f"redis://redis:{REDIS_PORT}/0", admin_host="0.0.0.0")),
            "environment": {ADMIN_TOKEN_ENV: f"${{{ADMIN_TOKEN_ENV}:?set an admin token for the router}}"},
            "ports": [f"{ROUTER_PORT}:{ROUTER_PORT}", f"127.0.0.1:{ROUTER_ADMIN_PORT}:{ROUTER_ADMIN_PORT}"],
            "volumes": [f"./{PLAN_FILE}:{PLAN_PATH}:ro"],
            "depends_on": {
                "redis": {"condition": "service_healthy"},
                # The router starts at once and ejects endpoints until their /health answers.
                **{service_name(p): {"condition": "service_started"} for p in plan.pools},
            },
            "restart": "unless-stopped",
        },
        "rollout-controller": {
            "image": opts.images.router,
            "entrypoint": ["kvplan"],
            "command": list(controller_args(f"redis://redis:{REDIS_PORT}/0", "http://prometheus:9090")),
            "volumes": [f"./{PLAN_FILE}:{PLAN_PATH}:ro"],
            "depends_on": {
                "redis": {"condition": "service_healthy"},
                "prometheus": {"condition": "service_started"},
            },
            "restart": "unless-stopped",
        },
        "prometheus": {
            "image": opts.images.prometheus,
            "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.retention.time=15d"],
            "ports": ["9090:9090"],
            "volumes": ["./prometheus:/etc/prometheus:ro"],
            "restart": "unless-stopped",
        },
        "grafana": {
            "image": opts.images.grafana,
            "ports": ["3000:3000"],
            "environment": {
                "GF_AUTH_ANONYMOUS_ENABLED": "true",
                "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": f"{GRAFANA_DASHBOARDS}/router-overview.json",
            },
            "volumes": [
                "./grafana/provisioning:/etc/grafana/provisioning:ro",
                f"./grafana/dashboards:{GRAFANA_DASHBOARDS}:ro",
            ],
            "depends_on": ["prometheus"],
            "restart": "unless-stopped",
        },
    }
    for pool in plan.pools:
        services[service_name(pool)] = _vllm_service(pool, gpus[pool.name], opts)
    pools = [
        prometheus.PoolTargets(labels.pool_labels(b, p), (f"{service_name(p)}:{VLLM_PORT}",))
        for b in plan.buckets
        for p in b.pools
    ]
    scrape = prometheus.config(
        [f"router:{ROUTER_METRICS_PORT}"],
        pools,
        ["kvplan.rules.yml", "plan.rules.yml"],
        controller_targets=[f"rollout-controller:{CONTROLLER_METRICS_PORT}"],
    )
    datasource = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": "prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": "http://prometheus:9090",
                "isDefault": True,
            }
        ],
    }
    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "kvplan",
                "folder": "kvplan",
                "type": "file",
                "allowUiUpdates": False,
                "options": {"path": GRAFANA_DASHBOARDS},
            }
        ],
    }
    header = "# Generated by `kvplan deploy compose` from a pool plan; do not edit.\n"
    files = {
        COMPOSE_FILE: header + yaml_text.dump({"name": "kvplan", "services": services}),
        PLAN_FILE: dump_plan(compose_plan(plan)),
        "prometheus/prometheus.yml": header + yaml_text.dump(scrape),
        "prometheus/kvplan.rules.yml": generic_rules,
        "prometheus/plan.rules.yml": plan_rules,
        "grafana/provisioning/datasources/prometheus.yaml": yaml_text.dump(datasource),
        "grafana/provisioning/dashboards/kvplan.yaml": yaml_text.dump(provider),
    }
    for name, dashboard in sorted(dashboards.items()):
        files[f"grafana/dashboards/{name}"] = json.dumps(dashboard, indent=2, sort_keys=True) + "\n"
    return files


def write(files: Mapping[str, str], out: Path) -> list[Path]:
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
