"""What one simulated replica is: KV blocks and step times of a model on a GPU with a KV format.

Every number comes from the planner (`kvplan.planner`): the block count from its vLLM memory
model, the step times from its roofline. This module only adapts them to the engine's
`EngineConfig` and `StepCost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from kvplan.errors import InputError
from kvplan.workers.sim.engine import EngineConfig, StepCost

if TYPE_CHECKING:
    from kvplan.formats import KVFormat
    from kvplan.planner.gpus import GpuSpec
    from kvplan.planner.memory import Capacity
    from kvplan.planner.models import ModelSpec
    from kvplan.planner.roofline import Efficiency

DEFAULT_MAX_MODEL_LEN = 32768
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92  # vLLM's default


@dataclass(frozen=True)
class WorkerProfile:
    served_model_name: str
    model: str
    gpu: str
    kv_format: str
    cache_dtype: str  # the `cache_dtype` label vLLM would report
    gpu_memory_utilization: float
    engine: EngineConfig
    cost: StepCost
    capacity: Capacity  # the planner's figures for this replica (vLLM's startup log lines)


@cache
def efficiency(kernels: str, gpu: str) -> Efficiency:
    """The roofline's efficiency for `kernels` on `gpu` (see `kvplan.kernel_speeds`): kvplan's
    kernels at the byte ratio, as measured on that GPU, or vLLM's own (docs/facts.md §4)."""
    from kvplan.kernel_speeds import KERNELS, kv_read_efficiency
    from kvplan.planner.roofline import Efficiency

    if kernels not in KERNELS:
        raise InputError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    return Efficiency(kv_read_efficiency=kv_read_efficiency(kernels, gpu))


@dataclass(frozen=True)
class PlannerCost:
    """The planner's roofline for one (model, GPU, format, TP, kernels)."""

    model: ModelSpec
    gpu: GpuSpec
    fmt: KVFormat
    tensor_parallel: int = 1
    kernels: str = "kvplan"

    def prefill_seconds(self, prompt_tokens: int) -> float:
        if prompt_tokens <= 0:
            return 0.0
        return _prefill(self, prompt_tokens)

    def decode_seconds(self, batch: int, context_tokens: int) -> float:
        from kvplan.planner.roofline import decode_step_seconds

        return float(
            decode_step_seconds(
                self.model,
                self.gpu,
                self.fmt,
                batch=batch,
                context_tokens=context_tokens,
                tensor_parallel=self.tensor_parallel,
                efficiency=efficiency(self.kernels, self.gpu.name),
            )
        )


@lru_cache(maxsize=65536)
def _prefill(cost: PlannerCost, prompt_tokens: int) -> float:
    # Cached: the engine asks for the same chunk boundaries over and over.
    from kvplan.planner.roofline import prefill_seconds

    return float(
        prefill_seconds(
            cost.model,
            cost.gpu,
            prompt_tokens=prompt_tokens,
            tensor_parallel=cost.tensor_parallel,
            efficiency=efficiency(cost.kernels, cost.gpu.name),
        )
    )


@dataclass(frozen=True)
class ScaledCost:
    """Another cost model with every duration multiplied (a faster or slower GPU)."""

    base: StepCost
    factor: float

    def prefill_seconds(self, prompt_tokens: int) -> float:
        return self.base.prefill_seconds(prompt_tokens) * self.factor

    def decode_seconds(self, batch: int, context_tokens: int) -> float:
        return self.base.decode_seconds(batch, context_tokens) * self.factor


def cache_dtype_label(format_name: str) -> str:
    """vLLM's `--kv-cache-dtype` for the format: its native name, else kvplan's format name
    (what kvplan's plugin registers)."""
    from kvplan.formats import get_format

    native = get_format(format_name).vllm_native_dtype
    return native if native is not None else format_name


def build_profile(
    model: str,
    gpu: str,
    kv_format: str,
    *,
    max_model_len: int | None = None,
    tensor_parallel: int = 1,
    num_blocks: int | None = None,
    kv_memory_bytes: int | None = None,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    served_model_name: str | None = None,
    enable_prefix_caching: bool = True,
    kernels: str = "kvplan",
) -> WorkerProfile:
    """The replica vLLM would start for this configuration; bad input raises NotFound/InputError.

    Scheduler limits default to vLLM's for the GPU; `num_blocks` overrides the memory model
    (for tests that need a small pool)."""
    from kvplan.formats import get_format
    from kvplan.planner.capacity import Server, Shape, pool_capacity
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.memory import engine_defaults
    from kvplan.planner.models import get_model

    fmt = get_format(kv_format)
    model_spec = get_model(model)
    gpu_spec, _ = get_gpu(gpu)
    efficiency(kernels, gpu_spec.name)  # refuse an unknown name (or unmeasured GPU) before any work
    defaults = engine_defaults(gpu_spec)
    seqs = max_num_seqs or defaults.max_num_seqs
    batched = max_num_batched_tokens or defaults.max_num_batched_tokens
    length = DEFAULT_MAX_MODEL_LEN if max_model_len is None else max_model_len
    shape = Shape(model, gpu, kv_format, length, tensor_parallel, 1, gpu_memory_utilization)
    server = Server(kv_memory_bytes=kv_memory_bytes, max_num_batched_tokens=batched, max_num_seqs=seqs)
    capacity = pool_capacity(model_spec, gpu_spec, shape, server)
    if num_blocks is None and not capacity.fits:
        raise InputError(
            f"{model} on {gpu} with {kv_format} KV cannot hold one request of max_model_len {length} "
            f"({capacity.num_blocks} blocks); the longest that fits is {capacity.max_model_len_that_fits}"
        )
    try:
        engine = EngineConfig(
            num_gpu_blocks=num_blocks if num_blocks is not None else capacity.num_blocks,
            block_size=capacity.block_size,
            max_model_len=length,
            max_num_seqs=seqs,
            max_num_batched_tokens=batched,
            enable_prefix_caching=enable_prefix_caching,
        )
    except ValueError as exc:
        raise InputError(f"{model} on {gpu} with {kv_format} KV: {exc}") from exc
    return WorkerProfile(
        served_model_name=served_model_name or model,
        model=model,
        gpu=gpu,
        kv_format=kv_format,
        cache_dtype=cache_dtype_label(kv_format),
        gpu_memory_utilization=gpu_memory_utilization,
        engine=engine,
        cost=PlannerCost(model_spec, gpu_spec, fmt, tensor_parallel, kernels),
        capacity=capacity,
    )
