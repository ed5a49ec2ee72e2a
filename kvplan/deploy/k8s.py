"""Kubernetes manifests from a pool plan (`kvplan deploy render`).

Pure functions: a plan and options in, plain manifest dicts out; `write_manifests` is the only I/O.
One vLLM Deployment + Service per pool (GPU requests, /health probes, KV format flags, the models
volume), the router (Deployment, Service, HPA, PDB) with the plan as a ConfigMap whose endpoints
point at the pools' Services, Redis for the shared flag store, and the monitoring objects of the
Prometheus Operator (ServiceMonitor, PodMonitor, PrometheusRule) plus dashboard ConfigMaps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvplan.deploy import labels, yaml_text
from kvplan.deploy.images import Images
from kvplan.deploy.router_server import (
    ADMIN_TOKEN_ENV,
    CONTROLLER_METRICS_PORT,
    HEALTH_PATH,
    METRICS_PATH,
    PLAN_PATH,
    REDIS_PORT,
    ROUTER_METRICS_PORT,
    ROUTER_PORT,
    controller_args,
    router_args,
)
from kvplan.deploy.vllm_server import MODELS_DIR, VLLM_PORT, server_spec
from kvplan.errors import KvplanError
from kvplan.plan import Bucket, Plan, Pool, dump_plan
from kvplan.planner.gpus import get_gpu

Manifest = dict[str, Any]

PART_OF = {"app.kubernetes.io/part-of": "kvplan"}
ROUTER = "kvplan-router"
REDIS = "kvplan-redis"
# GPU Feature Discovery's product label (nvidia.com/gpu.product) for the planner's GPU names.
GPU_PRODUCTS = {
    "h100": "NVIDIA-H100-80GB-HBM3",
    "h100-pcie": "NVIDIA-H100-PCIe",
    "h200": "NVIDIA-H200",
    "b200": "NVIDIA-B200",
    "a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "a100-40gb": "NVIDIA-A100-SXM4-40GB",
    "l40s": "NVIDIA-L40S",
    "l4": "NVIDIA-L4",
    "a10g": "NVIDIA-A10G",
    "rtx-4090": "NVIDIA-GeForce-RTX-4090",
    "rtx-3090": "NVIDIA-GeForce-RTX-3090",
}
# The device plugin's resource name; NVIDIA unless listed.
GPU_RESOURCES = {"mi300x": "amd.com/gpu"}


def gpu_name(pool: Pool) -> str:
    """The planner's canonical name for the pool's GPU (aliases resolved), else as written."""
    try:
        return get_gpu(pool.gpu)[0].name
    except KvplanError:
        return pool.gpu.lower()


@dataclass(frozen=True)
class RenderOptions:
    namespace: str = "kvplan"
    images: Images = field(default_factory=Images)
    router_replicas: int = 2
    router_max_replicas: int = 10
    models_storage: str = "500Gi"
    # The Prometheus Operator's default Service for a Prometheus in the `monitoring` namespace.
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    models_storage_class: str | None = None


def _meta(name: str, namespace: str, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {**PART_OF, **(extra or {})}}


def pool_service_name(pool: Pool) -> str:
    return f"vllm-{pool.name}"


def pool_url(pool: Pool, namespace: str) -> str:
    return f"http://{pool_service_name(pool)}.{namespace}.svc.cluster.local:{VLLM_PORT}"


def cluster_plan(plan: Plan, namespace: str) -> Plan:
    """The plan as the router sees it in the cluster: each pool's endpoint is its Service."""
    data = plan.model_dump()
    for bucket in data["buckets"]:
        for pool in [bucket["baseline"], *bucket["candidates"]]:
            pool["endpoints"] = [pool_url(plan.pool(pool["name"]), namespace)]
    return Plan.model_validate(data)


def _http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def _with_plan(container: Mapping[str, Any]) -> dict[str, Any]:
    """A pod spec running `container` with the plan ConfigMap as its `plan` volume."""
    return {"containers": [container], "volumes": [{"name": "plan", "configMap": {"name": "kvplan-plan"}}]}


def _deployment(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    replicas: int,
    pod_spec: Mapping[str, Any],
    selector: Mapping[str, str] | None = None,
    strategy: Mapping[str, Any] | None = None,
) -> Manifest:
    """A Deployment whose pods carry `labels` (plus part-of) and are selected by `selector`."""
    spec: dict[str, Any] = {"replicas": replicas, "selector": {"matchLabels": dict(selector or labels)}}
    if strategy is not None:
        spec["strategy"] = dict(strategy)
    spec["template"] = {"metadata": {"labels": {**PART_OF, **labels}}, "spec": dict(pod_spec)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, labels),
        "spec": spec,
    }


