"""`kvplan demo` end to end: it starts, serves load through the router to simulated pools, its real
Prometheus answers every dashboard query with data and has loaded every rule, the admin API works
from outside, and SIGINT stops every process it started.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kvplan.dashboards import build, demo, grafana
from kvplan.plan import Slo

ROOT = Path(__file__).resolve().parents[2]

# Grafana's substitutions for a short run scraped every second.
SUBSTITUTE = {
    "$__rate_interval": "15s",
    "$__range": "5m",
    "$model": ".*",
    "$bucket": ".*",
    "$pool": ".*",
    "$ttft_slo": "2.0",
    "$e2e_slo": "60.0",
}


def substitute(expr: str) -> str:
    for var, value in sorted(SUBSTITUTE.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


@dataclass
class Running:
    proc: subprocess.Popen[str]
    router: str
    prometheus: str
    token: str
    output: list[str]


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_until_ready(proc: subprocess.Popen[str], output: list[str], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith(demo.READY):
            return line
    raise AssertionError("demo never became ready:\n" + "".join(output))


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    cmd = [sys.executable, "-m", "kvplan.cli", "demo", "--port", "0", "--prometheus-port", "0",
           "--scrape-interval", "1s", "--rps", "6"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )  # fmt: skip
    output: list[str] = []
    try:
        ready = _read_until_ready(proc, output, 120)
        fields = dict(re.findall(r"(\w+)=(\S*)", ready))
        yield Running(proc, fields["router"], fields["prometheus"], fields["token"], output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _query(prom: str, expr: str) -> list[dict[str, object]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def test_demo_prints_urls_and_serves_openai_requests(running: Running) -> None:
    banner = "".join(running.output)
    assert running.router in banner and running.prometheus in banner and "kvplan flags" in banner
    r = httpx.post(
        f"{running.router}/v1/chat/completions",
        json={"model": demo.MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["x-kvplan-pool"].startswith("demo-8k-")


def test_admin_api_from_a_second_terminal_kills_a_bucket(running: Running) -> None:
    auth = {"Authorization": f"Bearer {running.token}"}
    assert (
        httpx.post(
            f"{running.router}/admin/buckets/32k/kill", headers={"Authorization": "Bearer no"}
        ).status_code
        == 401
    )
    r = httpx.post(
        f"{running.router}/admin/buckets/32k/kill", headers=auth, json={"reason": "e2e test"}, timeout=10
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        killed = _query(running.prometheus, 'kvplan_router_bucket_killed{bucket="32k"}')
        if killed and float(killed[0]["value"][1]) == 1.0:  # type: ignore[index]
            break
        time.sleep(0.5)
    else:
        pytest.fail("Prometheus never saw the kill switch")
    alerts = httpx.get(f"{running.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    deadline = time.monotonic() + 20
    while not any(a["labels"]["alertname"] == "KillSwitchEngaged" for a in alerts):
        assert time.monotonic() < deadline, "KillSwitchEngaged never went pending"
        time.sleep(0.5)
        alerts = httpx.get(f"{running.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]


def test_every_rule_loaded_and_healthy(running: Running) -> None:
    groups = httpx.get(f"{running.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {g["name"] for g in groups} == {"kvplan-recording", "kvplan-alerts", "kvplan-plan"}
    deadline = time.monotonic() + 20
    while True:
        groups = httpx.get(f"{running.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        if not bad or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not bad


def test_every_dashboard_query_returns_data_from_prometheus(running: Running) -> None:
    queries = [
        (name, f"{title} {ref}", substitute(t["expr"]))
        for name, d in build.dashboard_json(Slo()).items()
        for title, ref, t in grafana.queries(d)
    ]
    deadline = time.monotonic() + 90
    while True:
        empty = [(n, title, expr) for n, title, expr in queries if not _query(running.prometheus, expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not empty, "queries without data:\n" + "\n".join(f"{n} / {t}: {e}" for n, t, e in empty)


def test_sigint_stops_everything_it_started(running: Running) -> None:
    children = _children(running.proc.pid)
    assert len(children) == 6  # 4 workers, router, prometheus
    running.proc.send_signal(signal.SIGINT)
    try:
        rest, _ = running.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("demo did not stop within 30 s of SIGINT")
    assert running.proc.returncode == 0, rest
    assert "stopped 6 processes" in rest and "killed" not in rest
    assert not [pid for pid in children if _alive(pid)]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.router}/health", timeout=2)
