"""vLLM's own KV memory model, as a pure function: how much KV cache a replica gets and what
vLLM will log about it.

The budget follows vLLM 0.32/0.33's `determine_available_memory` (docs/facts.md §2):

    requested = ceil(visible_memory x gpu_memory_utilization)      (default 0.92)
    available = requested - (weights + peak activation + non-torch) - CUDA-graph estimate

Blocks follow its KV cache planner: layers with the same attention kind form groups of equal
size (the hybrid allocator), one block = one page of every layer of the largest group, and

    num_blocks = available // bytes_per_block
    concurrency Y = num_blocks / (blocks one max_model_len request needs, summed over groups)
    logged tokens N = int(Y x max_model_len)

One block is the null block that the block pool holds back: vLLM's start-up check plans
against `available - one block`, and the guaranteed concurrency here counts usable blocks.
KV bytes per token come only from `kvplan.formats`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from kvplan.errors import InputError
from kvplan.formats import KVFormat
from kvplan.planner.gpus import GIB, GpuSpec
from kvplan.planner.models import ModelSpec

# Bytes per parameter of the quantizable weights (linear layers) for each weight dtype.
# INT4 (AWQ/GPTQ, group 128): 4-bit codes + an fp16 scale and a 4-bit zero per 128 weights.
WEIGHT_BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5 + 2.5 / 128,
}
WEIGHT_DTYPE_ALIASES = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "w8a8": "int8",
    "awq": "int4",
    "gptq": "int4",
    "w4a16": "int4",
    "fp8_e4m3": "fp8",
}

# Non-torch memory (CUDA context allocations outside the caching allocator, cuBLAS workspaces)
# grown during vLLM's profile run: 0.13 GiB measured by llm-d on an H100 at TP 1. With tensor
# parallel, NCCL and custom all-reduce buffers add more; 0.6 GiB is an estimate.
NON_TORCH_BYTES_TP1 = round(0.13 * GIB)
NON_TORCH_BYTES_TP_EXTRA = round(0.6 * GIB)
# The sampler's dummy run keeps about this many fp32 vocab-sized rows per sequence alive
# (logits, probabilities, sorted copies for top-k/top-p). Calibrated so that Llama-3.1-8B on an
# H100 gives llm-d's measured 4.76 GiB peak activation.
SAMPLER_FP32_COPIES = 8.5


@dataclass(frozen=True)
class EngineDefaults:
    """vLLM's scheduler defaults for an OpenAI server on this GPU (`EngineArgs`)."""

    max_num_batched_tokens: int
    max_num_seqs: int


def engine_defaults(gpu: GpuSpec) -> EngineDefaults:
    """vLLM picks larger batches on big GPUs (not A100, see vLLM PR #17885)."""
    if gpu.visible_memory_bytes >= 160 * GIB:
        return EngineDefaults(16384, 1024)
    if gpu.visible_memory_bytes >= 70 * GIB and "a100" not in gpu.name:
        return EngineDefaults(8192, 1024)
    return EngineDefaults(2048, 256)


def normalize_weight_dtype(weight_dtype: str, model: ModelSpec) -> str:
    key = weight_dtype.strip().lower()
    if key in ("auto", ""):
        return model.native_weight_dtype
    key = WEIGHT_DTYPE_ALIASES.get(key, key)
    if key not in WEIGHT_BYTES_PER_PARAM:
        known = ", ".join([*WEIGHT_BYTES_PER_PARAM, *WEIGHT_DTYPE_ALIASES])
        raise InputError(f"unknown weight dtype {weight_dtype!r}; known: auto, {known}")
    return key


def weight_bytes(model: ModelSpec, weight_dtype: str = "auto") -> int:
    """All weights of the model. Embeddings and LM head stay 16-bit under weight quantization."""
    dtype = normalize_weight_dtype(weight_dtype, model)
    if model.weight_bytes is not None and dtype == model.native_weight_dtype:
        return model.weight_bytes
    quantizable = max(model.params - model.embedding_params, 0)
    return round(quantizable * WEIGHT_BYTES_PER_PARAM[dtype] + model.embedding_params * 2)