def pool_manifests(bucket: Bucket, pool: Pool, opts: RenderOptions) -> list[Manifest]:
    """The Deployment and Service of one pool."""
    name = pool_service_name(pool)
    pod_labels = {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": name,
        **{labels.K8S_PREFIX + k.replace("_", "-"): v for k, v in labels.pool_labels(bucket, pool).items()},
    }
    selector = {"app.kubernetes.io/instance": name}
    spec = server_spec(pool)
    gpus = str(pool.gpus_per_replica)
    gpu = gpu_name(pool)
    resource = GPU_RESOURCES.get(gpu, "nvidia.com/gpu")
    container: dict[str, Any] = {
        "name": "vllm",
        "image": opts.images.vllm,
        "command": list(spec.command),
        "args": list(spec.args),
        "env": [{"name": k, "value": v} for k, v in spec.env],
        "ports": [{"name": "http", "containerPort": VLLM_PORT}],
        # Sized per GPU: host memory holds the weights while loading and the CPU swap space.
        "resources": {
            "requests": {resource: gpus, "cpu": str(4 * pool.gpus_per_replica), "memory": "32Gi"},
            "limits": {resource: gpus, "memory": f"{48 * pool.gpus_per_replica}Gi"},
        },
        # Loading weights and capturing CUDA graphs takes minutes: the startup probe allows 15.
        "startupProbe": _http_probe(HEALTH_PATH, "http", 10, 90),
        "readinessProbe": _http_probe(HEALTH_PATH, "http", 5, 2),
        "livenessProbe": _http_probe(HEALTH_PATH, "http", 10, 3),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            {"name": "models", "persistentVolumeClaim": {"claimName": "kvplan-models"}},
            # NCCL between tensor-parallel ranks needs more shared memory than the 64 MiB default.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        ],
        "tolerations": [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 60,
    }
    product = GPU_PRODUCTS.get(gpu)
    if product is not None:
        pod_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "nvidia.com/gpu.product", "operator": "In", "values": [product]}
                            ]
                        }
                    ]
                }
            }
        }
    # GPUs are the scarce resource: replace a replica in place rather than surge a new one.
    in_place = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    deployment = _deployment(name, opts.namespace, pod_labels, pool.replicas, pod_spec, selector, in_place)
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, opts.namespace, pod_labels),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def router_manifests(plan: Plan, opts: RenderOptions) -> list[Manifest]:
    """Plan ConfigMap, router Deployment, Service, HPA, PodDisruptionBudget; the rollout controller."""
    ns = opts.namespace
    app = {"app.kubernetes.io/name": ROUTER}
    plan_map: Manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("kvplan-plan", ns, app),
        "data": {"pools.yaml": dump_plan(cluster_plan(plan, ns))},
    }
    redis_url = f"redis://{REDIS}.{ns}.svc.cluster.local:{REDIS_PORT}/0"
    container = {
        "name": "router",
        "image": opts.images.router,
        "command": ["kvplan"],
        "args": list(router_args(redis_url)),
        "env": [
            {
                "name": ADMIN_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": "kvplan-admin", "key": "token"}},
            }
        ],
        "ports": [
            {"name": "http", "containerPort": ROUTER_PORT},
            {"name": "metrics", "containerPort": ROUTER_METRICS_PORT},
        ],
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "readinessProbe": _http_probe(HEALTH_PATH, "http", 5, 2),
        "livenessProbe": _http_probe(HEALTH_PATH, "http", 10, 3),
        # A ConfigMap volume (not subPath) so that plan edits reach the router, which reloads the file.
        "volumeMounts": [{"name": "plan", "mountPath": str(Path(PLAN_PATH).parent), "readOnly": True}],
    }
    deployment = _deployment(ROUTER, ns, app, opts.router_replicas, _with_plan(container))
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(ROUTER, ns, app),
        "spec": {
            "selector": app,
            "ports": [
                {"name": "http", "port": ROUTER_PORT, "targetPort": "http"},
                {"name": "metrics", "port": ROUTER_METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }
    hpa: Manifest = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(ROUTER, ns, app),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ROUTER},
            "minReplicas": opts.router_replicas,
            "maxReplicas": opts.router_max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }
    pdb: Manifest = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(ROUTER, ns, app),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": app}},
    }
    return [plan_map, deployment, service, hpa, pdb, controller_manifest(opts, redis_url)]


