"""SGLang's KV token pool, from its source (sglang 0.5.23, `python/sglang/srt/`).

Budget (`mem_cache/kv_cache_configurator.py`, `KVCacheConfigurator._profile_available_bytes`):

    pre  = free GPU memory before the weights load      (logged: "Load weight begin. avail mem=X GB")
    post = free GPU memory after target + draft weights  (logged: "Load weight end. ... avail mem=Y GB")
    rest = post - pre x (1 - mem_fraction_static)        (GiB; SGLang's "GB" are 2^30 bytes)
    max_total_num_tokens = int(rest x 2^30) // cell_size, floored to page_size

so `mem_fraction_static` of the memory free at start covers weights + KV pool, and the rest is
left for activations and CUDA graphs. Cell size (`model_executor/pool_configurator.py`,
`DefaultPoolConfigurator._compute_cell_size`): KV heads per rank x (head_dim + v_head_dim) x
layers x element bytes; MLA: (kv_lora_rank + qk_rope_head_dim) x layers x element bytes, on every
rank; mxfp8 adds one scale byte per 32 elements; the FP4 recipes store 4-bit data + one FP8 scale
per 16 elements. Hybrid sliding-window models (`HybridSWAPoolConfigurator`): cell = full-layer
bytes + swa_full_tokens_ratio (0.8) x SWA-layer bytes, full tokens = that count, SWA tokens =
0.8 x full. EAGLE/MTP heads and standalone drafts add int(cell x draft_layers / layers)
(SGLang assumes the draft has the target's per-layer size).

Default mem_fraction_static (`arg_groups/memory_hook.py`, `handle_gpu_memory_settings`): from the
GPU's nvidia-smi total (MiB), reserved = max(512 + 1.5 x max(chunked_prefill_size, 2048)
+ tp x pp / 8 x 1024 + CUDA-graph reserve, 10240 on GPUs over 60 GB), fraction =
round((total - reserved) / total, 3). Older releases used a table by TP (0.88 at TP 1); SGLang logs
the value it used in `server_args=ServerArgs(... mem_fraction_static=...)`: pass it with
`--engine-arg mem_fraction_static=0.88` to reproduce a log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvplan.errors import InputError, Unsupported
from kvplan.formats import ENGINE_KV_DTYPES
from kvplan.planner.engines.common import (
    MIB,
    Draft,
    EngineArgs,
    EngineSizing,
    KVLayer,
    Replica,
    check_dtype,
    kv_layers,
    tokens_per_request,
)
from kvplan.planner.gpus import GIB, GpuSpec
from kvplan.planner.models import ModelSpec

ENGINE = "sglang"
VERSION = "0.5.23"

# --kv-cache-dtype choices (arg_groups/fields/model.py, names in kvplan.formats): bytes per element,
# scale bytes per element.
_ELEMENT: dict[str, tuple[float, float]] = {
    "auto": (2, 0),  # the model dtype (bf16/fp16 checkpoints)
    "bf16": (2, 0),
    "bfloat16": (2, 0),
    "fp8_e4m3": (1, 0),
    "fp8_e5m2": (1, 0),
    "mxfp8": (1, 1 / 32),
    "nvfp4": (0.5, 1 / 16),
    "fp4_mx_block16": (0.5, 1 / 16),
}
KV_DTYPES = {name: _ELEMENT[name] for name in ENGINE_KV_DTYPES[ENGINE]}
DEFAULT_DTYPES = ("auto", "fp8_e4m3")
FP4_DTYPES = ("nvfp4", "fp4_mx_block16")

ARGS = {
    "mem_fraction_static": "fraction of start-up free memory for weights + KV (default: SGLang's rule)",
    "page_size": "tokens per page (default 1)",
    "chunked_prefill_size": "prefill chunk (default by GPU memory: 2048/4096/8192/16384)",
    "cuda_graph_max_bs": "decode CUDA-graph max batch (default by GPU memory and TP)",
    "disable_cuda_graph": "true: no CUDA-graph reserve",
    "swa_full_tokens_ratio": "SWA tokens / full tokens for hybrid sliding-window models (default 0.8)",
    "pre_load_gib": "logged 'Load weight begin. avail mem' (GB as SGLang prints it)",
    "post_load_gib": "logged 'Load weight end. ... avail mem' (GB)",
    "context_gib": "memory taken before the weights load: CUDA context, NCCL (default 0.5 GiB, 2.5 with TP)",
    "max_running_requests": "SGLang --max-running-requests",
}


def smi_total_mib(gpu: GpuSpec) -> float:
    """What nvidia-smi reports as memory.total: SGLang's GPU size. The catalog holds CUDA's visible
    total; the driver keeps about 1.1% more back on Hopper (H100 80GB: 81,559 MiB vs 81,080 MiB
    visible). Estimate: visible / 0.9941, the H100's measured ratio."""
    return gpu.visible_memory_bytes / MIB / 0.9941


