"""The type of every config.json field kvplan's sizing reads, checked before any is used.

A config is read in several places (`models`, `architectures`, `weights`); each reads fields
with `int(...)`, list indexing or `.get` on a nested object. A field of the wrong type (a string
where a count belongs, a list where an object belongs) would raise a Python error deep inside.
`check_config_types` refuses such a config first, with one `InputError` naming the field, its
expected type and the value found. A null field counts as absent (configs write `null` for
"not set"). `FIELDS` is the one list of what is read: a test feeds wrong types to each.
"""

from __future__ import annotations

from typing import Any

from kvplan.errors import InputError

# kind -> (what it must be, in words)
KINDS = {
    "pos": "a positive integer",
    "nonneg": "a non-negative integer",
    "int": "an integer",
    "number": "a positive number",
    "bool": "true or false",
    "str": "a string",
    "dict": "an object",
    "pos_list": "a list of positive integers",
    "nonneg_list": "a list of non-negative integers",
    "str_list": "a list of strings",
    "pos_or_list": "a positive integer or a list of positive integers",
    "window": "a non-negative integer or false",
    "pair": "a list of two positive integers",
    "str_or_list": "a string or a list of strings",
}


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Top-level fields (after the text config is merged in) and their kinds.
FIELDS: dict[str, str] = {
    **dict.fromkeys(
        _names(
            """
        num_hidden_layers hidden_size num_attention_heads num_key_value_heads head_dim
        vocab_size intermediate_size_mlp max_position_embeddings
        original_max_position_embeddings n_positions max_seq_len seq_length model_max_length
        max_target_positions max_sequence_length max_seq_length seq_len kv_lora_rank q_lora_rank
        qk_rope_head_dim qk_nope_head_dim v_head_dim attention_chunk_size no_rope_layer_interval
        sliding_window_pattern attn_layer_period expert_layer_period interleave_moe_layer_step
        decoder_sparse_step moe_layer_freq full_attention_interval mamba_num_heads
        mamba_head_dim ssm_state_size n_groups conv_kernel mamba_n_heads mamba_d_head
        mamba_d_state mamba_n_groups mamba_d_conv mamba_expand mamba_d_ssm mamba_dt_rank
        linear_num_value_heads linear_value_head_dim linear_num_key_heads linear_key_head_dim
        linear_conv_kernel_dim conv_dim conv_L_cache state_size expand num_heads
        vocab_size_per_layer_input hidden_size_per_layer_input index_topk
        """
        ),
        "pos",
    ),
    # dense variants of MoE families write 0 experts (Granite-4.0-H-Micro: num_local_experts 0)
    **dict.fromkeys(
        _names(
            """
        first_k_dense_replace attn_layer_offset expert_layer_offset num_kv_shared_layers
        n_shared_experts num_local_experts num_experts n_routed_experts num_experts_per_tok
        moe_topk moe_intermediate_size intermediate_size_moe shared_expert_intermediate_size
        shared_intermediate_size max_window_layers
        """
        ),
        "nonneg",
    ),
    "intermediate_size": "pos_or_list",
    "params": "number",  # the catalog's published parameter count
    "sliding_window": "window",
    "tie_word_embeddings": "bool",
    "use_sliding_window": "bool",
    "attention_bias": "bool",
    "model_type": "str",
    "torch_dtype": "str",
    "dtype": "str",
    "mamba_ssm_cache_dtype": "str",
    "hybrid_override_pattern": "str",
    "layer_types": "str_list",
    "layers_block_type": "str_list",
    "no_rope_layers": "nonneg_list",
    "mlp_only_layers": "nonneg_list",
    "quantization_config": "dict",
    "text_config": "dict",
    "llm_config": "dict",
    "vision_config": "dict",
    "rope_scaling": "dict",
    "rope_parameters": "dict",
}

