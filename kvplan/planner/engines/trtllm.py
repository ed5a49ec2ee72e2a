"""TensorRT-LLM's paged KV cache, from its source (1.x; `tensorrt_llm/_torch/pyexecutor/_util.py`,
`cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp`).

PyTorch backend (the default since 1.0), `KvCacheCreator._cal_max_memory`: after the weights load
it runs a profiling forward of max_num_tokens with a small temporary cache, then

    available = (total - peak + temporary KV) x free_gpu_memory_fraction      (default 0.9)

(logged: "Peak memory during memory usage profiling (torch + non-torch): P GiB, available KV cache
memory when calculating max tokens: A GiB, fraction is set F, ... device total memory T GiB").
TensorRT-engine backend (`BaseKVCacheManager::calculateFreeMemBytes`): available = free memory
after the engine, runtime buffers and decoder load x fraction (logged: "Memory usage when
calculating max tokens in paged kv cache: total: T GiB, available: A GiB").
Blocks (`calculateMaxNumBlocks`): max tokens = floor(available / bytes per token), blocks =
ceil(max tokens / tokens_per_block) (default 32), logged as "Number of blocks in KV cache primary
pool: B" and "[MemUsageChange] Allocated X GiB for max tokens in paged KV cache (B x tpb)."
CUDA graphs are captured after the cache is allocated, out of the remaining 10%.

Bytes per token (`KVCacheManager.get_cache_size_per_token`): 2 x KV heads per rank x head_dim x
layers x element bytes (fp16/bf16 2, fp8 and int8 1); MLA: (kv_lora_rank + qk_rope_head_dim) x
layers; NVFP4: per layer ceil(n / 2) + ceil(n / 16) bytes for its n elements (an FP8 scale per 16).
INT8 KV exists only in the TensorRT-engine backend, NVFP4 only on Blackwell. A draft model's or
EAGLE-3/MTP layers' bytes per token are added (`_get_kv_size_per_token`).
"""

from __future__ import annotations

import math

from kvplan.errors import InputError, Unsupported
from kvplan.formats import ENGINE_KV_DTYPES
from kvplan.planner.engines.common import (
    EngineSizing,
    KVLayer,
    Replica,
    check_dtype,
    kv_layers,
    tokens_per_request,
)
from kvplan.planner.gpus import GIB, GpuSpec
from kvplan.planner.memory import estimate_activation_bytes
from kvplan.planner.models import ModelSpec

ENGINE = "trtllm"

# kv_cache_config.dtype (PyTorch backend) / kv_cache_quant_algo (TensorRT engines).
_MEANING = {
    "auto": "the model dtype (fp16/bf16)",
    "fp16": "FP16",
    "bf16": "BF16",
    "fp8": "FP8 E4M3, per-tensor scale",
    "int8": "INT8, per-tensor scale (TensorRT-engine backend only)",
    "nvfp4": "NVFP4: E2M1 + an FP8 scale per 16 values (Blackwell only)",
}
KV_DTYPES = {name: _MEANING[name] for name in ENGINE_KV_DTYPES[ENGINE]}
DEFAULT_DTYPES = ("auto", "fp8")

ARGS = {
    "free_gpu_memory_fraction": "kv_cache_config.free_gpu_memory_fraction (default 0.9)",
    "tokens_per_block": "kv_cache_config.tokens_per_block (default 32)",
    "max_num_tokens": "tokens of the profiling forward (default 8192)",
    "max_batch_size": "engine/runtime max batch (default 2048)",
    "max_seq_len": "engine max sequence length (default: --max-model-len)",
    "backend": "pytorch (default) or tensorrt (engines built with trtllm-build)",
    "max_tokens": "kv_cache_config.max_tokens cap",
    "total_gib": "logged device total memory (GiB)",
    "peak_gib": "logged peak memory during profiling (GiB)",
    "tmp_kv_gib": "logged temporary KV cache memory during profiling (GiB)",
    "available_gib": "logged 'available' memory (GiB): the TensorRT backend's, or the PyTorch "
    "backend's 'available KV cache memory when calculating max tokens'",
    "non_torch_gib": "CUDA context, NCCL and other non-torch memory (default 0.6 + 0.4 with TP)",
}


