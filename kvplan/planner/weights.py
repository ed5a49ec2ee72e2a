"""Weight bytes: parameters by part of the model, the checkpoint's quantization, safetensors headers.

The ground truth is the checkpoint: a model directory's safetensors headers give every tensor's
bytes exactly (`checkpoint_bytes`; MTP/next-token-prediction layers beyond num_hidden_layers are
left out, vLLM loads them only for speculative decoding). Without the files, parameters are
counted from config.json shapes per part (`ParamCounts`) and priced per part by the checkpoint's
`quantization_config` (`WeightQuant`): e.g. gpt-oss keeps attention, router and embeddings in
BF16 and stores only the MoE experts in MXFP4 (4-bit values + one E8M0 scale per 32 = 0.53 B).

Bytes per parameter (codes + scales), from each format's layout:
    bf16/fp16 2;  fp8 per tensor/channel 1;  fp8 blocks of a x b: 1 + 4/(a b)  (fp32 scale)
    int4 groups of g (AWQ/GPTQ/compressed-tensors): 0.5 + 2/g (fp16 scale) + 0.5/g (zero, asym)
    MXFP4: 0.5 + 1/32;  NVFP4: 0.5 + 1/16 (fp8 scale per 16);  bnb nf4: 0.5 + 4/64 (fp32 absmax)
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kvplan.errors import InputError, Unsupported
from kvplan.planner.layers import Attention, LatentAttention, Layer, Mixer, RecurrentState, SharedKV

PARTS = ("embed", "lm_head", "attention", "dense_mlp", "experts", "shared_experts", "router",
         "recurrent", "norms", "vision")  # fmt: skip
LINEAR_PARTS = ("attention", "dense_mlp", "experts", "shared_experts", "recurrent")


@dataclass(frozen=True)
class ParamCounts:
    """Parameters per part of the model (vision tower and projector in `vision`)."""

    embed: int = 0
    lm_head: int = 0
    attention: int = 0
    dense_mlp: int = 0
    experts: int = 0
    shared_experts: int = 0
    router: int = 0
    recurrent: int = 0
    norms: int = 0
    vision: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def scaled(self, ratio: float) -> ParamCounts:
        return ParamCounts(**{f.name: round(getattr(self, f.name) * ratio) for f in fields(self)})


# ---- parameter counts from config.json --------------------------------------------------------


def _inter(cfg: dict[str, Any], i: int) -> int:
    """intermediate_size, per layer when a list (Gemma-3n)."""
    v = cfg.get("intermediate_size") or 4 * int(cfg["hidden_size"])
    if isinstance(v, list):
        return int(v[i] if i < len(v) else v[-1])
    return int(v)


def _gated(cfg: dict[str, Any]) -> int:
    """Matrices per MLP: 3 for gated (SwiGLU/GeGLU), 2 for plain (GPT-2-style)."""
    return 2 if cfg.get("model_type") in ("starcoder2", "phi", "gpt_bigcode", "nemotron", "nemotron_h") else 3


def _moe_layer(cfg: dict[str, Any], i: int) -> bool:
    """Whether layer i routes to experts (each family's own field)."""
    if not (cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")):
        return False
    if cfg.get("first_k_dense_replace") is not None and i < int(cfg["first_k_dense_replace"]):
        return False
    if cfg.get("mlp_only_layers") and i in cfg["mlp_only_layers"]:
        return False
    step = cfg.get("interleave_moe_layer_step") or cfg.get("decoder_sparse_step") or cfg.get("moe_layer_freq")
    if step and int(step) > 1:
        return (i + 1) % int(step) == 0
    if cfg.get("expert_layer_period"):  # Jamba
        return i % int(cfg["expert_layer_period"]) == int(cfg.get("expert_layer_offset", 1))
    return True


def _attention_params(layer: Attention | LatentAttention | SharedKV, cfg: dict[str, Any]) -> int:
    h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if isinstance(layer, LatentAttention):
        nope, rope = int(cfg.get("qk_nope_head_dim") or 128), int(cfg.get("qk_rope_head_dim") or 64)
        v_dim, rank = int(cfg.get("v_head_dim") or 128), int(cfg["kv_lora_rank"])
        q_rank = cfg.get("q_lora_rank")
        q = h * q_rank + q_rank * heads * (nope + rope) if q_rank else h * heads * (nope + rope)
        return q + h * layer.latent_dim + rank * heads * (nope + v_dim) + heads * v_dim * h
    hd = int(cfg.get("head_dim") or h // heads)
    kv = int(cfg.get("num_key_value_heads") or heads)
    q_o = 2 * h * heads * hd
    if isinstance(layer, SharedKV):
        return q_o  # KV-shared layers have no k/v projections (Gemma-3n)
    bias = (
        (heads + 2 * kv) * hd
        if cfg.get("attention_bias") or cfg.get("model_type", "").startswith("qwen2")
        else 0
    )
    return q_o + 2 * h * kv * hd + bias


def _recurrent_params(layer: RecurrentState, cfg: dict[str, Any]) -> int:
    h = int(cfg["hidden_size"])
    if layer.mixer is Mixer.MAMBA2:
        d, g, s, nh = layer.d_inner, layer.n_groups, layer.state_size, layer.num_heads
        conv = d + 2 * g * s
        return h * (2 * d + 2 * g * s + nh) + conv * (layer.conv_kernel + 1) + 3 * nh + d + d * h
    if layer.mixer is Mixer.MAMBA1:
        d, s = layer.d_inner, layer.state_size
        dt_rank = int(cfg.get("mamba_dt_rank") or math.ceil(h / 16))
        return (
            h * 2 * d
            + d * (layer.conv_kernel + 1)
            + d * (dt_rank + 2 * s)
            + dt_rank * d
            + d
            + d * s
            + d
            + d * h
        )
    if layer.mixer is Mixer.GATED_DELTA_NET:
        nk, dk, nv, dv = layer.k_heads, layer.k_head_dim, layer.num_heads, layer.head_dim
        conv = 2 * nk * dk + nv * dv
        return (
            h * (2 * nk * dk + 2 * nv * dv)
            + h * 2 * nv
            + conv * layer.conv_kernel
            + 2 * nv
            + dv
            + nv * dv * h
        )
    if layer.mixer is Mixer.SHORT_CONV:
        return h * 3 * h + h * layer.conv_kernel + h * h
    return 4 * h * layer.num_heads * layer.head_dim  # linear attention: q, k, v, o


def _mlp_params(cfg: dict[str, Any], i: int, counts: dict[str, int]) -> None:
    h = int(cfg["hidden_size"])
    if _moe_layer(cfg, i):
        experts = int(
            cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0
        )
        moe_inter = int(
            cfg.get("moe_intermediate_size") or cfg.get("intermediate_size_moe") or _inter(cfg, i)
        )
        counts["experts"] += experts * 3 * h * moe_inter
        counts["router"] += h * experts
        shared = int(cfg.get("shared_expert_intermediate_size") or cfg.get("shared_intermediate_size") or 0)
        if shared:
            counts["shared_experts"] += 3 * h * shared
        elif cfg.get("n_shared_experts"):
            counts["shared_experts"] += int(cfg["n_shared_experts"]) * 3 * h * moe_inter
        elif cfg.get("model_type", "").startswith("llama4"):
            counts["shared_experts"] += 3 * h * moe_inter
        return
    inter = (
        int(cfg.get("intermediate_size_mlp") or _inter(cfg, i))
        if cfg.get("model_type", "").startswith("llama4")
        else _inter(cfg, i)
    )
    counts["dense_mlp"] += _gated(cfg) * h * inter


def count_params(cfg: dict[str, Any], layers: tuple[Layer, ...], vision: int = 0) -> ParamCounts:
    """Parameters per part, from the shapes (biases of Qwen2 attention, norms and MLA included)."""
    h, vocab = int(cfg["hidden_size"]), int(cfg["vocab_size"])
    vocab = math.ceil(vocab / 64) * 64  # vLLM pads the vocabulary (VocabParallelEmbedding, 64)
    counts = dict.fromkeys(PARTS, 0)
    counts["embed"] = vocab * h
    counts["lm_head"] = 0 if cfg.get("tie_word_embeddings", False) else vocab * h
    counts["vision"] = vision
    mtype = str(cfg.get("model_type", ""))
    decoder = 0
    for layer in layers:
        if isinstance(layer, Attention | LatentAttention | SharedKV):
            counts["attention"] += _attention_params(layer, cfg)
        elif isinstance(layer, RecurrentState):
            counts["recurrent"] += _recurrent_params(layer, cfg)
        if mtype == "falcon_h1" and isinstance(layer, RecurrentState):
            continue  # one MLP and one pair of norms per Falcon-H1 layer, which holds both mixers
        if mtype == "nemotron_h":
            continue  # Nemotron-H's MLP/MoE are blocks of their own (counted below)
        if mtype in ("jamba", "granitemoehybrid", "bamba", "qwen3_next", "lfm2") or not isinstance(
            layer, RecurrentState
        ):
            _mlp_params(cfg, decoder, counts)
        decoder += 1
        counts["norms"] += 2 * h
    if mtype == "nemotron_h":
        for i, c in enumerate(str(cfg.get("hybrid_override_pattern", ""))[: int(cfg["num_hidden_layers"])]):
            if c == "-":
                counts["dense_mlp"] += 2 * h * _inter(cfg, i)
            elif c == "E":
                _mlp_params({**cfg, "n_routed_experts": cfg.get("n_routed_experts")}, i, counts)
    counts["norms"] += h
    if cfg.get("vocab_size_per_layer_input") and cfg.get("hidden_size_per_layer_input"):
        # Gemma-3n's per-layer embeddings, one slice per layer, loaded with the model
        per_layer = int(cfg["vocab_size_per_layer_input"]) * int(cfg["hidden_size_per_layer_input"])
        counts["embed"] += per_layer * len(layers)
    return ParamCounts(**counts)


def vision_params(cfg: dict[str, Any]) -> int:
    """A ViT vision tower and its projector, from `vision_config` (approximate: 4h^2 attention +
    MLP per block, patch embedding, projector to the text width)."""
    v = cfg.get("vision_config")
    if not isinstance(v, dict):
        return 0
    hv = int(v.get("hidden_size") or v.get("width") or 0)
    depth = int(v.get("num_hidden_layers") or v.get("depth") or v.get("num_layers") or 0)
    if not hv or not depth:
        return 0
    iv = int(v.get("intermediate_size") or 4 * hv)
    patch, ch = int(v.get("patch_size") or 14), int(v.get("num_channels") or v.get("in_chans") or 3)
    text_h = int((cfg.get("text_config") or cfg).get("hidden_size") or hv)
    mlp = (3 if str(v.get("hidden_act", "")).lower() in ("silu", "swiglu") else 2) * hv * iv
    return depth * (4 * hv * hv + mlp + 4 * hv) + patch * patch * ch * hv + hv * text_h + text_h * text_h


# ---- quantization ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightQuant:
    """How the checkpoint stores its weights: bytes per parameter of the quantized parts."""

    method: str  # "none", "fp8", "fp8-block", "int8", "int4", "mxfp4", "nvfp4", "nf4", ...
    bytes_per_param: float  # of a quantized linear weight, scales included
    parts: tuple[str, ...] = LINEAR_PARTS  # which parts it applies to; the rest stay 16-bit
    detail: str = ""  # what was read from quantization_config
    # (hidden, intermediate) of each expert when the MoE kernel pads them (MXFP4), else None
    padded_experts: tuple[int, int] | None = None

    def expert_padding(self, tensor_parallel: int = 1) -> float:
        """How many times its expert bytes the kernel stores. vLLM rounds each rank's shard up
        (`maybe_roundup_sizes` gets intermediate_size_per_partition): hidden to a multiple of 256,
        the rank's intermediate to 128 (fused_moe/oracle/mxfp4.py
        mxfp4_round_up_hidden_size_and_intermediate_size, Marlin and TRT-LLM backends)."""
        if self.padded_experts is None:
            return 1.0
        h, i = self.padded_experts
        shard = -(-i // tensor_parallel)
        return _round_up(h, 256) * _round_up(shard, 128) * tensor_parallel / (h * i)

    def bytes_of(self, counts: ParamCounts, unquantized: float = 2.0, *, tensor_parallel: int = 1) -> int:
        """Bytes of all ranks together (a padded expert layout pads every rank's shard)."""
        padding = self.expert_padding(tensor_parallel)
        total = 0.0
        for part in PARTS:
            n = getattr(counts, part) * (padding if part == "experts" else 1.0)
            total += n * (self.bytes_per_param if part in self.parts else unquantized)
        return round(total)


NONE = WeightQuant("none", 2.0, (), "16-bit")

# `--weight-dtype` overrides (what-if): linear layers in this format, embeddings and LM head 16-bit.
OVERRIDES: dict[str, WeightQuant] = {
    "bf16": NONE,
    "fp16": NONE,
    "fp32": WeightQuant("fp32", 4.0, PARTS, "32-bit"),
    "fp8": WeightQuant("fp8", 1.0, LINEAR_PARTS, "fp8 per tensor"),
    "int8": WeightQuant("int8", 1.0, LINEAR_PARTS, "int8 per channel"),
    "int4": WeightQuant("int4", 0.5 + 2.5 / 128, LINEAR_PARTS, "int4 groups of 128 (AWQ/GPTQ)"),
    "mxfp4": WeightQuant("mxfp4", 0.5 + 1 / 32, ("experts",), "MXFP4 experts"),
    "nvfp4": WeightQuant("nvfp4", 0.5 + 1 / 16, LINEAR_PARTS, "NVFP4"),
}
OVERRIDE_ALIASES = {
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "w8a8": "int8", "awq": "int4",
    "gptq": "int4", "w4a16": "int4", "fp8_e4m3": "fp8",
}  # fmt: skip

_PART_PATTERNS = (
    ("vision", ("vision", "visual", "multi_modal_projector", "mm_projector", "image")),
    ("lm_head", ("lm_head",)),
    ("embed", ("embed",)),
    ("router", ("router", "mlp.gate", "block_sparse_moe.gate", "moe.gate", ".gate$", "gate.")),
    ("shared_experts", ("shared_expert",)),
    ("experts", ("experts",)),
    ("recurrent", ("mixer", "mamba", "linear_attn", "conv")),
    ("attention", ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "qkv")),
    ("dense_mlp", ("mlp", "feed_forward", "ffn")),
)


def _parts_named(names: list[str]) -> set[str]:
    """Model parts a module list (ignore / modules_to_not_convert) covers, by name."""
    hit: set[str] = set()
    for raw in names:
        name = str(raw).removeprefix("re:").lower()
        for part, keys in _PART_PATTERNS:
            if any(re.search(k if k.endswith("$") else re.escape(k), name) for k in keys):
                hit.add(part)
                break
    return hit


def _skip_list(q: dict[str, Any]) -> list[str]:
    for key in ("modules_to_not_convert", "ignore", "ignored_layers", "exclude_modules", "skip_modules"):
        v = q.get(key)
        if isinstance(v, list):
            return [str(x) for x in v]
    return []


def _int_group(bits: int, group: int | None, symmetric: bool = True) -> float:
    """Integer codes with one fp16 scale (+ a packed zero when asymmetric) per group."""
    if not group or group <= 0:
        return bits / 8  # per-channel scales: negligible per parameter
    return bits / 8 + 2 / group + (0 if symmetric else bits / 8 / group)


def _compressed_tensors(q: dict[str, Any], source: str) -> tuple[str, float]:
    groups = q.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise Unsupported(
            f"{source}: compressed-tensors quantization_config without config_groups is not modelled"
        )
    g = next(iter(groups.values())) or {}
    w = g.get("weights") or {}
    bits, typ = int(w.get("num_bits") or 8), str(w.get("type") or "int")
    fmt = str(q.get("format") or "")
    if "nvfp4" in fmt or (typ == "float" and bits == 4 and int(w.get("group_size") or 16) == 16):
        return "nvfp4", 0.5 + 1 / 16
    if "mxfp4" in fmt:
        return "mxfp4", 0.5 + 1 / 32
    if typ == "float" and bits == 8:
        block = w.get("block_structure")
        if isinstance(block, list) and len(block) == 2:
            return "fp8-block", 1 + 4 / (int(block[0]) * int(block[1]))
        return "fp8", 1.0
    if typ == "int":
        group = w.get("group_size") if w.get("strategy") == "group" else None
        return f"int{bits}", _int_group(bits, group, bool(w.get("symmetric", True)))
    raise Unsupported(
        f"{source}: compressed-tensors weights {typ}{bits} ({fmt or 'no format'}) are not modelled"
    )


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _mxfp4_experts(cfg: dict[str, Any]) -> tuple[int, int] | None:
    """(hidden, intermediate) of gpt-oss's MXFP4 experts, which vLLM's MoE kernels pad
    (`WeightQuant.expert_padding`). gpt-oss-120b at TP 1: 2880 x 2880 -> 3072 x 2944, 9% more expert
    bytes (vLLM logs 65.97 GiB loaded on an H100, vllm-project/vllm#23278, against 60.7 GiB in the
    checkpoint); at TP 4 each rank's 720 rows become 768 (17.22 GiB per A100 logged,
    dennislee22/vLLM-benchmarking)."""
    h = int(cfg.get("hidden_size") or 0)
    raw = cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 0
    i = int(max(raw) if isinstance(raw, list) else raw)  # a list per layer (Gemma-3n style)
    return (h, i) if h and i else None


def quant_of(cfg: dict[str, Any], source: str, vllm_minor: int = 33) -> WeightQuant:
    """The checkpoint's weight storage from config.json's quantization_config."""
    q = cfg.get("quantization_config")
    if q is None:
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
        return WeightQuant("fp32", 4.0, PARTS, "32-bit") if dtype == "float32" else NONE
    if not isinstance(q, dict):
        raise InputError(f"{source}: quantization_config must be an object")
    method = str(q.get("quant_method") or q.get("quant_algo") or "").lower()
    skip = _skip_list(q)
    parts = tuple(p for p in LINEAR_PARTS if p not in _parts_named(skip))
    if method in ("fp8", "fbgemm_fp8", "modelopt") and str(q.get("quant_algo", "FP8")).upper().startswith(
        "FP8"
    ):
        block = q.get("weight_block_size")
        if block:
            return WeightQuant(
                "fp8-block", 1 + 4 / (int(block[0]) * int(block[1])), parts, f"fp8 blocks {block}"
            )
        return WeightQuant("fp8", 1.0, parts, "fp8")
    if method == "mxfp4":
        parts = tuple(p for p in ("experts",) if p in parts) or ("experts",)
        return WeightQuant("mxfp4", 0.5 + 1 / 32, parts, "MXFP4 (E8M0 scale per 32)", _mxfp4_experts(cfg))
    if (
        method in ("modelopt_fp4", "modelopt")
        or "nvfp4" in method
        or str(q.get("quant_algo", "")).upper() == "NVFP4"
    ):
        return WeightQuant("nvfp4", 0.5 + 1 / 16, parts, "NVFP4 (fp8 scale per 16)")
    if method in ("awq", "awq_marlin", "auto_awq", "gptq", "gptq_marlin", "auto_gptq", "moe_wna16"):
        bits = int(q.get("bits") or q.get("w_bit") or 4)
        group = int(q.get("group_size") or q.get("q_group_size") or 128)
        sym = bool(q.get("sym", method.startswith("gptq")))
        return WeightQuant(
            f"int{bits}", _int_group(bits, group, sym), parts, f"{method} {bits}-bit, group {group}"
        )
    if method == "compressed-tensors":
        name, per = _compressed_tensors(q, source)
        return WeightQuant(name, per, parts, f"compressed-tensors {name}")
    if method == "bitsandbytes":
        if vllm_minor >= 29:
            raise Unsupported(f"{source}: bitsandbytes checkpoints are not loaded by vLLM 0.29 and later")
        if q.get("load_in_8bit"):
            return WeightQuant("int8", 1.0, parts, "bitsandbytes int8")
        double = bool(q.get("bnb_4bit_use_double_quant"))
        per = 0.5 + (1 / 64 + 4 / (64 * 256) if double else 4 / 64)
        return WeightQuant("nf4", per, parts, "bitsandbytes 4-bit" + (" (double quant)" if double else ""))
    raise Unsupported(
        f"{source}: quantization method {method or q!r} is not modelled by kvplan; size the model directory "
        "with its safetensors files (exact weights) or pass --weight-dtype to price it at your own risk"
    )


def override(name: str) -> WeightQuant:
    key = OVERRIDE_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in OVERRIDES:
        known = ", ".join([*OVERRIDES, *OVERRIDE_ALIASES])
        raise InputError(f"unknown weight dtype {name!r}; known: auto, {known}")
    return OVERRIDES[key]


# ---- safetensors ----------------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _header(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise InputError(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise InputError(f"{path}: not a safetensors file (header of {n} bytes)")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise InputError(f"{path}: safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    return header


def checkpoint_bytes(model_dir: Path, num_hidden_layers: int | None = None) -> int | None:
    """Exact weight bytes of a checkpoint from its safetensors headers (8 + N bytes per file, no
    tensor data), without layers numbered >= num_hidden_layers (MTP heads). Only an index file:
    its total_size. Neither: None."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        index = model_dir / "model.safetensors.index.json"
        if not index.is_file():
            return None
        try:
            total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        except (OSError, ValueError) as exc:
            raise InputError(f"{index}: not a readable safetensors index: {exc}") from exc
        return int(total) if isinstance(total, int) and total > 0 else None
    summed = 0
    for f in files:
        for key, t in _header(f).items():
            if key == "__metadata__":
                continue
            m = _LAYER.search(key)
            if (
                num_hidden_layers is not None
                and m
                and int(m.group(1)) >= num_hidden_layers
                and "vision" not in key
            ):
                continue
            try:
                start, end = t["data_offsets"]
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"{f}: tensor {key!r} has no data_offsets") from exc
            summed += int(end) - int(start)
    return summed
