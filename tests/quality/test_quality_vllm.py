"""Quality gates on real vLLM CPU pools of SmolLM2-135M behind `kvplan serve`: a BF16 baseline
(vLLM's own attention) and kvplan INT8 and INT4 (Hadamard-rotated keys) candidates through the
plugin, started by `kvplan workers up`, one stack for the module (three servers, ~4 GB each).

- Shadowing a bucket changes no client's answer and adds no client-visible latency, and a real
  Prometheus scrape sees the agreement histogram.
- A rollout with the quality gate aborts the INT4 candidate (kill switch on, the reason in the
  audit trail) and promotes the INT8 one; the controller is ticked by the test on its own clock.
- `kvplan eval` on the shipped example set ranks INT8 above INT4 against BF16.

Latency is not what these tests judge (a 2-core machine shared with other jobs), so the plan's
SLO bounds are far above any CPU generation time.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from control_services import Prometheus, RedisServer
from openai import OpenAI
from quality_stack import GATE, TOKEN, gated_rollout, serve, shadow_counts, shadow_settled, share_blocks
from support import ROOT
from support.waiting import poll
from workers_stack import BUCKET, PROMPTS, SERVED_NAME, Workers, write_plan

from kvplan.checkpoint import ensure_smollm2_checkpoint
from kvplan.metric_names import GATED_MEASURE
from kvplan.metric_names import router as rm
from kvplan.plan import Plan

pytestmark = pytest.mark.vllm

BASELINE, INT8, INT4 = "smol-bf16", "smol-int8", "smol-int4h"
SLO = {"ttft_seconds": 120.0, "e2e_seconds": 300.0}
EXAMPLE = ROOT / "kvplan/quality/data/example_prompts.jsonl"


@dataclass
class Stack:
    root: Path
    runtime: dict[str, Any]  # the plan with the endpoints `kvplan workers up` published
    redis: RedisServer

    def plan(self, candidates: list[str], shadow: int = 0) -> dict[str, Any]:
        """One bucket: the baseline and these candidates (the first is the flag store's)."""
        p = copy.deepcopy(self.runtime)
        (bucket,) = p["buckets"]
        by_name = {c["name"]: c for c in bucket["candidates"]}
        bucket["candidates"] = [by_name[c] for c in candidates]
        bucket["rollout"] = {"weight": 0, "shadow": shadow}
        p["slo"] = {**p.get("slo", {}), **SLO}
        return p


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = ensure_smollm2_checkpoint()
    root = tmp_path_factory.mktemp("quality-vllm")
    plan = write_plan(
        root / "pools.yaml", model_dir, [(BASELINE, "bf16"), (INT8, "int8"), (INT4, "int4_hadamard")]
    )
    workers = Workers.up(plan, root / "run", [BASELINE, INT8, INT4], "--parallel-starts", "3")
    redis = RedisServer(root)
    try:
        redis.start()
        workers.wait_ready()
        yield Stack(root, yaml.safe_load(workers.runtime_plan.read_text()), redis)
    finally:
        redis.stop()
        workers.stop()
    assert workers.proc.returncode == 0, workers.log.read_text()


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_shadowing_changes_no_answer_adds_no_latency_and_prometheus_sees_it(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve(stack.root / "shadow", stack.plan([INT8])) as router:
        (stack.root / "prom").mkdir()
        prom = Prometheus(stack.root / "prom", {"kvplan-router": [(router.metrics_url, {})]})
        try:
            client = OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=300)
            latency: dict[int, list[float]] = {0: [], 10: [], 100: []}
            answers: dict[int, dict[str, str]] = {0: {}, 10: {}, 100: {}}
            # ABBA per request pair: a loaded machine's drift falls on both shares alike; the
            # every-request share likewise beside unshadowed requests of its own half
            first = [0, 10, 10, 0] * 10
            shares = first + [0, 100, 100, 0] * 4
            beside: list[float] = []  # the unshadowed requests of the second half
            for i, (share, prompt) in enumerate(share_blocks(router, BUCKET, shares, PROMPTS)):
                t = time.perf_counter()
                raw = client.chat.completions.with_raw_response.create(
                    model=SERVED_NAME,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=4,
                    temperature=0,
                )
                (beside if share == 0 and i >= len(first) else latency[share]).append(time.perf_counter() - t)
                assert raw.headers.get("x-kvplan-pool") == BASELINE
                text = raw.parse().choices[0].message.content or ""
                assert answers[share].setdefault(prompt, text) == text
            poll(shadow_settled(router, BUCKET, INT8), 300, "every shadow copy compared", 0.5)
            counts = shadow_counts(router, BUCKET, INT8)
            sel = f'bucket="{BUCKET}",pool="{INT8}",measure="{GATED_MEASURE}"'
            query = f"sum({rm.SHADOW_AGREEMENT}_count{{{sel}}})"

            def scraped() -> float:
                rows = httpx.get(f"{prom.url}/api/v1/query", params={"query": query}).json()["data"]["result"]
                return float(rows[0]["value"][1]) if rows else 0.0

            poll(lambda: scraped() == counts["pairs"], 60, "Prometheus scraping every pair", 0.5)
        finally:
            prom.stop()
    for share in (10, 100):  # greedy: the same prompt, the same answer, shadowed or not
        assert all(answers[0][p] == a for p, a in answers[share].items() if p in answers[0])
    off, on, every = latency[0], latency[10], latency[100]
    with capsys.disabled():
        print(f"\nclient latency, shadow 0%: p50 {_p(off, 0.5):.3f} s p99 {_p(off, 0.99):.3f} s; "
              f"10%: p50 {_p(on, 0.5):.3f} s p99 {_p(on, 0.99):.3f} s ({len(on)} requests each); "
              f"100%: median {statistics.median(every):.3f} s "
              f"(0% beside it: {statistics.median(beside):.3f} s); shadow {counts}")  # fmt: skip
    assert counts["dropped"] == 0 and counts["pairs"] == counts["sampled"] >= len(every)
    # within noise: a shadow awaited on the client's path would add a whole candidate generation
    # (about the baseline's own time) to each shadowed request
    assert _p(on, 0.5) <= 1.25 * _p(off, 0.5) + 0.1
    assert _p(on, 0.99) <= 1.5 * _p(off, 0.99) + 0.5
    assert statistics.median(every) <= 1.5 * statistics.median(beside)


@pytest.mark.parametrize(("candidate", "db", "phase"), [(INT4, 1, "aborted"), (INT8, 2, "succeeded")])
def test_a_rollout_with_the_quality_gate_aborts_int4_and_promotes_int8(
    stack: Stack, candidate: str, db: int, phase: str
) -> None:
    plan = stack.plan([candidate], shadow=100)
    store_url = stack.redis.url.rsplit("/", 1)[0] + f"/{db}"
    with serve(stack.root / f"rollout-{candidate}", plan, "--flag-store", store_url) as router:
        out = asyncio.run(
            gated_rollout(router, store_url, Plan.model_validate(plan), candidate, GATE, PROMPTS, SERVED_NAME)
        )
    print(f"\n{candidate}: {out.action} {out.reason}; diverted to the baseline: {out.diverted}")
    assert out.statuses == [200] * len(out.statuses)
    assert out.pools.count(candidate) == out.candidate_requests == 6, out.diverted
    assert out.shadow["pairs"] == len(PROMPTS) and out.shadow["dropped"] == 0
    assert out.rollout == phase
    if phase == "aborted":
        assert (out.weight, out.killed) == (0, True)
        assert out.audit_action == "rollout:abort" and "shadow_agreement candidate" in out.audit_reason
    else:
        assert (out.weight, out.killed) == (100, False)
        assert out.audit_action == "rollout:complete" and "shadow_agreement" in out.audit_reason


def test_kvplan_eval_ranks_int8_above_int4_against_bf16(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve(stack.root / "eval", stack.plan([INT8, INT4])) as router:
        run = subprocess.run(
            [sys.executable, "-m", "kvplan.cli", "eval", str(EXAMPLE), "--router", router.url,
             "--admin", router.admin_url, "--json",
             "--concurrency", "4", "--max-regression", "0.2"],
            capture_output=True, text=True, timeout=1200, cwd=ROOT,
            env={**os.environ, "KVPLAN_ADMIN_TOKEN": TOKEN},
        )  # fmt: skip
    report = json.loads(run.stdout)
    overall = report["tasks"][-1]
    with capsys.disabled():
        print(f"\nkvplan eval overall: {overall['scores']}; differences {overall['differences']}")
    assert report["ranking"] == [INT8, INT4]
    assert overall["scores"][INT8] > overall["scores"][INT4]
    assert overall["differences"][INT4]["high"] < 0  # INT4 is worse, and the interval says so
    # --max-regression 0.2: INT4 is more than 0.2 below the baseline, INT8 is not
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"regression: {INT4} below the baseline")
