"""The control plane inside the router: rollout admin calls, and the inter-token-latency histogram.

A real `kvplan serve` (embedded, in-memory flag store) in front of fake vLLM workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from router_procs import MODEL, ROOT, TOKEN, Backend, RouterProc, plan_dict

from kvplan.metric_names import router as rm

ITL_SLO = 0.07  # not one of the histogram's base edges: the plan's bound must be added as one
TOKENS, TOKEN_DELAY = 5, 0.03


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterProc, Path]]:
    base = Backend("base", tokens=TOKENS, token_delay=TOKEN_DELAY)
    cand = Backend("cand", tokens=TOKENS, token_delay=TOKEN_DELAY)
    plan = plan_dict([base.url], [cand.url], buckets=(("short", 4096), ("long", 16384)))
    plan["slo"] = {"itl_seconds": ITL_SLO}
    path = tmp_path_factory.mktemp("rollout") / "pools.yaml"
    path.write_text(yaml.safe_dump(plan))
    router = RouterProc(path)
    yield router, path
    router.stop()
    base.stop()
    cand.stop()


def _post(r: RouterProc, path: str, body: Any = None, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(r.admin_url + path, headers=headers, timeout=10, **kw)


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"]
    return dict(err)


@pytest.mark.parametrize("op", ["start", "pause", "resume", "abort"])
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_rollout_calls_need_the_admin_token(
    stack: tuple[RouterProc, Path], op: str, token: str | None
) -> None:
    r, _ = stack
    _error(_post(r, f"/admin/buckets/short/rollout/{op}", {}, token=token), 401)
    state = httpx.get(r.admin_url + "/admin/state", headers=r.admin, timeout=5).json()
    assert state["buckets"]["short"]["rollout"] == "idle"  # nothing happened


def test_start_pause_resume_abort_through_the_admin_api(stack: tuple[RouterProc, Path]) -> None:
    r, _ = stack
    url = "/admin/buckets/long/rollout/"
    body = {"steps": "10,50,100", "interval": "1h", "failure_limit": 2, "actor": "ops", "reason": "try int8"}
    started = _post(r, url + "start", body)
    assert started.status_code == 200, started.text
    after = started.json()["after"]
    assert (after["rollout"], after["weight"], after["effective_weight"]) == ("progressing", 10, 10)
    assert after["progress"]["steps"] == [10, 50, 100] and after["progress"]["interval_s"] == 3600
    assert after["progress"]["failure_limit"] == 2
    assert started.json()["before"]["rollout"] == "idle"

    assert _post(r, url + "pause", {"actor": "ops"}).json()["after"]["rollout"] == "paused"
    assert _post(r, url + "resume", {"actor": "ops"}).json()["after"]["rollout"] == "progressing"
    aborted = _post(r, url + "abort", {"actor": "ops", "reason": "looks wrong"}).json()["after"]
    assert (aborted["rollout"], aborted["weight"], aborted["killed"]) == ("aborted", 0, True)

    hist = httpx.get(r.admin_url + "/admin/history?bucket=long", headers=r.admin, timeout=5).json()["entries"]
    assert [e["action"] for e in hist] == [f"rollout:{op}" for op in ("start", "pause", "resume", "abort")]
    assert hist[-1]["reason"] == "looks wrong" and hist[-1]["actor"] == "ops"
    log = r.log()
    for op in ("start", "pause", "resume", "abort"):
        assert f"admin rollout:{op} bucket=long actor=ops" in log  # every mutation is logged


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("short/rollout/start", b'{"steps": ', 400, "parse the JSON"),
        ("short/rollout/start", b"[1]", 400, "JSON object"),
        ("short/rollout/start", {"steps": "50,10"}, 400, "strictly increasing"),
        ("short/rollout/start", {"steps": 5}, 400, "steps must be"),
        ("short/rollout/start", {"steps": "10,200"}, 400, "within 1..100"),
        ("short/rollout/start", {"interval": "soon"}, 400, "interval must look like"),
        ("short/rollout/start", {"interval": "-5s"}, 400, "interval must be positive"),
        ("short/rollout/start", {"failure_limit": "two"}, 400, "failure_limit must be an integer"),
        ("short/rollout/start", {"thresholds": [1]}, 400, "thresholds must be an object"),
        ("short/rollout/start", {"thresholds": {"speed": 1}}, 400, "unknown thresholds"),
        ("short/rollout/start", {"thresholds": {"min_requests": "x"}}, 400, "non-negative number"),
        ("short/rollout/start", {"step": "10,50"}, 400, "unknown fields ['step']"),
        ("short/rollout/start", {"actor": 3}, 400, "'actor' must be a string"),
        ("short/rollout/pause", {}, 400, "no progressing rollout"),
        ("short/rollout/resume", {}, 400, "no paused rollout"),
        ("short/rollout/abort", {}, 400, "no rollout in progress"),
        ("huge/rollout/start", {}, 404, "Unknown bucket 'huge'"),
        ("short/rollout/jump", {}, 404, "Unknown rollout operation 'jump'"),
    ],
)
def test_bad_rollout_calls_get_a_clear_error(
    stack: tuple[RouterProc, Path], path: str, body: Any, status: int, needle: str
) -> None:
    r, _ = stack
    err = _error(_post(r, f"/admin/buckets/{path}", body), status)
    assert needle in err["message"], err["message"]
    state = httpx.get(r.admin_url + "/admin/state", headers=r.admin, timeout=5).json()
    assert state["buckets"]["short"]["rollout"] == "idle"


def test_the_rollout_cli_speaks_to_the_router(stack: tuple[RouterProc, Path], tmp_path: Path) -> None:
    """`kvplan rollout ... --router URL` sends the paths and fields the router takes."""
    r, _ = stack
    token = tmp_path / "token"
    token.write_text(TOKEN)
    common = ["--bucket", "short", "--router", r.admin_url, "--admin-token-file", str(token)]

    def kvplan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kvplan.cli", "rollout", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k != "KVPLAN_ADMIN_TOKEN"},
            timeout=60,
        )

    out = kvplan("start", *common, "--steps", "20,100", "--interval", "1h", "--min-requests", "7")
    assert out.returncode == 0, out.stderr
    assert "short: rollout progressing at weight 20" in out.stdout
    status = kvplan("status", *common)
    assert status.returncode == 0, status.stderr
    assert "short: progressing, weight 20, step 1/2 of [20, 100]" in status.stdout
    out = kvplan("abort", *common, "--reason", "cli test")
    assert out.returncode == 0, out.stderr
    assert "short: rollout aborted, weight 0 (killed)" in out.stdout
    out = kvplan("pause", *common)  # nothing left to pause: one line, exit 2
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "no progressing rollout" in out.stderr
    _post(r, "/admin/buckets/short/unkill", {"reason": "cli test done"})
    _post(r, "/admin/buckets/short/weight", {"weight": 0})


def _itl(r: RouterProc) -> dict[str, dict[str, float]]:
    """pool -> {le: cumulative count} of the ITL histogram in bucket 'short', and the sums."""
    text = httpx.get(r.admin_url + "/metrics", timeout=5).text
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("bucket") != "short":
                continue
            if s.name == f"{rm.ITL_SECONDS}_bucket":
                out.setdefault(s.labels["pool"], {})[s.labels["le"]] = s.value
            elif s.name == f"{rm.ITL_SECONDS}_sum":
                out.setdefault(s.labels["pool"], {})["sum"] = s.value
    return out


def test_itl_histogram_observes_streamed_chunks(stack: tuple[RouterProc, Path]) -> None:
    r, _ = stack
    before = _itl(r)
    assert set(before) == {"short-bf16", "short-int8"}  # every label combination exists from the start
    for hist in before.values():
        assert repr(ITL_SLO) in hist  # the plan's SLO bound is an exact edge
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    # a non-streamed response has no inter-token gaps to observe
    assert httpx.post(r.url + "/v1/chat/completions", json=chat, timeout=10).status_code == 200
    assert _itl(r) == before
    with httpx.stream(
        "POST", r.url + "/v1/chat/completions", json={**chat, "stream": True}, timeout=10
    ) as resp:
        assert resp.status_code == 200
        pool = resp.headers["x-kvplan-pool"]
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    after = _itl(r)
    gaps = after[pool]["+Inf"] - before[pool]["+Inf"]
    # one gap per chunk after the first; the fake worker sleeps TOKEN_DELAY before each token
    assert TOKENS <= gaps <= len(events) - 1
    slow = gaps - (after[pool]["0.025"] - before[pool]["0.025"])
    assert slow >= TOKENS  # the token gaps are >= 30 ms
    assert after[pool]["sum"] - before[pool]["sum"] >= TOKENS * TOKEN_DELAY * 0.9
