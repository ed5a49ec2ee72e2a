"""Dump real K, V and queries of SmolLM2-135M-Instruct for the GPU kernels' accuracy check.

Runs the model (fp32, CPU) over the first TOKENS tokens of the evaluation text
(kvplan/kernels/eval.py's: Debian's GPL-3 text) and keeps, for LAYERS, the post-RoPE keys and
values of every position (as vLLM caches them) and the post-RoPE queries of the last QUERIES
positions (decode steps that read the whole cache). fp16, ~5 MB, into data/kv/:

    PYTHONPATH=. .venv/bin/python bench/kernels_realkv_dump.py

`bench/kernels_decode.py --sections realkv` writes them into pages of every format on the GPU and
runs the decode kernels on them. The model's weights are Apache-2.0 (data/kv/NOTICE).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from kvplan.kernels import eval as kv_eval

OUT = Path(__file__).resolve().parent.parent / "data" / "kv" / "smollm2_135m_kv.pt"
TOKENS, QUERIES, LAYERS = 2048, 16, (0, 15, 29)


@torch.no_grad()
def dump() -> dict[str, Any]:
    from transformers.models.llama import modeling_llama

    model, tok = kv_eval.load_model()
    ids = kv_eval.text_tokens(tok, TOKENS)[None]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    orig = modeling_llama.apply_rotary_pos_emb

    def capture(q: torch.Tensor, k: torch.Tensor, *a: Any, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        qe, ke = orig(q, k, *a, **kw)
        seen.append((qe, ke))  # one call per layer, in order: [1, H, T, D]
        return qe, ke

    modeling_llama.apply_rotary_pos_emb = capture
    try:
        out = model(input_ids=ids, use_cache=True)
    finally:
        modeling_llama.apply_rotary_pos_emb = orig
    layers = list(out.past_key_values.layers)
    rec: dict[str, Any] = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "tokens": TOKENS,
        "layers": list(LAYERS),
    }
    for li in LAYERS:
        q, k = seen[li]
        assert torch.equal(k, layers[li].keys), "captured keys differ from the cache's"
        rec[f"k{li}"] = layers[li].keys[0].transpose(0, 1).half().contiguous()  # [T, Hkv, D]
        rec[f"v{li}"] = layers[li].values[0].transpose(0, 1).half().contiguous()
        rec[f"q{li}"] = q[0, :, -QUERIES:].transpose(0, 1).half().contiguous()  # [QUERIES, Hq, D]
    return rec


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    rec = dump()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(rec, OUT)
    shapes = {k: tuple(v.shape) for k, v in rec.items() if isinstance(v, torch.Tensor)}
    print(OUT, f"{OUT.stat().st_size / 1e6:.1f} MB", shapes)
    sys.exit(0)
