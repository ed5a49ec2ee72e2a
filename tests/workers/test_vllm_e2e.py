"""Real vLLM end to end on CPU: SmolLM2-135M-Instruct in a baseline pool (vLLM's own attention)
and a kvplan INT8 pool (kvplan's plugin), started by `kvplan workers up`, behind `kvplan serve`,
driven with the official openai client.

The servers take ~1-2 minutes to start on a 2-core machine, so one stack serves the module;
the restart test runs last because it kills a server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from support.waiting import poll
from workers_stack import (
    KV_MEMORY_BYTES,
    KVPLAN,
    MAX_MODEL_LEN,
    SERVED_NAME,
    Router,
    Workers,
    cohort_users,
    metric_sum,
    write_plan,
)
from workers_stack import PROMPTS as ALL_PROMPTS

from kvplan.checkpoint import ensure_smollm2_checkpoint
from kvplan.metric_names import vllm as vm
from kvplan.quality.compare import common_prefix

pytestmark = pytest.mark.vllm

BASELINE, CANDIDATE = "smol-bf16", "smol-int8"

PROMPTS = ALL_PROMPTS[:10]
AGREEMENT_TOKENS = 32


@dataclass
class Stack:
    workers: Workers
    router: Router
    model_dir: Path
    client: OpenAI
    users: dict[str, str]  # pool -> a cohort key the router sends there


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    model_dir = ensure_smollm2_checkpoint()
    root = tmp_path_factory.mktemp("vllm-e2e")
    plan = write_plan(root / "pools.yaml", model_dir, [(BASELINE, "bf16"), (CANDIDATE, "int8")])
    workers = Workers.up(plan, root / "run", [BASELINE, CANDIDATE])
    router: Router | None = None
    try:
        workers.wait_ready()
        router = Router.serve(workers.runtime_plan)
        base_user, cand_user = cohort_users()
        client = OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=300)
        yield Stack(workers, router, model_dir, client, {BASELINE: base_user, CANDIDATE: cand_user})
    finally:
        if router:
            router.stop()
        workers.stop()
    assert workers.proc.returncode == 0, workers.log.read_text()
    assert "draining and stopping" in workers.log.read_text()


def chat(s: Stack, pool: str, content: str, max_tokens: int = 24) -> tuple[str, str | None]:
    raw = s.client.chat.completions.with_raw_response.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
        temperature=0, user=s.users[pool],
    )  # fmt: skip
    return raw.parse().choices[0].message.content or "", raw.headers.get("x-kvplan-pool")


@pytest.mark.parametrize("pool", [BASELINE, CANDIDATE])
def test_chat_and_completion_streaming_and_not(stack: Stack, pool: str) -> None:
    text, served_by = chat(stack, pool, "What is the capital of France?")
    assert served_by == pool
    assert "Paris" in text

    with stack.client.chat.completions.with_streaming_response.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0, user=stack.users[pool], stream=True,
    ) as resp:  # fmt: skip
        assert resp.headers.get("x-kvplan-pool") == pool
        pieces = [c.choices[0].delta.content or "" for c in resp.parse() if c.choices]
    assert len(pieces) > 2  # really streamed, token by token
    assert "".join(pieces) == text  # greedy: the stream carries the same answer

    done = stack.client.completions.create(
        model=SERVED_NAME, prompt="The three primary colors are", max_tokens=24, temperature=0,
        user=stack.users[pool],
    )  # fmt: skip
    assert "red" in done.choices[0].text.lower()

    streamed = stack.client.completions.create(
        model=SERVED_NAME, prompt="The three primary colors are", max_tokens=24, temperature=0,
        user=stack.users[pool], stream=True,
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text


def test_greedy_agreement_int8_vs_baseline(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(stack.model_dir / "tokenizer.json"))

    def outputs(pool: str) -> list[list[int]]:
        with ThreadPoolExecutor(5) as ex:
            texts = list(ex.map(lambda p: chat(stack, pool, p, AGREEMENT_TOKENS), PROMPTS))
        assert all(served == pool for _, served in texts)
        return [tok.encode(t, add_special_tokens=False).ids for t, _ in texts]

    base, cand = outputs(BASELINE), outputs(CANDIDATE)
    identical = sum(a == b for a, b in zip(base, cand, strict=True))
    prefix = [common_prefix(a, b) / max(len(a), len(b), 1) for a, b in zip(base, cand, strict=True)]
    mean_prefix = sum(prefix) / len(prefix)
    with capsys.disabled():
        print(f"\nint8 vs baseline greedy agreement: {identical}/{len(PROMPTS)} identical, "
              f"mean common-prefix share {mean_prefix:.3f} ({AGREEMENT_TOKENS} tokens max)")  # fmt: skip
    # INT8 with a per-token-head scale is near lossless: most answers are token-identical.
    assert identical >= len(PROMPTS) // 2
    assert mean_prefix >= 0.7


def test_router_and_vllm_metrics_show_the_traffic(stack: Stack) -> None:
    endpoints = stack.workers.endpoints()
    before = {p: _vllm_successes(endpoints[p][0]) for p in (BASELINE, CANDIDATE)}
    router_before = httpx.get(f"{stack.router.admin_url}/metrics").text
    for pool in (BASELINE, CANDIDATE):
        for _ in range(2):
            chat(stack, pool, "Say hello.", max_tokens=4)
    router_after = httpx.get(f"{stack.router.admin_url}/metrics").text
    for pool in (BASELINE, CANDIDATE):
        name = "kvplan_router_requests_total"
        sent = metric_sum(router_after, name, pool=pool, outcome="ok") - metric_sum(
            router_before, name, pool=pool, outcome="ok"
        )
        assert sent == 2, pool
        assert _vllm_successes(endpoints[pool][0]) - before[pool] == 2, pool
        text = httpx.get(f"{endpoints[pool][0]}/metrics").text
        assert metric_sum(text, f"{vm.GENERATION_TOKENS}_total", model_name=SERVED_NAME) > 0


def _vllm_successes(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return metric_sum(text, f"{vm.REQUEST_SUCCESS}_total", model_name=SERVED_NAME)


def test_status_blocks_equal_kvplan_size_prediction(stack: Stack) -> None:
    run = subprocess.run(
        [KVPLAN, "workers", "status", "--run-dir", str(stack.workers.run_dir), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {r["pool"]: r for r in json.loads(run.stdout)}
    for pool in (BASELINE, CANDIDATE):
        r = rows[pool]
        assert r["healthy"] and r["mismatch"] is None and r["error"] is None, r
        assert r["num_blocks"] == r["predicted_blocks"] > 0
        assert r["kv_memory_bytes"] == KV_MEMORY_BYTES
    # A bf16 pool on CPU stores fp32 (vLLM's `auto` under --dtype float32); int8 via the plugin.
    assert rows[BASELINE]["stored_as"] == "fp32" and rows[CANDIDATE]["stored_as"] == "int8"

    size = subprocess.run(
        [KVPLAN, "size", str(stack.model_dir), "-k", "int8", "--json",
         "--block-size", str(rows[CANDIDATE]["block_size"]),
         "--kv-cache-memory-gib", str(KV_MEMORY_BYTES / 2**30), "--max-model-len", str(MAX_MODEL_LEN)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert size.returncode == 0, size.stderr
    (predicted,) = json.loads(size.stdout)["formats"]
    assert predicted["num_blocks"] == rows[CANDIDATE]["num_blocks"]
    assert predicted["kv_tokens"] == rows[CANDIDATE]["num_blocks"] * rows[CANDIDATE]["block_size"]


def test_crashed_server_is_restarted_and_republished(stack: Stack) -> None:
    """Runs last: SIGKILL the INT8 server's whole process group (engine core included)."""
    rep = next(r for r in stack.workers.state["replicas"] if r["pool"] == CANDIDATE)
    url = rep["url"]
    os.killpg(rep["pid"], signal.SIGKILL)
    poll(lambda: url not in stack.workers.endpoints().get(CANDIDATE, []), 30, "endpoint unpublished", 0.5)
    poll(
        lambda: url in stack.workers.endpoints().get(CANDIDATE, []), 600, "server restarted and healthy", 0.5
    )
    assert next(r for r in stack.workers.state["replicas"] if r["pool"] == CANDIDATE)["restarts"] == 1
    # the router re-reads the runtime plan and sends the candidate's cohort there again
    deadline = time.monotonic() + 60
    while True:
        try:
            text, served_by = chat(stack, CANDIDATE, "What is the capital of France?")
            if served_by == CANDIDATE:
                break
        except Exception:
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, "router never sent the cohort back to the restarted pool"
        time.sleep(1)
    assert "Paris" in text
