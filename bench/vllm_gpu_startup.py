"""vLLM 0.33's own KV cache start-up lines on the GPU machine, for 22 architecture x format cases,
against kvplan's prediction for the same (reduced) configs.

Each case is a catalog model's config.json with fewer layers (and, for big MoE models, fewer
experts; neither changes a layer's cache), dummy weights, bf16 and vLLM's defaults otherwise. One
engine per process, one process per GPU at a time by default (vLLM's memory profile needs the GPU
to itself; --slots runs several at once, and then only the given-memory figures are judged), a
timeout each; every case logs "Available KV cache memory", "GPU KV cache size", "Maximum
concurrency" (and, with VLLM_LOGGING_LEVEL=DEBUG, the memory profile: weights, torch peak, non-KV).

    # on the GPU machine (after the vLLM GPU harness's bench/vllm_gpu/setup_device.sh):
    PYTHONPATH=/tmp/site:$PWD python3 bench/vllm_gpu_startup.py run --out "$OUT" --deadline-s 270
    # here: kvplan's predictions for the cases, and the comparison once results are back
    .venv/bin/python bench/vllm_gpu_startup.py predict
    .venv/bin/python bench/vllm_gpu_startup.py compare RESULT.json   # -> bench/results/vllm_gpu_startup.md

`run` imports neither kvplan nor vLLM in the parent (each child imports vLLM); `predict` and
`compare` need only kvplan.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the harness's configs (no vLLM or torch import)
from bench.vllm_gpu.configs import VLLM_SAME_BYTES  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "vllm_gpu_startup.md"
VLLM_VERSION = "0.33"
UTILIZATION = 0.92
DRY_RUN = False
# GPU case -> the CPU recording's config of the same architecture (for --cpu-dry-run)
CPU_TWIN = {"llama-8b-auto": "llama-full", "qwen3-next-8l": "qwen3-next-gdn", "jamba-mini-8l": "jamba-mamba1"}

# vLLM architecture class per model_type (the text-only class for multimodal checkpoints).
ARCH = {
    "llama": "LlamaForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "llama4_text": "Llama4ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "qwen3_next": "Qwen3NextForCausalLM",
    "nemotron_h": "NemotronHForCausalLM",
    "falcon_h1": "FalconH1ForCausalLM",
    "jamba": "JambaForCausalLM",
    "gemma3n_text": "Gemma3nForCausalLM",
    "mistral": "MistralForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "glm4_moe": "Glm4MoeForCausalLM",
}

# transformers requires longrope's per-frequency factors (rotary dim 96 / 2 = 48 of each); the
# checkpoint's values are not in the catalog, and no value changes a layer's cache
PHI4_LONGROPE = {"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.0] * 48}}
# (id, catalog model, layers, config overrides, kv dtype, max_model_len, attention backend)
CASES: list[tuple[str, str, int, dict[str, Any], str, int, str]] = [
    ("llama-8b-auto", "llama-3.1-8b", 32, {}, "auto", 32768, "TRITON_ATTN"),
    ("llama-8b-fp8", "llama-3.1-8b", 32, {}, "fp8", 32768, "TRITON_ATTN"),
    ("llama-8b-int8pth", "llama-3.1-8b", 32, {}, "int8_per_token_head", 32768, "TRITON_ATTN"),
    ("llama-8b-int4pth", "llama-3.1-8b", 32, {}, "int4_per_token_head", 32768, "TRITON_ATTN"),
    ("qwen3-moe-12l", "qwen3-30b-a3b", 12, {}, "auto", 32768, "TRITON_ATTN"),
    ("gemma3-27b-12l", "gemma-3-27b", 12, {}, "auto", 32768, "TRITON_ATTN"),
    ("gpt-oss-20b-8l", "gpt-oss-20b", 8, {}, "auto", 32768, "TRITON_ATTN"),
    ("gpt-oss-20b-8l-fp8", "gpt-oss-20b", 8, {}, "fp8", 32768, "TRITON_ATTN"),
    ("llama4-scout-8l", "llama-4-scout-17b-16e", 8, {"num_local_experts": 4}, "auto", 32768, "TRITON_ATTN"),
    (
        "deepseek-v3-4l",
        "deepseek-v3",
        4,
        {"n_routed_experts": 16, "first_k_dense_replace": 1},
        "auto",
        32768,
        "TRITON_MLA",
    ),
    ("qwen3-next-8l", "qwen3-next-80b-a3b", 8, {"num_experts": 64}, "auto", 32768, "TRITON_ATTN"),
    ("qwen3-next-8l-fp8", "qwen3-next-80b-a3b", 8, {"num_experts": 64}, "fp8", 32768, "TRITON_ATTN"),
    ("nemotron-nano-15l", "nemotron-nano-9b-v2", 15, {}, "auto", 32768, "TRITON_ATTN"),
    ("falcon-h1-7b-6l", "falcon-h1-7b", 6, {}, "auto", 32768, "TRITON_ATTN"),
    ("jamba-mini-8l", "jamba-mini-1.7", 8, {}, "auto", 32768, "TRITON_ATTN"),
    ("gemma3n-e4b-10l", "gemma-3n-e4b", 10, {"num_kv_shared_layers": 4}, "auto", 32768, "TRITON_ATTN"),
    ("mistral-v01-8l", "mistral-7b-v0.1", 8, {}, "auto", 32768, "TRITON_ATTN"),
    ("mistral-v01-8l-fp8", "mistral-7b-v0.1", 8, {}, "fp8", 32768, "TRITON_ATTN"),
    ("phi-4-mini-8l", "phi-4-mini", 8, PHI4_LONGROPE, "auto", 32768, "TRITON_ATTN"),
    ("phi-4-mini-8l-int8pth", "phi-4-mini", 8, PHI4_LONGROPE, "int8_per_token_head", 32768, "TRITON_ATTN"),
    ("qwen3-moe-12l-fp8", "qwen3-30b-a3b", 12, {}, "fp8", 32768, "TRITON_ATTN"),
    ("glm-4.5-air-6l", "glm-4.5-air", 6, {"n_routed_experts": 32}, "auto", 32768, "TRITON_ATTN"),
]


def case_config(model: str, layers: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """The catalog entry as a config.json with `layers` layers (per-layer lists cut to match)."""
    from kvplan.planner.catalog import CATALOG

    cfg = {k: v for k, v in CATALOG[model].items() if k not in ("hf_id", "params", "quantization_config")}
    cfg.update(overrides, num_hidden_layers=layers)
    for key in ("layer_types", "intermediate_size", "no_rope_layers"):
        if isinstance(cfg.get(key), list):
            cfg[key] = cfg[key][:layers]
    if isinstance(cfg.get("hybrid_override_pattern"), str):
        cfg["hybrid_override_pattern"] = cfg["hybrid_override_pattern"][:layers]
    cfg.pop("vision_config", None)  # the text-only class loads no vision tower
    cfg["architectures"] = [ARCH[cfg["model_type"]]]
    cfg["torch_dtype"] = "bfloat16"
    return cfg


CHILD = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])
t0 = time.time()
from vllm import LLM
import vllm
print("VLLM_VERSION", vllm.__version__, flush=True)
kw = dict(model=spec["dir"], load_format="dummy", skip_tokenizer_init=True, dtype=spec["dtype"],
          enforce_eager=True,
          compilation_config={"custom_ops": ["none"]}, max_model_len=spec["max_model_len"],
          kv_cache_dtype=spec["kv_cache_dtype"], gpu_memory_utilization=spec["util"],
          attention_backend=spec["backend"],
          ir_op_priority={"rms_norm": ["native"], "fused_add_rms_norm": ["native"]})
if spec.get("kv_memory"):  # CPU dry run: the CPU backend needs a fixed KV memory
    kw["kv_cache_memory_bytes"] = spec["kv_memory"]
try:
    llm = LLM(**kw)
except ValueError as exc:
    if "Tokenizer" not in str(exc):
        raise
print("ENGINE_UP", round(time.time() - t0, 1), flush=True)
"""

