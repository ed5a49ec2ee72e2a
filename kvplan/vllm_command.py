"""vLLM's OpenAI server command line for one pool replica: arguments and environment (pure).

`kvplan workers up` runs it on a host, the Kubernetes and compose renderers put it in a container:
one builder, so a pool starts the same way everywhere. Each pool's KV format is served one of two
ways:
- natively, when vLLM has the format itself (`KVFormat.vllm_native_dtype`: bf16 -> `auto`, fp8),
  with `--kv-cache-dtype`;
- through kvplan's plugin otherwise (int8, int4, mixed): vLLM runs with `--kv-cache-dtype auto`
  (it rejects plain `int8`/`int4`) and `KVPLAN_KV_FORMAT=<format>`, which makes the plugin swap in
  kvplan's attention backend (`--attention-backend CUSTOM` on CUDA).

On a CPU (the test machine) every server runs `--dtype float32 --enforce-eager`: bf16 matmuls on
an AVX2 CPU compile for minutes and flip near-tied tokens. vLLM's CPU attention then keeps an
`auto` cache in fp32, so a bf16 pool's effective storage on CPU is fp32 (`effective_format`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvplan.formats import Element, KVFormat, TensorQuant

if TYPE_CHECKING:
    from kvplan.plan import Pool

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` fails on the package name
FORMAT_ENV = "KVPLAN_KV_FORMAT"  # read by kvplan's vLLM plugin in every vLLM process
CPU_BLOCK_SIZE = 128  # vLLM's CPU platform default
GPU_BLOCK_SIZE = 16

_FP32 = TensorQuant(Element.FP32)
CPU_AUTO_FORMAT = KVFormat("fp32", _FP32, _FP32, "vLLM CPU `auto` cache under --dtype float32", "auto")


class Device(enum.Enum):
    CUDA = "cuda"
    CPU = "cpu"


class ServePath(enum.Enum):
    NATIVE = "native"  # vLLM's own attention and --kv-cache-dtype
    PLUGIN = "plugin"  # kvplan's attention backend via KVPLAN_KV_FORMAT


@dataclass(frozen=True)
class LaunchOptions:
    device: Device = Device.CUDA
    python: str = ".venv-vllm/bin/python"
    host: str = "127.0.0.1"
    base_port: int = 8100  # 0: a free ephemeral port per replica
    kv_memory_bytes: int | None = None  # --kv-cache-memory-bytes; required on CPU
    log_dir: Path = Path(".kvplan/workers/logs")
    extra_args: tuple[str, ...] = ()
    # CPU: cores to pin servers to, one per replica in turn (vLLM's own "auto" binding puts every
    # server on the same first core). None: the cores this process may run on.
    cpu_cores: tuple[int, ...] | None = None


def serve_path(fmt: KVFormat) -> ServePath:
    return ServePath.NATIVE if fmt.vllm_native_dtype is not None else ServePath.PLUGIN


def effective_format(pool: Pool, device: Device) -> KVFormat:
    """The format the server really stores (what its block count follows)."""
    fmt = pool.format
    if device is Device.CPU and fmt.vllm_native_dtype == "auto":
        return CPU_AUTO_FORMAT
    return fmt


def block_size(device: Device) -> int:
    return CPU_BLOCK_SIZE if device is Device.CPU else GPU_BLOCK_SIZE


def replica_argv(pool: Pool, model: str, port: int, opts: LaunchOptions) -> tuple[list[str], dict[str, str]]:
    """The argv (`opts.python -m <vLLM's server module> ...`) and the environment it adds."""
    fmt = pool.format
    argv = [
        opts.python, "-m", VLLM_SERVER_MODULE,
        "--model", model,
        "--served-model-name", pool.model_name,
        "--host", opts.host,
        "--port", str(port),
        "--max-model-len", str(pool.max_model_len),
        "--tensor-parallel-size", str(pool.tensor_parallel),
    ]  # fmt: skip
    env: dict[str, str] = {}
    if pool.pipeline_parallel > 1:
        argv += ["--pipeline-parallel-size", str(pool.pipeline_parallel)]
    if serve_path(fmt) is ServePath.NATIVE:
        argv += ["--kv-cache-dtype", str(fmt.vllm_native_dtype)]
    else:
        argv += ["--kv-cache-dtype", "auto"]
        env[FORMAT_ENV] = fmt.name
        if opts.device is Device.CUDA:
            argv += ["--attention-backend", "CUSTOM"]
    if opts.kv_memory_bytes is not None:
        argv += ["--kv-cache-memory-bytes", str(opts.kv_memory_bytes)]
    if opts.device is Device.CPU:
        argv += ["--dtype", "float32", "--enforce-eager"]
    else:
        argv += ["--gpu-memory-utilization", f"{pool.gpu_memory_utilization:g}"]
    return argv + list(opts.extra_args), env
