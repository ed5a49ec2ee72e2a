"""`kvplan plan --engine`: a bucket's pools sized on SGLang, TensorRT-LLM or llama.cpp.

The fleet planner needs of a replica what vLLM's `Capacity` gives it: usable blocks, the block
size, whether a bucket-length request fits, the guaranteed concurrency and the engine's cap on
running requests. `EnginePoolCapacity` reads those from the engine's own sizing. Decode speed
(the roofline) needs bytes per token: an engine dtype is timed as the kvplan format of the same
width (`roofline_format`), which is what the roofline reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvplan.errors import InputError, Unsupported
from kvplan.planner.engines import engine_name
from kvplan.planner.engines.common import Budget, EngineSizing, Replica
from kvplan.planner.engines.report import UNQUANTIZED, EngineRequest, default_dtypes, run
from kvplan.planner.gpus import GpuSpec
from kvplan.planner.memory import weight_bytes
from kvplan.planner.models import ModelSpec

BASELINE = {"sglang": "auto", "trtllm": "auto", "llamacpp": "f16"}


@dataclass(frozen=True)
class EnginePoolCapacity:
    sizing: EngineSizing

    @property
    def fits(self) -> bool:
        return self.sizing.fits

    @property
    def block_size(self) -> int:
        return self.sizing.page_tokens

    @property
    def usable_blocks(self) -> int:
        return self.sizing.kv_tokens // self.sizing.page_tokens

    @property
    def guaranteed_concurrency(self) -> int:
        return self.sizing.max_requests

    @property
    def kv_tokens(self) -> int:
        return self.sizing.kv_tokens

    @property
    def max_model_len(self) -> int:
        return self.sizing.max_model_len

    @property
    def running_limit(self) -> int:
        return self.sizing.running_limit or self.sizing.max_requests


def candidates(engine: str, gpu: GpuSpec) -> tuple[str, ...]:
    """The engine's quantized KV dtypes kvplan tries by default (its baseline excluded)."""
    return tuple(d for d in default_dtypes(engine, gpu) if d != BASELINE[engine])


def roofline_format(dtype: str) -> str:
    """The kvplan format whose bytes per value the roofline uses for an engine dtype."""
    k = dtype.split("/")[0]
    if k in UNQUANTIZED:
        return "bf16"
    if k.startswith(("q4", "iq4", "nvfp4", "fp4")):
        return "int4"
    if k in ("fp8", "fp8_e4m3", "fp8_e5m2", "mxfp8"):
        return "fp8_e4m3"
    return "int8"  # int8, q8_0, q5_x (5-8 bits: the 8-bit figure, conservative)


def engine_capacity(
    model: ModelSpec,
    gpu: GpuSpec,
    engine: str,
    dtype: str,
    *,
    max_model_len: int,
    tensor_parallel: int,
    weight_dtype: str,
    budget: Budget | None = None,
) -> EnginePoolCapacity | None:
    """One replica on `engine` (None when it cannot be sized at this TP: the fleet tries another)."""
    try:
        weights = weight_bytes(model, weight_dtype, tensor_parallel=tensor_parallel)
        replica = Replica(max_model_len, weights, tensor_parallel, budget=budget)
        report = run(EngineRequest(model, gpu, engine_name(engine), (dtype,), replica))
    except Unsupported:
        raise  # what the engine cannot do (a dtype, a GPU feature) is the user's to fix, not a TP to skip
    except InputError:
        return None
    return EnginePoolCapacity(report.rows[0].sizing)
