"""Accuracy of each KV format on a real model: two-pass perplexity with SmolLM2-135M-Instruct.

Pass 1 runs a prefix of a fixed English text and fills the KV cache; the cache is then stored in
the format under test (written into pages by the reference quantizer and read back dequantized,
keys post-RoPE as vLLM stores them); pass 2 scores the next tokens *reading that cache*. A
one-pass measurement never reads the cache and would make every format look identical.

Reported per format: perplexity, ΔPPL against the unquantized (fp32) cache, and greedy next-token
agreement with the unquantized run over the scored positions.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvplan.errors import NotFound
from kvplan.formats import Granularity, KVFormat, get_format
from kvplan.kernels import reference

TEXT = Path("/usr/share/common-licenses/GPL-3")
DEFAULT_FORMATS = (
    "bf16", "fp8_e4m3", "int8", "int8_hadamard", "k8v4", "int4", "int4_hadamard", "int4_kivi", "int4_g32",
)  # fmt: skip
# the thresholds: (max ΔPPL fraction, min greedy agreement)
THRESHOLDS = {
    "int8": (0.001, 0.98),
    "int8_hadamard": (0.001, 0.98),
    "fp8_e4m3": (0.005, None),
    "int4_hadamard": (0.03, 0.90),
}
BLOCK = 16


@dataclass(frozen=True)
class FormatAccuracy:
    name: str
    ppl: float
    delta: float  # (ppl - ppl_fp) / ppl_fp
    agreement: float  # greedy next-token agreement with the unquantized cache
    positions: int


def load_model() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct in fp32 (exact on CPU) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvplan.checkpoint import ensure_smollm2_checkpoint

    path = ensure_smollm2_checkpoint()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def text_tokens(tokenizer: Any, n: int) -> torch.Tensor:
    if not TEXT.is_file():
        raise NotFound(f"evaluation text {TEXT} not found (Debian's base-files ships it)")
    ids = tokenizer(TEXT.read_text(), return_tensors="pt").input_ids[0]
    if len(ids) < n:
        raise NotFound(f"{TEXT} has {len(ids)} tokens, need {n}")
    return torch.as_tensor(ids[:n])


def store_in_format(
    keys: torch.Tensor, values: torch.Tensor, fmt: KVFormat
) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V [1, Hkv, T, D] -> the same after a round trip through pages of `fmt` (reference)."""
    _, hkv, t, d = keys.shape
    k, v = keys[0].transpose(0, 1).float(), values[0].transpose(0, 1).float()  # [T, Hkv, D]
    nblocks = math.ceil(t / BLOCK)
    cache = reference.new_cache(fmt, nblocks, hkv, d, BLOCK)
    slots = torch.arange(t)
    k_scale = v_scale = None
    if fmt.k.granularity is Granularity.PER_TENSOR:  # static scales calibrated on the prefix
        k_scale = float(k.abs().max()) / reference.FP8_MAX
    if fmt.v.granularity is Granularity.PER_TENSOR:
        v_scale = float(v.abs().max()) / reference.FP8_MAX
    stage = (
        reference.KiviStage.empty(2, hkv, BLOCK, d) if fmt.k.granularity is Granularity.PER_CHANNEL else None
    )
    reference.write_kv(k, v, cache, slots, fmt, BLOCK, k_scale, v_scale, stage)
    kd, vd = reference.dequantize_pages(cache, fmt, d, BLOCK, k_scale, v_scale, stage)
    kd = kd.transpose(0, 1).reshape(hkv, -1, d)[:, :t]  # [NB, Hkv, P, D] -> [Hkv, T, D]
    vd = vd.transpose(0, 1).reshape(hkv, -1, d)[:, :t]
    return kd[None].to(keys.dtype), vd[None].to(values.dtype)


def _layers(cache: Any) -> list[Any]:
    return list(cache.layers)


@torch.no_grad()
def evaluate(
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    prefix: int = 512,
    scored: int = 512,
    model_and_tokenizer: tuple[Any, Any] | None = None,
) -> list[FormatAccuracy]:
    """Two-pass perplexity of each format against the unquantized cache."""
    fmts = [get_format(n) for n in formats]
    model, tok = model_and_tokenizer or load_model()
    ids = text_tokens(tok, prefix + scored)[None]
    first = model(input_ids=ids[:, :prefix], use_cache=True)
    base_cache = first.past_key_values
    targets = ids[0, prefix + 1 :]

    def pass2(cache: Any) -> torch.Tensor:
        out = model(input_ids=ids[:, prefix:], past_key_values=cache, use_cache=True)
        return torch.as_tensor(out.logits[0, :-1]).float()  # position i predicts token prefix + i + 1

    ref_logits = pass2(copy.deepcopy(base_cache))
    ref_nll = torch.nn.functional.cross_entropy(ref_logits, targets)
    ref_ppl = float(ref_nll.exp())
    ref_greedy = ref_logits.argmax(-1)
    rows = [FormatAccuracy("fp32 (unquantized)", ref_ppl, 0.0, 1.0, len(targets))]
    for fmt in fmts:
        cache = copy.deepcopy(base_cache)
        for layer in _layers(cache):
            layer.keys, layer.values = store_in_format(layer.keys, layer.values, fmt)
        logits = pass2(cache)
        ppl = float(torch.nn.functional.cross_entropy(logits, targets).exp())
        agree = float((logits.argmax(-1) == ref_greedy).float().mean())
        rows.append(FormatAccuracy(fmt.name, ppl, (ppl - ref_ppl) / ref_ppl, agree, len(targets)))
    return rows


def verdict(row: FormatAccuracy) -> str:
    limit = THRESHOLDS.get(row.name)
    if limit is None:
        return ""
    max_delta, min_agree = limit
    ok = row.delta <= max_delta and (min_agree is None or row.agreement >= min_agree)
    return "met" if ok else "MISSED"


def table(rows: list[FormatAccuracy]) -> str:
    lines = [
        "| format | bytes/token-head (d 64, page 16) | PPL | ΔPPL | greedy agreement | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = "" if r.name.startswith("fp32") else f"{get_format(r.name).bytes_per_token_head(64, BLOCK):g}"
        limit = THRESHOLDS.get(r.name)
        target = ""
        if limit:
            target = f"ΔPPL ≤ {limit[0]:.1%}" + (f", agreement ≥ {limit[1]:.0%}" if limit[1] else "")
            target += f": {verdict(r)}"
        lines.append(
            f"| {r.name} | {size} | {r.ppl:.4f} | {r.delta:+.3%} | {r.agreement:.2%} ({r.positions})"
            f" | {target} |"
        )
    return "\n".join(lines)
