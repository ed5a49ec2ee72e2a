"""`kvplan size` as data: per KV format, vLLM's capacity figures, concurrency, latency and,
when a max_model_len request does not fit, what would (each suggestion with its figure).

Pure functions over dataclasses; printing lives in `cli.py`. The JSON form (`SizeReport.to_json`)
is a stable, documented schema: `schema` is bumped when a field changes meaning or goes away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from kvplan.errors import InputError
from kvplan.formats import KVFormat, get_format
from kvplan.planner.gpus import GIB, GpuSpec
from kvplan.planner.layers import LayerKind
from kvplan.planner.memory import (
    Capacity,
    is_native_weights,
    kv_capacity,
    normalize_weight_dtype,
    weight_quant,
)
from kvplan.planner.models import ModelSpec, check_max_model_len
from kvplan.planner.roofline import decode_step_seconds, max_batch_within, prefill_seconds
from kvplan.planner.vllm_versions import VllmVersion, get_version

SIZE_SCHEMA = "kvplan.size/v1"
DEFAULT_SIZE_FORMATS = ("bf16", "fp8_e4m3", "int8", "int4")


@dataclass(frozen=True)
class SizeRequest:
    """Everything `kvplan size` takes, already parsed and validated at the edge."""

    model: ModelSpec
    gpu: GpuSpec
    gpu_count: int = 1
    formats: tuple[str, ...] = DEFAULT_SIZE_FORMATS
    max_model_len: int | None = None  # None: the model's max_position_embeddings, as vLLM does
    tensor_parallel: int | None = None  # None: all GPUs of the node / pipeline_parallel
    pipeline_parallel: int = 1
    gpu_memory_utilization: float | None = None  # None: the vLLM version's default (0.92 from 0.20)
    block_size: int = 16
    weight_dtype: str = "auto"
    activation_bytes: int | None = None
    kv_memory_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    non_torch_bytes: int | None = None
    cuda_graph_bytes: int | None = None
    enforce_eager: bool = False
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    tpot_slo_seconds: float = 0.150
    decode_batch: int | None = None  # TPOT at this batch (None: the guaranteed concurrency)
    # Mean tokens a request holds (prompt + output, capped at max_model_len) per traffic; optional.
    traffic_lengths: tuple[int, ...] | None = None
    vllm_version: str | None = None  # None: the newest release kvplan follows
    hybrid_allocator: bool = True  # False: --disable-hybrid-kv-cache-manager
    prefix_caching: bool = True  # False: --no-enable-prefix-caching (one Mamba state block)
    text_only: bool = False  # multimodal model served without its vision tower
    flashinfer_sampler: bool = False  # the server logs "Using FlashInfer for top-p & top-k sampling"
    allow_long_max_model_len: bool = False  # VLLM_ALLOW_LONG_MAX_MODEL_LEN=1

    def resolved_max_model_len(self) -> int:
        if self.max_model_len is not None:
            return self.max_model_len
        return self.model.default_max_model_len

    def version(self) -> VllmVersion:
        return get_version(self.vllm_version)

    def utilization(self) -> float:
        return (
            self.version().default_utilization
            if self.gpu_memory_utilization is None
            else self.gpu_memory_utilization
        )

    def resolved_tp(self) -> int:
        if self.tensor_parallel is not None:
            return self.tensor_parallel
        return max(1, self.gpu_count // self.pipeline_parallel)

    def capacity(self, fmt: KVFormat, **changes: Any) -> Capacity:
        args: dict[str, Any] = dict(
            max_model_len=self.resolved_max_model_len(),
            tensor_parallel=self.resolved_tp(),
            pipeline_parallel=self.pipeline_parallel,
            gpu_memory_utilization=self.gpu_memory_utilization,
            block_size=self.block_size,
            weight_dtype=self.weight_dtype,
            activation_bytes=self.activation_bytes,
            kv_memory_bytes=self.kv_memory_bytes,
            gpu_memory_bytes=self.gpu_memory_bytes,
            non_torch_bytes=self.non_torch_bytes,
            cuda_graph_bytes=self.cuda_graph_bytes,
            enforce_eager=self.enforce_eager,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs,
            vllm_version=self.version(),
            hybrid_allocator=self.hybrid_allocator,
            prefix_caching=self.prefix_caching,
            text_only=self.text_only,
            flashinfer_sampler=self.flashinfer_sampler,
        )
        args.update(changes)
        return kv_capacity(self.model, self.gpu, fmt, **args)


@dataclass(frozen=True)
class Suggestion:
    change: str  # what to change, as a flag the user can pass
    detail: str  # the figure it buys
    fits: bool


@dataclass(frozen=True)
class FormatRow:
    kv_format: str
    regime: str
    capacity: Capacity
    expected_concurrency: float | None
    tpot_seconds: float | None  # decode step at the guaranteed batch, max_model_len context
    decode_batch: int  # batch the TPOT figure is for
    tokens_per_second: float | None
    slo_batch: int  # largest batch within the TPOT SLO at max_model_len context
    tpot_slo_ok: bool | None
    prefill_seconds: float  # one max_model_len prompt (TTFT floor), compute-bound


@dataclass(frozen=True)
class SizeReport:
    request: SizeRequest
    rows: tuple[FormatRow, ...]
    suggestions: tuple[Suggestion, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())

    @property
    def replicas_per_node(self) -> int:
        ranks = self.request.resolved_tp() * self.request.pipeline_parallel
        return max(1, self.request.gpu_count // ranks)

    def to_json(self) -> dict[str, Any]:
        req, m = self.request, self.request.model
        first = self.rows[0].capacity
        return {
            "schema": SIZE_SCHEMA,
            "vllm_version": first.vllm_version,
            "assumptions": [*m.assumptions, *first.assumptions, *self.weight_notes()],
            "model": {
                "name": m.name,
                "hf_id": m.hf_id,
                "layers": m.layers,
                "kv_heads": m.num_kv_heads,
                "head_dim": None if m.is_mla else m.head_dim,
                "attention": m.attention.value,
                "mla_latent_dim": m.mla_latent_dim or None,
                "sliding_window_layers": m.sliding_layers,
                "sliding_window": max((w for w in m.layer_windows if w), default=None),
                "moe_experts": m.num_experts or None,
                "params": m.params,
                "weight_dtype": normalize_weight_dtype(req.weight_dtype, m),
                "layer_kinds": {k.value: n for k, n in layer_kind_counts(m).items()},
                "hybrid": m.is_hybrid,
                "quantization": m.quant.detail,
                "weights_source": "safetensors headers"
                if m.weight_bytes is not None
                else "config.json shapes",
                "max_position_embeddings": m.derived_max_model_len,
            },
            "gpu": {
                "name": req.gpu.name,
                "count": req.gpu_count,
                "visible_memory_bytes": first.total_memory_bytes,
                "memory_source": "override" if req.gpu_memory_bytes else req.gpu.memory_source,
            },
            "config": {
                "max_model_len": req.resolved_max_model_len(),
                "tensor_parallel": req.resolved_tp(),
                "pipeline_parallel": req.pipeline_parallel,
                "replicas_per_node": self.replicas_per_node,
                "gpu_memory_utilization": first.gpu_memory_utilization,
                "block_size": req.block_size,
                "tpot_slo_seconds": req.tpot_slo_seconds,
            },
            "memory_per_gpu": {
                "requested_bytes": first.requested_bytes,
                "weights_bytes": first.weights_bytes,
                "activation_bytes": first.activation_bytes,
                "activation_source": "given" if req.activation_bytes is not None else "estimated",
                "non_torch_bytes": first.non_torch_bytes,
                "cuda_graph_bytes": first.cuda_graph_bytes,
                "kv_memory_override": first.kv_memory_override,
            },
            "formats": [_row_json(r) for r in self.rows],
            "suggestions": [
                {"change": s.change, "detail": s.detail, "fits": s.fits} for s in self.suggestions
            ],
            "notes": list(self.notes),
        }

    def weight_notes(self) -> list[str]:
        m = self.request.model
        if m.weight_bytes is not None and is_native_weights(m, self.request.weight_dtype):
            return ["weights: the checkpoint's safetensors headers (exact)"]
        stored = weight_quant(m, self.request.weight_dtype).detail
        return [f"weights: parameters counted from config.json shapes, stored as {stored}"]


def _row_json(r: FormatRow) -> dict[str, Any]:
    c = r.capacity
    return {
        "kv_format": r.kv_format,
        "regime": r.regime,
        "bytes_per_token": c.bytes_per_token,
        "available_kv_bytes": c.available_kv_bytes,
        "available_kv_gib": round(c.available_kv_bytes / GIB, 2),
        "page_bytes": c.page_bytes,
        "block_size": c.block_size,
        "kv_cache_groups": len(c.groups),
        "state_bytes_per_sequence": c.state_bytes,
        "num_blocks": c.num_blocks,
        "kv_tokens": c.kv_tokens,
        "max_concurrency": round(c.max_concurrency, 2),
        "guaranteed_concurrency": c.guaranteed_concurrency,
        "expected_concurrency": None if r.expected_concurrency is None else round(r.expected_concurrency, 1),
        "fits": c.fits,
        "kv_bytes_needed": c.kv_bytes_needed,
        "max_model_len_that_fits": c.max_model_len_that_fits,
        "decode_batch": r.decode_batch,
        "tpot_seconds": None if r.tpot_seconds is None else round(r.tpot_seconds, 5),
        "tokens_per_second": None if r.tokens_per_second is None else round(r.tokens_per_second, 1),
        "slo_batch": r.slo_batch,
        "prefill_seconds": round(r.prefill_seconds, 4),
        "tpot_slo_ok": r.tpot_slo_ok,
        "vllm_log": log_lines(c),
    }


def log_lines(c: Capacity) -> list[str]:
    """The two lines vLLM prints at start-up, in vLLM's own format."""
    return [
        f"Available KV cache memory: {round(c.available_kv_bytes / GIB, 2)} GiB",
        f"GPU KV cache size: {c.kv_tokens:,} tokens, Maximum concurrency for "
        f"{c.max_model_len:,} tokens per request: {c.max_concurrency:.2f}x",
    ]


