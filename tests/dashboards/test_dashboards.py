"""Dashboards as code: structure, units, PromQL that parses, metric names that exist, no drift."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from support.grafana import substitute as grafana_substitute

from kvplan.dashboards import build, grafana, rules
from kvplan.metric_names import control as cm
from kvplan.metric_names import router as rm
from kvplan.metric_names import vllm as vm
from kvplan.plan import Slo

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = build.dashboard_json(Slo())


def substitute(expr: str) -> str:
    return grafana_substitute(expr, rate_interval="1m", range_="1h")


def _module_names(module: Any) -> set[str]:
    return {
        v
        for k, v in vars(module).items()
        if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z][a-z0-9_:]*", v)
    }


@functools.cache
def known_metrics() -> frozenset[str]:
    """Every series name the router, control plane and vLLM (or the simulated worker) expose, and
    the recording rules and plan series derived from them; imported, never re-typed."""
    base = _module_names(rm) | _module_names(cm) | _module_names(vm)
    exposed = {f"{n}{s}" for n in base for s in ("", "_total", "_bucket", "_count", "_sum", "_created")}
    groups = [*rules.rule_groups(Slo()), *rules.plan_rule_groups(_sample_plan())]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    return frozenset(exposed | recorded | {"up"})


def _sample_plan() -> Any:
    from kvplan.plan import load_plan

    return load_plan(ROOT / "deploy/sample/pools.yaml")


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None:
                visit(child)
        for arg in getattr(node, "args", None) or ():
            visit(arg)

    visit(promql_parser.parse(expr))
    return names


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, expr) for every panel target, variable query and annotation."""
    out = []
    for name, d in DASHBOARDS.items():
        out += [(name, title, t["expr"]) for title, _, t in grafana.queries(d)]
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                inner = re.fullmatch(r"label_values\((.*), \w+\)", v["definition"])
                assert inner, v["definition"]
                out.append((name, f"variable {v['name']}", inner.group(1)))
        out += [(name, f"annotation {a['name']}", a["expr"]) for a in d["annotations"]["list"] if "expr" in a]
    return out


def test_structure_ids_refids_datasources_units() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(uids) == len(set(uids)) == 3
    for name, d in DASHBOARDS.items():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        variables = {v["name"] for v in d["templating"]["list"]}
        assert {"datasource", "model", "bucket", "pool"} <= variables
        for p in d["panels"]:
            if p["type"] == "row":
                continue
            assert p["fieldConfig"]["defaults"]["unit"], f"{name}: {p['title']} has no unit"
            assert p["description"], f"{name}: {p['title']} has no description"
            assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)), p["title"]
            for t in p["targets"]:
                assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert t["expr"].strip()


def test_panels_do_not_overlap() -> None:
    for d in DASHBOARDS.values():
        cells: set[tuple[int, int]] = set()
        for p in d["panels"]:
            g = p["gridPos"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, p["title"]
            cells |= mine


@pytest.mark.parametrize(("dashboard", "panel", "expr"), all_queries())
def test_every_query_parses_and_names_known_metrics(dashboard: str, panel: str, expr: str) -> None:
    names = metric_names(substitute(expr))
    assert names, f"{panel}: no metric in {expr}"
    unknown = names - known_metrics()
    assert not unknown, f"{dashboard} / {panel}: unknown metrics {unknown}"


def test_a_misspelt_metric_would_be_caught() -> None:
    assert metric_names('rate(vllm:kv_cache_usage_percent{pool=~".*"}[1m])') - known_metrics()


def test_build_is_deterministic_and_committed_files_are_current() -> None:
    sample = _sample_plan()
    assert build.generated_files(Slo(), sample) == build.generated_files(Slo(), sample)
    assert build.drift(ROOT, build.generated_files(Slo(), sample)) == []


def test_check_fails_on_drift(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "dashboards", tmp_path / "dashboards")
    (tmp_path / "deploy/prometheus/rules").mkdir(parents=True)
    shutil.copy(ROOT / build.RULES_FILE, tmp_path / build.RULES_FILE)
    cmd = [sys.executable, "-m", "kvplan.cli", "dashboards", "build", "--check", "--root", str(tmp_path)]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    edited = tmp_path / "dashboards/rollout.json"
    edited.write_text(edited.read_text().replace('"unit": "percent"', '"unit": "short"', 1))
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 1
    assert "dashboards/rollout.json" in run.stderr and "kvplan dashboards build" in run.stderr
