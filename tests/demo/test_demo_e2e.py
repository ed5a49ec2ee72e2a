"""`kvplan demo` (in-memory flags, the default) end to end: it starts, serves OpenAI requests
through the router to simulated pools, loads every rule into its real Prometheus, takes a kill
switch and a weight step from a second terminal, and SIGINT stops every process it started."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from demo_harness import Running, alerts, cli, demo_process, query, stop_with_sigint
from support.waiting import poll

from kvplan.demo import config as demo


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    with demo_process() as r:
        yield r


def test_demo_prints_urls_and_serves_openai_requests(running: Running) -> None:
    banner = "".join(running.output)
    assert running.router in banner and running.prometheus in banner and "kvplan flags" in banner
    r = httpx.post(
        f"{running.router}/v1/chat/completions",
        json={"model": demo.MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["x-kvplan-pool"].startswith("demo-8k-")


def test_kill_switch_and_weight_step_from_a_second_terminal(running: Running) -> None:
    wrong = httpx.post(f"{running.admin}/admin/buckets/32k/kill", headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    run = cli(running, "flags", "kill", "--bucket", "32k", "--reason", "e2e test")
    assert run.returncode == 0 and "32k: KILLED" in run.stdout, run.stdout + run.stderr

    def killed() -> bool:
        found = query(running.prometheus, 'kvplan_router_bucket_killed{bucket="32k"}')
        return bool(found) and float(found[0]["value"][1]) == 1.0

    poll(killed, 20, "Prometheus to see the kill switch", interval=0.5)
    poll(lambda: any(a["labels"]["alertname"] == "KillSwitchEngaged" for a in alerts(running)), 20,
         "KillSwitchEngaged to go pending", interval=0.5)  # fmt: skip
    run = cli(running, "flags", "set-weight", "--bucket", "8k", "--weight", "80", "--reason", "step")
    assert run.returncode == 0 and "8k: weight 80" in run.stdout, run.stdout + run.stderr
    history = cli(running, "flags", "history")
    assert "e2e test" in history.stdout and "50 -> 80" in history.stdout, history.stdout


def test_a_rollout_from_a_second_terminal_is_analysed_by_the_router(running: Running) -> None:
    run = cli(running, "rollout", "start", "--bucket", "8k", "--steps", "90,100", "--interval", "3s",
              "--min-requests", "1")  # fmt: skip
    assert run.returncode == 0 and "8k: rollout progressing at weight 90" in run.stdout, (
        run.stdout + run.stderr
    )

    def analysed() -> bool:
        found = query(running.prometheus, 'sum(kvplan_rollout_analyses_total{bucket="8k"})')
        return bool(found) and float(found[0]["value"][1]) > 0

    poll(analysed, 60, "a rollout analysis to reach Prometheus", interval=1)
    status = cli(running, "rollout", "status", "--bucket", "8k")
    assert status.returncode == 0 and "8k:" in status.stdout, status.stdout + status.stderr


def test_every_rule_loaded_and_healthy(running: Running) -> None:
    deadline = time.monotonic() + 20
    while True:
        groups = httpx.get(f"{running.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        if not bad or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {g["name"] for g in groups} == {"kvplan-recording", "kvplan-alerts", "kvplan-plan"}
    assert not bad


def test_sigint_stops_everything_it_started(running: Running) -> None:
    rest = stop_with_sigint(running, expected_children=6)  # 4 workers, router, Prometheus
    # The live summary (plain lines without a terminal) and the final table, every pool in it.
    assert re.search(r"sent \d+ ok \d+ failed 0 \| demo-8k-bf16: \d+ req", rest), rest
    assert all(p.name in rest for p in demo.POOLS)
    sent, ok = map(int, re.search(r"load: (\d+) sent, (\d+) ok, 0 failed", rest).groups())  # type: ignore[union-attr]
    assert ok > 0 and sent >= ok
