"""vLLM's own KV memory model, as a pure function: how much KV cache a replica gets and what
vLLM will log about it.

The budget follows `determine_available_memory` (vllm/v1/worker/gpu_worker.py):

    requested = ceil(visible_memory x gpu_memory_utilization)      (default 0.92 from vLLM 0.20)
    available = requested - (weights + peak activation + non-torch) - CUDA-graph estimate (0.20+)

Blocks follow its KV cache planner over the model's layer specs (`layers.plan_cache`): hybrid
attention/Mamba models get enlarged attention blocks and padded state pages, layers are grouped,
one block is one page of every layer of the largest group, and

    num_blocks = available // bytes_per_block
    concurrency Y = num_blocks / (blocks one max_model_len request needs, summed over groups)
    logged tokens N = int(Y x max_model_len)       (0.20+; before: num_blocks // groups x block)

The start-up check holds back the null block (0.30+). What differs by release comes from
`vllm_versions.py`; KV bytes per token only from `kvplan.formats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kvplan.errors import InputError, Unsupported
from kvplan.formats import Element, KVFormat
from kvplan.planner.gpus import GIB, GpuSpec
from kvplan.planner.layers import (
    Attention,
    CacheGroup,
    CachePlan,
    CacheRules,
    LatentAttention,
    Layer,
    Mixer,
    RecurrentState,
    StateDtypes,
    plan_cache,
)
from kvplan.planner.models import ModelSpec
from kvplan.planner.vllm_versions import VllmVersion, get_version
from kvplan.planner.weights import OVERRIDE_ALIASES, WeightQuant, override

# Non-torch memory (CUDA context allocations outside the caching allocator, cuBLAS workspaces)
# grown during vLLM's profile run: 0.13 GiB measured by llm-d on an H100 at TP 1. Tensor parallel
# adds NCCL and custom all-reduce buffers (an estimate, 0.6 GiB); pipeline parallel only sends
# activations point to point, so it adds none here.
NON_TORCH_BYTES_TP1 = round(0.13 * GIB)
NON_TORCH_BYTES_TP_EXTRA = round(0.6 * GIB)
# The sampler's dummy run keeps about this many fp32 vocab-sized rows per sequence alive
# (logits, probabilities, sorted copies for top-k/top-p). Calibrated so that Llama-3.1-8B on an
# H100 gives llm-d's measured 4.76 GiB peak activation.
SAMPLER_FP32_COPIES = 8.5
# With FlashInfer's sampler (vLLM logs "Using FlashInfer for top-p & top-k sampling": 0.10 and
# earlier use it whenever flashinfer is installed) the dummy run samples without sorting: vLLM's
# flashinfer_sample calls top_k_top_p_sampling_from_logits, which keeps the logits, the top-k-masked
# logits and their softmax (v1/sample/ops/topk_topp_sampler.py; flashinfer sampling.py).
FLASHINFER_SAMPLER_FP32_COPIES = 3


@dataclass(frozen=True)
class EngineDefaults:
    """vLLM's scheduler defaults for this GPU (`EngineArgs.get_batch_defaults`)."""

    max_num_batched_tokens: int
    max_num_seqs: int


def engine_defaults(
    gpu: GpuSpec, version: VllmVersion | None = None, *, offline: bool = False
) -> EngineDefaults:
    """vLLM picks larger batches on big GPUs (not A100, vLLM PR #17885); the offline `LLM` class
    batches more than the OpenAI server; >= 160 GiB cards got their own tier in 0.28."""
    v = version or get_version(None)
    mem = gpu.visible_memory_bytes
    if mem >= 160 * GIB and v.big_gpu_defaults:
        return EngineDefaults(16384, 1024)
    if mem >= 70 * GIB and "a100" not in gpu.name:
        return EngineDefaults(16384 if offline else 8192, 1024)
    return EngineDefaults(8192 if offline else 2048, 256)


def normalize_weight_dtype(weight_dtype: str, model: ModelSpec) -> str:
    """The weight storage a --weight-dtype names ("auto": the checkpoint's own)."""
    key = weight_dtype.strip().lower()
    if key in ("auto", ""):
        return model.native_weight_dtype
    override(key)  # refuses an unknown name
    return OVERRIDE_ALIASES.get(key, key)


