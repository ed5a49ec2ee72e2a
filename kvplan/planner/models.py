"""Model shapes for sizing: what a model's KV cache and weights look like.

A `ModelSpec` is built from config.json fields (a catalog entry uses the same vocabulary), so a
catalog name, a config.json path and a model directory all go through `spec_from_config`.
KV heads come from `num_key_value_heads` (never `num_attention_heads`), head_dim from config
when present (Qwen3, Gemma differ from hidden / heads), and DeepSeek's `num_key_value_heads: 128`
is ignored because MLA caches one 576-element latent per token per layer.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvplan.errors import InputError, NotFound, closest
from kvplan.planner.catalog import ALIASES, CATALOG


class AttentionKind(enum.Enum):
    MHA = "mha"  # KV heads == query heads
    GQA = "gqa"  # fewer KV heads than query heads
    MLA = "mla"  # one shared compressed latent (DeepSeek)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    attention: AttentionKind
    # Per layer: the sliding window in tokens, or None for full attention.
    layer_windows: tuple[int | None, ...]
    # MLA: latent elements cached per token per layer (kv_lora_rank + qk_rope_head_dim).
    mla_latent_dim: int = 0
    # MoE: routed experts, experts active per token, each expert's intermediate size.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_experts: int = 0
    dense_layers: int = 0  # leading dense layers before the MoE layers (DeepSeek)
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None
    params: int = 0  # total parameters
    # Embedding + LM head parameters (kept in 16 bits by weight quantization schemes).
    embedding_params: int = 0
    weight_bytes: int | None = None  # exact, from safetensors headers, when known
    native_weight_dtype: str = "bf16"
    hf_id: str | None = None
    source: str = "catalog"

    @property
    def is_mla(self) -> bool:
        return self.attention is AttentionKind.MLA

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def sliding_layers(self) -> int:
        return sum(w is not None for w in self.layer_windows)

    @property
    def active_params(self) -> int:
        """Parameters touched per token (all of them for dense models)."""
        if not self.is_moe:
            return self.params
        per_expert = 3 * self.hidden_size * self.moe_intermediate_size
        moe_layers = self.layers - self.dense_layers
        idle = moe_layers * (self.num_experts - self.experts_per_token) * per_expert
        return self.params - idle

    @property
    def expert_params(self) -> int:
        """Parameters in routed experts (the part a decode step reads only partly)."""
        if not self.is_moe:
            return 0
        return (
            (self.layers - self.dense_layers)
            * self.num_experts
            * 3
            * self.hidden_size
            * (self.moe_intermediate_size)
        )


_REQUIRED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Multimodal checkpoints (Gemma 3, Mistral Small 3.x) nest the language model's config."""
    inner = cfg.get("text_config")
    if isinstance(inner, dict) and "num_hidden_layers" in inner:
        merged = {**cfg, **inner}
        merged.pop("text_config", None)
        return merged
    return cfg


def _int_field(cfg: dict[str, Any], key: str, source: str) -> int:
    if key not in cfg or cfg[key] is None:
        raise InputError(f"{source}: config.json has no {key!r} (needed to size the KV cache)")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{source}: config.json field {key!r} must be a positive integer, got {value!r}")
    return value


def _layer_windows(cfg: dict[str, Any], layers: int) -> tuple[int | None, ...]:
    """Which layers use a sliding window, following each architecture's own rule."""
    window = cfg.get("sliding_window")
    mtype = str(cfg.get("model_type", ""))
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == layers and window:
        return tuple(int(window) if t == "sliding_attention" else None for t in types)
    if not window:
        return (None,) * layers
    if mtype.startswith("qwen2") or mtype.startswith("qwen3"):
        # Qwen sets sliding_window but only uses it when use_sliding_window is true, and then
        # only on layers from max_window_layers on.
        if not cfg.get("use_sliding_window", False):
            return (None,) * layers
        first = int(cfg.get("max_window_layers", layers))
        return tuple(int(window) if i >= first else None for i in range(layers))
    if mtype == "gemma2":
        return tuple(int(window) if i % 2 == 0 else None for i in range(layers))
    if mtype.startswith("gemma3"):
        pattern = int(cfg.get("sliding_window_pattern", 6))
        return tuple(None if (i + 1) % pattern == 0 else int(window) for i in range(layers))
    return (int(window),) * layers


def _count_params(cfg: dict[str, Any], m: dict[str, int]) -> tuple[int, int]:
    """(total parameters, embedding + LM head parameters) derived from the shapes."""
    h, layers, vocab = m["hidden"], m["layers"], m["vocab"]
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    heads = m["heads"]
    if m["latent"]:
        nope = int(cfg.get("qk_nope_head_dim", 128))
        rope = int(cfg.get("qk_rope_head_dim", 64))
        v_dim = int(cfg.get("v_head_dim", 128))
        q_rank = cfg.get("q_lora_rank")
        q = h * q_rank + q_rank * heads * (nope + rope) if q_rank else h * heads * (nope + rope)
        kv = h * (m["latent"]) + int(cfg["kv_lora_rank"]) * heads * (nope + v_dim)
        attn = q + kv + heads * v_dim * h
    else:
        attn = 2 * h * heads * m["head_dim"] + 2 * h * m["kv_heads"] * m["head_dim"]
    dense_mlp = 3 * h * m["inter"]
    total = embed
    for i in range(layers):
        if m["experts"] and i >= m["dense_layers"]:
            mlp = m["experts"] * 3 * h * m["moe_inter"] + h * m["experts"]
            shared = int(cfg.get("n_shared_experts", 0) or 0)
            mlp += shared * 3 * h * m["moe_inter"]
        else:
            mlp = dense_mlp
        total += attn + mlp + 2 * h
    return total, embed


