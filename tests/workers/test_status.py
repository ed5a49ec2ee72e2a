"""`workers status` against a server whose /metrics says what vLLM would: a block count that
matches the planner passes, one that does not is flagged (real HTTP, Python's own file server)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from kvplan.checkpoint import ensure_smollm2_checkpoint
from kvplan.plan import parse_plan
from kvplan.procs import free_port
from kvplan.vllm_command import Device
from kvplan.workers.status import replica_status


def cache_info(blocks: int) -> str:
    return (
        "# TYPE vllm:cache_config_info gauge\n"
        f'vllm:cache_config_info{{block_size="128",cache_dtype="auto",engine="0",'
        f'kv_cache_memory_bytes="268435456",kv_cache_size_tokens="{blocks * 128}",'
        f'num_gpu_blocks="{blocks}"}} 1.0\n'
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="smollm2"} 0.0\n'
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "health").write_text("ok")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    yield url, root
    proc.terminate()
    proc.wait(10)


def plan_for(fmt: str) -> object:
    pool = {"name": "p", "model": str(ensure_smollm2_checkpoint()), "kv_format": fmt, "max_model_len": 2048}
    return parse_plan(yaml.safe_dump({"buckets": [{"name": "b", "max_tokens": 2048, "baseline": pool}]}))


def test_matching_and_mismatching_block_counts(server: tuple[str, Path]) -> None:
    url, root = server
    plan = plan_for("int8")
    # int8 at head 64, block 128: 136 B/token-head -> 1,566,720 B per block over 30 layers x 3 heads
    (root / "metrics").write_text(cache_info(171))
    ok = replica_status(plan, "p", url, Device.CPU)  # type: ignore[arg-type]
    assert ok.healthy and ok.num_blocks == ok.predicted_blocks == 171 and ok.mismatch is None
    (root / "metrics").write_text(cache_info(170))
    bad = replica_status(plan, "p", url, Device.CPU)  # type: ignore[arg-type]
    assert bad.mismatch == "vLLM reports 170 blocks, kvplan predicts 171 for 268435456 B of KV"
    # the same memory as a bf16 pool on CPU is stored in fp32: 45 blocks
    fp32 = replica_status(plan_for("bf16"), "p", url, Device.CPU)  # type: ignore[arg-type]
    assert fp32.stored_as == "fp32" and fp32.predicted_blocks == 45


def test_a_server_without_metrics_is_an_error_not_a_crash(server: tuple[str, Path]) -> None:
    url, _ = server
    st = replica_status(plan_for("int8"), "p", url, Device.CPU)  # type: ignore[arg-type]
    assert st.healthy and st.error is not None and "cannot scrape /metrics" in st.error
