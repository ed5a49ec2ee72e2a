"""`kvplan deploy render`: manifests valid against the Kubernetes schemas, golden for the sample plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kvplan.dashboards import build, rules
from kvplan.deploy import k8s
from kvplan.plan import Plan, load_plan, parse_plan

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy/sample/pools.yaml"
COMMITTED = ROOT / "deploy/k8s"
K8S_VERSION = "1.30.0"

# The Prometheus Operator's CRDs are not in kubernetes-validate's schemas: check the fields we
# use against a subset of monitoring.coreos.com/v1 written from its CRD reference.
_SELECTOR = {"type": "object", "required": ["matchLabels"], "properties": {"matchLabels": {"type": "object"}}}
_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "relabelings": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "sourceLabels": {
                        "type": "array",
                        "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                    },
                    "targetLabel": {"type": "string"},
                    "action": {"enum": ["replace", "keep", "drop", "labelmap"]},
                },
            },
        },
    },
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": _SELECTOR,
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
        },
    },
    "PodMonitor": {
        "type": "object",
        "required": ["selector", "podMetricsEndpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": _SELECTOR,
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["groups"],
        "properties": {
            "groups": {"type": "array", "items": {"type": "object", "required": ["name", "rules"]}}
        },
    },
}


def render(plan: Plan, **opts: Any) -> dict[str, list[dict[str, Any]]]:
    return k8s.render(
        plan,
        k8s.RenderOptions(**opts),
        [*rules.rule_groups(plan.slo), *rules.plan_rule_groups(plan)],
        build.dashboard_json(plan.slo),
    )


@pytest.fixture(scope="module")
def sample() -> Plan:
    return load_plan(SAMPLE)


@pytest.fixture(scope="module")
def manifests(sample: Plan) -> list[dict[str, Any]]:
    return [m for docs in render(sample).values() for m in docs]


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def test_every_manifest_is_valid_against_the_kubernetes_schema(manifests: list[dict[str, Any]]) -> None:
    kinds = set()
    for m in manifests:
        kinds.add(m["kind"])
        if m["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(m["spec"], CRD_SCHEMAS[m["kind"]])
        else:
            kubernetes_validate.validate(m, K8S_VERSION, strict=True)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
            "PersistentVolumeClaim", "ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds  # fmt: skip


def test_a_wrong_manifest_is_rejected_by_the_same_validation(manifests: list[dict[str, Any]]) -> None:
    deployment = dict(by_kind(manifests, "Deployment")["vllm-b8k-fp8"])
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_each_pool_gets_a_gpu_deployment_with_its_kv_format(
    sample: Plan, manifests: list[dict[str, Any]]
) -> None:
    deployments = by_kind(manifests, "Deployment")
    services = by_kind(manifests, "Service")
    for pool in sample.pools:
        d = deployments[f"vllm-{pool.name}"]
        assert f"vllm-{pool.name}" in services
        assert d["spec"]["replicas"] == pool.replicas
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == str(pool.gpus_per_replica)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(pool.gpus_per_replica)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
        args, env = c["args"], {e["name"]: e["value"] for e in c["env"]}
        assert args[args.index("--max-model-len") + 1] == str(pool.max_model_len)
        assert args[args.index("--tensor-parallel-size") + 1] == str(pool.tensor_parallel)
        assert args[args.index("--model") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
        dtype = args[args.index("--kv-cache-dtype") + 1]
        if pool.kv_format in ("bf16", "fp8_e4m3"):
            assert dtype == {"bf16": "auto", "fp8_e4m3": "fp8_e4m3"}[pool.kv_format]
            assert "KVPLAN_KV_FORMAT" not in env and "--attention-backend" not in args
        else:  # kvplan's own formats go through the plugin backend
            assert env["KVPLAN_KV_FORMAT"] == pool.kv_format
            assert args[args.index("--attention-backend") + 1] == "CUSTOM"
        mounts = {v["name"]: v for v in pod["volumes"]}
        assert mounts["models"]["persistentVolumeClaim"]["claimName"] == "kvplan-models"
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert labels["kvplan.io/pool"] == pool.name and labels["kvplan.io/kv-format"] == pool.kv_format


def test_the_router_gets_the_plan_with_service_endpoints(
    sample: Plan, manifests: list[dict[str, Any]]
) -> None:
    cm = by_kind(manifests, "ConfigMap")["kvplan-plan"]
    plan = parse_plan(cm["data"]["pools.yaml"])
    assert [p.name for p in plan.pools] == [p.name for p in sample.pools]
    for pool in plan.pools:
        assert pool.endpoints == (f"http://vllm-{pool.name}.kvplan.svc.cluster.local:8000",)
    router = by_kind(manifests, "Deployment")["kvplan-router"]
    (c,) = router["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--flag-store") + 1].startswith("redis://kvplan-redis.kvplan.svc")
    assert by_kind(manifests, "HorizontalPodAutoscaler")["kvplan-router"]["spec"]["minReplicas"] == 2
    assert by_kind(manifests, "PodDisruptionBudget")["kvplan-router"]["spec"]["minAvailable"] == 1


def test_dashboards_and_rules_ship_with_the_manifests(sample: Plan, manifests: list[dict[str, Any]]) -> None:
    maps = by_kind(manifests, "ConfigMap")
    shipped = {
        k for m in maps.values() if m["metadata"]["labels"].get("grafana_dashboard") == "1" for k in m["data"]
    }
    assert shipped == set(build.dashboard_json(sample.slo))
    groups = by_kind(manifests, "PrometheusRule")["kvplan"]["spec"]["groups"]
    assert {g["name"] for g in groups} == {"kvplan-recording", "kvplan-alerts", "kvplan-plan"}


def test_prometheus_rule_groups_pass_promtool(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    groups = by_kind(manifests, "PrometheusRule")["kvplan"]["spec"]["groups"]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_golden_the_committed_sample_is_what_render_writes(sample: Plan) -> None:
    files = render(sample)
    assert sorted(p.name for p in COMMITTED.glob("*.yaml")) == sorted(files)
    for name, docs in files.items():
        assert (COMMITTED / name).read_text() == k8s.to_yaml(docs), (
            f"{name} drifted: re-run kvplan deploy render"
        )


def test_cli_renders_and_removes_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "40-pool-gone.yaml").write_text("stale")
    run = subprocess.run(
        [sys.executable, "-m", "kvplan.cli", "deploy", "render", "--plan", str(SAMPLE), "--out", str(out),
         "--namespace", "llm"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not (out / "40-pool-gone.yaml").exists()
    docs = list(yaml.safe_load_all((out / "30-router.yaml").read_text()))
    assert {d["metadata"]["namespace"] for d in docs} == {"llm"}


def test_cli_bad_plan_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "pools.yaml"
    bad.write_text(SAMPLE.read_text().replace("kv_format: int8", "kv_format: int3"))
    run = subprocess.run(
        [sys.executable, "-m", "kvplan.cli", "deploy", "render", "--plan", str(bad),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert (
        run.stderr.count("\n") == 1
        and "unknown KV format 'int3'" in run.stderr
        and "Traceback" not in run.stderr
    )


def test_a_plan_written_by_kvplan_plan_renders_valid_manifests(tmp_path: Path) -> None:
    plan_path = tmp_path / "pools.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "kvplan.cli", "plan", "llama-3.1-8b", "--context-mix", "8k:60,16k:25,32k:15",
         "--rps", "20", "--out", str(plan_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    plan = load_plan(plan_path)
    manifests = [m for docs in render(plan).values() for m in docs]
    for m in manifests:
        if not m["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(m, K8S_VERSION, strict=True)
    gpu_requests = sum(
        int(m["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"])
        * m["spec"]["replicas"]
        for m in manifests
        if m["kind"] == "Deployment" and m["metadata"]["name"].startswith("vllm-")
    )
    assert gpu_requests == sum(p.replicas * p.gpus_per_replica for p in plan.pools) > 0


@pytest.mark.parametrize(
    ("gpu", "resource", "product"),
    [("a100-80gb", "nvidia.com/gpu", "NVIDIA-A100-SXM4-80GB"), ("mi300x", "amd.com/gpu", None)],
)
def test_gpu_kind_selects_resource_and_nodes(gpu: str, resource: str, product: str | None) -> None:
    plan = parse_plan(
        "buckets:\n  - name: 8k\n    max_tokens: 8192\n"
        f"    baseline: {{name: p, model: llama-3.1-8b, max_model_len: 8192, gpu: {gpu}}}\n"
    )
    deployment = by_kind([m for docs in render(plan).values() for m in docs], "Deployment")["vllm-p"]
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"][resource] == "1"
    terms = pod.get("affinity", {}).get("nodeAffinity", {})
    if product is None:
        assert not terms
    else:
        expr = terms["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
            "matchExpressions"
        ]
        assert expr == [{"key": "nvidia.com/gpu.product", "operator": "In", "values": [product]}]
