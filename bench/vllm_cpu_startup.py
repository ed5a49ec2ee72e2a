"""Record real vLLM's KV cache start-up lines on this CPU machine, one architecture per engine.

For each case below the child process (in `.venv-vllm`, vLLM CPU 0.32) writes the model's
config.json with transformers' own config class (so every default a checkpoint would carry is
there), starts `vllm.LLM` on it with dummy weights, a fixed KV memory and fp32, and prints the
lines vLLM logs about the KV cache. The results go to `bench/data/vllm_cpu_startup.json` (config,
engine arguments, vLLM version, logged lines); `tests/planner/test_vllm_golden.py` checks kvplan's
arithmetic against them without starting vLLM.

    .venv/bin/python bench/vllm_cpu_startup.py [--only ID ...] [--timeout 600]

About 1-2 minutes per case on a 2-core machine (one engine at a time, ~2 GiB each).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
OUT = ROOT / "bench" / "data" / "vllm_cpu_startup.json"
KV_MEMORY = 64 << 20

# Small widths (CPU speed), each architecture's own fields. `arch` is the vLLM class name.
BASE = {
    "hidden_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "vocab_size": 1024,
    "max_position_embeddings": 8192,
}
CASES: list[dict[str, Any]] = [
    {
        "id": "llama-full",
        "arch": "LlamaForCausalLM",
        "model_type": "llama",
        "cfg": {**BASE, "num_hidden_layers": 4},
    },
    {
        "id": "llama-full-fp8",
        "arch": "LlamaForCausalLM",
        "model_type": "llama",
        "cfg": {**BASE, "num_hidden_layers": 4},
        "kv_cache_dtype": "fp8",
    },
    {
        "id": "mistral-sliding-all",
        "arch": "MistralForCausalLM",
        "model_type": "mistral",
        "cfg": {**BASE, "num_hidden_layers": 4, "sliding_window": 512},
    },
    {
        "id": "qwen2-max-window-layers",
        "arch": "Qwen2ForCausalLM",
        "model_type": "qwen2",
        "cfg": {
            **BASE,
            "num_hidden_layers": 4,
            "sliding_window": 384,
            "use_sliding_window": True,
            "max_window_layers": 2,
        },
    },
    {
        "id": "gemma3-5to1",
        "arch": "Gemma3ForCausalLM",
        "model_type": "gemma3_text",
        "cfg": {**BASE, "num_hidden_layers": 12, "sliding_window": 256, "query_pre_attn_scalar": 64},
    },
    {
        "id": "gemma2-alternating",
        "arch": "Gemma2ForCausalLM",
        "model_type": "gemma2",
        "cfg": {**BASE, "num_hidden_layers": 6, "sliding_window": 512, "query_pre_attn_scalar": 64},
    },
    {
        "id": "gemma3n-kv-shared",
        "arch": "Gemma3nForCausalLM",
        "model_type": "gemma3n_text",
        "cfg": {
            **BASE,
            "num_hidden_layers": 10,
            "num_kv_shared_layers": 4,
            "sliding_window": 256,
            "intermediate_size": [512] * 10,
            "vocab_size_per_layer_input": 1024,
            "hidden_size_per_layer_input": 32,
            "laurel_rank": 16,
            "altup_num_inputs": 4,
            "activation_sparsity_pattern": [0.0] * 10,
            "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 2,
        },
    },
    {
        "id": "llama4-chunked",
        "arch": "Llama4ForCausalLM",
        "model_type": "llama4_text",
        "cfg": {
            **BASE,
            "num_hidden_layers": 8,
            "attention_chunk_size": 512,
            "intermediate_size_mlp": 512,
            "num_local_experts": 2,
            "num_experts_per_tok": 1,
            "interleave_moe_layer_step": 1,
        },
    },
    {
        "id": "gpt-oss-sinks",
        "arch": "GptOssForCausalLM",
        "model_type": "gpt_oss",
        "cfg": {
            **BASE,
            "num_hidden_layers": 4,
            "sliding_window": 128,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
        },
    },
    {
        "id": "deepseek-v3-mla",
        "arch": "DeepseekV3ForCausalLM",
        "model_type": "deepseek_v3",
        "cfg": {
            **BASE,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "kv_lora_rank": 64,
            "q_lora_rank": 96,
            "qk_rope_head_dim": 32,
            "qk_nope_head_dim": 32,
            "v_head_dim": 32,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 128,
            "first_k_dense_replace": 1,
            "n_shared_experts": 1,
            "n_group": 1,
            "topk_group": 1,
        },
    },
    {
        "id": "qwen3-next-gdn",
        "arch": "Qwen3NextForCausalLM",
        "model_type": "qwen3_next",
        "cfg": {
            **BASE,
            "num_hidden_layers": 8,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 32,
            "linear_value_head_dim": 32,
            "linear_conv_kernel_dim": 4,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 128,
            "shared_expert_intermediate_size": 128,
        },
    },
    {
        "id": "nemotron-h-mamba2",
        "arch": "NemotronHForCausalLM",
        "model_type": "nemotron_h",
        "cfg": {
            **BASE,
            "num_hidden_layers": 8,
            "hybrid_override_pattern": "M-M*-M-*",
            "mamba_num_heads": 8,
            "mamba_head_dim": 32,
            "n_groups": 2,
            "ssm_state_size": 32,
            "conv_kernel": 4,
        },
    },
    {
        "id": "granite-4-hybrid",
        "arch": "GraniteMoeHybridForCausalLM",
        "model_type": "granitemoehybrid",
        "cfg": {
            **BASE,
            "num_hidden_layers": 6,
            "layer_types": ["mamba", "mamba", "attention"] * 2,
            "mamba_n_heads": 8,
            "mamba_d_head": 64,
            "mamba_n_groups": 1,
            "mamba_d_state": 32,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "num_local_experts": 0,
            "shared_intermediate_size": 512,
        },
    },
    {
        "id": "falcon-h1-parallel",
        "arch": "FalconH1ForCausalLM",
        "model_type": "falcon_h1",
        "cfg": {
            **BASE,
            "num_hidden_layers": 4,
            "mamba_d_ssm": 512,
            "mamba_n_heads": 8,
            "mamba_d_head": 64,
            "mamba_d_state": 32,
            "mamba_n_groups": 1,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
        },
    },
    {
        "id": "jamba-mamba1",
        "arch": "JambaForCausalLM",
        "model_type": "jamba",
        "cfg": {
            **BASE,
            "num_hidden_layers": 8,
            "attn_layer_period": 4,
            "attn_layer_offset": 2,
            "mamba_d_state": 16,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "num_experts": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
        },
    },
    {
        "id": "lfm2-short-conv",
        "arch": "Lfm2ForCausalLM",
        "model_type": "lfm2",
        "cfg": {
            **BASE,
            "num_hidden_layers": 6,
            "conv_L_cache": 3,
            "block_dim": 256,
            "block_ff_dim": 512,
            "layer_types": ["conv", "conv", "full_attention"] * 2,
        },
    },
]

CHILD = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])
from transformers import AutoConfig
cfg = AutoConfig.for_model(spec["model_type"], **spec["cfg"])
cfg.architectures = [spec["arch"]]
cfg.torch_dtype = "float32"
cfg.save_pretrained(spec["dir"])
print("CONFIG_WRITTEN", flush=True)
from vllm import LLM
import vllm
print("VLLM_VERSION", vllm.__version__, flush=True)
kw = dict(model=spec["dir"], load_format="dummy", skip_tokenizer_init=True, dtype="float32",
          enforce_eager=True, max_model_len=spec["max_model_len"], kv_cache_memory_bytes=spec["kv_memory"])
if spec.get("kv_cache_dtype"):
    kw["kv_cache_dtype"] = spec["kv_cache_dtype"]
t = time.time()
try:
    LLM(**kw)
except ValueError as exc:  # skip_tokenizer_init: the engine is up, the tokenizer check fails after
    if "Tokenizer" not in str(exc):
        raise
print("ENGINE_UP", round(time.time() - t, 1), flush=True)
"""