def _prefill_graph_sizes(max_bs: int) -> int:
    """How many prefill token counts SGLang captures (cuda_graph_hook.py,
    generate_prefill_cuda_graph_batch_sizes)."""
    sizes = [
        *range(4, 33, 4),
        *range(48, 257, 16),
        *range(288, 513, 32),
        *range(576, 1025, 64),
        *range(1280, 4097, 256),
        *range(4608, max_bs + 1, 512),
    ]
    return sum(s <= max_bs for s in sizes)


@dataclass(frozen=True)
class Defaults:
    chunked_prefill_size: int
    cuda_graph_max_bs: int
    mem_fraction_static: float
    reserved_mib: float


def defaults(gpu_mib: float, tp: int, pp: int, mla: bool, args: EngineArgs) -> Defaults:
    """SGLang's GPU-size defaults (memory_hook.py, handle_gpu_memory_settings)."""
    if gpu_mib < 20 * 1024:
        chunk, bs = 2048, 8
    elif gpu_mib < 35 * 1024:
        chunk, bs = 4096, 48 if tp < 4 else 160
    elif gpu_mib < 60 * 1024:
        chunk, bs = 4096, 32 if tp < 4 else 160
    elif gpu_mib < 160 * 1024:
        chunk, bs = 8192, 256 if tp < 4 else 512
    else:
        chunk, bs = 16384, 512
    chunk = args.integer("chunked_prefill_size", chunk) or chunk
    bs = args.integer("cuda_graph_max_bs", bs) or bs
    reserved = 512 + max(chunk, 2048) * 1.5 + tp * pp / 8 * 1024
    if not args.flag("disable_cuda_graph"):
        # reserve_for_graph_mb: decode graphs 2 MiB per batch slot; breakable prefill graphs 8 MiB
        # per captured size (1.5 GiB for MLA backends), on CUDA by default.
        reserved += bs * 2 + (
            1.5 * 1024 if mla else _prefill_graph_sizes(min(chunk, 8192) if mla else chunk) * 8
        )
    if gpu_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    fraction = round((gpu_mib - reserved) / gpu_mib, 3)
    fraction = args.number("mem_fraction_static", fraction) or fraction
    if not 0 < fraction < 1:
        raise InputError(f"mem_fraction_static must be in (0, 1), got {fraction}")
    return Defaults(chunk, bs, fraction, reserved)


def _layer_bytes(layer: KVLayer, tp: int, dtype: str) -> float:
    """Bytes one token takes in one layer on one rank (_compute_cell_size's per-layer term)."""
    element, scale = KV_DTYPES[dtype]
    elements = layer.k_elements(tp) + layer.v_elements(tp)
    data = elements * element
    if dtype == "mxfp8":
        return data + elements // 32
    if dtype in FP4_DTYPES:
        return data + elements // 16
    return data + elements * scale


@dataclass(frozen=True)
class Cell:
    """Bytes per token slot: full-attention layers, SWA layers, and the draft's share."""

    full: float
    swa: float
    draft: float
    swa_ratio: float

    @property
    def hybrid(self) -> bool:
        return self.full > 0 and self.swa > 0

    @property
    def size(self) -> float:
        if self.hybrid:
            return self.full + self.swa_ratio * self.swa + self.draft
        return self.full + self.swa + self.draft


def cell_size(
    layers: tuple[KVLayer, ...], tp: int, dtype: str, draft: Draft | None, swa_ratio: float
) -> Cell:
    windows = {layer.window for layer in layers}
    if None not in windows:
        raise Unsupported(
            "every layer of this model uses a sliding window; SGLang's pool for such models "
            "(all-SWA) is not modelled by kvplan: size it with --engine vllm or --engine trtllm"
        )
    full = sum(_layer_bytes(layer, tp, dtype) for layer in layers if layer.window is None)
    swa = sum(_layer_bytes(layer, tp, dtype) for layer in layers if layer.window is not None)
    extra = 0.0
    if draft is not None:
        # DefaultPoolConfigurator: "assumes the draft shares the target's per-layer KV size".
        extra = int((full + swa) * len(draft.layers) / len(layers))
    return Cell(full, swa, extra, swa_ratio)