def estimate_activation_bytes(
    model: ModelSpec, tensor_parallel: int, max_num_batched_tokens: int, max_num_seqs: int
) -> int:
    """Peak activation of vLLM's profile run (a forward of max_num_batched_tokens tokens, then
    a sampler run over max_num_seqs rows). An estimate: pass a measured value when you have one
    (vLLM logs it as "torch peak memory increase")."""
    mlp = model.intermediate_size
    if model.is_moe:
        mlp = max(mlp, model.experts_per_token * model.moe_intermediate_size)
    qkv = (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim
    per_token = 2 * (model.hidden_size + (2 * mlp + qkv) / tensor_parallel)
    forward = max_num_batched_tokens * per_token
    sampler = max_num_seqs * model.vocab_size * 4 * SAMPLER_FP32_COPIES
    return round(forward + sampler)


def estimate_cuda_graph_bytes(model: ModelSpec, tensor_parallel: int) -> int:
    """CUDA graphs captured for decode batch sizes. vLLM >= 0.21 profiles and subtracts them;
    typical logged figures are 0.3-1 GiB. Estimate: 0.25 GiB + 6 MiB per layer."""
    del tensor_parallel
    return round(0.25 * GIB + model.layers * 6 * (1 << 20))


def kv_heads_per_rank(model: ModelSpec, tensor_parallel: int) -> int:
    """KV heads held by one TP rank; fewer KV heads than ranks means replication."""
    if model.is_mla:
        return 1  # one latent, replicated on every rank
    if model.num_attention_heads % tensor_parallel:
        raise InputError(
            f"tensor parallel {tensor_parallel} does not divide {model.name}'s "
            f"{model.num_attention_heads} attention heads"
        )
    kv = model.num_kv_heads
    if kv % tensor_parallel and tensor_parallel % kv:
        raise InputError(
            f"tensor parallel {tensor_parallel} and {model.name}'s {kv} KV heads: vLLM needs one "
            "to divide the other"
        )
    return max(1, kv // tensor_parallel)


def bytes_per_token_layer(model: ModelSpec, fmt: KVFormat, tensor_parallel: int, block_size: int) -> float:
    """KV bytes one token takes in one layer on one rank, from the format's page layout."""
    if model.is_mla:
        return fmt.latent_bytes_per_token(model.mla_latent_dim, block_size)
    return (
        kv_heads_per_rank(model, tensor_parallel)
        * fmt.head_page(model.head_dim, block_size).nbytes
        / (block_size)
    )


def page_bytes_per_layer(model: ModelSpec, fmt: KVFormat, tensor_parallel: int, block_size: int) -> int:
    """One block of one layer on one rank (vLLM's `page_size_bytes`)."""
    if model.is_mla:
        return round(fmt.latent_bytes_per_token(model.mla_latent_dim, block_size) * block_size)
    return kv_heads_per_rank(model, tensor_parallel) * fmt.head_page(model.head_dim, block_size).nbytes


@dataclass(frozen=True)
class KVGroup:
    """A KV cache group: `layers` layers of one attention kind (window None: full attention)."""

    window: int | None
    layers: int


def kv_groups(windows: tuple[int | None, ...]) -> tuple[KVGroup, ...]:
    """vLLM's hybrid grouping: each attention kind splits into groups of `group_size` layers
    (the smallest kind's count, or the largest's when they are within 1.5x)."""
    kinds = Counter(windows)
    if len(kinds) == 1:
        ((window, n),) = kinds.items()
        return (KVGroup(window, n),)
    lo, hi = min(kinds.values()), max(kinds.values())
    size = hi if hi < lo * 1.5 else lo
    groups: list[KVGroup] = []
    for window, n in kinds.items():
        count = math.ceil(n / size)
        for i in range(count):
            groups.append(KVGroup(window, len(range(i, n, count))))
    return tuple(groups)


def group_blocks_per_request(
    group: KVGroup, max_model_len: int, block_size: int, max_in_flight_tokens: int
) -> int:
    """Blocks one request of max_model_len tokens can hold in one group at most."""
    if group.window is None:
        return math.ceil(max_model_len / block_size)
    tokens = min(group.window - 1 + max_in_flight_tokens, max_model_len)
    return math.ceil(tokens / block_size) + 1  # the window need not start on a block boundary


@dataclass(frozen=True)
class Capacity:
    """KV capacity of one replica (one rank's view; every rank holds the same blocks)."""

    fmt: str
    max_model_len: int
    block_size: int
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
    page_bytes: int  # one block across all layers of the largest group, one rank
    bytes_per_token: float  # per rank, all layers of this rank (before window caps)
    num_blocks: int  # vLLM's num_gpu_blocks (includes the null block)
    blocks_per_request: int  # for one max_model_len request, summed over groups
    kv_tokens: int  # "GPU KV cache size: N tokens"
    max_concurrency: float  # "Maximum concurrency for L tokens per request: Yx"
    fits: bool  # one max_model_len request fits (vLLM starts)
    kv_bytes_needed: int  # KV one max_model_len request needs on one rank
    max_model_len_that_fits: int
    groups: tuple[KVGroup, ...] = field(default=())
    kv_memory_override: bool = False

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


def _stage_windows(model: ModelSpec, pipeline_parallel: int) -> tuple[int | None, ...]:
    """The layers of the largest pipeline stage (vLLM splits layers evenly)."""
    if pipeline_parallel > model.layers:
        raise InputError(
            f"pipeline parallel {pipeline_parallel} exceeds {model.name}'s {model.layers} layers"
        )
    per_stage = math.ceil(model.layers / pipeline_parallel)
    return model.layer_windows[:per_stage]


def kv_capacity(
    model: ModelSpec,
    gpu: GpuSpec,
    fmt: KVFormat,
    *,
    max_model_len: int,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    gpu_memory_utilization: float = 0.92,
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
    async_scheduling: bool = True,
) -> Capacity:
    """KV capacity of one replica of `model` on `tensor_parallel x pipeline_parallel` GPUs.

    `kv_memory_bytes` is vLLM's `--kv-cache-memory-bytes` (or a logged "Available KV cache
    memory"): it bypasses the memory budget. `gpu_memory_bytes` overrides the visible memory.
    """
    for name, value in (
        ("max_model_len", max_model_len),
        ("tensor_parallel", tensor_parallel),
        ("pipeline_parallel", pipeline_parallel),
        ("block_size", block_size),
        ("gpu_memory_bytes", gpu_memory_bytes),
        ("kv_memory_bytes", kv_memory_bytes),
        ("max_num_batched_tokens", max_num_batched_tokens),
        ("max_num_seqs", max_num_seqs),
    ):
        _positive(name, value)
    if not 0 < gpu_memory_utilization <= 1:
        raise InputError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    for name, value in (
        ("activation_bytes", activation_bytes),
        ("non_torch_bytes", non_torch_bytes),
        ("cuda_graph_bytes", cuda_graph_bytes),
    ):
        if value is not None and value < 0:
            raise InputError(f"{name} must not be negative, got {value}")

    gpu_for_defaults = gpu.with_memory(gpu_memory_bytes) if gpu_memory_bytes else gpu
    defaults = engine_defaults(gpu_for_defaults)
    batched = max_num_batched_tokens or defaults.max_num_batched_tokens
    seqs = max_num_seqs or defaults.max_num_seqs
    total = gpu_memory_bytes or gpu.visible_memory_bytes
    requested = math.ceil(total * gpu_memory_utilization)
    ranks = tensor_parallel * pipeline_parallel
    weights = math.ceil(weight_bytes(model, weight_dtype) / ranks)
    act = (
        estimate_activation_bytes(model, tensor_parallel, batched, seqs)
        if activation_bytes is None
        else (activation_bytes)
    )
    non_torch = non_torch_bytes
    if non_torch is None:
        non_torch = NON_TORCH_BYTES_TP1 + (NON_TORCH_BYTES_TP_EXTRA if ranks > 1 else 0)
    graphs = 0 if enforce_eager else cuda_graph_bytes
    if graphs is None:
        graphs = estimate_cuda_graph_bytes(model, tensor_parallel)
    if kv_memory_bytes is not None:
        available = kv_memory_bytes
    else:
        available = requested - weights - act - non_torch - graphs

    windows = _stage_windows(model, pipeline_parallel)
    groups = kv_groups(windows)
    page = page_bytes_per_layer(model, fmt, tensor_parallel, block_size)
    group_size = max(g.layers for g in groups)
    bytes_per_block = page * group_size
    num_blocks = max(available, 0) // bytes_per_block
    in_flight = batched * (2 if async_scheduling and pipeline_parallel == 1 else pipeline_parallel)
    per_request = [group_blocks_per_request(g, max_model_len, block_size, in_flight) for g in groups]
    blocks_per_request = sum(per_request)
    concurrency = num_blocks / blocks_per_request
    needed = sum(n * g.layers * page for n, g in zip(per_request, groups, strict=True))
    fits = available > 0 and needed <= available - bytes_per_block

    return Capacity(
        fmt=fmt.name,
        max_model_len=max_model_len,
        block_size=block_size,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        gpu_memory_utilization=gpu_memory_utilization,
        total_memory_bytes=total,
        requested_bytes=requested,
        weights_bytes=weights,
        activation_bytes=act,
        non_torch_bytes=non_torch,
        cuda_graph_bytes=graphs,
        available_kv_bytes=available,
        page_bytes=bytes_per_block,
        bytes_per_token=bytes_per_token_layer(model, fmt, tensor_parallel, block_size) * len(windows),
        num_blocks=num_blocks,
        blocks_per_request=blocks_per_request,
        kv_tokens=int(concurrency * max_model_len),
        max_concurrency=concurrency,
        fits=fits,
        kv_bytes_needed=needed,
        max_model_len_that_fits=_max_len_that_fits(
            groups, page, available - bytes_per_block, block_size, in_flight
        ),
        groups=groups,
        kv_memory_override=kv_memory_bytes is not None,
    )


def _max_len_that_fits(
    groups: tuple[KVGroup, ...], page: int, budget: int, block_size: int, in_flight: int
) -> int:
    """The longest max_model_len whose one request fits in `budget` bytes (vLLM's estimate)."""

    def need(length: int) -> int:
        return sum(
            group_blocks_per_request(g, length, block_size, in_flight) * g.layers * page for g in groups
        )

    if budget <= 0 or need(1) > budget:
        return 0
    lo, hi = 1, 1 << 24
    if need(hi) <= budget:
        return hi  # only sliding windows: any length fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def kv_bytes_per_token(
    model: ModelSpec, fmt: KVFormat, *, tensor_parallel: int = 1, block_size: int = 16
) -> float:
    """KV bytes per token of the whole model on one rank, full attention on every layer."""
    return bytes_per_token_layer(model, fmt, tensor_parallel, block_size) * model.layers
