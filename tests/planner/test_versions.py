"""--vllm-version picks the memory-model terms and log formulas of that release (read from each
release's source: kvplan/planner/vllm_versions.py says where)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from kvplan.errors import InputError
from kvplan.formats import get_format
from kvplan.planner.gpus import GIB, GPUS
from kvplan.planner.memory import kv_capacity
from kvplan.planner.models import get_model
from kvplan.planner.vllm_versions import DEFAULT_VERSION, get_version

BF16 = get_format("bf16")
H100 = GPUS["h100"]
KVPLAN = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kvplan"


def cap(model: str, version: str, **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {"max_model_len": 32768, **kw}
    return kv_capacity(get_model(model), H100, BF16, vllm_version=version, **args)  # type: ignore[arg-type]


def test_version_names_parse_and_unknown_ones_are_refused() -> None:
    assert get_version(None).name == DEFAULT_VERSION == "0.33"
    assert get_version("v0.11.2").name == get_version("0.11").name == "0.11"
    for bad in ("0.35", "1.0", "latest-ish", "0"):
        with pytest.raises(InputError, match="vllm-version"):
            get_version(bad)


def test_utilization_default_and_cuda_graphs_changed_at_0_20() -> None:
    old, new = cap("llama-3.1-8b", "0.19"), cap("llama-3.1-8b", "0.20")
    assert (old.gpu_memory_utilization, new.gpu_memory_utilization) == (0.9, 0.92)
    assert old.cuda_graph_bytes == 0 < new.cuda_graph_bytes
    assert old.requested_bytes == math.ceil(H100.visible_memory_bytes * 0.9)


def test_the_logged_token_formula_of_hybrid_models_changed_at_0_20() -> None:
    kv = {"kv_memory_bytes": 20 * GIB}
    old, new = cap("gemma-3-27b", "0.19", **kv), cap("gemma-3-27b", "0.20", **kv)
    assert old.num_blocks == new.num_blocks
    # up to 0.19: num_blocks // groups x block size (vllm-project/vllm#40691 reports the gap)
    assert old.kv_tokens == old.num_blocks // len(old.groups) * 16
    assert new.kv_tokens == int(new.num_blocks / new.blocks_per_request * 32768)


def test_windows_hold_two_batches_in_flight_from_0_26() -> None:
    kv = {"kv_memory_bytes": 20 * GIB, "max_model_len": 65536}
    old, new = cap("mistral-7b-v0.1", "0.25", **kv), cap("mistral-7b-v0.1", "0.26", **kv)
    assert old.blocks_per_request == math.ceil((4096 - 1 + 8192) / 16) + 1
    assert new.blocks_per_request == math.ceil((4096 - 1 + 2 * 8192) / 16) + 1


def test_chunked_local_attention_joined_the_hybrid_manager_at_0_14() -> None:
    kv = {"kv_memory_bytes": 40 * GIB, "max_model_len": 131072}
    old, new = cap("llama-4-scout-17b-16e", "0.13", **kv), cap("llama-4-scout-17b-16e", "0.14", **kv)
    assert len(old.groups) == 1 and old.blocks_per_request == 131072 // 16  # every layer cached in full
    # 3 chunked groups of 12 layers hold 8192 + in-flight tokens, the global group all of them
    assert len(new.groups) == 4 and new.page_bytes == old.page_bytes // 4
    assert new.kv_bytes_needed < old.kv_bytes_needed / 2


def test_mamba_state_blocks_per_version() -> None:
    kv = {"kv_memory_bytes": 20 * GIB}
    b14, b15 = cap("jamba-mini-1.7", "0.14", **kv), cap("jamba-mini-1.7", "0.15", **kv)
    assert b15.blocks_per_request - b14.blocks_per_request == len(b15.groups) - 1  # 2 blocks per state
    n31, n32 = cap("nemotron-nano-9b-v2", "0.31", **kv), cap("nemotron-nano-9b-v2", "0.32", **kv)
    assert n32.blocks_per_request - n31.blocks_per_request == len(n32.groups) - 1  # Mamba2 checkpoint


def test_the_null_block_joined_the_startup_check_at_0_30() -> None:
    need = 32768 * 128 * 1024  # one 32K request of Llama-3.1-8B in bf16
    assert cap("llama-3.1-8b", "0.29", kv_memory_bytes=need).fits
    assert not cap("llama-3.1-8b", "0.30", kv_memory_bytes=need).fits


def test_json_says_which_assumptions_were_made() -> None:
    run = subprocess.run([str(KVPLAN), "size", "llama-3.1-8b", "--vllm-version", "0.11", "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    doc = json.loads(run.stdout)
    assert doc["schema"] == "kvplan.size/v1" and doc["vllm_version"] == "0.11"
    assert doc["config"]["gpu_memory_utilization"] == 0.9
    assert any("not part of the KV budget" in a for a in doc["assumptions"])
    assert doc["memory_per_gpu"]["cuda_graph_bytes"] == 0
    bad = subprocess.run([str(KVPLAN), "size", "llama-3.1-8b", "--vllm-version", "0.99"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
