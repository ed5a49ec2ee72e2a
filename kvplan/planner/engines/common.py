"""What every engine's sizing shares: the KV geometry of a model's layers, a speculative draft, a
window/eviction budget, engine-specific `--engine-arg` values, and the result (`EngineSizing`).

The geometry comes from the planner's model spec (one definition of a model's layers): per layer,
KV heads, K and V head sizes and the sliding window, or the MLA latent. Each engine turns it into
its own bytes per token with its own element sizes (`sglang.py`, `trtllm.py`, `llamacpp.py`),
because their KV dtypes are not kvplan's formats: an engine's `fp8` is plain bytes with a
per-tensor scale outside the pool, and llama.cpp's q4_0 is a ggml block type.
Pure functions, torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvplan.errors import InputError, Unsupported
from kvplan.planner.engines.gguf import GgufFile
from kvplan.planner.gpus import GIB
from kvplan.planner.layers import Attention, LatentAttention, RecurrentState, SharedKV
from kvplan.planner.models import ModelSpec

MIB = 1 << 20


@dataclass(frozen=True)
class KVLayer:
    """What one decoder layer caches per token, as an engine sees it."""

    kv_heads: int  # whole model (before tensor parallel)
    k_dim: int  # K elements per head (MLA: the latent, kv_lora_rank + qk_rope_head_dim)
    v_dim: int  # V elements per head (MLA: 0, the latent serves both)
    window: int | None = None  # sliding window in tokens, None for full attention

    @property
    def latent(self) -> bool:
        return self.v_dim == 0

    def heads_per_rank(self, tp: int) -> int:
        """KV heads on one rank: split when they divide, replicated (one each) when fewer than
        ranks; an MLA latent is replicated on every rank."""
        if self.latent:
            return 1
        if self.kv_heads % tp and tp % self.kv_heads:
            raise InputError(f"tensor parallel {tp} and {self.kv_heads} KV heads: one must divide the other")
        return max(1, self.kv_heads // tp)

    def k_elements(self, tp: int) -> int:
        return self.heads_per_rank(tp) * self.k_dim

    def v_elements(self, tp: int) -> int:
        return self.heads_per_rank(tp) * self.v_dim


def kv_layers(model: ModelSpec, pipeline_parallel: int = 1, engine: str = "") -> tuple[KVLayer, ...]:
    """The KV layers of the largest pipeline stage (layers split evenly, the first stage largest),
    from the model's layer specs (`kvplan.planner.layers`). What the engines' sizing does not model
    (recurrent state, chunked local attention, KV shared across layers) is an exit 2."""
    if pipeline_parallel <= 0 or pipeline_parallel > model.layers:
        raise InputError(f"pipeline parallel {pipeline_parallel} must be in 1..{model.layers} layers")
    per_stage = math.ceil(model.layers / pipeline_parallel)
    who = engine or "this engine"
    out: list[KVLayer] = []
    for spec in model.layer_specs[:per_stage]:
        if isinstance(spec, Attention):
            if spec.chunk is not None:
                raise Unsupported(
                    f"{model.name}: chunked local attention is not modelled for {who}; "
                    "size it with --engine vllm"
                )
            out.append(KVLayer(spec.kv_heads, spec.head_dim, spec.head_dim, spec.window))
        elif isinstance(spec, LatentAttention):
            out.append(KVLayer(1, spec.latent_dim, 0))
        elif isinstance(spec, RecurrentState):
            raise Unsupported(
                f"{model.name}: recurrent-state layers ({spec.mixer.value}) are not modelled for {who}; "
                "size it with --engine vllm"
            )
        elif isinstance(spec, SharedKV) and engine != "llamacpp":
            # llama.cpp reuses the source layer's cache (Gemma-3n); the others are not modelled
            raise Unsupported(f"{model.name}: KV shared across layers is not modelled for {who}")
        # NoCache: an MLP/MoE-only block caches nothing
    return tuple(out)


def layer_params(model: ModelSpec) -> float:
    """Parameters of one decoder layer (all but embeddings and LM head, shared out evenly)."""
    return max(model.params - model.embedding_params, 0) / model.layers


@dataclass(frozen=True)
class Draft:
    """A speculative-decoding draft: a separate small model, or EAGLE/MTP heads that run at the
    target's geometry. Its weights join the target's and its KV joins each sequence."""

    name: str
    kind: str  # "model", "eagle" or "mtp"
    layers: tuple[KVLayer, ...]
    weight_bytes: int  # whole draft, before tensor parallel
    kv_dtype: str | None = None  # engine KV dtype of the draft cache (None: the target's)
    model: ModelSpec | None = None  # the draft model, when it is one


def draft_model(model: ModelSpec, weight_bytes: int, kv_dtype: str | None = None) -> Draft:
    return Draft(model.name, "model", kv_layers(model), weight_bytes, kv_dtype, model)


def draft_heads(
    target: ModelSpec, kind: str, n_layers: int, weight_bytes: int | None, kv_dtype: str | None = None
) -> Draft:
    """EAGLE/EAGLE-3/MTP: `n_layers` decoder layers at the target's KV geometry. Weights: those
    layers in 16 bits, plus EAGLE-3's fusion of three hidden states (3h x h), unless given."""
    if kind not in ("eagle", "mtp"):
        raise InputError(f"draft kind must be model, eagle or mtp, got {kind!r}")
    if n_layers <= 0:
        raise InputError(f"--draft-layers must be positive, got {n_layers}")
    layers = kv_layers(target)[-1:] * n_layers  # the heads attend like the last layer
    if weight_bytes is None:
        fusion = 3 * target.hidden_size * target.hidden_size if kind == "eagle" else 0
        weight_bytes = round((n_layers * layer_params(target) + fusion) * 2)
    return Draft(f"{kind} x{n_layers}", kind, layers, weight_bytes, kv_dtype)


