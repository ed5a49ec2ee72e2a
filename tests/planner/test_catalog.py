"""Every catalog model sizes, or exits 2 naming what kvplan does not model; per-token and
per-sequence KV of every model equal an independent reading of its config fields."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvplan.errors import InputError, Unsupported
from kvplan.formats import get_format
from kvplan.planner.catalog import CATALOG
from kvplan.planner.gpus import GPUS, get_gpu
from kvplan.planner.memory import kv_capacity, state_bytes
from kvplan.planner.models import get_model, spec_from_config

BF16 = get_format("bf16")
UNSUPPORTED = {"deepseek-v3.2-exp": "index_topk", "llama-3.2-11b-vision": "mllama"}
SIZED = [n for n in CATALOG if n not in UNSUPPORTED]


def test_catalog_has_the_2025_26_generation() -> None:
    assert len(CATALOG) >= 50
    for family in (
        "gpt-oss",
        "qwen3-next",
        "qwen3-30b",
        "llama-4",
        "deepseek-v3.1",
        "kimi-k2",
        "glm-4.5",
        "gemma-3-",
        "gemma-3n",
        "nemotron",
        "falcon-h1",
        "phi-4",
        "mistral-small-3",
        "jamba",
    ):
        assert any(n.startswith(family) for n in CATALOG), family


@pytest.mark.parametrize("name", SIZED)
def test_every_catalog_model_sizes(name: str) -> None:
    m = get_model(name)
    length = min(8192, m.derived_max_model_len or 8192)
    cap = kv_capacity(m, GPUS["h200"], BF16, max_model_len=length, kv_memory_bytes=64 << 30)
    assert cap.num_blocks > 0 and cap.max_concurrency > 0


@pytest.mark.parametrize(("name", "field"), UNSUPPORTED.items())
def test_unmodelled_catalog_models_name_what_is_missing(name: str, field: str) -> None:
    with pytest.raises(Unsupported, match=field):
        get_model(name)
    with pytest.raises(Unsupported, match="--assume-full-attention"):
        get_model(name)
    assert get_model(name, assume_full_attention=True).assumptions


def _expected_per_token(cfg: dict[str, Any]) -> int:
    """Bytes per token, all cached layers, bf16, TP 1: K and V per KV head, or one MLA latent;
    Nemotron-H caches only its '*' blocks, KV-shared layers (Gemma-3n) cache nothing."""
    cfg = {**cfg, **(cfg.get("text_config") or {})}
    n = cfg["num_hidden_layers"]
    if cfg.get("kv_lora_rank"):
        return n * (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * 2
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    attention = {
        "nemotron_h": lambda: cfg["hybrid_override_pattern"][:n].count("*"),
        "qwen3_next": lambda: n // cfg.get("full_attention_interval", 4),
        "jamba": lambda: sum(i % cfg["attn_layer_period"] == cfg["attn_layer_offset"] for i in range(n)),
        "gemma3n_text": lambda: n - cfg["num_kv_shared_layers"],
    }.get(cfg["model_type"], lambda: n)()
    return attention * 2 * kv * hd * 2


def _expected_state(cfg: dict[str, Any]) -> int:
    """Per-sequence recurrent state, bf16 conv and SSM (Nemotron-H: fp32 SSM), TP 1."""
    n, h, mt = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["model_type"]
    if mt == "qwen3_next":
        conv = (
            2 * cfg["linear_num_key_heads"] * cfg["linear_key_head_dim"]
            + cfg["linear_num_value_heads"] * cfg["linear_value_head_dim"]
        )
        per = (
            conv * (cfg["linear_conv_kernel_dim"] - 1) * 2
            + cfg["linear_num_value_heads"] * cfg["linear_value_head_dim"] * cfg["linear_key_head_dim"] * 2
        )
        return (n - n // cfg["full_attention_interval"]) * per
    if mt == "nemotron_h":
        d = cfg["mamba_num_heads"] * cfg["mamba_head_dim"]
        conv = (d + 2 * cfg["n_groups"] * cfg["ssm_state_size"]) * (cfg["conv_kernel"] - 1) * 2
        ssm = cfg["mamba_num_heads"] * cfg["mamba_head_dim"] * cfg["ssm_state_size"] * 4
        return cfg["hybrid_override_pattern"][:n].count("M") * (conv + ssm)
    if mt == "falcon_h1":
        d = cfg["mamba_d_ssm"]
        conv = (d + 2 * cfg["mamba_n_groups"] * cfg["mamba_d_state"]) * (cfg["mamba_d_conv"] - 1) * 2
        return n * (conv + cfg["mamba_n_heads"] * cfg["mamba_d_head"] * cfg["mamba_d_state"] * 2)
    if mt == "jamba":
        d = cfg["mamba_expand"] * h
        mamba = n - sum(i % cfg["attn_layer_period"] == cfg["attn_layer_offset"] for i in range(n))
        return mamba * (d * (cfg["mamba_d_conv"] - 1) * 2 + d * cfg["mamba_d_state"] * 2)
    return 0


@pytest.mark.parametrize("name", SIZED)
def test_per_token_and_per_sequence_kv_match_the_config(name: str) -> None:
    m = get_model(name)
    cap = kv_capacity(m, GPUS["h200"], BF16, max_model_len=4096, kv_memory_bytes=64 << 30)
    assert cap.bytes_per_token == _expected_per_token(CATALOG[name])
    assert state_bytes(m) == _expected_state(CATALOG[name]) == cap.state_bytes


def test_llama_4_chunks_rope_layers_and_keeps_every_fourth_global() -> None:
    m = get_model("llama-4-scout-17b-16e")
    assert m.layer_windows[:4] == (8192, 8192, 8192, None)
    cap = kv_capacity(m, GPUS["h100"], BF16, max_model_len=131072, kv_memory_bytes=40 << 30)
    # 36 chunked + 12 global layers: groups of 12; a chunked group holds chunk + in-flight tokens.
    assert len(cap.groups) == 4
    in_flight = 2 * 8192  # async scheduling: two batches of the H100 server default
    assert cap.blocks_per_request == 131072 // 16 + 3 * math.ceil((8192 + in_flight) / 16)


def test_qwen3_next_attention_blocks_grow_to_hold_a_state_page() -> None:
    # Without FlashInfer's GDN prefill (an A100; or vLLM 0.32): 32-token steps up to one state
    # page, 544 tokens (the CPU golden's rule).
    m = get_model("qwen3-next-80b-a3b")
    for gpu, version in (("a100-80gb", "0.33"), ("h200", "0.32")):
        cap = kv_capacity(
            m, GPUS[gpu], BF16, max_model_len=32768, kv_memory_bytes=40 << 30, vllm_version=version
        )
        assert cap.block_size == 544
        assert cap.page_bytes == 12 * 544 * 2 * 256 * 2 * 2  # 12 layers per group, one page each
        assert cap.blocks_per_request == math.ceil(32768 / 544) + 3 * 2  # 3 GDN groups x 2 (align)


def test_qwen3_next_on_hopper_aligns_blocks_to_gdn_prefill_checkpoints() -> None:
    # vLLM 0.33 on the H200 (bench/results/vllm_gpu_startup.md, 2026-12-03): "Using FlashInfer GDN
    # prefill kernel", "Setting attention block size to 576 tokens" (a multiple of 64), and each
    # GDN layer holds one prefill-checkpoint block more per request.
    m = get_model("qwen3-next-80b-a3b")
    cap = kv_capacity(m, GPUS["h200"], BF16, max_model_len=32768, kv_memory_bytes=40 << 30)
    assert cap.block_size == 576
    assert cap.blocks_per_request == math.ceil(32768 / 576) + 3 * 3
    assert any("GDN prefill: FlashInfer" in a for a in cap.assumptions)  # the JSON says so
    no_prefix = kv_capacity(m, GPUS["h200"], BF16, max_model_len=32768, kv_memory_bytes=40 << 30,
                            prefix_caching=False)  # fmt: skip
    assert no_prefix.block_size == 544  # no "align" mode, no checkpoints
    assert not any("GDN prefill" in a for a in no_prefix.assumptions)
    fp8 = kv_capacity(m, GPUS["h200"], get_format("fp8_e4m3"), max_model_len=32768, kv_memory_bytes=40 << 30)
    assert fp8.block_size == 1088  # logged for the fp8 cache in the same run
    b200 = kv_capacity(m, GPUS["b200"], BF16, max_model_len=32768, kv_memory_bytes=40 << 30)
    assert b200.block_size == 576  # SM 10.0 with 128-dim GDN keys: FlashInfer too, on a CUDA 13 build
    assert any("assumes vLLM's CUDA 13 build" in a for a in b200.assumptions)
    assert not any("CUDA 13" in a for a in cap.assumptions)  # SM 9.0: no runtime condition


def test_gemma_3n_list_valued_intermediate_size_and_shared_layers() -> None:
    m = get_model("gemma-3n-e4b")  # intermediate_size is a list per layer: once a traceback
    assert m.intermediate_size == 16384
    assert sum(x.kind.value == "kv_shared" for x in m.layer_specs) == 15


def test_a_bad_intermediate_size_names_the_field() -> None:
    cfg = {**CATALOG["gemma-3n-e2b"], "intermediate_size": ["wide"]}
    with pytest.raises(InputError, match="intermediate_size"):
        spec_from_config(cfg, "bad")


def test_max_model_len_above_the_model_is_refused() -> None:
    from kvplan.planner.sizing import SizeRequest, size

    gpu, _ = get_gpu("h100")
    with pytest.raises(InputError, match="VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        size(SizeRequest(get_model("llama-3.1-8b"), gpu, max_model_len=200_000))
    assert size(
        SizeRequest(get_model("llama-3.1-8b"), gpu, max_model_len=200_000, allow_long_max_model_len=True)
    )
    # LongRoPE: vLLM's default length is the original one, not the extended one.
    assert get_model("phi-4-mini").default_max_model_len == 4096


def test_cli_exits_2_with_one_line_for_an_unmodelled_model() -> None:
    kvplan = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kvplan"
    run = subprocess.run(
        [str(kvplan), "size", "deepseek-v3.2-exp"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2, run.stderr
    assert "index_topk" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_gpt_oss_120b_weights_follow_mxfp4_and_vllm_padding() -> None:
    from kvplan.planner.memory import weight_bytes

    # vLLM logs "Model loading took 65.9651 GiB" on an H100 (vllm-project/vllm#23278).
    assert abs(weight_bytes(get_model("gpt-oss-120b")) / 2**30 - 65.97) < 0.3
    # As BF16 it would not fit one H100 at all (the old reading of its config).
    assert weight_bytes(get_model("gpt-oss-120b"), "bf16") / 2**30 > 200


def test_vision_towers_count_in_weights_and_profile_unless_text_only() -> None:
    from kvplan.planner.memory import weight_bytes

    m = get_model("mistral-small-3.1-24b")
    assert m.param_counts.vision > 0.4e9  # Pixtral: 24 layers of width 1024
    assert weight_bytes(m) - weight_bytes(m, text_only=True) == 2 * m.param_counts.vision
    full = kv_capacity(m, GPUS["h100"], BF16, max_model_len=8192)
    text = kv_capacity(m, GPUS["h100"], BF16, max_model_len=8192, text_only=True)
    assert text.weights_bytes < full.weights_bytes and text.activation_bytes < full.activation_bytes
    encodes = [a for a in full.assumptions if a.startswith("profile run encodes dummy images")]
    assert len(encodes) == 1 and not any(a.startswith("profile run encodes") for a in text.assumptions)
    assert f"+{(full.activation_bytes - text.activation_bytes) / 2**30:.2f} GiB" in encodes[0]


def test_an_unmodelled_quantization_exits_2_unless_the_weights_are_priced_otherwise(tmp_path: Path) -> None:
    from kvplan.planner.memory import weight_bytes

    cfg = {**CATALOG["qwen3-4b"], "quantization_config": {"quant_method": "hqq", "nbits": 3}}
    m = spec_from_config(cfg, "hqq-model")
    with pytest.raises(Unsupported, match=r"'hqq' is not modelled.*--weight-dtype"):
        weight_bytes(m)
    assert weight_bytes(m, "int4") < weight_bytes(m, "bf16")
    kvplan = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "kvplan"
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg))
    run = subprocess.run([str(kvplan), "size", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "hqq" in run.stderr
    ok = subprocess.run([str(kvplan), "size", str(tmp_path), "--weight-dtype", "int4"], capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    # `kvplan plan` names the quantization too (it once said the model fits at no tensor parallel)
    args = ("plan", str(tmp_path), "--context-mix", "2k:100", "--rps", "1", "-o", str(tmp_path / "p.yaml"))
    plan = subprocess.run([str(kvplan), *args], capture_output=True, text=True, timeout=120)
    assert plan.returncode == 2 and "'hqq' is not modelled" in plan.stderr, plan.stderr


def test_mxfp4_expert_padding_is_per_tensor_parallel_shard() -> None:
    """vLLM pads each rank's expert shard (maybe_roundup_sizes gets intermediate_size_per_partition):
    gpt-oss-120b at TP 4 has 720 rows per rank, padded to 768 (Marlin/TRT-LLM: multiples of 128);
    dennislee22/vLLM-benchmarking's 4x A100 log says "Model loading took 17.2217 GiB" per rank."""
    from kvplan.planner.memory import weight_bytes

    m = get_model("gpt-oss-120b")
    assert m.quant.expert_padding(1) == 3072 * 2944 / (2880 * 2880)
    assert m.quant.expert_padding(4) == 3072 * 768 * 4 / (2880 * 2880)
    per_rank = weight_bytes(m, tensor_parallel=4) / 4 / 2**30
    assert abs(per_rank - 17.22) < 0.15, per_rank
    assert weight_bytes(m, tensor_parallel=4) > weight_bytes(m)
    assert weight_bytes(get_model("llama-3.1-8b"), tensor_parallel=4) == weight_bytes(
        get_model("llama-3.1-8b")
    )


def test_llama4_layer_types_must_agree_with_no_rope_layers() -> None:
    """transformers 5 writes Llama-4's layer_types too; vLLM reads no_rope_layers, so a config whose two
    disagree is refused rather than sized by one of them."""
    base = CATALOG["llama-4-scout-17b-16e"]
    n = base["num_hidden_layers"]
    agree = ["full_attention" if (i + 1) % 4 == 0 else "chunked_attention" for i in range(n)]
    same = spec_from_config({**base, "layer_types": agree}, "llama4-t5")
    assert same.layer_windows == get_model("llama-4-scout-17b-16e").layer_windows
    with pytest.raises(InputError, match="'layer_types' disagree with 'no_rope_layers'"):
        spec_from_config({**base, "layer_types": ["full_attention"] * n}, "llama4-t5")