def controller_manifest(opts: RenderOptions, redis_url: str) -> Manifest:
    """One rollout controller: its writes are conditional, so a second one would only be idle."""
    app = {"app.kubernetes.io/name": "kvplan-rollout"}
    container = {
        "name": "controller",
        "image": opts.images.router,
        "command": ["kvplan"],
        "args": list(controller_args(redis_url, opts.prometheus_url)),
        "ports": [{"name": "metrics", "containerPort": CONTROLLER_METRICS_PORT}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [{"name": "plan", "mountPath": str(Path(PLAN_PATH).parent), "readOnly": True}],
    }
    return _deployment("kvplan-rollout", opts.namespace, app, 1, _with_plan(container))


def redis_manifests(opts: RenderOptions) -> list[Manifest]:
    """A single Redis for the shared flag store (state carries an epoch, so no persistence needed)."""
    app = {"app.kubernetes.io/name": REDIS}
    probe = {"tcpSocket": {"port": "redis"}, "periodSeconds": 5}
    container = {
        "name": "redis",
        "image": opts.images.redis,
        "args": ["--save", "", "--appendonly", "no"],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "readinessProbe": probe,
        "livenessProbe": probe,
    }
    deployment = _deployment(REDIS, opts.namespace, app, 1, {"containers": [container]})
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(REDIS, opts.namespace, app),
        "spec": {"selector": app, "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}]},
    }
    return [deployment, service]


def models_volume(opts: RenderOptions) -> Manifest:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],  # every pool's replicas read the same weights
        "resources": {"requests": {"storage": opts.models_storage}},
    }
    if opts.models_storage_class:
        spec["storageClassName"] = opts.models_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta("kvplan-models", opts.namespace),
        "spec": spec,
    }


def monitoring_manifests(
    opts: RenderOptions, rule_groups: Sequence[Mapping[str, Any]], dashboards: Mapping[str, Any]
) -> list[Manifest]:
    """ServiceMonitor (router), PodMonitors (vLLM, pool labels copied onto every series; the
    rollout controller),
    PrometheusRule (the alert and recording rules) and one ConfigMap per dashboard."""
    ns = opts.namespace
    relabel = [
        {
            "sourceLabels": [f"__meta_kubernetes_pod_label_kvplan_io_{key}"],
            "targetLabel": key,
            "action": "replace",
        }
        # Pod label kvplan.io/kv-format reaches Prometheus sanitised as ..._kvplan_io_kv_format.
        for key in (labels.POOL, labels.BUCKET, labels.KV_FORMAT, labels.ROLE)
    ]
    out: list[Manifest] = [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": _meta(ROUTER, ns),
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": ROUTER}},
                "endpoints": [{"port": "metrics", "path": METRICS_PATH, "interval": "15s"}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": _meta("kvplan-vllm", ns),
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "vllm"}},
                "podMetricsEndpoints": [
                    {"port": "http", "path": METRICS_PATH, "interval": "15s", "relabelings": relabel}
                ],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": _meta("kvplan-rollout", ns),
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "kvplan-rollout"}},
                "podMetricsEndpoints": [{"port": "metrics", "path": METRICS_PATH, "interval": "15s"}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": _meta("kvplan", ns),
            "spec": {"groups": [dict(g) for g in rule_groups]},
        },
    ]
    for filename, dashboard in sorted(dashboards.items()):
        stem = filename.removesuffix(".json")
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                # grafana_dashboard: the label Grafana's dashboard sidecar watches for.
                "metadata": {
                    **_meta(f"kvplan-dashboard-{stem}", ns, {"grafana_dashboard": "1"}),
                },
                "data": {filename: json.dumps(dashboard, indent=2, sort_keys=True) + "\n"},
            }
        )
    return out


def render(
    plan: Plan,
    opts: RenderOptions,
    rule_groups: Sequence[Mapping[str, Any]],
    dashboards: Mapping[str, Any],
) -> dict[str, list[Manifest]]:
    """Manifests grouped by the file they go to (applied in name order by `kubectl apply -f`)."""
    files: dict[str, list[Manifest]] = {
        "00-namespace.yaml": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": opts.namespace, "labels": PART_OF}}
        ],
        "10-models-volume.yaml": [models_volume(opts)],
        "20-redis.yaml": redis_manifests(opts),
        "30-router.yaml": router_manifests(plan, opts),
    }
    for bucket in plan.buckets:
        for pool in bucket.pools:
            files[f"40-pool-{pool.name}.yaml"] = pool_manifests(bucket, pool, opts)
    files["50-monitoring.yaml"] = monitoring_manifests(opts, rule_groups, dashboards)
    return files


def to_yaml(docs: Sequence[Manifest]) -> str:
    return yaml_text.dump_all(docs)


def write_manifests(files: Mapping[str, Sequence[Manifest]], out: Path) -> list[Path]:
    """Write the files; stale `*.yaml` from an earlier render of another plan are removed."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        if old.name not in files:
            old.unlink()
    written = []
    for name, docs in files.items():
        path = out / name
        path.write_text(to_yaml(docs))
        written.append(path)
    return written
