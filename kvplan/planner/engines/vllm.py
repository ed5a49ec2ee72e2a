"""vLLM with a speculative draft or a window/eviction what-if, on the planner's own vLLM arithmetic
(`kvplan.planner.memory.kv_capacity`; this module only feeds it).

A draft in vLLM v1 (`vllm/v1/spec_decode/`: EAGLE/EAGLE-3/MTP heads or a draft model) is loaded
before the memory profile, so its weights count against the KV budget, and its attention layers
join the KV cache config as more layers: each request holds blocks in the draft's layers too. So
the model sized here is the target's layer specs followed by the draft's, with both weights. A
budget of B tokens per request is sized as vLLM would size requests of B tokens.
"""

from __future__ import annotations

from dataclasses import replace

from kvplan.errors import InputError, Unsupported
from kvplan.formats import FORMATS, get_format
from kvplan.planner.engines.common import (
    Draft,
    EngineSizing,
    Replica,
    ceil_to,
    check_dtype,
)
from kvplan.planner.gpus import GpuSpec
from kvplan.planner.memory import Capacity, engine_defaults, kv_capacity
from kvplan.planner.models import ModelSpec

ENGINE = "vllm"
KV_DTYPES = FORMATS
DEFAULT_DTYPES = ("bf16", "fp8_e4m3", "int8", "int4")
ARGS = {
    "gpu_memory_utilization": "vLLM --gpu-memory-utilization (default: the version's)",
    "block_size": "vLLM --block-size (default 16)",
}


def with_draft(model: ModelSpec, weight_bytes: int, draft: Draft) -> ModelSpec:
    """The target followed by the draft's layers, both weights (EAGLE heads attend like the
    target's last layer; a draft model brings its own layer specs)."""
    specs = draft.model.layer_specs if draft.model is not None else model.layer_specs[-1:] * len(draft.layers)
    return replace(
        model,
        layers=model.layers + len(specs),
        layer_specs=(*model.layer_specs, *specs),
        weight_bytes=weight_bytes + draft.weight_bytes,
    )


def size(model: ModelSpec, gpu: GpuSpec, dtype: str, r: Replica) -> EngineSizing:
    r.args.check(ENGINE, ARGS)
    check_dtype(ENGINE, dtype, KV_DTYPES)
    if r.draft is not None and r.draft.kv_dtype not in (None, dtype):
        raise Unsupported(
            "vLLM keeps the draft's KV in the target's --kv-cache-dtype; drop --draft-kv-format"
        )
    if r.draft is not None and r.pipeline_parallel != 1:
        raise InputError("a speculative draft is sized at --pp 1 (vLLM runs it on the last stage)")
    alone = replace(model, weight_bytes=r.weight_bytes)
    sized = alone if r.draft is None else with_draft(model, r.weight_bytes, r.draft)
    fmt = get_format(dtype)

    def capacity(m: ModelSpec, length: int) -> Capacity:
        return kv_capacity(
            m, gpu, fmt, max_model_len=length, tensor_parallel=r.tensor_parallel,
            pipeline_parallel=r.pipeline_parallel, weight_dtype="auto",
            gpu_memory_utilization=r.args.number("gpu_memory_utilization"),
            block_size=r.args.integer("block_size", 16) or 16,
        )  # fmt: skip

    cap = capacity(sized, r.max_model_len)
    held = r.budget.held(r.max_model_len) if r.budget else r.max_model_len
    at_held = cap if held == r.max_model_len else capacity(sized, held)
    running = engine_defaults(gpu).max_num_seqs
    notes = [f"vLLM {cap.vllm_version}: block_size {cap.block_size}"]
    if r.budget is not None:
        notes.append("vLLM has no windowed/evicting cache for full attention: the budget is a what-if")
    if r.draft is not None:
        notes.append(
            f"draft layers join the KV cache: {len(sized.layer_specs) - len(model.layer_specs)} more"
        )
    memory = (
        ("requested", cap.requested_bytes),
        ("weights", cap.weights_bytes),
        ("activation", cap.activation_bytes),
        ("non_torch", cap.non_torch_bytes),
        ("cuda_graphs", cap.cuda_graph_bytes),
        ("kv_pool", cap.available_kv_bytes),
    )
    drafted = (
        0.0 if r.draft is None else cap.bytes_per_token - capacity(alone, r.max_model_len).bytes_per_token
    )
    from kvplan.planner.sizing import log_lines

    return EngineSizing(
        engine=ENGINE,
        kv_dtype=dtype,
        max_model_len=r.max_model_len,
        tensor_parallel=r.tensor_parallel,
        bytes_per_token=cap.bytes_per_token,
        draft_bytes_per_token=drafted,
        kv_bytes=max(cap.available_kv_bytes, 0),
        kv_tokens=cap.kv_tokens,
        page_tokens=cap.block_size,
        tokens_per_request=ceil_to(held, cap.block_size),
        max_requests=min(at_held.guaranteed_concurrency, running),
        running_limit=running,
        fits=at_held.fits and at_held.guaranteed_concurrency > 0,
        memory=memory,
        log=tuple(log_lines(cap)),
        notes=tuple(notes),
        budget=r.budget,
        draft=r.draft,
    )
