"""Model shapes for sizing: a model's layers (what each caches), its parameters and weight storage.

A `ModelSpec` is built from config.json fields (a catalog entry uses the same vocabulary), so a
catalog name, a config.json path and a model directory all go through `spec_from_config`. The
layers come from `architectures.layer_specs` (one rule per model family, `Unsupported` for what
kvplan does not model), parameters from `weights.count_params`, the weight storage from the
checkpoint's quantization_config or, in a model directory, its safetensors headers.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvplan.errors import InputError, NotFound, Unsupported, closest
from kvplan.planner.architectures import layer_specs, normalize_config
from kvplan.planner.catalog import ALIASES, CATALOG
from kvplan.planner.config_fields import check_config_types
from kvplan.planner.layers import Attention, LatentAttention, Layer, LayerKind, RecurrentState
from kvplan.planner.weights import (
    ParamCounts,
    WeightQuant,
    checkpoint_bytes,
    count_params,
    quant_of,
    vision_params,
)


class AttentionKind(enum.Enum):
    MHA = "mha"  # KV heads == query heads
    GQA = "gqa"  # fewer KV heads than query heads
    MLA = "mla"  # one shared compressed latent (DeepSeek)
    NONE = "none"  # attention-free (Mamba)


_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int  # num_hidden_layers
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int  # of the attention layers (1 for MLA's latent)
    head_dim: int
    vocab_size: int
    intermediate_size: int  # the largest MLP width (activation estimate)
    attention: AttentionKind
    layer_specs: tuple[Layer, ...]  # what each layer caches, in order (layers.py)
    param_counts: ParamCounts
    quant: WeightQuant
    # MoE: routed experts, experts active per token, each expert's intermediate size.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None
    weight_bytes: int | None = None  # exact, from safetensors headers, when known
    ssm_dtype_bytes: int | None = None  # SSM state element bytes when not the model dtype
    hf_id: str | None = None
    source: str = "catalog"
    published_params: int | None = None  # the catalog's published count, for the tests
    assumptions: tuple[str, ...] = field(default=())
    derived_max_model_len: int | None = None  # the longest max_model_len vLLM accepts
    default_max_model_len: int = 2048  # vLLM's max_model_len when none is given
    max_len_key: str = "max_position_embeddings"

    @property
    def is_mla(self) -> bool:
        return self.attention is AttentionKind.MLA

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_hybrid(self) -> bool:
        return any(isinstance(x, RecurrentState) for x in self.layer_specs)

    @property
    def params(self) -> int:
        return self.param_counts.total

    @property
    def embedding_params(self) -> int:
        return self.param_counts.embed + self.param_counts.lm_head

    @property
    def mla_latent_dim(self) -> int:
        return next((x.latent_dim for x in self.layer_specs if isinstance(x, LatentAttention)), 0)

    @property
    def layer_windows(self) -> tuple[int | None, ...]:
        """Per attention layer: the sliding window or attention chunk in tokens, None for global."""
        return tuple(
            x.window if x.window is not None else x.chunk
            for x in self.layer_specs
            if isinstance(x, Attention)
        ) or tuple(None for x in self.layer_specs if isinstance(x, LatentAttention))

    @property
    def sliding_layers(self) -> int:
        return sum(x.kind in (LayerKind.SLIDING, LayerKind.CHUNKED) for x in self.layer_specs)

    @property
    def attention_layers(self) -> int:
        return sum(isinstance(x, Attention | LatentAttention) for x in self.layer_specs)

    @property
    def expert_params(self) -> int:
        """Parameters in routed experts (the part a decode step reads only partly)."""
        return self.param_counts.experts

    @property
    def active_params(self) -> int:
        """Parameters touched per token (all of them for dense models)."""
        if not self.is_moe:
            return self.params
        return self.params - round(self.expert_params * (1 - self.experts_per_token / self.num_experts))

    @property
    def native_weight_dtype(self) -> str:
        """The checkpoint's weight storage as a --weight-dtype name."""
        return {"none": "bf16", "fp8-block": "fp8", "nf4": "int4"}.get(self.quant.method, self.quant.method)


_REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Multimodal checkpoints (Gemma 3/3n, Llama-4, Mistral Small 3.x) nest the language model's
    config; its fields win, the outer quantization_config and vision_config are kept."""
    inner = cfg.get("text_config") or cfg.get("llm_config")
    if isinstance(inner, dict) and "num_hidden_layers" in inner:
        merged = {**cfg, **inner}
        merged.pop("text_config", None)
        merged["vision_config"] = cfg.get("vision_config")
        if "quantization_config" in cfg and "quantization_config" not in inner:
            merged["quantization_config"] = cfg["quantization_config"]
        return merged
    return cfg


def _positive(cfg: dict[str, Any], key: str, source: str) -> int:
    if key not in cfg or cfg[key] is None:
        raise InputError(f"{source}: config.json has no {key!r} (needed to size the KV cache)")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{source}: config.json field {key!r} must be a positive integer, got {value!r}")
    return value


def _widest_mlp(cfg: dict[str, Any], hidden: int, source: str) -> int:
    """intermediate_size: an integer, or a list per layer (Gemma-3n): the widest is what the
    activation estimate needs."""
    v = cfg.get("intermediate_size")
    if v is None:
        return 4 * hidden
    if isinstance(v, list):
        if not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
            raise InputError(f"{source}: config.json field 'intermediate_size' must be positive integers")
        return int(max(v))
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InputError(
            f"{source}: config.json field 'intermediate_size' must be a positive integer, got {v!r}"
        )
    return v


def _attention_kind(layers: tuple[Layer, ...], heads: int) -> tuple[AttentionKind, int, int | None]:
    first = next((x for x in layers if isinstance(x, Attention | LatentAttention)), None)
    if first is None:
        return AttentionKind.NONE, 0, None
    if isinstance(first, LatentAttention):
        return AttentionKind.MLA, 1, None
    kind = AttentionKind.MHA if first.kv_heads == heads else AttentionKind.GQA
    return kind, first.kv_heads, first.head_dim


_MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                  "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")  # fmt: skip
# RoPE types whose max_position_embeddings is already the scaled length (no factor applied).
_PRESCALED_ROPE = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


def _rope(cfg: dict[str, Any]) -> dict[str, Any]:
    rp = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    return rp if isinstance(rp, dict) else {}


def max_len_limits(cfg: dict[str, Any]) -> tuple[int | None, int, str]:
    """(the longest max_model_len vLLM accepts, its default, the config key it comes from), as
    vLLM's `_get_and_verify_max_len`: the smallest length key, times the RoPE factor unless the
    RoPE type already scales it (or Gemma 3); LongRoPE defaults to the original length."""
    found = [
        (int(cfg[k]), k)
        for k in _MAX_LEN_KEYS
        if isinstance(cfg.get(k), int) and not isinstance(cfg.get(k), bool)
    ]
    if cfg.get("model_max_length"):
        found = [(int(cfg["model_max_length"]), "model_max_length")]
    if not found:
        return None, 2048, "default"
    derived, key = min(found)
    rope = _rope(cfg)
    kind = str(rope.get("rope_type") or rope.get("type") or "default")
    if (
        rope
        and kind not in _PRESCALED_ROPE
        and "gemma3" not in str(cfg.get("model_type"))
        and rope.get("factor")
    ):
        derived = int(derived * float(rope["factor"]))
    default = derived
    if kind == "longrope" and cfg.get("original_max_position_embeddings"):
        default = int(cfg["original_max_position_embeddings"])
    return derived, default, key


def check_max_model_len(model: ModelSpec, max_model_len: int, *, allow_long: bool = False) -> None:
    """vLLM refuses a max_model_len above the model's derived length (VLLM_ALLOW_LONG_MAX_MODEL_LEN)."""
    limit = model.derived_max_model_len
    if limit is not None and max_model_len > limit and not allow_long:
        raise InputError(
            f"max_model_len {max_model_len} is greater than {model.name}'s context length {limit} "
            f"({model.max_len_key}); vLLM refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 "
            "(pass --allow-long-max-model-len to size it anyway)"
        )


