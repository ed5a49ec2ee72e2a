"""What each engine process of the GPU harness runs, and the named sets of them.

One `EngineConfig` is one vLLM engine in one process (a second `LLM(...)` in the same process
fails on torch.distributed's groups). A set is an ordered list of configs, run by `run.py` in
that order (its references first); the order is the priority when a call's deadline cuts a set.

Add a set by writing a function that returns a list of configs and naming it in `SETS`.
Nothing here imports vLLM or torch (only kvplan's format names): the runner and the report read
these on any machine.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvplan.formats import VLLM_KV_DTYPE_FORMAT

MODELS = Path(__file__).resolve().parent / "models"
LLAMA_8B = "llama-3.1-8b"  # models/<name>.json is a config.json; load_format dummy gives weights
SMALL = "llama-8b-attention-2l"  # Llama-3.1-8B's attention shapes in 2 small layers: quick starts
SMOLLM2_DIR = "/tmp/kvplan-smol/ckpt"  # converted on the GPU machine by smollm2.sh (real weights)

# Decode points (the targets): (a) 32 sequences x 16K, (b) as many 32K sequences as the
# cache holds. Each point decodes WARM_STEPS untimed steps, then MEASURED_STEPS timed ones.
WARM_STEPS = 8
MEASURED_STEPS = 24
DECODE_TOKENS = WARM_STEPS + MEASURED_STEPS
CONTEXT_A, BATCH_A = 16384, 32
CONTEXT_B = 32768
MAX_MODEL_LEN = CONTEXT_B + DECODE_TOKENS  # every 32K point request fits, decode included

# request-id prefixes: the logits tap records/forces "corr." requests; the fill connector
# provides the context of "fill." requests (decode points)
TAP_PREFIX = "corr."
FILL_PREFIX = "fill."

ATTENTIONS = ("vllm", "kvplan")  # vLLM's own TRITON_ATTN, or kvplan's plugin (backend CUSTOM)
PHASES = ("correct", "prefill", "decode")


@dataclass(frozen=True)
class DecodePoint:
    name: str
    context: int  # prompt tokens per sequence, written by the fill connector (no prefill compute)
    batch: int | None  # sequences; None: as many as the KV cache holds at this context


POINT_A = DecodePoint("a", CONTEXT_A, BATCH_A)
POINT_B = DecodePoint("b", CONTEXT_B, None)


@dataclass(frozen=True)
class EngineConfig:
    name: str  # unique in its set; also the result file's name
    attention: str  # "vllm" or "kvplan"
    kv_cache_dtype: str = "auto"  # vLLM's --kv-cache-dtype (kvplan pools always run auto)
    kv_format: str | None = None  # kvplan's format (attention "kvplan")
    model: str = LLAMA_8B  # a name in models/ or a model directory on the GPU machine
    load_format: str = "dummy"
    dtype: str = "bfloat16"
    max_model_len: int = MAX_MODEL_LEN
    gpu_memory_utilization: float = 0.92
    block_size: int | None = 16  # None: vLLM's default (128 on CPU)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 16384
    cuda_graphs: bool = False  # full CUDA graphs for decode batches, torch.compile off
    phases: tuple[str, ...] = ("correct", "prefill", "decode")
    # correctness: the reference saves its greedy tokens and logits; every other config of the
    # set replays those tokens (teacher forcing) and compares its logits with them
    reference: bool = False
    prompts: str = "random"  # "random" token ids, or "chat": the project's chat prompts (real model)
    correct_tokens: int = 16  # decode steps compared per prompt
    correct_scale: float = 1.0  # scales the random prompts' lengths (CPU dry runs: small)
    prefill_prompts: int = 4  # real prefill: distinct random prompts of prefill_len tokens
    prefill_len: int = 16000
    points: tuple[DecodePoint, ...] = (POINT_A, POINT_B)
    profile_point: str | None = None  # profile one decode step at this point (eager CPU overhead)
    timeout_s: int = 300
    seed: int = 0
    engine_args: Mapping[str, Any] = field(default_factory=dict)  # more LLM(...) arguments

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"{self.name}: attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if (self.attention == "kvplan") != (self.kv_format is not None):
            raise ValueError(f"{self.name}: kv_format is set exactly when attention is 'kvplan'")
        if self.attention == "kvplan" and self.kv_cache_dtype != "auto":
            raise ValueError(f"{self.name}: kvplan pools run with kv_cache_dtype auto")
        unknown = set(self.phases) - set(PHASES)
        if unknown:
            raise ValueError(f"{self.name}: unknown phases {sorted(unknown)}; known: {PHASES}")
        if self.profile_point is not None and self.profile_point not in {p.name for p in self.points}:
            raise ValueError(f"{self.name}: profile_point {self.profile_point!r} is not one of its points")
        longest = max((p.context for p in self.points), default=0)
        if "decode" in self.phases and longest + DECODE_TOKENS > self.max_model_len:
            raise ValueError(f"{self.name}: a decode point does not fit max_model_len {self.max_model_len}")

    @property
    def label(self) -> str:
        what = self.kv_format if self.attention == "kvplan" else self.kv_cache_dtype
        return f"{self.attention}:{what}" + (" +graphs" if self.cuda_graphs else "")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineConfig:
        d = json.loads(text)
        d["phases"] = tuple(d["phases"])
        d["points"] = tuple(DecodePoint(**p) for p in d["points"])
        return cls(**d)


def vllm_config(kv_cache_dtype: str, **kw: Any) -> EngineConfig:
    return EngineConfig(name=f"vllm-{kv_cache_dtype}", attention="vllm", kv_cache_dtype=kv_cache_dtype, **kw)


def kvplan_config(kv_format: str, **kw: Any) -> EngineConfig:
    return EngineConfig(name=f"kvplan-{kv_format}", attention="kvplan", kv_format=kv_format, **kw)


def with_graphs(cfg: EngineConfig) -> EngineConfig:
    return dataclasses.replace(cfg, name=f"{cfg.name}-graphs", cuda_graphs=True)


KVPLAN_FORMATS = ("bf16", "fp8_e4m3", "int8", "int8_hadamard", "k8v4", "int4_hadamard")
VLLM_DTYPES = ("auto", "fp8", "int8_per_token_head", "int4_per_token_head")
VLLM_SAME_BYTES = VLLM_KV_DTYPE_FORMAT  # the kvplan format with the bytes of each vLLM dtype


def discovery() -> list[EngineConfig]:
    """First call on CUDA (< 4 min): every kvplan format through the plugin on a small model with
    Llama-8B's attention shapes (starts in seconds; run 4 at a time), one graph-captured config,
    then the headline 8B config end to end, whose timings size the measurement calls."""
    small = dict(model=SMALL, prefill_prompts=2, prefill_len=3000, timeout_s=150,
                 points=(DecodePoint("a", 2048, 8),),
                 engine_args={"kv_cache_memory_bytes": 4 << 30, "gpu_memory_utilization": 0.1})  # fmt: skip
    small_cfgs = [vllm_config("auto", reference=True, **small)]
    small_cfgs += [kvplan_config(f, **small) for f in KVPLAN_FORMATS]
    small_cfgs += [
        with_graphs(kvplan_config("int4_hadamard", **small)),
        vllm_config("int4_per_token_head", **small),
    ]
    big = kvplan_config("int4_hadamard", phases=("prefill", "decode"), profile_point="a", timeout_s=200)
    big = dataclasses.replace(big, name="kvplan-int4_hadamard-8b")
    return [*small_cfgs, big]


def measure1() -> list[EngineConfig]:
    """Measurement call 1: the headline comparisons (bf16 both ways, the INT4s, INT8)."""
    return [
        vllm_config("auto", reference=True, profile_point="a"),
        kvplan_config("bf16"),
        kvplan_config("int4_hadamard", profile_point="a"),
        vllm_config("int4_per_token_head"),
        kvplan_config("int8"),
        vllm_config("int8_per_token_head"),
    ]


def measure2() -> list[EngineConfig]:
    """Measurement call 2: the rest of the formats and CUDA graphs. vLLM bf16 again first: the
    correctness reference of this call and the run-to-run spread of the speed figures."""
    return [
        vllm_config("auto", reference=True),
        kvplan_config("int8_hadamard"),
        kvplan_config("k8v4"),
        kvplan_config("fp8_e4m3"),
        vllm_config("fp8"),
        with_graphs(kvplan_config("int4_hadamard", phases=("correct", "decode"))),
        with_graphs(vllm_config("auto", phases=("correct", "decode"))),
    ]


def measure() -> list[EngineConfig]:
    """Every format's speed and capacity on the 8B shapes in priority order, decode only (the
    logits are checked on the same attention shapes by `discovery`): a call's deadline cuts the
    tail, and the next call runs what was cut with --only. Prefill and a profiled step for the
    headline pair (vLLM bf16, kvplan INT4)."""
    decode = dict(phases=("decode",))
    headline = dict(phases=("prefill", "decode"), profile_point="a")
    return [
        vllm_config("auto", **headline),
        kvplan_config("int4_hadamard", **headline),
        vllm_config("int4_per_token_head", **decode),
        kvplan_config("bf16", **decode),
        kvplan_config("int8", **decode),
        vllm_config("int8_per_token_head", **decode),
        vllm_config("fp8", **decode),
        kvplan_config("fp8_e4m3", **decode),
        kvplan_config("k8v4", **decode),
        kvplan_config("int8_hadamard", **decode),
        with_graphs(kvplan_config("int4_hadamard", **decode)),
        with_graphs(vllm_config("auto", **decode)),
    ]


def graphs() -> list[EngineConfig]:
    """Decode with CUDA graphs (vLLM's decode-only capture) on the 8B shapes, headline formats
    first: what a serving deployment runs, without the eager per-step CPU overhead."""
    decode = dict(phases=("decode",))
    return [
        with_graphs(vllm_config("auto", **decode)),
        with_graphs(kvplan_config("int4_hadamard", **decode)),
        with_graphs(vllm_config("int4_per_token_head", **decode)),
        with_graphs(kvplan_config("bf16", **decode)),
        with_graphs(kvplan_config("k8v4", **decode)),
        with_graphs(vllm_config("fp8", **decode)),
        with_graphs(kvplan_config("fp8_e4m3", **decode)),
        with_graphs(kvplan_config("int8", **decode)),
        with_graphs(vllm_config("int8_per_token_head", **decode)),
        with_graphs(kvplan_config("int8_hadamard", **decode)),
    ]


def smollm2() -> list[EngineConfig]:
    """SmolLM2-135M-Instruct (real weights, converted on the GPU machine): teacher-forced greedy
    agreement of kvplan's formats, and of vLLM's own quantized KV dtypes beside them, with vLLM's
    own bf16, on the project's chat prompts (kvplan bf16 first: greedy identity on real weights)."""
    real = dict(model=SMOLLM2_DIR, load_format="auto", prompts="chat", correct_tokens=64,
                phases=("correct",), max_model_len=4096, timeout_s=150)  # fmt: skip
    return [
        vllm_config("auto", reference=True, **real),
        kvplan_config("bf16", **real),
        kvplan_config("int8", **real),
        kvplan_config("int4_hadamard", **real),
        vllm_config("int8_per_token_head", **real),
        kvplan_config("fp8_e4m3", **real),
        vllm_config("fp8", **real),
        kvplan_config("k8v4", **real),
        kvplan_config("int8_hadamard", **real),
        vllm_config("int4_per_token_head", **real),
    ]


def cpu_small(**kw: Any) -> dict[str, Any]:
    """CPU dry runs (tests, this machine): a tiny model in fp32, small prompts and steps."""
    return dict(model="tiny-gqa-64", dtype="float32", block_size=None, max_model_len=2048,
                max_num_batched_tokens=256, max_num_seqs=16, correct_scale=0.05, correct_tokens=6,
                prefill_prompts=2, prefill_len=300, points=(DecodePoint("a", 256, 4),),
                engine_args={"kv_cache_memory_bytes": 1 << 27}, timeout_s=300, **kw)  # fmt: skip


def cpu() -> list[EngineConfig]:
    """vLLM's CPU build (.venv-vllm): its own attention as the reference, kvplan's plugin against it."""
    return [vllm_config("auto", reference=True, **cpu_small()), kvplan_config("int8", **cpu_small())]


def cpu_source() -> list[EngineConfig]:
    """vLLM's Python source on CPU (no compiled ops at all, so no vLLM attention): the plugin only."""
    return [kvplan_config("bf16", reference=True, **cpu_small()), kvplan_config("int8", **cpu_small()),
            kvplan_config("fp8_e4m3", **cpu_small())]  # fmt: skip


# name -> (configs, how many engines may run at once: only sets that time nothing run several)
SETS: dict[str, tuple[Callable[[], list[EngineConfig]], int]] = {
    "discovery": (discovery, 4),
    "measure1": (measure1, 1),
    "measure2": (measure2, 1),
    "measure": (measure, 1),
    "graphs": (graphs, 1),
    "smollm2": (smollm2, 1),
    "cpu": (cpu, 1),
    "cpu-source": (cpu_source, 1),
}


def get_set(name: str) -> tuple[list[EngineConfig], int]:
    if name not in SETS:
        raise KeyError(f"unknown config set {name!r}; known: {', '.join(SETS)}")
    make, parallel = SETS[name]
    cfgs = make()
    names = [c.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ValueError(f"set {name}: config names repeat: {names}")
    if any(c.reference for c in cfgs) and sum(c.reference for c in cfgs) != 1:
        raise ValueError(f"set {name}: at most one reference config")
    return cfgs, parallel