def weight_bytes(
    model: ModelSpec, weight_dtype: str = "auto", *, text_only: bool = False, tensor_parallel: int = 1
) -> int:
    """All weights vLLM loads, over all TP ranks: the checkpoint's exact bytes when known, else the
    parameters of each part priced by its quantization (embeddings and LM head stay 16-bit; a
    padded MoE layout pads each rank's shard)."""
    vision = model.param_counts.vision
    if is_native_weights(model, weight_dtype) and model.weight_bytes is not None:
        return model.weight_bytes - (2 * vision if text_only else 0)
    total = weight_quant(model, weight_dtype).bytes_of(model.param_counts, tensor_parallel=tensor_parallel)
    return total - (2 * vision if text_only else 0)


def is_native_weights(model: ModelSpec, weight_dtype: str) -> bool:
    """Whether a --weight-dtype keeps the checkpoint's own storage ("auto" or its own name)."""
    return weight_dtype.strip().lower() in ("auto", "", model.native_weight_dtype)


def weight_quant(model: ModelSpec, weight_dtype: str) -> WeightQuant:
    """How the weights are priced: the checkpoint's quantization, or the --weight-dtype override
    (an unmodelled checkpoint quantization is refused here, naming it)."""
    if not is_native_weights(model, weight_dtype):
        return override(weight_dtype)
    if model.quant.method == "unknown":
        raise Unsupported(model.quant.detail)
    return model.quant


