"""Routing behaviour end to end: kill switch, weights, fallback, ejection, backpressure, 4xx, reload."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import yaml
from router_procs import MODEL, Backend, RouterProc, plan_dict, poll

CHAT = "/v1/chat/completions"


def _chat(base: str, user: str = "u", stream: bool = False, **kw: object) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "user": user,
        "stream": stream,
        **kw,
    }
    return httpx.post(base + CHAT, json=body, timeout=20)


def _pools(base: str, n: int = 60) -> Counter[str]:
    return Counter(_chat(base, user=f"user-{i}").headers["x-kvplan-pool"] for i in range(n))


def _state(r: RouterProc) -> dict[str, object]:
    s = httpx.get(r.admin_url + "/admin/state", headers=r.admin, timeout=5)
    assert s.status_code == 200
    data: dict[str, object] = s.json()
    return data


def test_admin_weight_kill_unkill_history_and_logs(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a, b = backends("base"), backends("cand")
    r = router(plan_dict([a.url], [b.url], weight=0))
    assert set(_pools(r.url, 20)) == {"short-bf16"}

    w = httpx.post(
        r.admin_url + "/admin/buckets/short/weight",
        json={"weight": 100, "reason": "ramp"},
        headers=r.admin,
        timeout=5,
    )
    assert w.status_code == 200 and w.json()["after"]["weight"] == 100
    assert set(_pools(r.url, 20)) == {"short-int8"}

    assert (
        httpx.post(r.admin_url + "/admin/buckets/short/kill", headers=r.admin, timeout=5).status_code == 200
    )
    assert set(_pools(r.url, 20)) == {"short-bf16"}
    state = _state(r)
    assert state["buckets"]["short"]["killed"] is True and state["version"] == 2  # type: ignore[index]

    assert (
        httpx.post(r.admin_url + "/admin/buckets/short/unkill", headers=r.admin, timeout=5).status_code == 200
    )
    assert set(_pools(r.url, 20)) == {"short-int8"}

    hist = httpx.get(r.admin_url + "/admin/history", headers=r.admin, timeout=5).json()["entries"]
    assert [e["action"] for e in hist] == ["set-weight", "kill", "unkill"]
    bad = httpx.post(
        r.admin_url + "/admin/buckets/short/weight", json={"weight": 101}, headers=r.admin, timeout=5
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "weight"
    unknown = httpx.post(r.admin_url + "/admin/buckets/huge/kill", headers=r.admin, timeout=5)
    assert unknown.status_code == 404
    plan = httpx.get(r.admin_url + "/admin/plan", headers=r.admin, timeout=5).json()
    assert plan["buckets"][0]["name"] == "short"
    log = r.log()
    assert (log.count("admin ") == 3 and "set-weight" not in log) or "admin weight" in log


def test_weight_splits_cohorts_and_users_stick(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a, b = backends("base"), backends("cand")
    r = router(plan_dict([a.url], [b.url], weight=30))
    first = {f"user-{i}": _chat(r.url, f"user-{i}").headers["x-kvplan-pool"] for i in range(100)}
    share = sum(p == "short-int8" for p in first.values()) / len(first)
    assert 0.15 <= share <= 0.45, share
    again = {u: _chat(r.url, u).headers["x-kvplan-pool"] for u in list(first)[:30]}
    assert all(first[u] == p for u, p in again.items())


def test_smallest_bucket_that_fits(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a = backends("a")
    r = router(plan_dict([a.url], buckets=(("small", 1024), ("large", 8192))))
    small = _chat(r.url, max_tokens=100)
    large = _chat(r.url, max_tokens=2000)
    assert small.headers["x-kvplan-pool"] == "small-bf16"
    assert large.headers["x-kvplan-pool"] == "large-bf16"


def test_unhealthy_or_saturated_candidate_falls_back_to_baseline(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a, b = backends("base"), backends("cand")
    r = router(plan_dict([a.url], [b.url], weight=100))
    assert set(_pools(r.url, 10)) == {"short-int8"}
    b.control(waiting=50)  # scraped vllm:num_requests_waiting above the saturation bound
    poll(lambda: set(_pools(r.url, 5)) == {"short-bf16"}, what="saturated candidate -> baseline")
    b.control(waiting=0, health_status=503)
    poll(lambda: not _state(r)["endpoints"][1]["healthy"], what="candidate marked unhealthy")  # type: ignore[index]
    assert set(_pools(r.url, 10)) == {"short-bf16"}
    b.control(health_status=200)
    poll(lambda: set(_pools(r.url, 5)) == {"short-int8"}, what="candidate recovered")
    metrics = httpx.get(r.admin_url + "/metrics", timeout=5).text
    assert 'kvplan_router_decisions_total{bucket="short",pool="short-bf16",reason="fallback"}' in metrics


def test_4xx_is_the_clients_and_5xx_retries_elsewhere(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a, b = backends("a"), backends("b")
    r = router(plan_dict([a.url, b.url]))
    a.control(status=400)
    b.control(status=400)
    for _ in range(10):
        assert _chat(r.url).status_code == 400
    assert all(e["healthy"] for e in _state(r)["endpoints"])  # type: ignore[attr-defined]
    a.control(status=500)
    b.control(status=200)
    backends_seen = Counter(_chat(r.url).headers.get("x-backend") for _ in range(20))
    assert backends_seen == {"b": 20}  # every request that hit a's 500 was retried on b
    metrics = httpx.get(r.admin_url + "/metrics", timeout=5).text
    assert 'kvplan_router_upstream_errors_total{kind="http_5xx",pool="short-bf16"}' in metrics


def test_pool_full_answers_429_with_retry_after(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a = backends("a")
    a.control(delay=1.5)
    r = router(plan_dict([a.url]), "--max-in-flight", "1")
    held = threading.Thread(target=_chat, args=(r.url,))
    held.start()
    poll(lambda: _state(r)["endpoints"][0]["in_flight"] == 1, what="one request in flight")  # type: ignore[index]
    rejected = _chat(r.url)
    assert rejected.status_code == 429 and rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    held.join()


def test_upstream_429_is_backpressure_not_a_fault(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a = backends("a")
    r = router(plan_dict([a.url]))
    a.control(status=429)
    for _ in range(5):
        assert _chat(r.url).status_code == 429
    assert _state(r)["endpoints"][0]["healthy"] is True  # type: ignore[index]


def test_client_disconnect_cancels_upstream(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a = backends("a", tokens=200, token_delay=0.05)
    r = router(plan_dict([a.url]))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", r.url + CHAT, json=body, timeout=20) as resp:
        for _ in resp.iter_raw():
            break  # first bytes arrived: go away mid-stream
    poll(lambda: a.control()["cancelled"] == 1, what="upstream request cancelled")
    poll(lambda: _state(r)["endpoints"][0]["in_flight"] == 0, what="in-flight released")  # type: ignore[index]


def test_plan_reload_keeps_streams_and_applies_changes(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a, b = backends("a", tokens=40, token_delay=0.05), backends("b")
    r = router(plan_dict([a.url]))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    got: list[bytes] = []

    def stream() -> None:
        with httpx.stream("POST", r.url + CHAT, json=body, timeout=20) as resp:
            got.extend(resp.iter_raw())

    t = threading.Thread(target=stream)
    t.start()
    poll(lambda: bool(got), what="stream started")
    new = plan_dict([b.url], buckets=(("short", 4096), ("long", 16384)))
    r.plan_path.write_text(yaml.safe_dump(new))
    poll(
        lambda: _chat(r.url).headers.get("x-backend") == "b",
        timeout=10,
        what="new plan in effect",
    )
    t.join()
    assert b"".join(got).endswith(b"data: [DONE]\n\n")  # the old stream completed
    assert _chat(r.url, max_tokens=8000).headers["x-kvplan-pool"] == "long-bf16"
    r.plan_path.write_text("buckets: [")  # broken file: the router keeps the last good plan
    time.sleep(0.01)
    poll(lambda: "plan reload failed" in r.log(), what="bad plan reported")
    assert _chat(r.url).status_code == 200


def test_headers_pass_through_and_provenance_record(
    backends: Callable[..., Backend], router: Callable[..., RouterProc], tmp_path: object
) -> None:
    import json
    from pathlib import Path

    a = backends("a")
    prov = Path(str(tmp_path)) / "provenance.jsonl"
    r = router(plan_dict([a.url]), "--provenance-log", str(prov))
    headers = {
        "Authorization": "Bearer sk-user",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=1",
        "X-Session-ID": "sess-9",
        "X-Request-Id": "rid-42",
    }
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    resp = httpx.post(r.url + CHAT, json=body, headers=headers, timeout=10)
    assert resp.status_code == 200
    for name, value in headers.items():
        assert resp.headers[f"x-echo-{name.lower()}"] == value
    assert resp.headers["x-request-id"] == "rid-42"
    generated = _chat(r.url)
    assert len(generated.headers["x-request-id"]) == 24  # generated when absent, and sent upstream
    assert generated.headers["x-echo-x-request-id"] == generated.headers["x-request-id"]

    def records() -> list[dict[str, object]]:
        return [json.loads(x) for x in prov.read_text().splitlines()] if prov.exists() else []

    poll(lambda: len(records()) == 2, what="provenance records written")
    rec = records()[0]
    assert rec["request_id"] == "rid-42" and rec["pool"] == "short-bf16" and rec["status"] == 200
    assert rec["endpoint"] == a.url and rec["outcome"] == "ok" and rec["regime"] == "bf16; kv=bf16"
    assert isinstance(rec["prompt_tokens"], int) and rec["prompt_tokens"] > 0


def test_first_byte_timeout_retries_on_another_endpoint(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a, b = backends("a"), backends("b")
    a.control(delay=5)
    plan = plan_dict([a.url, b.url])
    # Every request carries the same prompt: prefix-cache affinity would send all six to one
    # endpoint, chosen by the hash of its (ephemeral) port. Round robin makes some go to a first.
    plan["buckets"][0]["endpoint_choice"] = {"policy": "round-robin"}
    r = router(plan, "--first-byte-timeout", "0.5")
    started = time.monotonic()
    served = Counter(_chat(r.url, user=f"u{i}").headers.get("x-backend") for i in range(6))
    assert served == {"b": 6}
    assert time.monotonic() - started < 5  # nobody waited for a's 5 s
    metrics = httpx.get(r.admin_url + "/metrics", timeout=5).text
    timeouts = re.search(
        r'^kvplan_router_upstream_errors_total\{kind="first_byte_timeout",pool="short-bf16"\} (\S+)$',
        metrics,
        re.M,
    )
    assert timeouts is not None and float(timeouts.group(1)) >= 1
