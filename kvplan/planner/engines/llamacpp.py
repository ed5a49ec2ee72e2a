"""llama.cpp's KV cache, compute buffer and offload, from its source (`src/llama-context.cpp`,
`src/llama-kv-cache.cpp`, `src/llama-kv-cache-iswa.cpp`, `src/llama-model.cpp`).

The cache is not sized from free memory: it is `n_ctx` cells (`-c`, padded to 256) of every layer,

    K bytes per layer = ggml_row_size(type_k, n_head_kv x head_dim_k) x cells
    V bytes per layer = ggml_row_size(type_v, n_head_kv x head_dim_v) x cells   (none for MLA)

with `--cache-type-k/-v` one of f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1 (a quantized V
cache needs flash attention). With `-np N` slots and no `--kv-unified`, each slot gets
n_ctx / N cells (padded to 256) in its own stream. Sliding-window layers keep
min(n_ctx_seq, n_swa (x N when unified) + n_ubatch) cells, padded to 256, unless `--swa-full`.
Offload (`-ngl`): layer i runs on the GPU when i >= n_layer + 1 - ngl (the output layer is index
n_layer; token embeddings stay on the CPU); its KV follows it unless `-nkvo`.
Printed (current wording, `llama_kv_cache::llama_kv_cache`):

    llama_kv_cache:      CUDA0 KV buffer size =   240.00 MiB
    llama_kv_cache: size =  240.00 MiB (  8192 cells,  30 layers,  1/1 seqs),
                    K (f16): 120.00 MiB, V (f16): 120.00 MiB          (one line)

older builds printed the same figure as "KV self size = X MiB, K (f16): ..., V (f16): ...".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kvplan.errors import InputError, Unsupported
from kvplan.planner.engines.common import (
    MIB,
    EngineSizing,
    KVLayer,
    Replica,
    check_dtype,
    kv_layers,
)
from kvplan.planner.engines.ggml import CACHE_TYPES, ggml_type
from kvplan.planner.engines.gguf import ArrayLength, GgufFile, TensorInfo
from kvplan.planner.gpus import GIB, GpuSpec
from kvplan.planner.models import ModelSpec, spec_from_config

ENGINE = "llamacpp"
KV_DTYPES = {t: ggml_type(t) for t in CACHE_TYPES}
DEFAULT_DTYPES = ("f16", "q8_0", "q4_0")
PAD = 256  # n_ctx and the SWA cache are padded to 256 cells

ARGS = {
    "n_ctx": "-c: total context cells (default: --max-model-len x parallel)",
    "parallel": "-np: slots (default 1)",
    "kv_unified": "--kv-unified: one stream shared by all slots (default false)",
    "n_ubatch": "-ub (default 512)",
    "swa_full": "--swa-full: full-size cache for sliding-window layers",
    "n_gpu_layers": "-ngl (default: all)",
    "no_kv_offload": "-nkvo: keep the KV cache in host memory",
    "flash_attn": "-fa on/off (default on; a quantized V cache needs it)",
    "compute_mib": "the compute buffer llama.cpp printed (MiB), instead of kvplan's estimate",
    "weight_bpw": "bits per weight of the quantized weights, for a config.json/catalog model",
}


def split_cache_type(dtype: str) -> tuple[str, str]:
    """`q8_0` (K and V) or `q8_0/q4_0` (K q8_0, V q4_0)."""
    k, _, v = dtype.partition("/")
    return k, v or k


def kv_row_bytes(layer: KVLayer, type_k: str, type_v: str) -> tuple[int, int]:
    """(K, V) bytes of one cell of one layer: ggml_row_size of the layer's K and V embeddings."""
    k = ggml_type(type_k).row_bytes(layer.k_elements(1))
    v = 0 if layer.latent else ggml_type(type_v).row_bytes(layer.v_elements(1))
    return k, v


def _pad(n: int, to: int = PAD) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class Context:
    """llama_context's cells: n_ctx (total), n_ctx_seq (per slot) and streams."""

    n_ctx: int
    n_ctx_seq: int
    n_seq: int
    unified: bool
    n_ubatch: int
    swa_full: bool

    @property
    def streams(self) -> int:
        return 1 if self.unified else self.n_seq

    def cells(self, window: int | None) -> int:
        """Cells per stream of a layer (llama_kv_cache_iswa: the SWA cache is window-sized)."""
        if window is None or self.swa_full:
            return self.n_ctx_seq
        return _pad(min(self.n_ctx_seq, window * (self.n_seq if self.unified else 1) + self.n_ubatch))


