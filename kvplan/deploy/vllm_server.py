"""How one pool's vLLM server is started in a container: arguments and environment.

Shared by the Kubernetes and compose renderers so that a pool starts the same way everywhere.
KV formats vLLM has natively (bf16, fp16, fp8_e4m3) use `--kv-cache-dtype`; kvplan's own formats
(int8, int4, mixed) run through the kvplan attention backend, selected with `--attention-backend
CUSTOM` and told its format through the environment (vLLM rejects plain `int8`/`int4` dtypes).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvplan.formats import get_format
from kvplan.plan import Pool

VLLM_PORT = 8000
MODELS_DIR = "/models"
# The kvplan plugin reads its format from here (the vLLM entry point runs in every vLLM process).
PLUGIN_FORMAT_ENV = "KVPLAN_KV_FORMAT"
VLLM_VERSION = "v0.33.0"


@dataclass(frozen=True)
class ServerSpec:
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


def model_path(pool: Pool) -> str:
    """What vLLM's --model gets: a path or Hugging Face id as given; a catalog name becomes its
    Hugging Face id (downloaded into HF_HOME on the models volume), else a directory there."""
    if "/" in pool.model:
        return pool.model
    from kvplan.errors import KvplanError
    from kvplan.planner.models import get_model

    try:
        hf_id = get_model(pool.model).hf_id
    except KvplanError:
        hf_id = None
    return hf_id or f"{MODELS_DIR}/{pool.model}"


def kv_format_flags(kv_format: str) -> ServerSpec:
    """The vLLM flags and environment that select a KV format."""
    fmt = get_format(kv_format)
    if fmt.vllm_native_dtype is not None:
        return ServerSpec(("--kv-cache-dtype", fmt.vllm_native_dtype), ())
    return ServerSpec(
        ("--kv-cache-dtype", "auto", "--attention-backend", "CUSTOM"),
        ((PLUGIN_FORMAT_ENV, fmt.name),),
    )


def server_spec(pool: Pool, port: int = VLLM_PORT) -> ServerSpec:
    """Arguments after `vllm serve` (the OpenAI server entry point) and the environment."""
    kv = kv_format_flags(pool.kv_format)
    args = (
        "--model",
        model_path(pool),
        "--served-model-name",
        pool.model_name,
        "--port",
        str(port),
        "--max-model-len",
        str(pool.max_model_len),
        "--tensor-parallel-size",
        str(pool.tensor_parallel),
        "--pipeline-parallel-size",
        str(pool.pipeline_parallel),
        "--gpu-memory-utilization",
        f"{pool.gpu_memory_utilization:g}",
        "--dtype",
        "bfloat16" if pool.weight_dtype == "bf16" else "auto",
        *kv.args,
    )
    env = (("HF_HOME", f"{MODELS_DIR}/.hf"), *kv.env)
    return ServerSpec(args, env)