PATTERNS = {
    "kv_cache_size": re.compile(
        r"(\w+) KV cache size: ([\d,]+) tokens, "
        r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"
    ),
    "group_block_sizes": re.compile(r"kv cache group sizes \(([\d, ]+)\)"),
    "attention_block_size": re.compile(r"Setting attention block size to (\d+) tokens"),
    "mamba_padding": re.compile(r"Padding mamba page size by ([\d.]+)%"),
    "mamba_cache_mode": re.compile(r"Mamba cache mode is set to '(\w+)'"),
    "max_num_batched_tokens": re.compile(r"max_num_batched_tokens=(\d+)"),
    "hybrid_manager_off": re.compile(r"(Hybrid KV cache manager is disabled)"),
}


def run_case(case: dict[str, Any], timeout: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**case, "dir": tmp, "max_model_len": case.get("max_model_len", 2048), "kv_memory": KV_MEMORY}
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        t0 = time.time()
        try:
            proc = subprocess.run(
                [str(VLLM_PY), "-c", CHILD, json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
            )
            text, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            text, rc = (exc.stdout or b"").decode() + (exc.stderr or b"").decode(), -9  # type: ignore[union-attr]
        config = (
            json.loads((Path(tmp) / "config.json").read_text())
            if (Path(tmp) / "config.json").exists()
            else None
        )
    logged: dict[str, Any] = {}
    for key, pat in PATTERNS.items():
        m = pat.search(text)
        if m:
            logged[key] = m.groups() if len(m.groups()) > 1 else m.group(1)
    version = re.search(r"VLLM_VERSION (\S+)", text)
    err = [ln for ln in text.splitlines() if "Error" in ln or "error:" in ln][-3:]
    return {
        "id": case["id"],
        "model_type": case["model_type"],
        "arch": case["arch"],
        "config": config,
        "engine_args": {
            "max_model_len": spec["max_model_len"],
            "kv_cache_memory_bytes": KV_MEMORY,
            "dtype": "float32",
            "enforce_eager": True,
            "kv_cache_dtype": case.get("kv_cache_dtype", "auto"),
            "device": "cpu",
            "class": "vllm.LLM",
        },
        "vllm_version": version.group(1) if version else None,
        "started": "ENGINE_UP" in text,
        "rc": rc,
        "seconds": round(time.time() - t0, 1),
        "logged": logged,
        "log_lines": [
            ln.split("] ", 1)[-1]
            for ln in text.splitlines()
            if "KV cache" in ln or "block size" in ln or "Padding mamba" in ln or "Mamba cache mode" in ln
        ],
        "errors": err if "ENGINE_UP" not in text else [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="case ids to run (default: all)")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()
    old = json.loads(OUT.read_text()) if OUT.exists() else {"runs": []}
    keep = {r["id"]: r for r in old["runs"]}
    for case in CASES:
        if args.only and case["id"] not in args.only:
            continue
        rec = run_case(case, args.timeout)
        print(
            f"{rec['id']}: started={rec['started']} {rec['logged'].get('kv_cache_size')} {rec['seconds']}s "
            f"{rec['errors'][-1:] if rec['errors'] else ''}",
            flush=True,
        )
        keep[rec["id"]] = rec
        OUT.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "recorded": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "device": "CPU (this machine)",
            "command": "bench/vllm_cpu_startup.py",
            "runs": [keep[c["id"]] for c in CASES if c["id"] in keep],
        }
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
