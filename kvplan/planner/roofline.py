"""Latency roofline: decode is bound by bytes read per step, prefill by FLOPs.

decode step = max(bytes read / (bandwidth x eff), FLOPs / (FLOP rate x eff)) + fixed overhead,
where bytes read = weights touched (all of a dense model; the experts a batch routes to for MoE)
+ the KV cache of every sequence in the batch (capped by sliding windows). Every rank reads its
shard in parallel, so the per-rank bytes set the time.

Efficiency factors (override with `Efficiency(...)`): the best BF16 decode kernels move about
90% of an H100's 3.35 TB/s and a plain copy about 88% (docs/facts.md §4); end to end, with weights
GEMVs, launches and sampling, 75% is a fair default. vLLM's own quantized-KV kernels today reach
less (FP8 ~0.80x, INT8 ~0.55x, INT4 ~0.40x of the BF16 kernel's speed relative to bytes): the
`kv_read_efficiency` table lets a user plan with those figures or with kvplan's own kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvplan.formats import KVFormat
from kvplan.planner.gpus import GpuSpec
from kvplan.planner.memory import kv_read_bytes, weight_bytes
from kvplan.planner.models import ModelSpec


@dataclass(frozen=True)
class Efficiency:
    memory_bandwidth: float = 0.75  # share of spec bandwidth a decode step sustains
    compute: float = 0.5  # share of dense FLOP rate prefill sustains (MFU)
    step_overhead_s: float = 0.003  # scheduler, sampling, launches per decode step
    tp_overhead_s: float = 0.0005  # per all-reduce round per layer pair at TP > 1 (x layers)
    # Relative KV read speed per format vs its byte count (1.0 = bandwidth-bound like BF16).
    kv_read_efficiency: dict[str, float] = field(default_factory=dict)

    def kv_factor(self, fmt: KVFormat) -> float:
        return self.kv_read_efficiency.get(fmt.name, 1.0)


DEFAULT_EFFICIENCY = Efficiency()


def _window_tokens(model: ModelSpec, context_tokens: int) -> float:
    """Tokens of KV read per attention layer on average: sliding layers read at most their window."""
    capped = [context_tokens if w is None else min(w, context_tokens) for w in model.layer_windows]
    return sum(capped) / len(capped) if capped else 0.0


def _weight_bytes_read(model: ModelSpec, batch: int, weight_dtype: str) -> float:
    """Weight bytes one decode step reads: an MoE batch touches only the experts it routes to."""
    total = weight_bytes(model, weight_dtype)
    if not model.is_moe:
        return float(total)
    share_experts = model.expert_params / model.params if model.params else 0.0
    k, e = model.experts_per_token, model.num_experts
    touched = 1 - (1 - k / e) ** batch  # expected share of experts hit by `batch` tokens
    return total * ((1 - share_experts) + share_experts * touched)


def decode_step_seconds(
    model: ModelSpec,
    gpu: GpuSpec,
    fmt: KVFormat,
    *,
    batch: int,
    context_tokens: int,
    tensor_parallel: int = 1,
    weight_dtype: str = "auto",
    block_size: int = 16,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
) -> float:
    """Time of one decode step (= time per output token, TPOT) for `batch` sequences of
    `context_tokens` tokens each."""
    if batch <= 0 or context_tokens <= 0:
        raise ValueError("batch and context_tokens must be positive")
    bandwidth = gpu.bandwidth_bytes_s * efficiency.memory_bandwidth
    weights = _weight_bytes_read(model, batch, weight_dtype) / tensor_parallel
    kv = batch * kv_read_bytes(model, fmt, tensor_parallel, context_tokens, block_size)
    memory_s = weights / bandwidth + kv / (bandwidth * efficiency.kv_factor(fmt))
    flops = 2 * model.active_params * batch / tensor_parallel
    compute_s = flops / (gpu.bf16_flops * efficiency.compute)
    tp_s = efficiency.tp_overhead_s * model.layers / 16 if tensor_parallel > 1 else 0.0
    return max(memory_s, compute_s) + efficiency.step_overhead_s + tp_s


def prefill_seconds(
    model: ModelSpec,
    gpu: GpuSpec,
    *,
    prompt_tokens: int,
    tensor_parallel: int = 1,
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
) -> float:
    """Time to prefill one prompt: 2 FLOPs per active parameter per token plus causal
    attention (QK^T and PV: 2 x 2 x heads x head_dim x tokens^2 / 2 per layer)."""
    if prompt_tokens <= 0:
        raise ValueError("prompt_tokens must be positive")
    dense = 2 * model.active_params * prompt_tokens
    attn = (
        2
        * model.num_attention_heads
        * model.head_dim
        * prompt_tokens
        * _window_tokens(model, prompt_tokens)
        * model.attention_layers
    )
    return (dense + attn) / (gpu.bf16_flops * efficiency.compute * tensor_parallel)


def max_batch_within(
    model: ModelSpec,
    gpu: GpuSpec,
    fmt: KVFormat,
    *,
    tpot_seconds: float,
    context_tokens: int,
    tensor_parallel: int = 1,
    limit: int = 4096,
    weight_dtype: str = "auto",
    efficiency: Efficiency = DEFAULT_EFFICIENCY,
) -> int:
    """The largest decode batch whose step time stays within `tpot_seconds` (0 if none)."""

    def ok(b: int) -> bool:
        t = decode_step_seconds(
            model, gpu, fmt, batch=b, context_tokens=context_tokens, tensor_parallel=tensor_parallel,
            weight_dtype=weight_dtype, efficiency=efficiency,
        )  # fmt: skip
        return t <= tpot_seconds

    if not ok(1):
        return 0
    lo, hi = 1, limit
    if ok(hi):
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
