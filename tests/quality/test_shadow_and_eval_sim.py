"""Shadow traffic and `kvplan eval` through a real `kvplan serve` over simulated vLLM workers
(`kvplan worker sim`): a shadow candidate that is 10x slower or down fails no client request and
its dropped copies are counted; pool forcing needs the admin token; eval's exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from quality_stack import TOKEN, admin, metric, serve, shadow_counts, shadow_settled
from support import ROOT
from support.waiting import poll

from kvplan.metric_names import AgreementMeasure
from kvplan.metric_names import router as rm
from kvplan.procs import free_port
from kvplan.workers.sim.launch import sim_worker_process

BUCKET, BASE, CAND = "short", "sim-bf16", "sim-int4"
EXAMPLE = ROOT / "kvplan/quality/data/example_prompts.jsonl"  # any valid set: the errors come first


def _sim(fmt: str, speed: float, seed: int = 0) -> Any:
    return sim_worker_process(["--model", "llama-3.1-8b", "--gpu", "h100", "--kv-format", fmt,
                               "--served-model-name", "m", "--max-model-len", "8192", "--speed-factor",
                               str(speed), "--mean-output-tokens", "0", "--seed", str(seed)])  # fmt: skip


def _plan(
    base: str, cand: str, shadow: int, candidates: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    def pool(name: str, fmt: str, url: str) -> dict[str, Any]:
        return {"name": name, "model": "llama-3.1-8b", "served_model_name": "m", "kv_format": fmt,
                "max_model_len": 8192, "endpoints": [url]}  # fmt: skip

    cands = [pool(n, "int4", u) for n, u in (candidates or [(CAND, cand)])]
    return {"default_max_tokens": 16, "buckets": [{"name": BUCKET, "max_tokens": 8192,
            "baseline": pool(BASE, "bf16", base), "candidates": cands,
            "rollout": {"weight": 0, "shadow": shadow}}]}  # fmt: skip


def _chat(url: str, i: int, **extra: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 32,
            "temperature": 0}  # fmt: skip
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60, **extra)


def _load(url: str, n: int) -> list[httpx.Response]:
    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(lambda i: _chat(url, i), range(n)))


@pytest.fixture(scope="module")
def baseline() -> Iterator[str]:
    with _sim("bf16", 1.0) as url:
        yield url


def test_a_10x_slower_shadow_candidate_fails_no_client_and_its_drops_are_counted(
    baseline: str, tmp_path: Path
) -> None:
    small_queue = ("--shadow-queue", "4", "--shadow-concurrency", "1")
    with (
        _sim("int4", 10.0) as slow,
        serve(tmp_path, _plan(baseline, slow, shadow=100), *small_queue) as router,
    ):
        answers = _load(router.url, 60)
        assert [r.status_code for r in answers] == [200] * 60
        assert {r.headers["x-kvplan-pool"] for r in answers} == {BASE}
        assert all("x-kvplan-shadow" not in r.headers for r in answers)
        poll(shadow_settled(router, BUCKET, CAND), 60, "every shadow copy compared or dropped", 0.2)
        c = shadow_counts(router, BUCKET, CAND)
    assert c["sampled"] == 60
    assert c["queue_full"] >= 40  # the slow candidate takes one copy per ~1.6 s; the queue holds 4
    assert c["pairs"] >= 1 and c["candidate_failed"] == 0


def test_a_shadow_candidate_that_is_down_fails_no_client_and_counts_every_copy(
    baseline: str, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # a local port nobody listens on
    with serve(tmp_path, _plan(baseline, down, shadow=100)) as router:
        answers = _load(router.url, 30)
        assert [r.status_code for r in answers] == [200] * 30
        poll(shadow_settled(router, BUCKET, CAND), 30, "every shadow copy dropped", 0.2)
        c = shadow_counts(router, BUCKET, CAND)
    assert (c["sampled"], c["candidate_failed"], c["pairs"]) == (30, 30, 0)


def test_shadow_share_follows_the_flag_store_and_agreement_is_exported(baseline: str, tmp_path: Path) -> None:
    with _sim("int4", 0.0) as same, serve(tmp_path, _plan(baseline, same, shadow=0)) as router:
        _load(router.url, 10)
        assert shadow_counts(router, BUCKET, CAND)["sampled"] == 0  # plan default 0: no shadow
        after = admin(
            router, "POST", f"/admin/buckets/{BUCKET}/shadow", {"share": 100, "reason": "watch int4"}
        )
        assert after["after"]["shadow"] == 100
        _load(router.url, 10)
        poll(shadow_settled(router, BUCKET, CAND), 30, "shadow copies compared", 0.2)
        text = httpx.get(router.metrics_url + "/metrics").text
        history = admin(router, "GET", f"/admin/history?bucket={BUCKET}")["entries"]
    # the same seed and prompt: the simulated candidate answers exactly like the baseline
    exact = AgreementMeasure.EXACT
    assert metric(text, f"{rm.SHADOW_AGREEMENT}_sum", bucket=BUCKET, measure=exact, pool=CAND) == 10.0
    assert metric(text, f"{rm.SHADOW_PAIRS}_total", bucket=BUCKET, pool=CAND) == 10.0
    assert history[-1]["action"] == "set-shadow" and history[-1]["reason"] == "watch int4"


def test_forcing_a_pool_needs_the_admin_token_and_never_falls_back(baseline: str, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with (
        _sim("int4", 0.0) as cand,
        serve(tmp_path, _plan(baseline, cand, 0, [(CAND, cand), ("sim-down", down)])) as router,
    ):
        forced = {"X-Kvplan-Force-Pool": CAND}
        r = _chat(router.url, 1, headers=forced)
        assert r.status_code == 403 and r.json()["error"]["code"] == "pool_forcing_forbidden"
        r = _chat(router.url, 1, headers={**forced, "X-Kvplan-Token": "wrong"})
        assert r.status_code == 403
        r = _chat(router.url, 1, headers={**forced, "X-Kvplan-Token": TOKEN})
        assert r.status_code == 200 and r.headers["x-kvplan-pool"] == CAND  # at weight 0
        r = _chat(router.url, 1, headers={"X-Kvplan-Force-Pool": "nope", "X-Kvplan-Token": TOKEN})
        assert r.status_code == 404 and r.json()["error"]["code"] == "pool_not_found"
        r = _chat(router.url, 1, headers={"X-Kvplan-Force-Pool": "sim-down", "X-Kvplan-Token": TOKEN})
        assert r.status_code == 503 and "x-kvplan-pool" not in r.headers  # not silently the baseline
        r = _chat(router.url, 1, headers={"X-KV-Precision": "high"})
        assert r.status_code == 200 and r.headers["x-kvplan-pool"] == BASE


def _eval(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KVPLAN_ADMIN_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "kvplan.cli", "eval", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def test_eval_ranks_a_faithful_candidate_above_a_drifting_one(baseline: str, tmp_path: Path) -> None:
    """Same seed as the baseline: the same answers; another seed: other answers. Without
    references every prompt is scored against the baseline's answer."""
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(8)]
    lines.append({"id": "cite", "task": "citation", "messages": [{"role": "user", "content": "[S1] a"}],
                  "sources": ["S1"]})  # fmt: skip
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    pools = [("sim-int8", "same"), ("sim-int4", "other")]
    with _sim("int8", 0.0) as same, _sim("int4", 0.0, seed=7) as other:
        urls = {"same": same, "other": other}
        with serve(tmp_path, _plan(baseline, same, 0, [(n, urls[u]) for n, u in pools])) as router:
            where = ("--router", router.url, "--admin", router.admin_url)
            out = _eval(str(prompts), *where, "--json", "--max-tokens", "16")
            md = _eval(str(prompts), *where, "--markdown", "--pool", "sim-int4", "--max-regression", "0.5")
            rich = _eval(str(prompts), *where, "--pool", "sim-int8", "--max-regression", "0")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ranking"] == ["sim-int8", "sim-int4"]
    tasks = {t["task"]: t for t in report["tasks"]}
    assert tasks["exact"]["scores"] == {BASE: 1.0, "sim-int8": 1.0, "sim-int4": 0.0}
    assert tasks["exact"]["differences"]["sim-int4"] == {"mean": -1.0, "low": -1.0, "high": -1.0}
    assert tasks["citation"]["scores"][BASE] == 0.0  # pseudo-text cites nothing: scored, not assumed
    assert tasks["all"]["differences"]["sim-int4"]["high"] < 0  # worse, and the interval says so
    worst = report["worst_regressions"]["sim-int4"]
    assert len(worst) == 5 and worst[0]["baseline_answer"] != worst[0]["candidate_answer"]
    assert md.returncode == 1, md.stderr
    assert md.stdout.startswith("## kvplan eval: bucket short") and "| all | 9 |" in md.stdout
    last = md.stderr.strip().splitlines()[-1]
    assert last.startswith("regression: sim-int4 below the baseline by more than 0.5")
    assert rich.returncode == 0, rich.stderr
    assert "Ranking (overall score): sim-int8" in rich.stdout and "Worst regressions" not in rich.stdout


