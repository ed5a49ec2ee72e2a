"""`kvplan deploy compose`: one GPU host's stack. Docker cannot run here (no engine, no compose
plugin), so the structure is checked, Prometheus's config with promtool, and the sample is golden."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvplan.dashboards import build, rules
from kvplan.deploy import compose
from kvplan.plan import Plan, load_plan, parse_plan

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy/sample/pools.yaml"
COMMITTED = ROOT / "deploy/compose"


def render(plan: Plan, gpus: int = 8) -> dict[str, str]:
    return compose.render(
        plan,
        compose.ComposeOptions(gpus=gpus),
        build.rules_text(plan.slo),
        build.plan_rules_text(rules.plan_rule_groups(plan)),
        build.dashboard_json(plan.slo),
    )


@pytest.fixture(scope="module")
def sample() -> Plan:
    return load_plan(SAMPLE)


@pytest.fixture(scope="module")
def rendered(sample: Plan, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("compose")
    compose.write(render(sample), out)
    return out, yaml.safe_load((out / "compose.yaml").read_text())


def test_services_router_redis_prometheus_grafana_and_one_vllm_per_pool(
    sample: Plan, rendered: tuple[Path, dict[str, Any]]
) -> None:
    _, doc = rendered
    services = doc["services"]
    assert {"router", "redis", "prometheus", "grafana"} <= set(services)
    assert {s for s in services if s.startswith("vllm-")} == {f"vllm-{p.name}" for p in sample.pools}
    assert services["router"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert "--flag-store" in services["router"]["command"]
    assert services["router"]["environment"]["KVPLAN_ADMIN_TOKEN"].startswith("${KVPLAN_ADMIN_TOKEN:?")


def test_each_pool_reserves_its_own_gpus(sample: Plan, rendered: tuple[Path, dict[str, Any]]) -> None:
    _, doc = rendered
    seen: list[str] = []
    for pool in sample.pools:
        svc = doc["services"][f"vllm-{pool.name}"]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert len(device["device_ids"]) == pool.gpus_per_replica
        seen += device["device_ids"]
        args = svc["command"]
        assert args[args.index("--tensor-parallel-size") + 1] == str(pool.tensor_parallel)
        if pool.kv_format in ("int8", "int4"):
            assert svc["environment"]["KVPLAN_KV_FORMAT"] == pool.kv_format
        assert svc["healthcheck"]["test"][-1].endswith("urlopen('http://localhost:8000/health')")
    assert len(seen) == len(set(seen)) == sum(p.gpus_per_replica for p in sample.pools)


def test_every_bind_mount_exists_in_the_output(rendered: tuple[Path, dict[str, Any]]) -> None:
    out, doc = rendered
    for name, svc in doc["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (out / source).exists(), f"{name} mounts missing {source}"
    provisioned = {p.name for p in (out / "grafana/dashboards").glob("*.json")}
    assert provisioned == set(build.dashboard_json(load_plan(SAMPLE).slo))


def test_router_plan_points_at_the_compose_services(rendered: tuple[Path, dict[str, Any]]) -> None:
    out, _ = rendered
    plan = parse_plan((out / "pools.yaml").read_text())
    assert all(p.endpoints == (f"http://vllm-{p.name}:8000",) for p in plan.pools)


def test_prometheus_config_and_rules_pass_promtool(rendered: tuple[Path, dict[str, Any]]) -> None:
    out, _ = rendered
    run = subprocess.run(
        ["promtool", "check", "config", str(out / "prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 2 rule files found" in run.stdout


def test_too_few_gpus_is_an_input_error(sample: Plan, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "kvplan.cli", "deploy", "compose", "--plan", str(SAMPLE),
         "--out", str(tmp_path), "--gpus", "4"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert "the plan needs 7 GPUs" in run.stderr and "Traceback" not in run.stderr


def test_golden_the_committed_sample_is_what_compose_writes(sample: Plan) -> None:
    files = render(sample)
    committed = {str(p.relative_to(COMMITTED)) for p in COMMITTED.rglob("*") if p.is_file()}
    assert committed == set(files)
    for rel, text in files.items():
        assert (COMMITTED / rel).read_text() == text, f"{rel} drifted: re-run kvplan deploy compose"