# Fields of nested objects, as "parent.field" ("*" = every value of an object).
NESTED: dict[str, str] = {
    "rope_scaling.factor": "number",
    "rope_scaling.rope_type": "str",
    "rope_scaling.type": "str",
    "rope_parameters.factor": "number",
    "rope_parameters.rope_type": "str",
    "rope_parameters.type": "str",
    **{
        f"vision_config.{k}": "pos"
        for k in _names(
            "hidden_size width num_hidden_layers depth num_layers intermediate_size patch_size "
            "num_channels in_chans"
        )
    },
    "vision_config.hidden_act": "str",
    "quantization_config.quant_method": "str",
    "quantization_config.quant_algo": "str",
    "quantization_config.format": "str",
    "quantization_config.bits": "pos",
    "quantization_config.w_bit": "pos",
    "quantization_config.group_size": "int",  # GPTQ writes -1 for per-channel scales
    "quantization_config.q_group_size": "int",
    "quantization_config.weight_block_size": "pair",
    "quantization_config.sym": "bool",
    "quantization_config.load_in_8bit": "bool",
    "quantization_config.bnb_4bit_use_double_quant": "bool",
    "quantization_config.config_groups": "dict",
    "quantization_config.config_groups.*": "dict",
    "quantization_config.config_groups.*.weights": "dict",
    "quantization_config.config_groups.*.weights.num_bits": "pos",
    "quantization_config.config_groups.*.weights.type": "str",
    "quantization_config.config_groups.*.weights.strategy": "str",
    "quantization_config.config_groups.*.weights.group_size": "int",
    "quantization_config.config_groups.*.weights.symmetric": "bool",
    "quantization_config.config_groups.*.weights.block_structure": "pair",
    **{
        f"quantization_config.{k}": "str_or_list"
        for k in ("modules_to_not_convert", "ignore", "ignored_layers", "exclude_modules", "skip_modules")
    },
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ok(kind: str, v: Any) -> bool:
    if kind == "pos":
        return _is_int(v) and v > 0
    if kind == "nonneg":
        return _is_int(v) and v >= 0
    if kind == "int":
        return _is_int(v)
    if kind == "number":
        return (_is_int(v) or isinstance(v, float)) and v > 0
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if kind == "dict":
        return isinstance(v, dict)
    if kind in ("pos_list", "nonneg_list"):
        low = 1 if kind == "pos_list" else 0
        return isinstance(v, list) and all(_is_int(x) and x >= low for x in v)
    if kind == "str_list":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if kind == "pos_or_list":
        return _ok("pos", v) or (isinstance(v, list) and bool(v) and _ok("pos_list", v))
    if kind == "window":
        return v is False or _ok("nonneg", v)
    if kind == "pair":
        return isinstance(v, list) and len(v) == 2 and _ok("pos_list", v)
    if kind == "str_or_list":
        return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str | dict) for x in v))
    raise AssertionError(kind)


def _refuse(source: str, field: str, kind: str, value: Any) -> InputError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return InputError(f"{source}: config.json field {field!r} must be {KINDS[kind]}, got {shown}")


def _nested(obj: dict[str, Any], path: list[str], prefix: str, kind: str, source: str) -> None:
    head, rest = path[0], path[1:]
    items = list(obj.items()) if head == "*" else [(head, obj.get(head))]
    for key, value in items:
        if value is None:
            continue
        name = f"{prefix}.{key}"
        if not rest:
            if not _ok(kind, value):
                raise _refuse(source, name, kind, value)
        elif isinstance(value, dict):  # a non-object parent is refused by its own entry
            _nested(value, rest, name, kind, source)


def check_config_types(cfg: dict[str, Any], source: str) -> None:
    """Refuse (one InputError naming the field) a config whose fields sizing reads have the wrong
    type; nulls are absent fields."""
    for field, kind in FIELDS.items():
        value = cfg.get(field)
        if value is not None and not _ok(kind, value):
            raise _refuse(source, field, kind, value)
    for path, kind in NESTED.items():
        top, *rest = path.split(".")
        parent = cfg.get(top)
        if isinstance(parent, dict):
            _nested(parent, rest, top, kind, source)