def test_eval_bad_input_exits_2_with_one_line(baseline: str, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"messages": [{"role": "user", "content": "ok"}]}\nthis is not json\n')
    nobody = f"http://127.0.0.1:{free_port()}"
    down = f"http://127.0.0.1:{free_port()}"
    cases = {
        "garbage": (
            [str(garbage), "--router", nobody, "--admin", nobody],
            f"error: {garbage}:2: not a JSON object",
        ),
        "unreachable": (
            [str(EXAMPLE), "--router", nobody, "--admin", nobody],
            f"error: cannot reach the router's admin API at {nobody}",
        ),
        "two formats": ([str(EXAMPLE), "--router", nobody, "--admin", nobody, "--json", "--markdown"],
                        "error: --json and --markdown exclude each other"),
        "regression bound": ([str(EXAMPLE), "--router", nobody, "--admin", nobody, "--max-regression", "2"],
                             "error: --max-regression is a score difference within 0..1, got 2.0"),
        "timeout": ([str(EXAMPLE), "--router", nobody, "--admin", nobody, "--timeout", "-1"],
                    "error: --timeout is seconds per request, above 0, got -1.0"),
        "max tokens": ([str(EXAMPLE), "--router", nobody, "--admin", nobody, "--max-tokens", "0"],
                       "error: Invalid value for '--max-tokens'"),
        "token file": ([str(EXAMPLE), "--router", nobody, "--admin", nobody, "--admin-token-file",
                        str(tmp_path / "no-token")], "error: cannot read admin token file"),
    }  # fmt: skip
    silent = socket.socket()  # accepts connections (the kernel does), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
    cases["no answer"] = (
        [str(EXAMPLE), "--router", mute, "--admin", mute, "--timeout", "0.5"],
        f"error: cannot reach the router's admin API at {mute}: ReadTimeout",
    )
    with silent, serve(tmp_path, _plan(baseline, down, 0)) as router:
        where = ("--router", router.url, "--admin", router.admin_url)
        cases["missing pool"] = (
            [str(EXAMPLE), *where, "--pool", "sim-int9"],
            "error: pool 'sim-int9' is not a candidate of bucket 'short'; candidates: sim-int4",
        )
        cases["pool down"] = ([str(EXAMPLE), *where], "error: pool sim-int4, prompt ")
        cases["bucket"] = (
            [str(EXAMPLE), *where, "--bucket", "long"],
            "error: unknown bucket 'long'",
        )
        runs = {name: _eval(*args) for name, (args, _) in cases.items()}
    for name, (_, message) in cases.items():
        run = runs[name]
        assert run.returncode == 2, (name, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), (name, run.stderr)
    assert "No healthy endpoint in pool sim-int4" in runs["pool down"].stderr


