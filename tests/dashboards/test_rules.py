"""Prometheus rules: promtool accepts them, every alert has a unit test that makes it fire, and the
unit tests fail when a rule is wrong."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kvplan.dashboards import build, rules
from kvplan.plan import Slo

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / build.RULES_FILE
TESTS = ROOT / "deploy/prometheus/tests/alerts.test.yml"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)


def test_promtool_check_rules() -> None:
    run = promtool("check", "rules", str(RULES))
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_unit_tests_pass() -> None:
    run = promtool("test", "rules", TESTS.name, cwd=TESTS.parent)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    alerts = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {t["alertname"] for c in cases for t in c.get("alert_rule_test", []) if t.get("exp_alerts")}
    silent = {t["alertname"] for c in cases for t in c.get("alert_rule_test", []) if not t.get("exp_alerts")}
    assert alerts == fired, f"alerts without a firing test: {alerts - fired}"
    assert len(silent) >= 6  # and healthy series next to failing ones stay silent


def test_unit_tests_catch_a_wrong_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: a KV limit of 0.96 would miss a replica at 95%; the unit tests must notice."""
    monkeypatch.setattr(rules, "KV_USAGE_LIMIT", 0.96)
    broken = build.rules_text(Slo())
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules/kvplan.rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    shutil.copy(TESTS, tmp_path / "tests" / TESTS.name)
    run = promtool("test", "rules", TESTS.name, cwd=tmp_path / "tests")
    assert run.returncode != 0
    assert "alertname: KVCacheNearlyFull" in run.stdout + run.stderr


def test_unit_tests_catch_a_lax_quality_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: a bound of 0.45 would let a candidate agreeing 50% with its baseline pass."""
    monkeypatch.setattr(rules, "QUALITY_BOUND", 0.45)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules/kvplan.rules.yml").write_text(build.rules_text(Slo()))
    (tmp_path / "tests").mkdir()
    shutil.copy(TESTS, tmp_path / "tests" / TESTS.name)
    run = promtool("test", "rules", TESTS.name, cwd=tmp_path / "tests")
    assert run.returncode != 0
    assert "alertname: CandidateQualityBelowBound" in run.stdout + run.stderr


def test_ttft_burn_selects_the_slo_bound_as_an_exact_bucket_edge() -> None:
    text = build.rules_text(Slo(ttft_seconds=0.5))
    assert 'kvplan_router_ttft_seconds_bucket{le="0.5"}' in text
    assert 'le="2.0"' not in text


def test_plan_series_carry_role_and_predicted_capacity() -> None:
    from kvplan.plan import load_plan

    plan = load_plan(ROOT / "deploy/sample/pools.yaml")
    (group,) = rules.plan_rule_groups(plan)
    info = [r for r in group["rules"] if r["record"] == rules.POOL_INFO]
    roles = {r["labels"]["pool"]: r["labels"]["role"] for r in info}
    assert roles == {p.name: ("baseline" if p.name == b.baseline.name else "candidate")
                     for b in plan.buckets for p in b.pools}  # fmt: skip
    blocks = {
        r["labels"]["pool"]: int(r["expr"][7:-1])
        for r in group["rules"]
        if r["record"] == rules.PREDICTED_KV_BLOCKS
    }
    # Same model, GPU and length: INT8 holds about twice the BF16 blocks (scales cost a little).
    assert 1.8 < blocks["b32k-int8"] / blocks["b32k-bf16"] < 2.0