def _weight_dtype_of(cfg: dict[str, Any]) -> str:
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return "bf16"
    method = str(q.get("quant_method", "")).lower()
    bits = q.get("bits") or q.get("w_bit")
    if method in ("awq", "gptq") or bits == 4:
        return "int4"
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8"
    if bits == 8:
        return "int8"
    return "bf16"


def spec_from_config(cfg: dict[str, Any], name: str, source: str = "catalog") -> ModelSpec:
    """Build a ModelSpec from config.json fields; a missing field is named in the error."""
    cfg = _text_config(cfg)
    layers = _int_field(cfg, "num_hidden_layers", source)
    hidden = _int_field(cfg, "hidden_size", source)
    heads = _int_field(cfg, "num_attention_heads", source)
    vocab = _int_field(cfg, "vocab_size", source)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    latent = 0
    if cfg.get("kv_lora_rank"):
        latent = int(cfg["kv_lora_rank"]) + int(cfg.get("qk_rope_head_dim") or 0)
        kind = AttentionKind.MLA
    else:
        kind = AttentionKind.MHA if kv_heads == heads else AttentionKind.GQA
    if kv_heads <= 0 or (heads % kv_heads and kind is not AttentionKind.MLA):
        raise InputError(f"{source}: num_attention_heads {heads} is not a multiple of KV heads {kv_heads}")
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    shape = dict(
        hidden=hidden, layers=layers, vocab=vocab, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, latent=latent, inter=inter, experts=experts,
        moe_inter=int(cfg.get("moe_intermediate_size") or inter),
        dense_layers=int(cfg.get("first_k_dense_replace") or 0) if experts else 0,
    )  # fmt: skip
    derived, embed = _count_params(cfg, shape)
    params = int(cfg["params"]) if cfg.get("params") else derived
    return ModelSpec(
        name=name,
        layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=1 if kind is AttentionKind.MLA else kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        intermediate_size=inter,
        attention=kind,
        layer_windows=_layer_windows(cfg, layers),
        mla_latent_dim=latent,
        num_experts=experts,
        experts_per_token=int(cfg.get("num_experts_per_tok") or 0) if experts else 0,
        moe_intermediate_size=shape["moe_inter"] if experts else 0,
        shared_experts=int(cfg.get("n_shared_experts") or 0),
        dense_layers=shape["dense_layers"],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings"),
        params=params,
        embedding_params=embed,
        native_weight_dtype=_weight_dtype_of(cfg),
        hf_id=cfg.get("hf_id") or cfg.get("_name_or_path") or None,
        source=source,
    )


def safetensors_bytes(model_dir: Path) -> int | None:
    """Exact weight bytes of a checkpoint: the index's total_size, else the sum of tensor sizes
    in each safetensors header (read from the first 8 + N bytes of each file, no tensor data)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        except (OSError, ValueError) as exc:
            raise InputError(f"{index}: not a readable safetensors index: {exc}") from exc
        if isinstance(total, int) and total > 0:
            return int(total)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    summed = 0
    for f in files:
        with f.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise InputError(f"{f}: truncated safetensors file")
            (n,) = struct.unpack("<Q", head)
            try:
                header = json.loads(fh.read(n))
            except ValueError as exc:
                raise InputError(f"{f}: safetensors header is not JSON") from exc
        for key, t in header.items():
            if key != "__metadata__":
                start, end = t["data_offsets"]
                summed += int(end) - int(start)
    return summed


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


def get_model(name_or_path: str) -> ModelSpec:
    """A catalog name, a config.json path, or a model directory (exact weight bytes from its
    safetensors headers when present)."""
    key = name_or_path.strip().lower()
    key = ALIASES.get(key, key)
    if key in CATALOG:
        return spec_from_config(CATALOG[key], key)
    path = Path(name_or_path)
    if path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise InputError(f"{path}: model directory has no config.json")
        spec = spec_from_config(_load_config(cfg_path), path.name, str(cfg_path))
        exact = safetensors_bytes(path)
        if exact is not None:
            spec = _replace(spec, weight_bytes=exact)
        return spec
    if path.is_file():
        return spec_from_config(_load_config(path), path.parent.name or path.stem, str(path))
    raise NotFound(f"unknown model {name_or_path!r}" + closest(key, [*CATALOG, *ALIASES]))


def _replace(spec: ModelSpec, **changes: Any) -> ModelSpec:
    from dataclasses import replace

    return replace(spec, **changes)