def max_total_num_tokens(rest_bytes: int, cell: Cell, page_size: int) -> tuple[int, int]:
    """(full-layer tokens, SWA-layer tokens) from the pool budget (calculate_pool_sizes)."""
    tokens = int(max(rest_bytes, 0) // cell.size)
    full = tokens // page_size * page_size
    swa = int(full * cell.swa_ratio) // page_size * page_size if cell.hybrid else 0
    return full, swa


def max_running_requests(tokens: int, context_len: int, given: int | None) -> int:
    """resolve_max_num_reqs: about 512 per full context of tokens, clamped to 2048..4096, at most
    tokens / 2."""
    if given is not None:
        return min(max(1, given), tokens // 2)
    estimated = max(min(int(tokens / context_len * 512), 4096), 2048)
    return min(estimated, tokens // 2)


def size(model: ModelSpec, gpu: GpuSpec, dtype: str, r: Replica) -> EngineSizing:
    """SGLang's max_total_num_tokens for `model` on `gpu`, and what it holds at max_model_len."""
    r.args.check(ENGINE, ARGS)
    check_dtype(ENGINE, dtype, KV_DTYPES)
    if r.draft is not None and r.draft.kv_dtype is not None:
        check_dtype(ENGINE, r.draft.kv_dtype, KV_DTYPES)
    notes: list[str] = []
    if dtype in FP4_DTYPES:
        notes.append(
            f"{dtype}: 4-bit data + one FP8 scale per 16 values (SM100/SM120, CUDA 12.8+); attention "
            "backends that also keep a second scale layout or a dequant workspace take more"
        )
    tp, pp = r.tensor_parallel, r.pipeline_parallel
    ranks = tp * pp
    smi = smi_total_mib(gpu)
    d = defaults(smi, tp, pp, model.is_mla, r.args)
    page = r.args.integer("page_size", 1) or 1
    swa_ratio = r.args.number("swa_full_tokens_ratio", 0.8) or 0.8
    layers = kv_layers(model, pp, ENGINE)
    cell = cell_size(layers, tp, dtype, r.draft, swa_ratio)

    draft_weights = 0 if r.draft is None else math.ceil(r.draft.weight_bytes / ranks)
    weights = math.ceil(r.weight_bytes / ranks) + draft_weights
    pre = r.args.gib("pre_load_gib")
    post = r.args.gib("post_load_gib")
    if pre is None:
        context = r.args.gib("context_gib")
        if context is None:
            # CUDA context alone at TP 1; with TP, NCCL and custom all-reduce buffers too: 8 x H200 at
            # TP 8 logged "Load weight begin. avail mem=137.29 GB" of 139.80 (sgl-project/sglang#11716).
            context = round((0.5 if ranks == 1 else 2.5) * GIB)
        pre = gpu.visible_memory_bytes - context
    if post is None:
        post = pre - weights
    rest = (post / GIB - pre / GIB * (1 - d.mem_fraction_static)) * GIB
    full, swa = max_total_num_tokens(int(rest), cell, page)
    context_len = r.max_model_len
    running = max_running_requests(full, context_len, r.args.integer("max_running_requests"))
    per_request = tokens_per_request(r.max_model_len, page, r.budget)
    # A request needs its tokens in the full pool; in a hybrid pool the SWA layers keep only the
    # window (the SWA pool of 0.8 x full tokens is sized so that is not the limit).
    max_requests = min(full // per_request, running) if per_request else 0
    kv_bytes = round(full * (cell.full + cell.draft) + swa * cell.swa)
    fits = rest > 0 and full >= per_request
    if rest <= 0:
        need = 1 - (post / GIB) / (pre / GIB)
        notes.append(
            f"loaded weights leave no memory for the KV pool at mem_fraction_static="
            f"{d.mem_fraction_static}: SGLang refuses to start (needs above {math.ceil(need * 1000) / 1000})"
        )
    if r.draft is not None and r.draft.kv_dtype not in (None, dtype):
        notes.append(
            f"draft KV in {r.draft.kv_dtype}: SGLang still counts the draft at the target's bytes per "
            "token; the saving is free memory (raise mem_fraction_static to turn it into tokens)"
        )
    log = [
        f"Load weight begin. avail mem={pre / GIB:.2f} GB",
        f"Load weight end. avail mem={post / GIB:.2f} GB, mem usage={(pre - post) / GIB:.2f} GB.",
    ]
    if cell.hybrid:
        log.append(f"Use sliding window memory pool. full_layer_tokens={full}, swa_layer_tokens={swa}")
    k_bytes = sum(_layer_bytes(la, tp, dtype) * la.k_dim / (la.k_dim + la.v_dim) for la in layers)
    if not cell.hybrid:
        rows = full + page  # the pool keeps page_size padding slots (memory_pool.py, size + page_size)
        log.append(
            f"KV Cache is allocated. #tokens: {full}, K size: {rows * k_bytes / GIB:.2f} GB, "
            f"V size: {rows * (cell.full - k_bytes) / GIB:.2f} GB"
        )
    log.append(
        f"max_total_num_tokens={full}, chunked_prefill_size={d.chunked_prefill_size}, "
        f"max_running_requests={running}, context_len={context_len}"
    )
    memory = (
        ("free_at_start", pre),
        ("weights", weights),
        ("draft_weights", draft_weights),
        ("kv_pool", kv_bytes),
        ("left_for_activation_and_graphs", round(pre * (1 - d.mem_fraction_static))),
    )
    notes.append(
        f"mem_fraction_static {d.mem_fraction_static} (SGLang {VERSION} rule: {d.reserved_mib:,.0f} MiB "
        f"reserved of {smi:,.0f} MiB); page_size {page}"
    )
    return EngineSizing(
        engine=ENGINE,
        kv_dtype=dtype,
        max_model_len=r.max_model_len,
        tensor_parallel=tp,
        bytes_per_token=cell.size,
        draft_bytes_per_token=cell.draft,
        kv_bytes=kv_bytes,
        kv_tokens=full,
        page_tokens=page,
        tokens_per_request=per_request,
        max_requests=max_requests,
        running_limit=running,
        fits=fits,
        memory=memory,
        log=tuple(log),
        notes=tuple(notes),
        budget=r.budget,
        draft=r.draft,
    )