PATTERNS = {
    "available_kv_gib": r"Available KV cache memory: ([\d.\-]+) GiB",
    "kv_tokens": r"KV cache size: ([\d,]+) tokens",
    "concurrency": r"tokens per request: ([\d.]+)x",
    "max_model_len": r"Maximum concurrency for ([\d,]+) tokens",
    "model_load_gib": r"Model loading took ([\d.]+) GiB",
    "attention_block_size": r"Setting attention block size to (\d+) tokens",
    "mamba_padding_pct": r"Padding mamba page size by ([\d.]+)%",
    "group_block_sizes": r"kv cache group sizes \(([\d, ]+)\)",
    "non_kv_gib": r"Total non KV cache memory: ([\d.]+)GiB",
    "torch_peak_gib": r"torch peak memory increase: ([\d.]+)GiB",
    "weights_gib": r"weights memory: ([\d.]+)GiB",
    "total_memory_gib": r"total_memory=([\d.]+)",
    "block_size_set": r"Setting kv cache block size to (\d+)",
}


def run_case(case: tuple[Any, ...], gpu: str, timeout: int, logs: Path, slots: int = 1) -> dict[str, Any]:
    """One engine start in a child process. With `slots` engines on a GPU at once each gets 1/slots
    of the utilisation; vLLM's non-torch memory is then not this engine's alone (it reads the
    device's free memory), so only the given-memory figures hold for such a run."""
    cid, model, layers, _, kv_dtype, length, backend = case
    util = utilization(slots)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = json.loads((logs / f"{cid}.config.json").read_text())
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        spec = {
            "dir": tmp,
            "max_model_len": 2048 if DRY_RUN else length,
            "kv_cache_dtype": kv_dtype,
            "util": util,
            "backend": backend,
            "dtype": "float32" if DRY_RUN else "bfloat16",
            "kv_memory": 64 << 20 if DRY_RUN else None,
        }
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": gpu,
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_USE_V2_MODEL_RUNNER": "0",
            "VLLM_USE_FLASHINFER_SAMPLER": "0",
            "VLLM_LOGGING_LEVEL": "DEBUG",
            # DeepSeek's grouped top-k router: vLLM's torch path, not its compiled kernel
            "VLLM_USE_FUSED_MOE_GROUPED_TOPK": "0",
        }
        t0 = time.time()
        try:
            proc = subprocess.run(
                [
                    str(ROOT / ".venv-vllm" / "bin" / "python") if DRY_RUN else sys.executable,
                    "-c",
                    CHILD,
                    json.dumps(spec),
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
            )
            text, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            text = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")  # type: ignore[union-attr]
            rc = -9
    (logs / f"{cid}.log").write_text(text)
    logged = {k: m.group(1) for k, p in PATTERNS.items() if (m := re.search(p, text))}
    version = re.search(r"VLLM_VERSION (\S+)", text)
    errors = [ln[-300:] for ln in text.splitlines() if "Error" in ln][-2:]
    return {
        "id": cid,
        "model": model,
        "layers": layers,
        "kv_cache_dtype": kv_dtype,
        "max_model_len": length,
        "attention_backend": backend,
        "gpu_memory_utilization": util,
        "engines_at_once": slots,
        "gpu": gpu,
        "vllm_version": version.group(1) if version else None,
        "started": "ENGINE_UP" in text,
        "rc": rc,
        "seconds": round(time.time() - t0, 1),
        "logged": logged,
        "errors": [] if "ENGINE_UP" in text else errors,
    }


def utilization(slots: int) -> float:
    return round(UTILIZATION / slots, 2)


def cmd_run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    configs = json.loads((ROOT / "bench" / "data" / "vllm_gpu_startup_configs.json").read_text())
    if args.cpu_dry_run:
        # The same runner on this CPU machine with the small configs of the CPU recording (same
        # architectures): checks the processes, parsing and outputs, not the GPU figures.
        global DRY_RUN
        DRY_RUN = True
        cpu = {
            r["id"]: r["config"]
            for r in json.loads((ROOT / "bench" / "data" / "vllm_cpu_startup.json").read_text())["runs"]
        }
        configs = {cid: cpu[src] for cid, src in CPU_TWIN.items() if src in cpu}
    for cid, cfg in configs.items():
        (logs / f"{cid}.config.json").write_text(json.dumps(cfg))
    gpus = (
        ["cpu"]
        if args.cpu_dry_run
        else [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
        or [
            str(i)
            for i in range(
                int(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.count("GPU "))
            )
        ]
    )
    by_id = {c[0]: c for c in CASES}
    order = args.only.split(",") if args.only else list(by_id)  # --only also sets the order
    cases = [by_id[cid] for cid in order if cid in configs]
    deadline = time.time() + args.deadline_s
    results: list[dict[str, Any]] = []
    queue = list(cases)

    def worker(gpu: str) -> None:
        while queue:
            case = queue.pop(0)
            left = deadline - time.time()
            if left < 30:
                results.append({"id": case[0], "started": False, "skipped": "deadline"})
                continue
            results.append(run_case(case, gpu, int(min(args.timeout, left)), logs, args.slots))
            (out / "vllm_gpu_startup.json").write_text(json.dumps(_doc(results), indent=1))

    slots = [g for g in gpus for _ in range(args.slots)]
    with ThreadPoolExecutor(len(slots)) as pool:
        list(pool.map(worker, slots))
    (out / "vllm_gpu_startup.json").write_text(json.dumps(_doc(results), indent=1))
    with tarfile.open(out / "vllm_gpu_startup_logs.tgz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
    for f in logs.iterdir():
        f.unlink()
    logs.rmdir()
    print(f"{'case':22s} {'up':3s} {'s':>6s} {'avail GiB':>9s} {'tokens':>11s} {'conc':>8s}  error")
    for r in sorted(results, key=lambda r: r["id"]):
        lg = r.get("logged", {})
        print(
            f"{r['id']:22s} {'yes' if r['started'] else 'NO':3s} {r.get('seconds', 0):6.1f} "
            f"{lg.get('available_kv_gib', '-'):>9s} {lg.get('kv_tokens', '-'):>11s} "
            f"{lg.get('concurrency', '-'):>8s}  "
            f"{(r.get('errors') or [r.get('skipped', '')])[-1][-80:] if not r['started'] else ''}"
        )


def _doc(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "recorded": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bench/vllm_gpu_startup.py " + " ".join(sys.argv[1:]),
        "device": _device(),
        "results": results,
    }


def _device() -> str:
    try:
        return (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            .stdout.strip()
            .replace("\n", "; ")
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def predict(case: tuple[Any, ...], available_bytes: int | None = None, util: float = UTILIZATION) -> Any:
    """kvplan's capacity for a case (from the logged memory when given, else model + GPU alone)."""
    from kvplan.formats import get_format
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.memory import kv_capacity
    from kvplan.planner.models import spec_from_config

    cid, model, layers, overrides, kv_dtype, length, _ = case
    spec = spec_from_config(case_config(model, layers, overrides), cid, f"case {cid}")
    gpu, _ = get_gpu("h200")
    return kv_capacity(
        spec,
        gpu,
        get_format(VLLM_SAME_BYTES[kv_dtype]),
        max_model_len=length,
        gpu_memory_utilization=util,
        enforce_eager=True,
        kv_memory_bytes=available_bytes,
        vllm_version=VLLM_VERSION,
        offline=True,
    )


def cmd_predict(args: argparse.Namespace) -> None:
    configs = {c[0]: case_config(c[1], c[2], c[3]) for c in CASES}
    path = ROOT / "bench" / "data" / "vllm_gpu_startup_configs.json"
    path.write_text(json.dumps(configs, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({len(configs)} configs)")
    for case in CASES:
        c = predict(case)
        print(
            f"{case[0]:22s} block {c.block_size:5d} groups {len(c.groups):2d} "
            f"avail {c.available_kv_bytes / 2**30:7.2f} GiB "
            f"tokens {c.kv_tokens:>11,} conc {c.max_concurrency:8.2f}x"
        )


def cmd_compare(args: argparse.Namespace) -> None:
    docs = [json.loads(Path(p).read_text()) for p in args.result]
    merged: dict[str, dict[str, Any]] = {}
    for d in docs:  # a later file's start of a case replaces an earlier one; a failure does not
        for r in d["results"]:
            if r.get("started") or r["id"] not in merged:
                merged[r["id"]] = r
    doc = {**docs[-1], "results": [merged[c[0]] for c in CASES if c[0] in merged]}
    by_id = {c[0]: c for c in CASES}
    rows = [
        "| case | vLLM avail GiB | kvplan from memory: tokens / conc (logged) | block (logged) "
        "| model+GPU alone avail | weights GiB kvplan (logged) | activation GiB kvplan (torch peak) "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lg = r.get("logged", {})
        why = (r.get("errors") or [r.get("skipped", "")])[-1]
        if not r.get("started") or "available_kv_gib" not in lg:
            rows.append(f"| {r['id']} | - | did not start: {why[:80]} | - | - | - | - | - |")
            continue
        gib = float(lg["available_kv_gib"])
        util = r.get("gpu_memory_utilization", UTILIZATION)
        given = [predict(by_id[r["id"]], round((gib + d) * 2**30), util) for d in (-0.005, 0.0, 0.005)]
        tokens, conc = int(lg["kv_tokens"].replace(",", "")), float(lg["concurrency"])
        hit = given[1].kv_tokens == tokens and f"{given[1].max_concurrency:.2f}" == f"{conc:.2f}"
        span = min(c.kv_tokens for c in given) <= tokens <= max(c.kv_tokens for c in given)
        model_alone = predict(by_id[r["id"]], None, util)
        alone = model_alone.available_kv_bytes / 2**30
        err = (alone - gib) / gib
        alone_ok = r.get("engines_at_once", 1) == 1
        alone_cell = (
            f"{alone:.2f} ({err:+.1%})" if alone_ok else f"n/a ({r['engines_at_once']} engines at once)"
        )
        verdict = ("within 5%" if abs(err) <= 0.05 else "MISS 5%") if alone_ok else "model+GPU not judged"
        block = lg.get("attention_block_size", "16")
        rows.append(
            f"| {r['id']} | {gib:.2f} | {given[1].kv_tokens:,} / {given[1].max_concurrency:.2f}x "
            f"({tokens:,} / {conc:.2f}x) | {given[1].block_size} ({block}) | {alone_cell} | "
            f"{model_alone.weights_bytes / 2**30:.2f} ({lg.get('model_load_gib', '-')}) | "
            f"{model_alone.activation_bytes / 2**30:.2f} ({lg.get('torch_peak_gib', '-')}) | "
            f"{'exact' if hit else 'within GiB rounding' if span else 'MISS'}; {verdict} |"
        )
    text = "\n".join(
        [
            f"# vLLM {VLLM_VERSION} on the GPU machine against kvplan",
            "",
            *(f"- recorded {d['recorded']} on {d['device']}: `{d['command']}`" for d in docs),
            f"- compared {datetime.now(UTC):%Y-%m-%d}: `bench/vllm_gpu_startup.py compare "
            f"{' '.join(Path(p).name for p in args.result)}`",
            "",
            *rows,
            "",
        ]
    )
    RESULTS.write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="on the GPU machine: start every case, write JSON and logs to --out")
    r.add_argument("--out", required=True)
    r.add_argument("--deadline-s", type=int, default=270)
    r.add_argument("--timeout", type=int, default=150, help="per engine")
    r.add_argument("--only", help="comma-separated case ids, run in this order")
    r.add_argument(
        "--slots",
        type=int,
        default=1,
        help="engines on a GPU at once, each at 1/slots of the utilisation (faster; model+GPU not judged)",
    )
    r.add_argument(
        "--cpu-dry-run", action="store_true", help="here, on vLLM CPU, with the CPU recording's configs"
    )
    sub.add_parser("predict", help="write the case configs (bench/data) and print kvplan's predictions")
    c = sub.add_parser("compare", help="kvplan against a run's JSON -> bench/results/vllm_gpu_startup.md")
    c.add_argument("result", nargs="+", help="run JSON files (a later file's start of a case wins)")
    args = ap.parse_args()
    known = {c[0] for c in CASES}
    if args.cmd == "run" and args.only and (unknown := sorted(set(args.only.split(",")) - known)):
        ap.error(f"--only: unknown case {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if args.cmd == "run" and not 1 <= args.slots <= 8:
        ap.error(f"--slots must be 1..8, got {args.slots}")
    no_gpu = shutil.which("nvidia-smi") is None or os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    if args.cmd == "run" and not args.cpu_dry_run and no_gpu:
        ap.error("run needs the GPU machine (no GPU visible here); --cpu-dry-run runs it on vLLM CPU")
    if args.cmd == "compare" and (missing := [p for p in args.result if not Path(p).is_file()]):
        ap.error(f"no such result file: {', '.join(missing)}")
    {"run": cmd_run, "predict": cmd_predict, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    main()