@dataclass(frozen=True)
class Budget:
    """A window/eviction what-if: what one sequence keeps in the cache.

    window: StreamingLLM (the last `tokens` + `sink` first tokens); budget: H2O-style, a fixed
    `tokens` per sequence (heavy hitters + recent), whatever the length.
    """

    kind: str  # "window" or "budget"
    tokens: int
    sink: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("window", "budget"):
            raise InputError(f"budget kind must be window or budget, got {self.kind!r}")
        if self.tokens <= 0 or self.sink < 0:
            raise InputError("--window/--kv-budget must be positive and --sink-tokens not negative")
        if self.kind == "budget" and self.sink:
            raise InputError("--sink-tokens applies to --window, not to --kv-budget")

    def held(self, length: int) -> int:
        """Tokens a sequence of `length` tokens keeps."""
        return min(length, self.tokens + self.sink)

    @property
    def spec(self) -> str:
        """The plan's `kv_budget` form: `window:4096+4` or `budget:2048`."""
        return f"window:{self.tokens}+{self.sink}" if self.kind == "window" else f"budget:{self.tokens}"

    @property
    def label(self) -> str:
        if self.kind == "window":
            return f"window {self.tokens:,}" + (f" + {self.sink} sink" if self.sink else "")
        return f"budget {self.tokens:,} per sequence"


def ceil_to(n: int, page: int) -> int:
    return -(-n // page) * page


@dataclass(frozen=True)
class EngineArgs:
    """`--engine-arg key=value,...`: the engine's own knobs, each validated by the engine."""

    values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> EngineArgs:
        out: dict[str, str] = {}
        for part in (text or "").split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise InputError(f"bad --engine-arg {part!r}: use key=value[,key=value]")
            out[key.strip().replace("-", "_")] = value.strip()
        return cls(out)

    def check(self, engine: str, known: Mapping[str, str]) -> None:
        """Every key is one the engine reads (`known`: key -> help)."""
        for key in self.values:
            if key not in known:
                listing = "; ".join(f"{k} ({v})" for k, v in known.items())
                raise InputError(f"--engine-arg {key!r} is not a {engine} setting; {engine} takes: {listing}")

    def _get(self, key: str, kind: Callable[[str], Any], default: Any) -> Any:
        if key not in self.values:
            return default
        try:
            return kind(self.values[key])
        except ValueError:
            raise InputError(
                f"--engine-arg {key}={self.values[key]!r} is not a valid {kind.__name__}"
            ) from None

    def number(self, key: str, default: float | None = None) -> float | None:
        value = self._get(key, float, default)
        if value is not None and not value >= 0:
            raise InputError(f"--engine-arg {key} must not be negative, got {value}")
        return None if value is None else float(value)

    def integer(self, key: str, default: int | None = None) -> int | None:
        value = self._get(key, int, default)
        if value is not None and value < 0:
            raise InputError(f"--engine-arg {key} must not be negative, got {value}")
        return None if value is None else int(value)

    def gib(self, key: str) -> int | None:
        """A GiB figure (as engines log them) in bytes."""
        value = self.number(key)
        return None if value is None else round(value * GIB)

    def flag(self, key: str, default: bool = False) -> bool:
        text = self.values.get(key)
        if text is None:
            return default
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"--engine-arg {key}={text!r}: use true or false")