def _ssm_dtype(cfg: dict[str, Any]) -> int | None:
    """Nemotron-H keeps its SSM state in the config's mamba_ssm_cache_dtype, fp32 by default
    (vllm/model_executor/models/config.py NemotronHForCausalLMConfig)."""
    if cfg.get("model_type") != "nemotron_h":
        return None
    return _DTYPE_BYTES.get(str(cfg.get("mamba_ssm_cache_dtype") or "float32"), 4)


def spec_from_config(
    cfg: dict[str, Any], name: str, source: str = "catalog", *, assume_full_attention: bool = False
) -> ModelSpec:
    """Build a ModelSpec from config.json fields; a missing or malformed field is named."""
    for nested in ("text_config", "llm_config"):
        if cfg.get(nested) is not None and not isinstance(cfg[nested], dict):
            raise InputError(
                f"{source}: config.json field {nested!r} must be an object, got {cfg[nested]!r:.60}"
            )
    cfg = _text_config(cfg)
    check_config_types(cfg, source)
    cfg = normalize_config(cfg)
    for key in _REQUIRED:
        _positive(cfg, key, source)
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    layers = layer_specs(cfg, source, assume_full_attention=assume_full_attention)
    kind, kv_heads, head_dim = _attention_kind(layers, heads)
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0)
    inter = _widest_mlp(cfg, hidden, source)
    try:
        quant = quant_of(cfg, source)
    except Unsupported as exc:  # refused when the weights are needed, unless --weight-dtype or files say
        quant = WeightQuant("unknown", 0.0, (), str(exc))
    counts = count_params(cfg, layers, vision_params(cfg))
    published = int(cfg["params"]) if cfg.get("params") else None
    assumptions = (
        ("every layer sized as full attention (--assume-full-attention)",) if assume_full_attention else ()
    )
    derived, default_len, len_key = max_len_limits(cfg)
    return ModelSpec(
        name=name,
        layers=int(cfg["num_hidden_layers"]),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim or int(cfg.get("head_dim") or hidden // heads),
        vocab_size=int(cfg["vocab_size"]),
        intermediate_size=inter,
        attention=kind,
        layer_specs=layers,
        param_counts=counts,
        quant=quant,
        num_experts=experts,
        experts_per_token=int(cfg.get("num_experts_per_tok") or cfg.get("moe_topk") or 0) if experts else 0,
        moe_intermediate_size=int(cfg.get("moe_intermediate_size") or inter) if experts else 0,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings"),
        ssm_dtype_bytes=_ssm_dtype(cfg),
        hf_id=cfg.get("hf_id") or cfg.get("_name_or_path") or None,
        source=source,
        published_params=published,
        assumptions=assumptions,
        derived_max_model_len=derived,
        default_max_model_len=default_len,
        max_len_key=len_key,
    )


def safetensors_bytes(model_dir: Path) -> int | None:
    """Exact weight bytes of a checkpoint directory (see `weights.checkpoint_bytes`)."""
    return checkpoint_bytes(model_dir)


def _load_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: config.json must be a JSON object")
    return data


def get_model(name_or_path: str, *, assume_full_attention: bool = False) -> ModelSpec:
    """A catalog name, a config.json path, or a model directory (exact weight bytes from its
    safetensors headers when present)."""
    key = name_or_path.strip().lower()
    key = ALIASES.get(key, key)
    full = assume_full_attention
    if key in CATALOG:
        return spec_from_config(CATALOG[key], key, assume_full_attention=full)
    path = Path(name_or_path)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise InputError(f"{path}: model directory has no config.json")
        spec = spec_from_config(_load_config(cfg_path), path.name, str(cfg_path), assume_full_attention=full)
        exact = checkpoint_bytes(path, spec.layers)
        return replace(spec, weight_bytes=exact) if exact is not None else spec
    if path.is_file():
        return spec_from_config(
            _load_config(path), path.parent.name or path.stem, str(path), assume_full_attention=full
        )
    raise NotFound(f"unknown model {name_or_path!r}" + closest(key, [*CATALOG, *ALIASES]))