def estimate_activation_bytes(
    model: ModelSpec,
    tensor_parallel: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    *,
    flashinfer_sampler: bool = False,
) -> int:
    """Peak activation of vLLM's profile run (a forward of max_num_batched_tokens tokens, then
    a sampler run over max_num_seqs rows; FlashInfer's sampler keeps fewer rows). An estimate: pass
    a measured value when you have one (vLLM logs it as "torch peak memory increase")."""
    mlp = model.intermediate_size
    if model.is_moe:
        mlp = max(mlp, model.experts_per_token * model.moe_intermediate_size)
    qkv = (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim
    per_token = 2 * (model.hidden_size + (2 * mlp + qkv) / tensor_parallel)
    forward = max_num_batched_tokens * per_token
    copies = FLASHINFER_SAMPLER_FP32_COPIES if flashinfer_sampler else SAMPLER_FP32_COPIES
    sampler = max_num_seqs * model.vocab_size * 4 * copies
    return round(forward + sampler)


def encoder_profile_bytes(model: ModelSpec, max_num_batched_tokens: int) -> int:
    """A multimodal model's profile run also encodes dummy images up to the encoder budget
    (max_num_batched_tokens) and keeps their embeddings in the encoder cache while the decoder runs:
    about budget x hidden x 2 bytes on top of the decoder's peak (an estimate; 0 text-only)."""
    if not model.param_counts.vision:
        return 0
    return max_num_batched_tokens * model.hidden_size * 2


def estimate_cuda_graph_bytes(model: ModelSpec, tensor_parallel: int) -> int:
    """CUDA graphs captured for decode batch sizes, which vLLM 0.20+ profiles and subtracts;
    typical logged figures are 0.3-1 GiB. Estimate: 0.25 GiB + 6 MiB per layer."""
    del tensor_parallel
    return round(0.25 * GIB + model.layers * 6 * (1 << 20))


def kv_heads_per_rank(model: ModelSpec, tensor_parallel: int) -> int:
    """KV heads held by one TP rank; fewer KV heads than ranks means replication."""
    if model.num_attention_heads % tensor_parallel:
        raise InputError(
            f"tensor parallel {tensor_parallel} does not divide {model.name}'s "
            f"{model.num_attention_heads} attention heads"
        )
    if model.is_mla:
        return 1  # one latent, replicated on every rank
    for layer in model.layer_specs:
        if isinstance(layer, Attention):
            return layer.kv_heads_per_rank(tensor_parallel)
    return 0


def bytes_per_token(model: ModelSpec, fmt: KVFormat, tensor_parallel: int = 1, block_size: int = 16,
                    layers: range | None = None) -> float:  # fmt: skip
    """KV bytes one token adds on one rank, summed over the (given) layers' caches, before
    sliding windows cap them; recurrent states are per sequence and not included."""
    kv_heads_per_rank(model, tensor_parallel)  # validates TP against the heads
    specs = model.layer_specs if layers is None else tuple(model.layer_specs[i] for i in layers)
    return sum(
        x.bytes_per_token(fmt, tensor_parallel, block_size)
        for x in specs
        if isinstance(x, Attention | LatentAttention)
    )


def state_dtypes(model: ModelSpec, model_dtype_bytes: int = 2) -> StateDtypes:
    """Conv state in the serving dtype; the SSM state too, unless the model keeps it wider
    (Nemotron-H: fp32)."""
    return StateDtypes(model_dtype_bytes, model.ssm_dtype_bytes or model_dtype_bytes)


def state_bytes(model: ModelSpec, tensor_parallel: int = 1, dtypes: StateDtypes | None = None) -> int:
    """Recurrent (Mamba/linear-attention) state one sequence keeps on one rank, all layers."""
    kinds = dtypes or state_dtypes(model)
    return sum(
        x.state_bytes(tensor_parallel, kinds) for x in model.layer_specs if isinstance(x, RecurrentState)
    )


def kv_read_bytes(
    model: ModelSpec, fmt: KVFormat, tensor_parallel: int, context_tokens: int, block_size: int = 16
) -> float:
    """Bytes one decode step reads from one sequence's cache on one rank: each attention layer its
    tokens (capped at its window or chunk), each recurrent layer its state."""
    total = 0.0
    for x in model.layer_specs:
        if isinstance(x, Attention):
            span = x.window if x.window is not None else x.chunk
            tokens = context_tokens if span is None else min(span, context_tokens)
            total += x.bytes_per_token(fmt, tensor_parallel, block_size) * tokens
        elif isinstance(x, LatentAttention):
            total += x.bytes_per_token(fmt, tensor_parallel, block_size) * context_tokens
        elif isinstance(x, RecurrentState):
            total += x.state_bytes(tensor_parallel, state_dtypes(model))
    return total


def pp_stages(num_layers: int, pipeline_parallel: int) -> list[range]:
    """vLLM's `get_pp_indices`: even split, the remainder to the stages before the last."""
    per = [num_layers // pipeline_parallel] * pipeline_parallel
    for i in range(2, num_layers % pipeline_parallel + 2):
        per[-i] += 1
    out, start = [], 0
    for n in per:
        out.append(range(start, start + n))
        start += n
    return out


@dataclass(frozen=True)
class Capacity:
    """KV capacity of one replica (one rank's view; every rank holds the same blocks)."""

    fmt: str
    max_model_len: int
    block_size: int  # tokens per block of the attention layers (after hybrid alignment)
    tensor_parallel: int
    pipeline_parallel: int
    gpu_memory_utilization: float
    total_memory_bytes: int
    requested_bytes: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    cuda_graph_bytes: int
    available_kv_bytes: int
    page_bytes: int  # bytes of one block: one page of every layer of the largest group, one rank
    bytes_per_token: float  # per rank, all attention layers of this rank (before window caps)
    num_blocks: int  # vLLM's num_gpu_blocks (includes the null block)
    blocks_per_request: int  # for one max_model_len request, summed over groups
    kv_tokens: int  # "GPU KV cache size: N tokens"
    max_concurrency: float  # "Maximum concurrency for L tokens per request: Yx"
    fits: bool  # one max_model_len request fits (vLLM starts)
    kv_bytes_needed: int  # KV one max_model_len request needs on one rank
    max_model_len_that_fits: int
    groups: tuple[CacheGroup, ...] = field(default=())
    kv_memory_override: bool = False
    state_bytes: int = 0  # recurrent state per sequence on one rank (unpadded)
    vllm_version: str = ""
    assumptions: tuple[str, ...] = field(default=())

    @property
    def usable_blocks(self) -> int:
        return max(self.num_blocks - 1, 0)

    @property
    def guaranteed_concurrency(self) -> int:
        """Requests of max_model_len tokens that can all run at once (worst case)."""
        return self.usable_blocks // self.blocks_per_request if self.blocks_per_request else 0

    @property
    def non_kv_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.non_torch_bytes

    def expected_concurrency(self, mean_blocks_per_request: float) -> float:
        """Concurrent requests when each holds `mean_blocks_per_request` blocks on average."""
        if mean_blocks_per_request <= 0:
            return 0.0
        return self.usable_blocks / mean_blocks_per_request


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise InputError(f"{name} must be positive, got {value}")


def _model_dtype_bytes(fmt: KVFormat) -> int:
    """The serving dtype's element size: "auto" caches follow it (fp32 on the CPU test machine)."""
    return 4 if fmt.k.element is Element.FP32 else 2


# FlashInfer's GDN prefill exports a state every 64 tokens (vLLM gdn_attn.py)
GDN_CHECKPOINT_ALIGNMENT = 64


def gdn_flashinfer_prefill(gpu: GpuSpec, layers: tuple[Layer, ...]) -> bool:
    """Whether vLLM's "auto" GDN prefill backend is FlashInfer on this GPU (`_gdn_prefill_backend`):
    SM 9.0, or SM 10.x / 12.x with 128-dim GDN keys (a CUDA 13 runtime assumed, as vLLM 0.33's
    wheels have); never off CUDA. Every recurrent layer must be GDN for checkpoints to be taken."""
    states = [x for x in layers if isinstance(x, RecurrentState)]
    if not states or any(x.mixer is not Mixer.GATED_DELTA_NET for x in states):
        return False
    cc = gpu.compute_capability
    if cc is None:
        return False
    return cc == (9, 0) or (cc[0] in (10, 12) and all(x.k_head_dim == 128 for x in states))


def _rules(
    v: VllmVersion, batched: int, pp: int, hybrid_allocator: bool, mamba_align: bool, gdn_checkpoints: bool
) -> CacheRules:
    # 0.26+: windowed layers hold every batch still in flight (2 with async scheduling, PP batches).
    in_flight = batched * (2 if v.async_scheduling and pp == 1 else pp) if v.in_flight_batches else batched
    checkpoints = mamba_align and gdn_checkpoints and v.gdn_prefill_checkpoints
    return CacheRules(
        hybrid_allocator=hybrid_allocator,
        in_flight_tokens=in_flight,
        state_blocks=v.state_blocks if mamba_align else 1,
        needed_from_groups=v.needed_from_groups,
        mamba2_checkpoint_block=v.mamba2_checkpoint_block,
        checkpoint_alignment=GDN_CHECKPOINT_ALIGNMENT if checkpoints else 1,
        gdn_checkpoint_block=checkpoints,
    )


def _budget_args(**values: float | None) -> None:
    for name, value in values.items():
        _positive(name, value)


def kv_capacity(
    model: ModelSpec,
    gpu: GpuSpec,
    fmt: KVFormat,
    *,
    max_model_len: int,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    gpu_memory_utilization: float | None = None,
    block_size: int = 16,
    weight_dtype: str = "auto",
    activation_bytes: int | None = None,
    kv_memory_bytes: int | None = None,
    gpu_memory_bytes: int | None = None,
    non_torch_bytes: int | None = None,
    cuda_graph_bytes: int | None = None,
    enforce_eager: bool = False,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    vllm_version: VllmVersion | str | None = None,
    hybrid_allocator: bool = True,
    prefix_caching: bool = True,
    offline: bool = False,
    text_only: bool = False,
    flashinfer_sampler: bool = False,
) -> Capacity:
    """KV capacity of one replica of `model` on `tensor_parallel x pipeline_parallel` GPUs.

    `kv_memory_bytes` is vLLM's `--kv-cache-memory-bytes` (or a logged "Available KV cache
    memory"): it bypasses the memory budget. `gpu_memory_bytes` overrides the visible memory.
    `hybrid_allocator=False` is `--disable-hybrid-kv-cache-manager`; `prefix_caching=False`
    keeps one Mamba state block per request; `offline` uses the `LLM` class's batch defaults;
    `flashinfer_sampler` is a server that logs "Using FlashInfer for top-p & top-k sampling".
    """
    v = vllm_version if isinstance(vllm_version, VllmVersion) else get_version(vllm_version)
    _budget_args(
        max_model_len=max_model_len, tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel,
        block_size=block_size, gpu_memory_bytes=gpu_memory_bytes, kv_memory_bytes=kv_memory_bytes,
        max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
    )  # fmt: skip
    util = v.default_utilization if gpu_memory_utilization is None else gpu_memory_utilization
    if not 0 < util <= 1:
        raise InputError(f"gpu_memory_utilization must be in (0, 1], got {util}")
    for name, value in (("activation_bytes", activation_bytes), ("non_torch_bytes", non_torch_bytes),
                        ("cuda_graph_bytes", cuda_graph_bytes)):  # fmt: skip
        if value is not None and value < 0:
            raise InputError(f"{name} must not be negative, got {value}")
    kv_heads_per_rank(model, tensor_parallel)

    gpu_for_defaults = gpu.with_memory(gpu_memory_bytes) if gpu_memory_bytes else gpu
    defaults = engine_defaults(gpu_for_defaults, v, offline=offline)
    batched = max_num_batched_tokens or defaults.max_num_batched_tokens
    seqs = max_num_seqs or defaults.max_num_seqs
    if v.engine_v0:
        batched, seqs = max(max_model_len, batched), max_num_seqs or 256  # V0 profiles one full-length batch
    total = gpu_memory_bytes or gpu.visible_memory_bytes
    requested = math.ceil(total * util)
    ranks = tensor_parallel * pipeline_parallel
    weights = math.ceil(
        weight_bytes(model, weight_dtype, text_only=text_only, tensor_parallel=tensor_parallel) / ranks
    )
    encoder = 0 if text_only or activation_bytes is not None else encoder_profile_bytes(model, batched)
    act = (
        estimate_activation_bytes(
            model, tensor_parallel, batched, seqs, flashinfer_sampler=flashinfer_sampler
        )
        + encoder
        if activation_bytes is None
        else activation_bytes
    )
    non_torch = non_torch_bytes
    if non_torch is None:
        non_torch = NON_TORCH_BYTES_TP1 + (NON_TORCH_BYTES_TP_EXTRA if tensor_parallel > 1 else 0)
    graphs = 0 if enforce_eager or not v.subtracts_cuda_graphs else cuda_graph_bytes
    if graphs is None:
        graphs = estimate_cuda_graph_bytes(model, tensor_parallel)
    available = (
        kv_memory_bytes if kv_memory_bytes is not None else requested - weights - act - non_torch - graphs
    )

    if pipeline_parallel > model.layers:
        raise InputError(
            f"pipeline parallel {pipeline_parallel} exceeds {model.name}'s {model.layers} layers"
        )
    # vLLM 0.10-0.13 turned the hybrid manager off for chunked local attention (Llama-4) by default.
    chunked = any(isinstance(x, Attention) and x.chunk for x in model.layer_specs)
    hybrid = hybrid_allocator and (v.chunked_local_hybrid or not chunked)
    gdn = gdn_flashinfer_prefill(gpu, model.layer_specs)
    rules = _rules(v, batched, pipeline_parallel, hybrid, prefix_caching, gdn)
    dtypes = state_dtypes(model, _model_dtype_bytes(fmt))
    stages = _layer_stages(model, pipeline_parallel)
    plans = [plan_cache(model.layer_specs, fmt, tp=tensor_parallel, block_size=block_size, rules=rules,
                        dtypes=dtypes, stage=s) for s in stages]  # fmt: skip
    plan = max(plans, key=lambda p: p.bytes_per_block)  # the stage with the fewest blocks sets them
    num_blocks = max(available, 0) // plan.bytes_per_block
    per_request = plan.blocks_per_request(max_model_len, rules)
    concurrency = num_blocks / per_request
    if v.tokens_from_concurrency:
        tokens = int(concurrency * max_model_len)
    else:
        tokens = num_blocks // len(plan.groups) * min(g.spec.block_size for g in plan.groups)
    needed = plan.bytes_needed(max_model_len, rules)
    budget = available - (plan.bytes_per_block if v.null_block_in_check else 0)
    first = stages[0]
    return Capacity(
        fmt=fmt.name,
        max_model_len=max_model_len,
        block_size=plan.block_size,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        gpu_memory_utilization=util,
        total_memory_bytes=total,
        requested_bytes=requested,
        weights_bytes=weights,
        activation_bytes=act,
        non_torch_bytes=non_torch,
        cuda_graph_bytes=graphs,
        available_kv_bytes=available,
        page_bytes=plan.bytes_per_block,
        bytes_per_token=bytes_per_token(model, fmt, tensor_parallel, plan.block_size, first),
        num_blocks=num_blocks,
        blocks_per_request=per_request,
        kv_tokens=tokens,
        max_concurrency=concurrency,
        fits=available > 0 and needed <= budget,
        kv_bytes_needed=needed,
        max_model_len_that_fits=_max_len_that_fits(plan, rules, budget, max_model_len),
        groups=plan.groups,
        kv_memory_override=kv_memory_bytes is not None,
        state_bytes=sum(
            x.state_bytes(tensor_parallel, dtypes)
            for i, x in enumerate(model.layer_specs)
            if isinstance(x, RecurrentState) and i in first
        ),
        vllm_version=v.name,
        assumptions=tuple(v.assumptions())
        + (("profile-run sampler: FlashInfer (no sort)",) if flashinfer_sampler else ())
        + (
            (
                f"profile activation {act / GIB:.2f} GiB estimated (forward + {SAMPLER_FP32_COPIES:g} fp32 "
                "sampler rows per sequence, calibrated on an older vLLM; 0.33 on an H200 peaked 2-6 GiB "
                "lower for 130K+ vocabularies): --activation-gib takes vLLM's logged torch peak",
            )
            if activation_bytes is None and kv_memory_bytes is None
            else ()
        )
        + (
            (
                f"GDN prefill: FlashInfer on {gpu.name} with prefix caching: prefill checkpoints, attention "
                f"blocks a multiple of {GDN_CHECKPOINT_ALIGNMENT} tokens, one more block per GDN layer"
                + (
                    " (assumes vLLM's CUDA 13 build on this GPU; a CUDA 12 build takes the Triton GDN "
                    "prefill: no checkpoints, smaller blocks)"
                    if gpu.compute_capability not in (None, (9, 0))
                    else ""
                ),
            )
            if rules.gdn_checkpoint_block
            else ()
        )
        + (
            (
                f"profile run encodes dummy images up to max_num_batched_tokens: +{encoder / GIB:.2f} GiB "
                "activation (estimate; --text-only drops it)",
            )
            if encoder
            else ()
        ),
    )


def _layer_stages(model: ModelSpec, pipeline_parallel: int) -> list[range]:
    """Layer-spec index ranges per PP stage (decoder layers split as vLLM does; Falcon-H1's two
    mixers per decoder layer stay together)."""
    per_layer = len(model.layer_specs) // model.layers
    return [
        range(s.start * per_layer, s.stop * per_layer) for s in pp_stages(model.layers, pipeline_parallel)
    ]


def _max_len_that_fits(plan: CachePlan, rules: CacheRules, budget: int, max_model_len: int) -> int:
    """vLLM's `estimate_max_model_len`: the longest length up to max_model_len whose one request
    fits in `budget` bytes (binary search)."""

    def fits(length: int) -> bool:
        return plan.bytes_needed(length, rules) <= budget

    if budget <= 0 or not fits(1):
        return 0
    lo, hi = 1, max_model_len
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def kv_bytes_per_token(
    model: ModelSpec, fmt: KVFormat, *, tensor_parallel: int = 1, block_size: int = 16
) -> float:
    """KV bytes per token of the whole model on one rank (every attention layer, no window cap)."""
    return bytes_per_token(model, fmt, tensor_parallel, block_size)


def bytes_per_token_layer(model: ModelSpec, fmt: KVFormat, tensor_parallel: int, block_size: int) -> float:
    """Mean KV bytes per token per attention layer on one rank."""
    n = model.attention_layers
    return bytes_per_token(model, fmt, tensor_parallel, block_size) / n if n else 0.0