@dataclass(frozen=True)
class Replica:
    """What one replica is asked to serve: the input of every engine's `size(model, gpu, dtype, replica)`."""

    max_model_len: int
    weight_bytes: int  # the whole model's, before tensor parallel
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    args: EngineArgs = field(default_factory=EngineArgs)
    draft: Draft | None = None
    budget: Budget | None = None
    activation_bytes: int | None = None  # TensorRT-LLM: a measured profile peak, instead of the estimate
    gguf: GgufFile | None = None  # llama.cpp: the file's tensors place the weights per device


@dataclass(frozen=True)
class EngineSizing:
    """One engine, one KV dtype: the pool it allocates and what that holds.

    `kv_tokens` is the engine's own figure (SGLang max_total_num_tokens, TensorRT-LLM's max tokens in
    paged KV cache, llama.cpp's cells); `tokens_per_request` is what one max_model_len request takes
    there (page-rounded, window/budget applied); `max_requests` the requests that fit at once.
    """

    engine: str
    kv_dtype: str
    max_model_len: int
    tensor_parallel: int
    bytes_per_token: float  # one token slot on one rank, all layers (+ the draft's)
    draft_bytes_per_token: float
    kv_bytes: int  # the KV pool on one GPU
    kv_tokens: int
    page_tokens: int
    tokens_per_request: int
    max_requests: int
    running_limit: int | None  # the engine's own cap on running requests, when it sets one
    fits: bool  # the engine starts and serves one max_model_len request
    memory: tuple[tuple[str, int], ...]  # the terms of its budget, bytes per GPU
    log: tuple[str, ...]  # what the engine prints about it
    notes: tuple[str, ...] = ()
    budget: Budget | None = None
    draft: Draft | None = None

    @property
    def concurrency(self) -> float:
        return self.kv_tokens / self.tokens_per_request if self.tokens_per_request else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "kv_dtype": self.kv_dtype,
            "max_model_len": self.max_model_len,
            "tensor_parallel": self.tensor_parallel,
            "bytes_per_token": self.bytes_per_token,
            "draft_bytes_per_token": self.draft_bytes_per_token,
            "kv_bytes": self.kv_bytes,
            "kv_gib": round(self.kv_bytes / GIB, 2),
            "kv_tokens": self.kv_tokens,
            "page_tokens": self.page_tokens,
            "tokens_per_request": self.tokens_per_request,
            "max_requests": self.max_requests,
            "concurrency": round(self.concurrency, 2),
            "running_limit": self.running_limit,
            "fits": self.fits,
            "memory_per_gpu": {name: value for name, value in self.memory},
            "engine_log": list(self.log),
            "budget": None if self.budget is None else self.budget.label,
            "draft": None
            if self.draft is None
            else {"name": self.draft.name, "kind": self.draft.kind, "weight_bytes": self.draft.weight_bytes},
            "notes": list(self.notes),
        }


def tokens_per_request(max_model_len: int, page: int, budget: Budget | None) -> int:
    held = budget.held(max_model_len) if budget else max_model_len
    return ceil_to(held, page)


def check_dtype(engine: str, dtype: str, offered: Mapping[str, Any], hint: str = "") -> None:
    """An engine/dtype pair the engine does not offer is an exit 2 naming what it offers."""
    if dtype not in offered:
        raise Unsupported(
            f"{engine} does not offer KV dtype {dtype!r}; {engine} supports: {', '.join(offered)}" + hint
        )