def mean_blocks(lengths: tuple[int, ...], max_model_len: int, block_size: int) -> float:
    """Mean blocks a request of the mix holds at its full length (requests over the limit dropped)."""
    kept = [min(n, max_model_len) for n in lengths if n <= max_model_len]
    if not kept:
        return 0.0
    return sum(math.ceil(n / block_size) for n in kept) / len(kept)


def _row(req: SizeRequest, fmt: KVFormat) -> FormatRow:
    cap = req.capacity(fmt)
    expected = None
    if req.traffic_lengths:
        blocks = mean_blocks(req.traffic_lengths, cap.max_model_len, req.block_size)
        expected = cap.expected_concurrency(blocks) if blocks else 0.0
    tp = req.resolved_tp()
    # A decode batch larger than the KV cache holds at max_model_len cannot run: cap it there.
    batch = min(req.decode_batch or cap.guaranteed_concurrency, max(1, cap.guaranteed_concurrency))
    tpot = tps = None
    slo_ok = None
    slo_batch = 0
    if cap.fits:
        tpot = decode_step_seconds(
            req.model, req.gpu, fmt, batch=batch, context_tokens=cap.max_model_len, tensor_parallel=tp,
            weight_dtype=req.weight_dtype, block_size=req.block_size,
        )  # fmt: skip
        tps = batch / tpot
        slo_ok = tpot <= req.tpot_slo_seconds
        slo_batch = max_batch_within(
            req.model, req.gpu, fmt, tpot_seconds=req.tpot_slo_seconds, context_tokens=cap.max_model_len,
            tensor_parallel=tp, limit=max(batch, 1), weight_dtype=req.weight_dtype,
        )  # fmt: skip
    prefill = prefill_seconds(req.model, req.gpu, prompt_tokens=cap.max_model_len, tensor_parallel=tp)
    return FormatRow(fmt.name, fmt.regime, cap, expected, tpot, batch, tps, slo_batch, slo_ok, prefill)


