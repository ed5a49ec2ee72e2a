"""A rollout in embedded mode: the controller runs inside `kvplan serve` (in-memory flag store) on
the router's own counters, in front of two simulated vLLM workers (`kvplan worker sim`).

Healthy traffic moves the rollout up a step; then the candidate's engine dies (every request 500,
/health 503) and the next analyses abort the rollout: weight 0 and the kill switch on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_services import Router, SimWorker
from support.waiting import poll

from kvplan.metric_names import control as cm

INTERVAL = "2s"
BUCKET = "16k"
CANDIDATE = "b16k-int8"


def plan_text(baseline_url: str, candidate_url: str) -> str:
    # generous SLO bounds: the two pools are equally fast, and this 2-core machine is shared
    return f"""\
version: 1
slo: {{ttft_seconds: 2.0, itl_seconds: 0.5}}
default_max_tokens: 8
buckets:
  - name: {BUCKET}
    max_tokens: 16384
    baseline: {{name: b16k-bf16, model: llama-3.1-8b, served_model_name: m, max_model_len: 32768,
                endpoints: ["{baseline_url}"]}}
    candidates:
      - {{name: {CANDIDATE}, model: llama-3.1-8b, served_model_name: m, kv_format: int8,
          max_model_len: 32768, endpoints: ["{candidate_url}"]}}
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Router, SimWorker]]:
    base = SimWorker(tmp_path, "base", "bf16", mean_output_tokens=6)
    cand = SimWorker(tmp_path, "cand", "int8", mean_output_tokens=6)
    plan_path = tmp_path / "pools.yaml"
    plan_path.write_text(plan_text(base.url, cand.url))
    router = Router(tmp_path, "router", plan_path, "memory")
    try:
        yield router, cand
    finally:
        router.stop()
        cand.stop()
        base.stop()


def traffic(url: str, stop: threading.Event, clients: int = 6) -> list[threading.Thread]:
    """Streamed chat completions from several clients until `stop` (anonymous: random cohorts)."""

    def client() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                try:
                    with c.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                        for _ in resp.iter_bytes():
                            pass
                except httpx.HTTPError:
                    pass  # after the candidate dies some requests fail; the rollout must see it

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def test_embedded_rollout_advances_then_aborts_on_candidate_errors(stack: tuple[Router, SimWorker]) -> None:
    router, cand = stack
    admin = {"Authorization": "Bearer control-test-token"}

    def flags() -> dict[str, Any]:
        state = httpx.get(router.admin_url + "/admin/state", headers=admin, timeout=5).json()
        return dict(state["buckets"][BUCKET])

    def call(op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = httpx.post(
            f"{router.admin_url}/admin/buckets/{BUCKET}/rollout/{op}",
            json=body or {},
            headers=admin,
            timeout=5,
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json()["after"])

    stop = threading.Event()
    threads = traffic(router.url, stop)
    try:
        started = call(
            "start",
            {
                # 90 before 100: an analysis right after the resume may still see the candidate's
                # last healthy second (readings are a second apart) and pass; it cannot complete
                "steps": "30,60,90,100",
                "interval": INTERVAL,
                "failure_limit": 1,
                "thresholds": {"min_requests": 5},
            },
        )
        assert (started["rollout"], started["weight"]) == ("progressing", 30)
        # healthy traffic: the controller inside the router promotes the candidate a step
        poll(lambda: flags()["weight"] >= 60, 15, "the rollout to reach 60%")
        paused = call("pause")
        assert paused["rollout"] == "paused" and paused["killed"] is False

        # the candidate's engine dies; the router notices (5xx, then /health) and ejects it
        httpx.post(cand.url + "/debug/engine/kill", timeout=5).raise_for_status()
        poll(
            lambda: (
                not any(
                    e["healthy"]
                    for e in httpx.get(router.admin_url + "/admin/state", headers=admin, timeout=5).json()[
                        "endpoints"
                    ]
                    if e["pool"] == CANDIDATE
                )
            ),
            10,
            "the candidate endpoint to be ejected",
        )
        call("resume")
        # failure limit 1: two failed analyses (two intervals) and the rollout is aborted
        poll(lambda: flags()["rollout"] == "aborted", 20, "the rollout to abort")
    finally:
        stop.set()
        for t in threads:
            t.join(10)

    final = flags()
    assert (final["weight"], final["killed"], final["effective_weight"]) == (0, True, 0)
    hist = httpx.get(router.admin_url + f"/admin/history?bucket={BUCKET}", headers=admin, timeout=5).json()
    actions = [(e["actor"], e["action"]) for e in hist["entries"]]
    ctl = "rollout-controller@router"
    assert (ctl, "rollout:advance") in actions
    assert actions[-1] == (ctl, "rollout:abort"), actions
    assert "analysis failed 2x" in hist["entries"][-1]["reason"]
    # the controller's own metrics are on the router's /metrics
    metrics = httpx.get(router.admin_url + "/metrics", timeout=5).text
    assert f'{cm.ROLLOUT_ABORTS}_total{{bucket="{BUCKET}"}} 1.0' in metrics