def context(n_ctx: int, n_seq: int, unified: bool, n_ubatch: int, swa_full: bool) -> Context:
    """llama_context::llama_context: pad n_ctx to 256; per-slot cells padded to 256 again."""
    if n_ctx <= 0 or n_seq <= 0:
        raise InputError("n_ctx and parallel must be positive")
    n_ctx = _pad(n_ctx)
    if unified:
        seq = n_ctx
    else:
        seq = _pad(n_ctx // n_seq)
        n_ctx = seq * n_seq
    return Context(n_ctx, seq, n_seq, unified, min(n_ubatch, n_ctx), swa_full)


@dataclass(frozen=True)
class CacheSize:
    k_bytes: int
    v_bytes: int
    gpu_bytes: int  # the part in device memory
    cells: int  # cells per stream of the full-attention layers
    layers: int

    @property
    def total(self) -> int:
        return self.k_bytes + self.v_bytes


def cache_size(
    layers: tuple[KVLayer, ...], ctx: Context, type_k: str, type_v: str, gpu_layer: list[bool]
) -> CacheSize:
    k = v = gpu = 0
    for i, layer in enumerate(layers):
        cells = ctx.cells(layer.window) * ctx.streams
        kr, vr = kv_row_bytes(layer, type_k, type_v)
        k += kr * cells
        v += vr * cells
        if gpu_layer[i]:
            gpu += (kr + vr) * cells
    return CacheSize(k, v, gpu, ctx.n_ctx_seq, len(layers))


def gpu_layers(n_layer: int, ngl: int) -> list[bool]:
    """llama_model::load_tensors: layer i (0..n_layer, n_layer = output) is on the GPU when
    i >= max(n_layer + 1 - ngl, 0)."""
    start = max(n_layer + 1 - ngl, 0)
    return [i >= start for i in range(n_layer + 1)]


_BLOCK = re.compile(r"^blk\.(\d+)\.")


def weights_on_gpu(tensors: tuple[TensorInfo, ...], n_layer: int, on_gpu: list[bool]) -> tuple[int, int]:
    """(GPU bytes, host bytes) of the weights. Token embeddings stay on the host; a model without
    output.weight reuses token_embd for the output, duplicated on the output layer's device."""
    gpu = host = 0
    names = {t.name for t in tensors}
    for t in tensors:
        m = _BLOCK.match(t.name)
        index = int(m.group(1)) if m else (n_layer if t.name.startswith("output") else -1)
        on = index >= 0 and index < len(on_gpu) and on_gpu[index]
        if on:
            gpu += t.nbytes
        else:
            host += t.nbytes
        if t.name == "token_embd.weight" and "output.weight" not in names and on_gpu[n_layer]:
            gpu += t.nbytes
    return gpu, host


def compute_buffer_estimate(model: ModelSpec, ctx: Context, flash_attn: bool) -> int:
    """An estimate of the GPU compute buffer (ggml's graph allocator sizes it from the worst-case
    graph): logits of one ubatch in f32, plus the attention scores of one ubatch against the
    whole cache without flash attention, plus a few activations of n_ubatch x n_embd."""
    logits = ctx.n_ubatch * model.vocab_size * 4
    acts = 8 * ctx.n_ubatch * max(model.hidden_size, model.intermediate_size) * 4
    scores = 0 if flash_attn else ctx.n_ubatch * ctx.n_ctx_seq * model.num_attention_heads * 4
    return max(logits, acts + scores)


def model_from_gguf(g: GgufFile) -> ModelSpec:
    """A model spec from a GGUF header: llama.cpp's own hyper-parameter keys (`{arch}.block_count`,
    `.attention.head_count_kv`, `.attention.key_length`, `.attention.sliding_window`...)."""
    arch = g.architecture
    if not arch:
        raise InputError(f"{g.path}: GGUF has no general.architecture")

    def need(key: str) -> Any:
        value = g.arch_field(key)
        if value is None:
            raise Unsupported(f"{g.path}: GGUF has no {arch}.{key}; kvplan cannot size this {arch} model")
        return value

    layers = int(need("block_count"))
    heads = need("attention.head_count")
    kv = g.arch_field("attention.head_count_kv", heads)
    if isinstance(heads, list) or isinstance(kv, list):
        if len(set(kv if isinstance(kv, list) else [kv])) > 1 or 0 in (kv if isinstance(kv, list) else [kv]):
            raise Unsupported(
                f"{g.path}: per-layer KV head counts ({arch}.attention.head_count_kv) are not modelled"
            )
        heads = heads[0] if isinstance(heads, list) else heads
        kv = kv[0] if isinstance(kv, list) else kv
    hidden = int(need("embedding_length"))
    key_len = g.arch_field("attention.key_length")
    val_len = g.arch_field("attention.value_length")
    if key_len is not None and val_len is not None and key_len != val_len:
        raise Unsupported(f"{g.path}: K head size {key_len} != V head size {val_len} is not modelled")
    vocab = g.arch_field("vocab_size")
    if vocab is None:
        tokens = g.metadata.get("tokenizer.ggml.tokens")
        vocab = tokens.count if isinstance(tokens, ArrayLength) else len(tokens or [])
    if g.arch_field("attention.kv_lora_rank") is not None:
        raise Unsupported(f"{g.path}: MLA GGUF ({arch}) is not modelled for llama.cpp; use its config.json")
    if g.arch_field("ssm.d_state") is not None:
        raise Unsupported(f"{g.path}: recurrent (SSM) layers in {arch} are not modelled for llama.cpp")
    cfg: dict[str, Any] = {
        "model_type": arch,
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": int(heads),
        "num_key_value_heads": int(kv),
        "head_dim": int(key_len or hidden // int(heads)),
        "vocab_size": int(vocab),
        "intermediate_size": int(g.arch_field("feed_forward_length", 4 * hidden)),
        "max_position_embeddings": g.arch_field("context_length"),
    }
    window = g.arch_field("attention.sliding_window")
    if window:
        raise Unsupported(
            f"{g.path}: sliding-window GGUF ({arch}); its layer pattern is not read from GGUF by kvplan: "
            "size its config.json instead"
        )
    spec = spec_from_config(cfg, g.metadata.get("general.name") or arch, g.path)
    from dataclasses import replace

    return replace(spec, weight_bytes=g.weight_bytes, source=g.path)


def printf(fmt: str, *values: object) -> str:
    """C printf formatting, as llama.cpp's LLAMA_LOG_INFO lines use it (%7.2f, %6u, %10s)."""
    return fmt.replace("%u", "%d") % values


_KV_SIZE = "%s: size = %7.2f MiB (%6u cells, %3d layers, %2u/%u seqs), K (%s): %7.2f MiB, V (%s): %7.2f MiB"
_KV_BUFFER = "llama_kv_cache: %10s KV buffer size = %8.2f MiB"


def _kv_line(prefix: str, c: CacheSize, n_seq: int, streams: int, tk: str, tv: str) -> str:
    return printf(
        _KV_SIZE,
        prefix,
        c.total / MIB,
        c.cells,
        c.layers,
        n_seq,
        streams,
        tk,
        c.k_bytes / MIB,
        tv,
        c.v_bytes / MIB,
    )


def size(model: ModelSpec, gpu: GpuSpec, dtype: str, r: Replica) -> EngineSizing:
    """llama.cpp's cache for `max_model_len` tokens per slot, and whether it all fits the GPU."""
    r.args.check(ENGINE, ARGS)
    if r.tensor_parallel != 1 or r.pipeline_parallel != 1:
        raise Unsupported("llama.cpp splits layers across GPUs (-ts), it has no tensor parallel: use --tp 1")
    type_k, type_v = split_cache_type(dtype)
    for t in (type_k, type_v):
        check_dtype(ENGINE, t, KV_DTYPES, hint=" (K/V may differ: q8_0/q4_0)")
    flash = r.args.flag("flash_attn", True)
    if ggml_type(type_v).block > 1 and not flash:
        raise Unsupported(
            f"llama.cpp needs flash attention for a quantized V cache ({type_v}): drop flash_attn=off"
        )
    n_seq = r.args.integer("parallel", 1) or 1
    unified = r.args.flag("kv_unified")
    n_ctx = r.args.integer("n_ctx") or r.max_model_len * (1 if unified else n_seq)
    ctx = context(n_ctx, n_seq, unified, r.args.integer("n_ubatch", 512) or 512, r.args.flag("swa_full"))
    layers = kv_layers(model, 1, ENGINE)
    ngl = r.args.integer("n_gpu_layers", model.layers + 1)
    assert ngl is not None
    on_gpu = gpu_layers(model.layers, ngl)
    offload_kv = not r.args.flag("no_kv_offload")
    kv_on = on_gpu[: model.layers] if offload_kv else [False] * model.layers
    cache = cache_size(layers, ctx, type_k, type_v, kv_on)

    if r.gguf is not None:
        w_gpu, w_host = weights_on_gpu(r.gguf.tensors, model.layers, on_gpu)
    else:
        bpw = r.args.number("weight_bpw")
        quantized = max(model.params - model.embedding_params, 0)
        total_w = r.weight_bytes if bpw is None else round(quantized * bpw / 8 + model.embedding_params * 2)
        share = sum(on_gpu[: model.layers]) / model.layers
        w_gpu, w_host = round(total_w * share), round(total_w * (1 - share))
    compute_mib = r.args.number("compute_mib")
    compute = (
        round(compute_mib * MIB) if compute_mib is not None else compute_buffer_estimate(model, ctx, flash)
    )

    draft_kv = draft_w = 0
    draft_bpt = 0.0
    if r.draft is not None:
        dk, dv = split_cache_type(r.draft.kv_dtype or "f16")
        for t in (dk, dv):
            check_dtype(ENGINE, t, KV_DTYPES)
        dc = cache_size(r.draft.layers, ctx, dk, dv, [True] * len(r.draft.layers))
        draft_kv, draft_w = dc.total, r.draft.weight_bytes
        draft_bpt = sum(sum(kv_row_bytes(la, dk, dv)) for la in r.draft.layers)
    used = w_gpu + cache.gpu_bytes + compute + draft_kv + draft_w
    context_overhead = round(0.3 * GIB)  # CUDA context and cuBLAS workspace
    free = gpu.visible_memory_bytes - context_overhead
    per_token = sum(sum(kv_row_bytes(la, type_k, type_v)) for la in layers)
    held = r.budget.held(r.max_model_len) if r.budget else r.max_model_len
    per_slot_ok = ctx.n_ctx_seq >= held or unified
    max_requests = min(ctx.n_ctx // held, n_seq) if held else 0
    fits = used <= free and per_slot_ok and max_requests > 0
    dev = gpu.name.upper()
    log: list[str] = []
    windowed = any(la.window for la in layers) and not ctx.swa_full
    # llama_kv_cache_iswa builds two caches, each printing its own lines: the non-SWA one first
    parts = (
        [
            ("non-SWA", [la.window is None for la in layers]),
            ("    SWA", [la.window is not None for la in layers]),
        ]
        if windowed
        else [("", [True] * len(layers))]
    )
    for label, chosen in parts:
        sub = tuple(la for la, c in zip(layers, chosen, strict=True) if c)
        part = cache_size(sub, ctx, type_k, type_v, [on for on, c in zip(kv_on, chosen, strict=True) if c])
        if label:
            cells = ctx.cells(sub[0].window)
            log.append(f"llama_kv_cache_iswa: creating {label} KV cache, size = {cells} cells")
            part = CacheSize(part.k_bytes, part.v_bytes, part.gpu_bytes, cells, part.layers)
        if part.gpu_bytes:
            log.append(printf(_KV_BUFFER, "CUDA0", part.gpu_bytes / MIB))
        if part.total - part.gpu_bytes:
            log.append(printf(_KV_BUFFER, "CPU", (part.total - part.gpu_bytes) / MIB))
        log.append(_kv_line("llama_kv_cache", part, n_seq, ctx.streams, type_k, type_v))
    log.append(printf("llama_context: %10s compute buffer size = %8.2f MiB", "CUDA0", compute / MIB))
    notes = [
        f"n_ctx {ctx.n_ctx:,} ({ctx.n_ctx_seq:,} per slot x {n_seq} slot(s)"
        + (", unified)" if unified else ")")
        + f", -ngl {ngl} ({sum(on_gpu)} of {model.layers + 1} layers incl. output on the GPU)",
        "compute buffer "
        + ("as given" if compute_mib is not None else "estimated (pass --engine-arg compute_mib=<printed>)"),
    ]
    if any(la.window for la in layers) and not ctx.swa_full:
        notes.append("sliding-window layers keep window + n_ubatch cells (llama_kv_cache_iswa)")
    if used > free:
        notes.append(
            f"needs {used / GIB:.2f} GiB on the {dev} ({free / GIB:.2f} GiB usable): lower -ngl, n_ctx or "
            "use a quantized --cache-type"
        )
    if r.budget is not None:
        notes.append("llama.cpp has no windowed/evicting cache: the budget is a what-if")
    memory = (
        ("weights_gpu", w_gpu),
        ("weights_host", w_host),
        ("kv_gpu", cache.gpu_bytes),
        ("kv_host", cache.total - cache.gpu_bytes),
        ("compute_buffer", compute),
        ("draft_weights", draft_w),
        ("draft_kv", draft_kv),
        ("usable_gpu", free),
    )
    return EngineSizing(
        engine=ENGINE,
        kv_dtype=dtype,
        max_model_len=r.max_model_len,
        tensor_parallel=1,
        bytes_per_token=per_token + draft_bpt,
        draft_bytes_per_token=draft_bpt,
        kv_bytes=cache.total,
        kv_tokens=ctx.n_ctx,
        page_tokens=1,
        tokens_per_request=held,
        max_requests=max_requests,
        running_limit=n_seq,
        fits=fits,
        memory=memory,
        log=tuple(log),
        notes=tuple(notes),
        budget=r.budget,
        draft=r.draft,
    )


def bytes_per_token_layer(layer: KVLayer, dtype: str) -> int:
    """K + V bytes of one token of one layer for a --cache-type (or K/V pair)."""
    k, v = split_cache_type(dtype)
    return sum(kv_row_bytes(layer, k, v))


def kv_bits_per_value(dtype: str) -> float:
    k, v = split_cache_type(dtype)
    return (ggml_type(k).bits_per_value + ggml_type(v).bits_per_value) / 2