def test_risky_requests_fall_back_inside_the_weight_and_are_counted_with_their_reason(
    baseline: str, tmp_path: Path
) -> None:
    """At weight 100 every request would go to the INT4 candidate; the precision policy sends the
    header, the plan's rule (tools) and the heuristic (a long prompt citing many sources) to INT8."""
    with _sim("int4", 0.0) as int4, _sim("int8", 0.0) as int8:
        plan = _plan(baseline, int4, 0, [(CAND, int4), ("sim-int8", int8)])
        (bucket,) = plan["buckets"]
        bucket.update(policy="precision", rollout={"weight": 100},
                      precision={"to": "sim-int8", "structured": True, "min_sources": 4,
                                 "min_prompt_tokens": 200})  # fmt: skip
        retrieval = " ".join(f"[S{i}] Passage {i} says something about the topic." for i in range(1, 9)) * 4
        tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        cases = [
            ("weight", CAND, {}, {}),
            ("precision_header", "sim-int8", {}, {"X-KV-Precision": "high"}),
            ("precision_rule", "sim-int8", {"tools": [tool]}, {}),
            ("precision_prompt", "sim-int8", {"messages": [{"role": "user", "content": retrieval}]}, {}),
        ]
        with serve(tmp_path, plan) as router:
            served = []
            for _, _, extra, hdrs in cases:
                body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
                        "user": "someone", **extra}  # fmt: skip
                r = httpx.post(router.url + "/v1/chat/completions", json=body, headers=hdrs, timeout=60)
                assert r.status_code == 200, r.text
                served.append(r.headers["x-kvplan-pool"])
            text = httpx.get(router.metrics_url + "/metrics").text
    assert served == [pool for _, pool, _, _ in cases]
    for reason, pool, _, _ in cases:
        assert metric(text, f"{rm.DECISIONS}_total", bucket=BUCKET, pool=pool, reason=reason) == 1.0
    # nothing else was counted as a fallback
    for reason in ("precision_header", "precision_rule", "precision_prompt"):
        assert metric(text, f"{rm.DECISIONS}_total", reason=reason) == 1.0
