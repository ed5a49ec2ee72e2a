"""config.json -> the layer specs vLLM builds for the model (`layers.py`), one rule per family.

Each rule follows the vLLM model file that builds the layers (vllm/model_executor/models/<file>.py,
0.32) and the transformers config class that fills defaults from config.json. Sliding windows:
vLLM applies `sliding_window` to every layer unless `layer_types` says per layer
(vllm/engine/arg_utils.py `create_engine_config`: CacheConfig.sliding_window is set only for all-
sliding models), so a family whose transformers config derives `layer_types` (Qwen2/3, Gemma 2/3)
derives it here the same way.

Never a guess: a config field that changes what a layer caches and that the family's rule does
not read (`RISKY_FIELDS`), an unknown `layer_types` value or an unknown `model_type` raises
`Unsupported` naming it; `--assume-full-attention` sizes every layer as full attention instead,
at the user's risk, and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvplan.errors import InputError, Unsupported
from kvplan.planner.layers import (
    Attention,
    LatentAttention,
    Layer,
    Mixer,
    NoCache,
    RecurrentState,
    SharedKV,
)

ESCAPE = "pass --assume-full-attention to size every layer as full attention at your own risk"

# Config fields that change what some layer caches. A rule lists the ones it reads; any other one
# present (not null/false/0) stops sizing.
RISKY_FIELDS = (
    "layer_types", "layers_block_type", "hybrid_override_pattern", "attn_layer_period",
    "attn_layer_offset", "full_attention_interval", "attention_chunk_size", "no_rope_layers",
    "num_kv_shared_layers", "kv_lora_rank", "sliding_window", "sliding_window_pattern",
    "use_sliding_window", "index_topk", "cross_attention_layers", "mamba_d_state",
    "ssm_state_size", "linear_num_value_heads", "attn_type_list", "block_types",
    "interleaved_sliding_window", "sliding_window_layers", "swa_layers",
)  # fmt: skip


def _int(cfg: dict[str, Any], key: str, source: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise InputError(f"{source}: config.json has no {key!r} (needed to size the KV cache)")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{source}: config.json field {key!r} must be a positive integer, got {value!r}")
    return value


def _window(cfg: dict[str, Any], source: str) -> int | None:
    """`sliding_window` as vLLM reads it: 0/None means none (ModelConfig sets 0 to None)."""
    w = cfg.get("sliding_window")
    if w in (None, 0, False):
        return None
    if isinstance(w, bool) or not isinstance(w, int) or w < 0:
        raise InputError(f"{source}: config.json field 'sliding_window' must be an integer, got {w!r}")
    return w


def _head_dim(cfg: dict[str, Any], source: str) -> int:
    if cfg.get("head_dim"):
        return _int(cfg, "head_dim", source)
    return _int(cfg, "hidden_size", source) // _int(cfg, "num_attention_heads", source)


def _attention(cfg: dict[str, Any], source: str, **kw: Any) -> Attention:
    heads = _int(cfg, "num_attention_heads", source)
    kv = _int(cfg, "num_key_value_heads", source, heads)
    if heads % kv:
        raise InputError(f"{source}: num_attention_heads {heads} is not a multiple of KV heads {kv}")
    return Attention(kv, _head_dim(cfg, source), **kw)


def _layer_types(cfg: dict[str, Any], n: int, source: str) -> list[str] | None:
    types = cfg.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InputError(f"{source}: config.json field 'layer_types' must be a list of strings")
    if len(types) != n:
        # transformers refuses the config too (validate_layer_type); a reduced num_hidden_layers
        # needs its layer_types cut to match.
        raise InputError(f"{source}: 'layer_types' lists {len(types)} layers, num_hidden_layers is {n}")
    return types


def _unknown_type(t: str, source: str, mtype: str) -> Unsupported:
    return Unsupported(
        f"{source}: layer type {t!r} in layer_types ({mtype}) is not modelled by kvplan; {ESCAPE}"
    )


# ---- families ---------------------------------------------------------------------------------


def _decoder(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Standard decoders: full attention, with sliding windows per `layer_types` or on every layer."""
    window = _window(cfg, source)
    types = _layer_types(cfg, n, source)
    if types is None:
        return tuple(_attention(cfg, source, window=window) for _ in range(n))
    out: list[Layer] = []
    for t in types:
        if t in ("full_attention", "attention", "global"):
            out.append(_attention(cfg, source))
        elif t in ("sliding_attention", "local", "sliding"):
            out.append(_attention(cfg, source, window=_int(cfg, "sliding_window", source)))
        elif t == "chunked_attention":
            out.append(_attention(cfg, source, chunk=_int(cfg, "attention_chunk_size", source)))
        else:
            raise _unknown_type(t, source, str(cfg.get("model_type")))
    return tuple(out)