def _suggest(req: SizeRequest, rows: tuple[FormatRow, ...]) -> tuple[Suggestion, ...]:
    """What would make the first format fit, each with the figure it buys."""
    base = rows[0].capacity
    if base.fits:
        return ()
    fmt = get_format(rows[0].kv_format)
    out: list[Suggestion] = []
    if base.max_model_len_that_fits > 0:
        n = base.max_model_len_that_fits
        c = req.capacity(fmt, max_model_len=n)
        out.append(
            Suggestion(f"--max-model-len {n}", f"{c.kv_tokens:,} KV tokens, {c.max_concurrency:.2f}x", True)
        )
    for name in ("fp8_e4m3", "int8", "int4"):
        if name == fmt.name or (name == "fp8_e4m3" and not req.gpu.fp8_supported):
            continue
        c = req.capacity(get_format(name))
        detail = f"{c.kv_tokens:,} KV tokens, {c.max_concurrency:.2f}x at {c.max_model_len:,}"
        out.append(Suggestion(f"--kv-format {name}", detail, c.fits))
    tp = req.resolved_tp()
    for more in (2 * tp, 4 * tp, 8 * tp):
        if more > 8:  # one node
            break
        try:
            c = req.capacity(fmt, tensor_parallel=more)
        except InputError:
            continue
        out.append(
            Suggestion(
                f"--gpu {req.gpu.name}:{more} --tp {more}",
                f"{c.kv_tokens:,} KV tokens per replica, {c.max_concurrency:.2f}x",
                c.fits,
            )
        )
        if c.fits:
            break
    if req.gpu.fp8_supported and normalize_weight_dtype(req.weight_dtype, req.model) in ("bf16", "fp16"):
        c = req.capacity(fmt, weight_dtype="fp8")
        out.append(
            Suggestion("--weight-dtype fp8", f"{c.kv_tokens:,} KV tokens, {c.max_concurrency:.2f}x", c.fits)
        )
    return tuple(out)


