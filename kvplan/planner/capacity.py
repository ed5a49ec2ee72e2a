"""A pool's KV capacity, computed in one place.

Every reader of a pool's capacity asks here: the planner sizing a candidate pool
(`planner/fleet.py`), the dashboards' recorded prediction (`dashboards/rules.py`), `kvplan workers
status` and `workers up`'s pre-flight check (`workers/status.py`, `workers/launch.py`) and the
simulated worker (`workers/sim/profile.py`). They differ only in what they know about the server:
its real storage format (fp32 on the CPU test machine), block size, a fixed KV memory
(`--kv-cache-memory-bytes`) and eager mode; the model, GPU, format, length, parallelism,
utilisation and weight storage always come from the pool. (The vLLM plugin sizes its pages with
the same `formats.KVFormat.head_page` the layer specs use.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kvplan.errors import Unsupported
from kvplan.formats import KVFormat, get_format
from kvplan.plan import Pool
from kvplan.planner.gpus import GpuSpec, get_gpu
from kvplan.planner.memory import Capacity, kv_capacity
from kvplan.planner.models import ModelSpec, check_max_model_len, get_model
from kvplan.vllm_command import Device, block_size, effective_format


class PoolShape(Protocol):
    """The fields of a pool that set its capacity (`kvplan.plan.Pool` has them all)."""

    @property
    def model(self) -> str: ...
    @property
    def gpu(self) -> str: ...
    @property
    def kv_format(self) -> str: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def tensor_parallel(self) -> int: ...
    @property
    def pipeline_parallel(self) -> int: ...
    @property
    def gpu_memory_utilization(self) -> float: ...
    @property
    def weight_dtype(self) -> str: ...


@dataclass(frozen=True)
class Shape:
    """A pool not yet written to a plan (the planner's candidates)."""

    model: str
    gpu: str
    kv_format: str
    max_model_len: int
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpu_memory_utilization: float = 0.92
    weight_dtype: str = "auto"


@dataclass(frozen=True)
class Server:
    """What is known about the server beyond the pool: vLLM's defaults unless given."""

    fmt: KVFormat | None = None  # the storage really used (None: the pool's format)
    block_size: int = 16
    kv_memory_bytes: int | None = None  # --kv-cache-memory-bytes (skips the memory profile)
    enforce_eager: bool = False
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    activation_bytes: int | None = None
    vllm_version: str | None = None
    allow_long_max_model_len: bool = False  # VLLM_ALLOW_LONG_MAX_MODEL_LEN=1


GPU_SERVER = Server()


def server_of(
    pool: Pool, device: Device, block: int | None = None, kv_memory_bytes: int | None = None
) -> Server:
    """What a replica of `pool` on `device` stores and how (fp32 and 128-token blocks on the CPU)."""
    return Server(
        fmt=effective_format(pool, device),
        block_size=block_size(device) if block is None else block,
        kv_memory_bytes=kv_memory_bytes,
        enforce_eager=device is Device.CPU,
    )


def pool_capacity(model: ModelSpec, gpu: GpuSpec, pool: PoolShape, server: Server = GPU_SERVER) -> Capacity:
    """The capacity of one replica of `pool` (model and GPU already resolved)."""
    check_max_model_len(model, pool.max_model_len, allow_long=server.allow_long_max_model_len)
    return kv_capacity(
        model,
        gpu,
        server.fmt or get_format(pool.kv_format),
        max_model_len=pool.max_model_len,
        tensor_parallel=pool.tensor_parallel,
        pipeline_parallel=pool.pipeline_parallel,
        gpu_memory_utilization=pool.gpu_memory_utilization,
        block_size=server.block_size,
        weight_dtype=pool.weight_dtype,
        activation_bytes=server.activation_bytes,
        kv_memory_bytes=server.kv_memory_bytes,
        enforce_eager=server.enforce_eager,
        max_num_batched_tokens=server.max_num_batched_tokens,
        max_num_seqs=server.max_num_seqs,
        vllm_version=server.vllm_version,
    )


def capacity_of(pool: PoolShape, server: Server = GPU_SERVER) -> Capacity:
    """The capacity of one replica of `pool`; unknown model or GPU names raise NotFound, a pool
    planned for another engine than vLLM raises Unsupported (its capacity is its engine's:
    `kvplan size --engine ...`)."""
    engine = getattr(pool, "engine", "vllm")
    if engine != "vllm":
        raise Unsupported(
            f"pool on {engine}: vLLM's capacity does not apply; see kvplan size --engine {engine}"
        )
    gpu, _ = get_gpu(pool.gpu)
    return pool_capacity(get_model(pool.model), gpu, pool, server)