def _qwen(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Qwen2/Qwen3 (dense and MoE): transformers keeps the window only when use_sliding_window is
    true, and then from layer max_window_layers on (Qwen2Config.__init__)."""
    if cfg.get("layer_types") is None:
        window = _window(cfg, source) if cfg.get("use_sliding_window") else None
        first = int(cfg.get("max_window_layers") or n)
        cfg = {
            **cfg,
            "sliding_window": window,
            "layer_types": [
                "sliding_attention" if window is not None and i >= first else "full_attention"
                for i in range(n)
            ],
        }
    if len(set(cfg["layer_types"])) > 1:
        # qwen2.py Qwen2Model asserts max_window_layers == num_hidden_layers: vLLM will not start.
        raise InputError(
            f"{source}: sliding windows on only some layers (max_window_layers "
            f"{cfg.get('max_window_layers')} < num_hidden_layers {n}): vLLM refuses it (qwen2.py)"
        )
    return _decoder(cfg, n, source)


def _gemma2(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Gemma 2: even layers slide (Gemma2Config: sliding when (i + 1) % 2)."""
    if cfg.get("layer_types") is None:
        cfg = {
            **cfg,
            "layer_types": ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)],
        }
    return _decoder(cfg, n, source)


def _gemma3(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Gemma 3: 5 local : 1 global (Gemma3TextConfig: sliding when (i + 1) % sliding_window_pattern)."""
    if cfg.get("layer_types") is None:
        p = int(cfg.get("sliding_window_pattern") or 6)
        cfg = {
            **cfg,
            "layer_types": ["sliding_attention" if (i + 1) % p else "full_attention" for i in range(n)],
        }
    return _decoder(cfg, n, source)


def _gemma3n(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Gemma-3n: the last num_kv_shared_layers layers read the cache of the last earlier layer of
    their type (gemma3n.py Gemma3nAttention: offset 2 for sliding, 1 for full)."""
    own = _decoder(cfg, n, source)
    shared = int(cfg.get("num_kv_shared_layers") or 0)
    full_n = _int(cfg, "num_hidden_layers", source)
    first = full_n - shared
    out: list[Layer] = []
    for i, layer in enumerate(own):
        if i >= first:
            assert isinstance(layer, Attention)
            out.append(SharedKV(first - (2 if layer.window is not None else 1)))
        else:
            out.append(layer)
    return tuple(out)


def _llama4(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Llama-4: RoPE layers attend within chunks of attention_chunk_size; NoPE layers
    (no_rope_layers[i] == 0, every 4th by default) are global (llama4.py Llama4Attention)."""
    chunk = cfg.get("attention_chunk_size")
    nope = cfg.get("no_rope_layers") or [int((i + 1) % int(cfg.get("no_rope_layer_interval") or 4) != 0)
                                          for i in range(n)]  # fmt: skip
    if len(nope) < n:
        raise InputError(f"{source}: 'no_rope_layers' lists {len(nope)} layers, num_hidden_layers is {n}")
    layers = tuple(_attention(cfg, source, chunk=chunk if nope[i] and chunk else None) for i in range(n))
    types = _layer_types(cfg, n, source)  # transformers 5 also writes them; vLLM reads no_rope_layers
    if types is not None and types != ["chunked_attention" if x.chunk else "full_attention" for x in layers]:
        raise InputError(f"{source}: 'layer_types' disagree with 'no_rope_layers' / 'attention_chunk_size'")
    return layers


def _mla(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """DeepSeek-V2/V3, Kimi-K2: one kv_lora_rank + qk_rope_head_dim latent per token per layer."""
    if cfg.get("index_topk"):
        raise Unsupported(
            f"{source}: 'index_topk' (DeepSeek sparse attention's indexer cache) is not modelled by "
            f"kvplan; {ESCAPE}"
        )
    if not cfg.get("kv_lora_rank"):
        return tuple(_attention(cfg, source) for _ in range(n))  # DeepSeek-V1 / V2 without MLA
    latent = _int(cfg, "kv_lora_rank", source) + _int(cfg, "qk_rope_head_dim", source)
    return tuple(LatentAttention(latent) for _ in range(n))


def _mamba2(cfg: dict[str, Any], source: str, *, d_inner: int, heads: str, head_dim: str, state: str,
            groups: str, conv: str) -> RecurrentState:  # fmt: skip
    return RecurrentState(
        Mixer.MAMBA2, d_inner=d_inner, n_groups=_int(cfg, groups, source, 1),
        num_heads=_int(cfg, heads, source), head_dim=_int(cfg, head_dim, source),
        state_size=_int(cfg, state, source), conv_kernel=_int(cfg, conv, source, 4),
    )  # fmt: skip


_NEMOTRON_BLOCKS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*",
                    "mlp": "-",
                    "moe": "E"}  # fmt: skip


def normalize_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Spellings of the same config across transformers versions, made one: transformers 5 saves
    Nemotron-H's pattern as `layers_block_type` (and derives num_hidden_layers from it)."""
    blocks = cfg.get("layers_block_type")
    if (
        cfg.get("model_type") == "nemotron_h"
        and isinstance(blocks, list)
        and not cfg.get("hybrid_override_pattern")
    ):
        unknown = sorted({b for b in blocks if b not in _NEMOTRON_BLOCKS})
        if unknown:
            raise Unsupported(
                f"Nemotron-H block type(s) {unknown} in layers_block_type are not modelled; {ESCAPE}"
            )
        cfg = {**cfg, "hybrid_override_pattern": "".join(_NEMOTRON_BLOCKS[b] for b in blocks)}
        cfg.setdefault("num_hidden_layers", len(blocks))
        cfg.pop("layers_block_type")
    return cfg


def _nemotron_h(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Nemotron-H: hybrid_override_pattern, M = Mamba2, * = attention, - = MLP, E = MoE
    (nemotron_h.py; d_inner = mamba_num_heads x mamba_head_dim)."""
    pattern = cfg.get("hybrid_override_pattern")
    if not isinstance(pattern, str) or len(pattern) < n:
        raise InputError(f"{source}: 'hybrid_override_pattern' must be a string of at least {n} characters")
    heads, hd = _int(cfg, "mamba_num_heads", source), _int(cfg, "mamba_head_dim", source)
    mamba = _mamba2(cfg, source, d_inner=heads * hd, heads="mamba_num_heads", head_dim="mamba_head_dim",
                    state="ssm_state_size", groups="n_groups", conv="conv_kernel")  # fmt: skip
    out: list[Layer] = []
    for c in pattern[:n]:
        if c == "M":
            out.append(mamba)
        elif c == "*":
            out.append(_attention(cfg, source))
        elif c in "-E":
            out.append(NoCache("moe" if c == "E" else "mlp"))
        else:
            raise Unsupported(f"{source}: block {c!r} in hybrid_override_pattern is not modelled; {ESCAPE}")
    return tuple(out)


def _granite_mamba(cfg: dict[str, Any], source: str) -> RecurrentState:
    d_inner = int(
        cfg.get("mamba_d_ssm") or _int(cfg, "mamba_expand", source) * _int(cfg, "hidden_size", source)
    )
    return _mamba2(cfg, source, d_inner=d_inner, heads="mamba_n_heads", head_dim="mamba_d_head",
                   state="mamba_d_state", groups="mamba_n_groups", conv="mamba_d_conv")  # fmt: skip


def _granite_hybrid(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Granite-4.0-H, Bamba: layer_types mamba/attention (granitemoehybrid.py; d_inner =
    mamba_expand x hidden_size)."""
    types = _layer_types(cfg, n, source) or cfg.get("layers_block_type")
    if types is None:
        raise InputError(f"{source}: config.json has no 'layer_types' (needed to place Mamba layers)")
    mamba = _granite_mamba(cfg, source)
    out: list[Layer] = []
    for t in types[:n]:
        if t in ("mamba", "linear_attention"):
            out.append(mamba)
        elif t in ("attention", "full_attention"):
            out.append(_attention(cfg, source))
        else:
            raise _unknown_type(t, source, "granitemoehybrid")
    return tuple(out)


def _falcon_h1(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Falcon-H1: every layer runs attention and a Mamba2 mixer in parallel (falcon_h1.py
    FalconH1ParallelHybrid), so each decoder layer contributes both caches."""
    mamba = _granite_mamba(cfg, source)
    attn = _attention(cfg, source)
    return tuple(x for _ in range(n) for x in (attn, mamba))


def _jamba(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Jamba: attention when i % attn_layer_period == attn_layer_offset, else Mamba1
    (JambaConfig.layers_block_type; d_inner = mamba_expand x hidden_size)."""
    period, offset = _int(cfg, "attn_layer_period", source, 8), int(cfg.get("attn_layer_offset", 4))
    mamba = RecurrentState(
        Mixer.MAMBA1, d_inner=_int(cfg, "mamba_expand", source, 2) * _int(cfg, "hidden_size", source),
        state_size=_int(cfg, "mamba_d_state", source, 16), conv_kernel=_int(cfg, "mamba_d_conv", source, 4),
    )  # fmt: skip
    return tuple(_attention(cfg, source) if i % period == offset else mamba for i in range(n))


def _qwen3_next(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Qwen3-Next: Gated DeltaNet layers, full attention every full_attention_interval-th layer
    (Qwen3NextConfig.layer_types; qwen3_next.py get_mamba_state_shape_from_config)."""
    types = _layer_types(cfg, n, source)
    if types is None:
        k = _int(cfg, "full_attention_interval", source, 4)
        types = ["full_attention" if (i + 1) % k == 0 else "linear_attention" for i in range(n)]
    gdn = RecurrentState(
        Mixer.GATED_DELTA_NET,
        num_heads=_int(cfg, "linear_num_value_heads", source),
        head_dim=_int(cfg, "linear_value_head_dim", source),
        k_heads=_int(cfg, "linear_num_key_heads", source),
        k_head_dim=_int(cfg, "linear_key_head_dim", source),
        conv_kernel=_int(cfg, "linear_conv_kernel_dim", source),
    )
    out: list[Layer] = []
    for t in types:
        if t == "linear_attention":
            out.append(gdn)
        elif t == "full_attention":
            out.append(_attention(cfg, source))
        else:
            raise _unknown_type(t, source, "qwen3_next")
    return tuple(out)


def _lfm2(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """LFM2: short convolutions and full attention per layer_types (lfm2.py)."""
    types = _layer_types(cfg, n, source)
    if types is None:
        raise InputError(f"{source}: config.json has no 'layer_types' (needed to place conv layers)")
    conv = RecurrentState(Mixer.SHORT_CONV, d_inner=_int(cfg, "conv_dim", source),
                          conv_kernel=_int(cfg, "conv_L_cache", source))  # fmt: skip
    return tuple(_attention(cfg, source) if t == "full_attention" else conv for t in types)


def _mamba_only(cfg: dict[str, Any], n: int, source: str) -> tuple[Layer, ...]:
    """Attention-free Mamba1 / Mamba2 (mamba.py, mamba2.py)."""
    if cfg.get("model_type") == "mamba":
        st = RecurrentState(
            Mixer.MAMBA1,
            d_inner=_int(cfg, "intermediate_size", source),
            state_size=_int(cfg, "state_size", source),
            conv_kernel=_int(cfg, "conv_kernel", source, 4),
        )
    else:
        d_inner = _int(cfg, "expand", source, 2) * _int(cfg, "hidden_size", source)
        st = _mamba2(cfg, source, d_inner=d_inner, heads="num_heads", head_dim="head_dim", state="state_size",
                     groups="n_groups", conv="conv_kernel")  # fmt: skip
    return tuple(st for _ in range(n))


Rule = Callable[[dict[str, Any], int, str], tuple[Layer, ...]]

# model_type -> (rule, the risky fields it reads). Families whose vLLM file builds plain attention.
_DECODER_FIELDS = ("layer_types", "sliding_window")
FAMILIES: dict[str, tuple[Rule, tuple[str, ...]]] = {
    **{
        t: (_decoder, _DECODER_FIELDS)
        for t in (
            "llama",
            "mistral",
            "mixtral",
            "ministral",
            "ministral3",
            "phi3",
            "phi",
            "phimoe",
            "granite",
            "granitemoe",
            "glm",
            "glm4",
            "glm4_moe",
            "olmo",
            "olmo2",
            "olmo3",
            "cohere",
            "cohere2",
            "exaone",
            "exaone4",
            "starcoder2",
            "internlm2",
            "internlm3",
            "gpt_oss",
            "seed_oss",
            "ernie4_5",
            "ernie4_5_moe",
            "arcee",
            "apertus",
            "hunyuan_v1_dense",
            "hunyuan_v1_moe",
            "gemma",
            "stablelm",
            "dbrx",
            "minicpm",
            "mistral3",
            "pixtral",
            "llava",
            "nemotron",
            "dots1",
            "bailing_moe",
            "gpt_bigcode",
        )
    },
    **{
        t: (_qwen, ("layer_types", "sliding_window", "use_sliding_window"))
        for t in (
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "qwen2_vl",
            "qwen2_5_vl",
            "qwen3_vl",
            "qwen3_vl_moe",
        )
    },
    # SmolLM3 skips RoPE on every 4th layer; every layer still caches in full (llama.py).
    "smollm3": (_decoder, (*_DECODER_FIELDS, "no_rope_layers")),
    "gemma2": (_gemma2, _DECODER_FIELDS),
    "gemma3": (_gemma3, (*_DECODER_FIELDS, "sliding_window_pattern")),
    "gemma3_text": (_gemma3, (*_DECODER_FIELDS, "sliding_window_pattern")),
    "gemma3n": (_gemma3n, (*_DECODER_FIELDS, "num_kv_shared_layers")),
    "gemma3n_text": (_gemma3n, (*_DECODER_FIELDS, "num_kv_shared_layers")),
    "llama4": (_llama4, ("attention_chunk_size", "no_rope_layers", "layer_types")),
    "llama4_text": (_llama4, ("attention_chunk_size", "no_rope_layers", "layer_types")),
    **{
        t: (_mla, ("kv_lora_rank", "index_topk"))
        for t in ("deepseek_v2", "deepseek_v3", "kimi_k2", "deepseek")
    },
    "nemotron_h": (_nemotron_h, ("hybrid_override_pattern", "ssm_state_size")),
    "granitemoehybrid": (_granite_hybrid, ("layer_types", "layers_block_type", "mamba_d_state")),
    "bamba": (_granite_hybrid, ("layer_types", "layers_block_type", "mamba_d_state")),
    "falcon_h1": (_falcon_h1, ("mamba_d_state",)),
    "jamba": (_jamba, ("attn_layer_period", "attn_layer_offset", "mamba_d_state", "layers_block_type")),
    "qwen3_next": (_qwen3_next, ("layer_types", "full_attention_interval", "linear_num_value_heads")),
    "lfm2": (_lfm2, ("layer_types",)),
    "mamba": (_mamba_only, ("ssm_state_size",)),
    "mamba2": (_mamba_only, ("ssm_state_size",)),
}


def _present(cfg: dict[str, Any], key: str) -> bool:
    value = cfg.get(key)
    return value not in (None, False, 0, "", [], {})


def layer_specs(
    cfg: dict[str, Any], source: str, *, assume_full_attention: bool = False
) -> tuple[Layer, ...]:
    """The layers of a (text) config, in order; `Unsupported` for what kvplan does not model."""
    n = _int(cfg, "num_hidden_layers", source)
    mtype = str(cfg.get("model_type") or "")
    if not mtype:
        raise InputError(f"{source}: config.json has no 'model_type' (vLLM and transformers need it)")
    if assume_full_attention:
        return tuple(_attention(cfg, source) for _ in range(n))
    if mtype not in FAMILIES:
        raise Unsupported(f"{source}: model_type {mtype!r} is not modelled by kvplan; {ESCAPE}")
    rule, reads = FAMILIES[mtype]
    for key in RISKY_FIELDS:
        if key not in reads and _present(cfg, key) and not _harmless(cfg, key):
            raise Unsupported(
                f"{source}: config field {key!r} ({mtype}) changes what layers cache and kvplan's "
                f"{mtype} rule does not read it; {ESCAPE}"
            )
    return rule(cfg, n, source)


def _harmless(cfg: dict[str, Any], key: str) -> bool:
    """Fields that are present in published configs without effect on the cache."""
    if key == "use_sliding_window":
        return True  # only Qwen reads it; elsewhere it is an inert copy of the Qwen field
    if key == "layer_types":
        types = cfg.get("layer_types") or []
        return all(t in ("full_attention", "attention") for t in types)
    return False
