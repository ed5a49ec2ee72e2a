"""How one pool's vLLM server is started in a container: arguments and environment.

Shared by the Kubernetes and compose renderers so that a pool starts the same way everywhere.
KV formats vLLM has natively (bf16, fp16, fp8_e4m3) use `--kv-cache-dtype`; kvplan's own formats
(int8, int4, mixed) run through the kvplan attention backend, selected with `--attention-backend
CUSTOM` and told its format through the environment (vLLM rejects plain `int8`/`int4` dtypes).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvplan.errors import KvplanError
from kvplan.plan import Pool
from kvplan.planner.models import get_model
from kvplan.vllm_command import Device, LaunchOptions, replica_argv

VLLM_PORT = 8000
MODELS_DIR = "/models"
VLLM_VERSION = "v0.33.0"


@dataclass(frozen=True)
class ServerSpec:
    command: tuple[str, ...]  # python3 -m <vLLM's OpenAI server module>
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


def model_path(pool: Pool) -> str:
    """What vLLM's --model gets: a path or Hugging Face id as given; a catalog name becomes its
    Hugging Face id (downloaded into HF_HOME on the models volume), else a directory there."""
    if "/" in pool.model:
        return pool.model
    try:
        hf_id = get_model(pool.model).hf_id
    except KvplanError:
        hf_id = None
    return hf_id or f"{MODELS_DIR}/{pool.model}"


def server_spec(pool: Pool, port: int = VLLM_PORT) -> ServerSpec:
    """Arguments after the OpenAI server entry point and the environment: the same command line
    `kvplan workers up` runs on a GPU host (`kvplan.vllm_command.replica_argv`), listening on all
    interfaces inside the container."""
    opts = LaunchOptions(device=Device.CUDA, python="python3", host="0.0.0.0")
    argv, env = replica_argv(pool, model_path(pool), port, opts)
    command, args = tuple(argv[:3]), tuple(argv[3:])
    return ServerSpec(command, args, (("HF_HOME", f"{MODELS_DIR}/.hf"), *sorted(env.items())))