def layer_bytes(layer: KVLayer, tp: int, dtype: str) -> int:
    """One token, one layer, one rank (get_cache_size_per_token's per-layer size)."""
    elements = layer.k_elements(tp) + layer.v_elements(tp)
    if dtype in ("fp8", "int8"):
        return elements
    if dtype == "nvfp4":
        return math.ceil(elements / 2) + math.ceil(elements / 16)
    return elements * 2


def bytes_per_token(layers: tuple[KVLayer, ...], tp: int, dtype: str) -> int:
    return sum(layer_bytes(layer, tp, dtype) for layer in layers)


def blocks_for(available: int, per_token: int, tokens_per_block: int, max_tokens: int | None) -> int:
    """calculateMaxNumBlocks: floor(bytes / bytes per token) tokens, rounded up to whole blocks."""
    tokens = max(available, 0) // per_token
    if max_tokens is not None:
        tokens = min(tokens, max_tokens)
    return -(-tokens // tokens_per_block)


def _check_dtype(dtype: str, gpu: GpuSpec, backend: str) -> None:
    check_dtype(ENGINE, dtype, KV_DTYPES, hint=" (INT4 KV is not a TensorRT-LLM cache type)")
    if dtype == "int8" and backend != "tensorrt":
        raise Unsupported(
            "TensorRT-LLM's PyTorch backend stores KV as fp16/bf16, fp8 or nvfp4; int8 KV needs a "
            "TensorRT engine (trtllm-build): pass --engine-arg backend=tensorrt"
        )
    if dtype == "nvfp4" and not gpu.name.startswith(("b", "gb")):
        raise Unsupported(f"nvfp4 KV needs a Blackwell GPU (B200/GB200 class); {gpu.name} has no FP4 KV path")
    if dtype == "fp8" and not gpu.fp8_supported:
        raise Unsupported(f"fp8 KV needs FP8 hardware (Ada, Hopper, Blackwell); {gpu.name} has none")


def size(model: ModelSpec, gpu: GpuSpec, dtype: str, r: Replica) -> EngineSizing:
    """TensorRT-LLM's KV blocks for `model` on `gpu` and what they hold at max_model_len."""
    r.args.check(ENGINE, ARGS)
    backend = r.args.values.get("backend", "pytorch")
    if backend not in ("pytorch", "tensorrt"):
        raise InputError(f"--engine-arg backend must be pytorch or tensorrt, got {backend!r}")
    _check_dtype(dtype, gpu, backend)
    if r.draft is not None and r.draft.kv_dtype not in (None, dtype):
        raise Unsupported(
            "TensorRT-LLM keeps the draft's KV in the target's cache dtype; drop --draft-kv-format"
        )
    tp, pp = r.tensor_parallel, r.pipeline_parallel
    ranks = tp * pp
    fraction = r.args.number("free_gpu_memory_fraction", 0.9) or 0.9
    if not 0 < fraction < 1:
        raise InputError(f"free_gpu_memory_fraction must be in (0, 1), got {fraction}")
    tpb = r.args.integer("tokens_per_block", 32) or 32
    max_num_tokens = r.args.integer("max_num_tokens", 8192) or 8192
    max_batch = r.args.integer("max_batch_size", 2048) or 2048
    max_seq_len = r.args.integer("max_seq_len", r.max_model_len) or r.max_model_len
    if max_seq_len < r.max_model_len:
        raise InputError(f"max_seq_len {max_seq_len} is below --max-model-len {r.max_model_len}")

    layers = kv_layers(model, pp, ENGINE)
    target = bytes_per_token(layers, tp, dtype)
    drafted = 0 if r.draft is None else bytes_per_token(r.draft.layers, tp, dtype)
    per_token = target + drafted
    weights = math.ceil(r.weight_bytes / ranks) + (
        0 if r.draft is None else math.ceil(r.draft.weight_bytes / ranks)
    )
    act = r.activation_bytes
    if act is None:
        act = estimate_activation_bytes(model, tp, max_num_tokens, max_num_seqs=0)
    non_torch = r.args.gib("non_torch_gib")
    if non_torch is None:
        non_torch = round((0.6 + (0.4 if ranks > 1 else 0)) * GIB)
    total = r.args.gib("total_gib") or gpu.visible_memory_bytes
    log: list[str] = []
    logged_available = r.args.gib("available_gib")
    if backend == "tensorrt":
        free = logged_available if logged_available is not None else total - weights - act - non_torch
        available = int(free * fraction)
        log.append(
            "Memory usage when calculating max tokens in paged kv cache: "
            f"total: {total / GIB:.2f} GiB, available: {free / GIB:.2f} GiB"
        )
    elif logged_available is not None:
        available = logged_available  # the PyTorch line logs the budget after the fraction
    else:
        peak = r.args.gib("peak_gib")
        tmp = r.args.gib("tmp_kv_gib") or 0
        if peak is None:
            peak = weights + act + non_torch + tmp
        available = int((total - peak + tmp) * fraction)
        log.append(
            f"Peak memory during memory usage profiling (torch + non-torch): {peak / GIB:.2f} GiB, "
            f"available KV cache memory when calculating max tokens: {available / GIB:.2f} GiB, "
            f"fraction is set {fraction}, kv size per token is {per_token}. device total memory "
            f"{total / GIB:.2f} GiB, temporary kv cache memory during profiling {tmp / GIB:.2f} GiB"
        )
    blocks = blocks_for(available, per_token, tpb, r.args.integer("max_tokens"))
    kv_tokens = blocks * tpb
    kv_bytes = kv_tokens * per_token
    log += [
        f"Number of blocks in KV cache primary pool: {blocks}",
        f"Number of tokens per block: {tpb}.",
        f"[MemUsageChange] Allocated {kv_bytes / GIB:.2f} GiB for max tokens in paged KV cache "
        f"({kv_tokens}).",
    ]
    per_request = tokens_per_request(r.max_model_len, tpb, r.budget)
    max_requests = min(kv_tokens // per_request, max_batch) if per_request else 0
    notes = [f"{backend} backend, free_gpu_memory_fraction {fraction}, tokens_per_block {tpb}"]
    if r.budget is not None and r.budget.kind == "window":
        notes.append(
            "TensorRT-LLM runs this window natively: kv_cache_config max_attention_window="
            f"[{r.budget.tokens}], sink_token_length={r.budget.sink}"
        )
    if kv_tokens < max_seq_len:
        notes.append(
            f"the cache holds {kv_tokens:,} tokens, below max_seq_len {max_seq_len:,}: TensorRT-LLM "
            "lowers max_seq_len (and the attention window) to fit"
        )
    memory = (
        ("total", total),
        ("weights", weights),
        ("activation_peak", act),
        ("non_torch", non_torch),
        ("kv_budget", available),
        ("kv_pool", kv_bytes),
    )
    return EngineSizing(
        engine=ENGINE,
        kv_dtype=dtype,
        max_model_len=r.max_model_len,
        tensor_parallel=tp,
        bytes_per_token=per_token,
        draft_bytes_per_token=drafted,
        kv_bytes=kv_bytes,
        kv_tokens=kv_tokens,
        page_tokens=tpb,
        tokens_per_request=per_request,
        max_requests=max_requests,
        running_limit=max_batch,
        fits=available > 0 and kv_tokens >= per_request,
        memory=memory,
        log=tuple(log),
        notes=tuple(notes),
        budget=r.budget,
        draft=r.draft,
    )