def size(req: SizeRequest) -> SizeReport:
    """Capacity, concurrency and latency per KV format; suggestions when nothing fits."""
    if not req.formats:
        raise InputError("give at least one KV format")
    for name in req.formats:
        get_format(name)  # UnknownFormat names the known ones
    ranks = req.resolved_tp() * req.pipeline_parallel
    if req.gpu_count < ranks:
        raise InputError(
            f"tensor parallel {req.resolved_tp()} x pipeline parallel {req.pipeline_parallel} needs "
            f"{ranks} GPUs, {req.gpu_count} given; use --gpu {req.gpu.name}:{ranks}"
        )
    if req.decode_batch is not None and req.decode_batch <= 0:
        raise InputError(f"--batch must be positive, got {req.decode_batch}")
    check_max_model_len(req.model, req.resolved_max_model_len(), allow_long=req.allow_long_max_model_len)
    rows = tuple(_row(req, get_format(n)) for n in req.formats)
    notes: list[str] = []
    if rows[0].capacity.available_kv_bytes <= 0:
        notes.append(
            "weights, activation and overheads exceed the requested memory: nothing is left for KV cache"
        )
    if req.gpu.note:
        notes.append(f"{req.gpu.name}: {req.gpu.note}")
    if req.traffic_lengths is None:
        notes.append("expected concurrency needs a traffic mix: pass --traffic FILE or --context-mix")
    if req.model.is_mla:
        notes.append("MLA: one latent per token per layer, replicated on every tensor-parallel rank")
    if any(w is not None for w in req.model.layer_windows):
        notes.append("sliding-window layers hold at most their window (+ in-flight tokens) per request")
    if req.model.is_hybrid:
        c = rows[0].capacity
        notes.append(
            f"recurrent-state layers keep {c.state_bytes / 2**20:,.1f} MiB per sequence; vLLM enlarges "
            f"attention blocks to {c.block_size} tokens so one page holds a state"
        )
    return SizeReport(req, rows, _suggest(req, rows), tuple(notes))


def layer_kind_counts(m: ModelSpec) -> dict[LayerKind, int]:
    out: dict[LayerKind, int] = {}
    for layer in m.layer_specs:
        out[layer.kind] = out.get(layer.kind, 0) + 1
    return out


def with_lengths(req: SizeRequest, lengths: tuple[int, ...]) -> SizeRequest:
    return replace(req, traffic_lengths=lengths)
