"""What the vLLM plugin calls: cache write and paged attention, Triton on CUDA, reference on CPU.

Signatures match `kvplan.kernels.reference`. `backend="auto"` picks Triton for CUDA tensors and the
torch reference otherwise; `backend="triton"` forces the kernels (on CPU only under
TRITON_INTERPRET=1, which is how CI tests them). Shapes, dtypes, head_dim and page size are
checked before any launch and rejected with ValueError.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from kvplan.formats import Element, Granularity, KVFormat, Rotation, TensorQuant
from kvplan.kernels import reference
from kvplan.kernels import triton_kernels as tk  # (kinds are tl.constexpr there: pass plain ints)
from kvplan.kernels.reference import KiviStage

_LOG2E = 1.4426950408889634

# Launch parameters, chosen by the sweeps of bench/kernels_decode.py (--sections sweep; on the H100
# also the retired bench/kernels_variants.py: bench/results/kernels_h100.md). TUNING holds the defaults;
# TUNING_BY_FORMAT what each format's sweep preferred when the grid fills the GPU, and
# TUNING_SMALL_GRID what every quantized format preferred when it does not (batch 1-8 decode, where
# the context is split finely): one-warp programs over 32-token tiles.
TUNING: dict[str, object] = {
    "block_n": 128,  # tokens per attention tile (at most 32 at head_dim 256)
    "num_warps": 4,
    "num_stages": 3,
    "programs_per_sm": 8,  # flash-decoding: split the context until the grid covers the GPU this often
    "min_tokens_per_split": 256,
    "small_grid_per_sm": 0.25,  # fewer (sequence, KV head) programs than this x SMs: TUNING_SMALL_GRID
    "rot_prec": "tf32x3",  # fp32 Hadamard dots: tf32x3 keeps ~fp32 accuracy, ieee is 3x slower on writes
    "swap_qk": False,  # compute s^T = K q^T (keys as the MMA's A operand)
    # 8-/4-bit codes loaded as int32 words and converted to bf16 by inline PTX (bf16 queries on
    # CUDA; under the interpreter the same unpacking with integer ops, so CI covers it; fp16/fp32
    # queries on CUDA keep the byte loads, unmeasured with words), so the MMA-operand layout change
    # moves 16-bit values
    "word_loads": True,
    "asm_convert": True,  # the inline-PTX conversions (CUDA only; the interpreter runs integer ops)
    # int8/int4 keys: q split into two int8 operands (q ~ s1 a + s2 b, ~16 bits) and q.k as two
    # int8 MMAs on the codes themselves, so keys are never converted to a float type
    "int8_qk": True,
    # fp8 K/V with bf16 queries: the dots run in fp16, the codes become f16 by the hardware's
    # e4m3x2 -> f16x2 conversion (1 instruction per 2 codes instead of 5 for bf16); q is scaled into
    # fp16's range per row. H100 32x32K: 877 -> 847 us (bench/results/kernels_h100_fp8_fp16.json)
    "fp8_fp16": True,
    # registers per thread cap (0: the compiler's choice); 128 and 96 spill and were slower for
    # every integer format on an H100 (bench/results/kernels_h100_maxnreg_rejected.json)
    "maxnreg": 0,
}
# cache write: tokens a program, warps; rot_from_index: the Hadamard block computed in registers
# instead of loaded (Hadamard formats)
TUNING_WRITE: dict[str, int] = {"block_t": 16, "num_warps": 4, "rot_from_index": 0}
# the Hadamard formats in two-warp programs: int8_hadamard 64.6-66.3% of copy bandwidth against
# 60.9-62.8% with four, int4_hadamard 51.0-51.7% against 46.3-46.5% (two H200 runs,
# bench/results/kernels_h200_s7_write_sweep2.json and _sweep3.json); the rest keep four
TUNING_WRITE_BY_FORMAT: dict[str, dict[str, int]] = {
    "int8_hadamard": {"num_warps": 2},
    "int4_hadamard": {"num_warps": 2},
}
# split-K merge: output columns and splits a program takes a step; 0 = all of them in one tile,
# the default (INT4 1 x 32K on the H200: 1.90x over BF16 against 1.72x with 32 / 32, no better
# elsewhere; bench/results/kernels_h200_s5_call4.json)
# pdl: the merge launched as a programmatic dependent launch (sm_90): its programs start while the
# attention kernel's last ones run and wait for it on the GPU (triton_kernels.combine_kernel)
TUNING_COMBINE: dict[str, int] = {"block_d": 0, "block_s": 0, "num_warps": 4, "pdl": 0}
# ... and by launch regime (gluon_regime, every format's launch: BF16's merge is the same kernel):
# PDL on small grids only. H200, 2026-12-05 (bench/results/kernels_h200_s10_call1-3.json): 1 x 32K
# int4 19.4 -> 18.6 us, fp8 26.4 -> 25.9, BF16 unchanged; on full and partial grids 0.3-1% slower,
# 32 x 4K (short) 2-3% slower for every format, BF16 too
TUNING_COMBINE_REGIME: dict[str, dict[str, int]] = {"small": {"pdl": 1}}
TUNING_BY_FORMAT: dict[str, dict[str, object]] = {
    "bf16": {"block_n": 64, "num_stages": 2},
    "fp16": {"block_n": 64, "num_stages": 2},
    "int8": {"num_warps": 2, "block_n": 64, "num_stages": 2},
    "k8v4": {"num_warps": 2, "block_n": 64, "num_stages": 3, "int8_qk": False},
    "int4": {"num_warps": 2, "block_n": 64, "num_stages": 3},
    "int4_hadamard": {"num_warps": 2, "block_n": 64, "num_stages": 3, "int8_qk": False},
}
TUNING_SMALL_GRID: dict[str, object] = {"num_warps": 1, "block_n": 32, "num_stages": 3}
# The Gluon decode kernel (gluon_decode.py) for fp8/int8/int4 pages with bf16/fp16 queries, on
# Triton 3.6 only (the version it is written and checked against; any other version, fp32
# queries, or "gluon": False run the Triton kernel above). One-warp programs; block_n tokens a
# tile (a divisor of the page), `unroll` tiles' loads issued together.
GLUON_VERSION = "3.6."
# Decode and speculative rows only (1-8 query tokens a sequence, what it is written, checked and
# timed for): prefill chunks keep the Triton kernel. Inside vLLM on the H200, 4 x 16K-token
# prefills ran 7x slower through the one-warp Gluon programs (1,232 against 8,918 tokens/s,
# bench/results/vllm_gpu_h200.md).
GLUON_MAX_BLOCK_Q = 8
TUNING_GLUON: dict[str, object] = {
    "gluon": True,  # on: bench/kernels_decode.py's check passed on the H200 (kernels_h200.md)
    "block_n": 16,
    "unroll": 2,
    "lazy": True,  # rescale the output accumulator only when a row max grows past 2^8
    # one row max and one rescale check a group of `unroll` tiles (their scores first), not a tile
    "joint": False,
    # the first group's loads issued before the query prologue's math, not after it; never under a
    # register cap ("maxnreg"), where those loads' registers spill (32 x 32K int4 3.28x -> 3.20x)
    "early": True,
    "prefetch": True,  # issue the next `unroll` tiles' loads before this group's math
    # (with prefetch) each group's pages read from the block table an iteration before its loads,
    # so they wait on no block-table load of their own: H200, 2026-12-05 (kernels_h200_s10_call3.json)
    # 32 x 32K int4_hadamard 3.17x -> 3.23x over BF16, int8 1.87x -> 1.90x, 4 x 32K int4 2.76x ->
    # 2.85x; k8v4 (128-register cap) lost 1-2% on full and partial grids: off there
    "page_ahead": True,
    # S^T = K Q^T: keys the MMA's A operand and the query group its N side (8 columns a step, not
    # 16 rows), P^T transposed by warp shuffles for P.V (tiles of 16 tokens or more)
    "swap": False,
    # context splits: as many as fill `waves` full waves of the programs an SM holds at once (from
    # the compiled kernel's registers: resident_programs), so no last wave runs nearly empty; 0, or
    # where the kernel cannot be asked (compile-only tools, the CPU emulator), enough that the
    # grid covers the GPU programs_per_sm times
    "waves": 1,
    "programs_per_sm": 8,
    "min_tokens_per_split": 128,
    "maxnreg": 0,  # registers per thread cap (0: the compiler's choice)
}
# Launch regimes: "short" below GLUON_LONG tokens; long contexts by how much of the GPU the
# (sequence, query block, KV head) programs cover: "full" (programs >= SMs), "partial" (>= SMs / 4),
# "small" (a few sequences, the context split finely). The base launch and each override are the
# best of the H200 sweeps at the regime's shapes (bench/results/kernels_h200_s7_*.json; short:
# 64 x 1K, 32 x 4K; full: 32 x 32K, 24 x 32K; partial: 8 x 32K, 12 x 32K; small: 1 x 32K, 1 x 128K):
# the unswapped product, two tiles a step (226-255 registers: 8 one-warp programs an SM) and one
# wave of them, but for the 4-bit formats and k8v4 on full and partial grids the swapped one under
# a register cap (128: 16 programs an SM; int4 168: 12), and two waves on partial grids. The
# 4-bit formats on full grids (int4 on partial ones too): the swapped product two tiles a step
# with one row max for both ("joint"), at 168 registers, two waves (bench/results/
# kernels_h200_s8_call1.json, 32 x 32K: int4 3.24x over BF16 against 3.09x without "joint",
# int4_hadamard 3.15x against 2.92x with _SWAPPED_128; "joint" on the unswapped product lost
# 1-12%, so it is off in the base launch). "early" (the first loads before the query prologue):
# kernels_h200_s8_call5.json, 1 x 32K fp8 1.51x -> 1.54x, int8 1.46x -> 1.50x, k8v4 1.76x -> 1.80x,
# 48 x 1K int8 1.66x -> 1.70x; under a register cap it spills, so a capped launch never takes it.
GLUON_LONG = 16384
TUNING_GLUON_REGIME: dict[str, dict[str, object]] = {
    "short": {},
    "full": {},
    "partial": {"swap": True, "waves": 2},
    "small": {},
}
_SWAPPED_128: dict[str, object] = {"swap": True, "unroll": 1, "maxnreg": 128, "waves": 1}
_SWAPPED_JOINT: dict[str, object] = {"swap": True, "unroll": 2, "joint": True, "maxnreg": 168, "waves": 2}
TUNING_GLUON_BY_FORMAT: dict[str, dict[str, dict[str, object]]] = {
    "fp8_e4m3": {"partial": {"waves": 0, "programs_per_sm": 16}},
    "k8v4": {
        "full": {**_SWAPPED_128, "waves": 2, "page_ahead": False},
        "partial": {**_SWAPPED_128, "page_ahead": False},
    },
    "int4": {"full": _SWAPPED_JOINT, "partial": _SWAPPED_JOINT},
    "int4_hadamard": {"full": _SWAPPED_JOINT, "partial": _SWAPPED_128},
}


def _tuning(fmt: KVFormat, programs: int, sms: int) -> dict[str, object]:
    """Triton launch parameters for `programs` (sequence, query block, KV head) programs on `sms` SMs."""
    tune = {**TUNING, **TUNING_BY_FORMAT.get(fmt.name, {})}
    if fmt.is_quantized and programs < float(str(tune["small_grid_per_sm"])) * sms:
        tune.update(TUNING_SMALL_GRID)
    return tune


def gluon_regime(programs: int, sms: int, max_seq_len: int) -> str:
    """The launch regime (a key of TUNING_GLUON_REGIME) of `programs` programs on `sms` SMs."""
    if max_seq_len < GLUON_LONG:
        return "short"
    return "full" if programs >= sms else "partial" if 4 * programs >= sms else "small"


def _gluon_tuning(fmt: KVFormat, programs: int = 0, sms: int = 1, max_seq_len: int = 0) -> dict[str, object]:
    """The Gluon launch for `programs` (sequence, query block, KV head) programs on `sms` SMs."""
    regime = gluon_regime(programs, sms, max_seq_len)
    return {
        **TUNING_GLUON,
        **TUNING_GLUON_REGIME.get(regime, {}),
        **TUNING_GLUON_BY_FORMAT.get(fmt.name, {}).get(regime, {}),
    }


def gluon_applies(fmt: KVFormat, query_dtype: torch.dtype, group: int, block_q: int) -> bool:
    """Whether paged_attention runs the Gluon kernel for these pages and queries (on CUDA)."""
    kinds = (int(tk.FP8.value), int(tk.INT8.value), int(tk.INT4.value))
    return (
        bool(_gluon_tuning(fmt)["gluon"])
        and triton.__version__.startswith(GLUON_VERSION)
        and _kind(fmt.k) in kinds
        and _kind(fmt.v) in kinds
        and query_dtype in (torch.bfloat16, torch.float16)
        and group * block_q <= 64
        and block_q <= GLUON_MAX_BLOCK_Q
    )


def triton_supports(fmt: KVFormat) -> bool:
    """Formats with a Triton path: per-token-head scales without groups, fp8, bf16/fp16."""
    return all(_kind(side) is not None for side in (fmt.k, fmt.v)) and fmt.v.rotation is Rotation.NONE


def _kind(side: TensorQuant) -> int | None:
    el = side.element
    if el in (Element.BF16, Element.FP16):
        return int(tk.PLAIN.value)
    if el is Element.FP8_E4M3:
        return int(tk.FP8.value)
    if side.granularity is not Granularity.PER_TOKEN_HEAD or side.group_size not in (None,):
        return None
    if el is Element.INT8 and side.symmetric:
        return int(tk.INT8.value)
    if el is Element.INT4 and not side.symmetric:
        return int(tk.INT4.value)
    return None


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) (triton.cdiv is a constexpr function: ~1.4 us a call on the host)."""
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (as triton.next_power_of_2, without its call cost)."""
    return 1 << max(n - 1, 0).bit_length()


def _use_triton(t: torch.Tensor, fmt: KVFormat, backend: str) -> bool:
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend must be auto, triton or reference; got {backend!r}")
    if backend == "reference":
        return False
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if backend == "triton":
        if not triton_supports(fmt):
            raise ValueError(f"no Triton kernel for {fmt.name}; use backend='reference'")
        if not (t.is_cuda or interp):
            raise ValueError("backend='triton' needs CUDA tensors or TRITON_INTERPRET=1")
        return True
    return t.is_cuda and triton_supports(fmt)


@dataclass(frozen=True)
class _Plan:
    """Constexpr arguments shared by both kernels for one (format, head_dim, page)."""

    k_kind: int
    v_kind: int
    k_code: int
    v_code: int
    k_meta: int
    v_meta: int
    page_nbytes: int


@lru_cache(maxsize=256)
def _plan(fmt: KVFormat, head_dim: int, block_size: int) -> _Plan:
    layout = fmt.head_page(head_dim, block_size)
    k_kind, v_kind = _kind(fmt.k), _kind(fmt.v)
    assert k_kind is not None and v_kind is not None
    return _Plan(
        k_kind,
        v_kind,
        layout.region("k_codes").offset,
        layout.region("v_codes").offset,
        layout.region("k_meta").offset,
        layout.region("v_meta").offset,
        layout.nbytes,
    )


def _views(cache: torch.Tensor, fmt: KVFormat) -> tuple[torch.Tensor, ...]:
    flat = cache.view(-1)
    p16 = torch.float16 if fmt.k.element is Element.FP16 else torch.bfloat16
    return flat, flat.view(p16), flat.view(torch.float16), flat.view(torch.float32)


@lru_cache(maxsize=32)
def _half_hadamard(d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The +-1 Sylvester block H_{d/2} [d/2, d/2] in `dtype`: both kernels apply H_d/sqrt(d) to
    the two halves of a row with it (see triton_kernels._rotate_halves)."""
    return (reference.hadamard(d // 2, device) * math.sqrt(d // 2)).round().to(dtype).contiguous()


@lru_cache(maxsize=32)
def _ones(hkv: int, device: torch.device) -> torch.Tensor:
    return torch.ones(hkv, dtype=torch.float32, device=device)


def _static(scale: torch.Tensor | float | None, hkv: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """A static scale as fp32 on the device and its step over KV heads: [hkv] and 1, or one scale
    for every head and 0, passed as it is (no copy, nothing launched for it; the kernels read the
    caller's tensor, so a CUDA graph sees its value at each replay)."""
    if scale is None:
        return _ones(hkv, device), 1
    if isinstance(scale, torch.Tensor) and scale.device == device and scale.dtype == torch.float32:
        s = scale.reshape(-1)
    else:
        s = torch.as_tensor(scale, dtype=torch.float32, device=device).reshape(-1)
    if s.numel() not in (1, hkv):
        raise ValueError(f"static scale must have 1 or {hkv} (KV heads) elements, got {s.numel()}")
    return (s, 0) if s.numel() == 1 else (s.contiguous(), 1)


def _scales(
    k_scale: torch.Tensor | float | None, v_scale: torch.Tensor | float | None, hkv: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The kernels' (ks_ptr, vs_ptr, ks_step, vs_step) arguments (see _static)."""
    (ks, k_step), (vs, v_step) = _static(k_scale, hkv, device), _static(v_scale, hkv, device)
    return ks, vs, k_step, v_step


def _check_static_scales(fmt: KVFormat, k_scale: object, v_scale: object) -> None:
    for side, s, n in ((fmt.k, k_scale, "k_scale"), (fmt.v, v_scale, "v_scale")):
        if s is not None and side.granularity.in_page:
            raise ValueError(f"{fmt.name} keeps its scales in the pages; {n} must be None")


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    fmt: KVFormat,
    block_size: int,
    k_scale: torch.Tensor | float | None = None,
    v_scale: torch.Tensor | float | None = None,
    kivi_stage: KiviStage | None = None,
    backend: str = "auto",
) -> None:
    """Quantize key/value [T, Hkv, D] into the pages at slot_mapping [T] (-1 = skip)."""
    reference.check_shapes_for_write(key, value, kv_cache, slot_mapping)
    cache = reference.check_cache(kv_cache, fmt, key.shape[-1], block_size)
    _check_static_scales(fmt, k_scale, v_scale)
    if not _use_triton(key, fmt, backend):
        reference.write_kv(key, value, cache, slot_mapping, fmt, block_size, k_scale, v_scale, kivi_stage)
        return
    _write_triton(key, value, cache, slot_mapping, fmt, block_size, k_scale, v_scale, key.is_cuda)


def _write_triton(
    key: torch.Tensor,
    value: torch.Tensor,
    cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    fmt: KVFormat,
    block_size: int,
    k_scale: torch.Tensor | float | None,
    v_scale: torch.Tensor | float | None,
    cuda: bool,
) -> None:
    """The write kernel's launch (`cuda`: as on the GPU; bench/kernels_compile.py compiles it
    from CPU tensors)."""
    t, hkv, d = key.shape
    if t == 0:
        return
    if key.stride(-1) != 1 or value.stride(-1) != 1:
        raise ValueError("key and value must be contiguous along head_dim")
    p = _plan(fmt, d, block_size)
    u8, p16, f16, f32 = _views(cache, fmt)
    tune = {**TUNING_WRITE, **TUNING_WRITE_BY_FORMAT.get(fmt.name, {})}
    block_t = tune["block_t"]
    tk.write_kernel[(_cdiv(t, block_t), hkv)](
        key, value, slot_mapping, u8, p16, f16, f32, _half_hadamard(d, key.device, key.dtype),
        *_scales(k_scale, v_scale, hkv, key.device),
        t, key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        HKV=hkv, D=d, PAGE=block_size, PAGE_NBYTES=p.page_nbytes,
        K_KIND=p.k_kind, V_KIND=p.v_kind, K_ROT=fmt.k.rotation is Rotation.HADAMARD,
        K_CODE=p.k_code, V_CODE=p.v_code, K_META=p.k_meta, V_META=p.v_meta,
        BLOCK_T=block_t, DOT_PREC=str(TUNING["rot_prec"]) if cuda else "ieee",
        ROT_FROM_INDEX=bool(tune["rot_from_index"]), num_warps=tune["num_warps"],
    )  # fmt: skip


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    fmt: KVFormat,
    block_size: int,
    scale: float,
    k_scale: torch.Tensor | float | None = None,
    v_scale: torch.Tensor | float | None = None,
    kivi_stage: KiviStage | None = None,
    backend: str = "auto",
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal paged attention -> [Tq, Hq, D] in the query's dtype (see reference.paged_attention).

    max_query_len / max_seq_len avoid a device sync when the caller knows them (vLLM does).
    """
    reference.check_shapes_for_attention(query, kv_cache, block_table, seq_lens, query_start_loc)
    d = query.shape[-1]
    cache = reference.check_cache(kv_cache, fmt, d, block_size)
    _check_static_scales(fmt, k_scale, v_scale)
    if not _use_triton(query, fmt, backend):
        res = reference.paged_attention(
            query, cache, block_table, seq_lens, query_start_loc, fmt, block_size, scale,
            k_scale, v_scale, kivi_stage,
        )  # fmt: skip
        if out is not None:
            out.copy_(res)
            return out
        return res
    return _attention_triton(
        query, cache, block_table, seq_lens, query_start_loc, fmt, block_size, scale,
        k_scale, v_scale, max_query_len, max_seq_len, num_splits, out,
    )  # fmt: skip


def _attention_triton(
    query: torch.Tensor,
    cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    fmt: KVFormat,
    block_size: int,
    scale: float,
    k_scale: torch.Tensor | float | None,
    v_scale: torch.Tensor | float | None,
    max_query_len: int | None,
    max_seq_len: int | None,
    num_splits: int | None,
    out: torch.Tensor | None,
    cuda: bool | None = None,
    sms: int | None = None,
) -> torch.Tensor:
    """`cuda`/`sms` default to the query's device; bench/kernels_sass.py passes them to compile
    the GPU's kernels from CPU tensors."""
    cuda = query.is_cuda if cuda is None else cuda
    tq, hq, d = query.shape
    hkv = cache.shape[1]
    group = hq // hkv
    b = seq_lens.shape[0]
    if query.stride(-1) != 1:
        raise ValueError("query must be contiguous along head_dim")
    if out is None:
        out = torch.empty_like(query)
    if tq == 0 or b == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    p = _plan(fmt, d, block_size)
    block_q = max(1, min(_pow2(max(max_query_len, 1)), max(1, 64 // group)))
    num_qb = _cdiv(max(max_query_len, 1), block_q)
    sms = _sm_count(query.device) if sms is None else sms
    gluon = cuda and gluon_applies(fmt, query.dtype, group, block_q)
    programs = b * num_qb * hkv  # (sequence, query block, KV head) programs before any split
    comb = {**TUNING_COMBINE, **TUNING_COMBINE_REGIME.get(gluon_regime(programs, sms, max_seq_len), {})}
    pdl = bool(comb["pdl"]) and cuda and os.environ.get("TRITON_INTERPRET") != "1"
    if gluon:
        tune = _gluon_tuning(fmt, programs, sms, max_seq_len)
        block_n = min(int(str(tune["block_n"])), block_size)
        block_m = max(8, _pow2(block_q * group))
    else:
        tune = _tuning(fmt, programs, sms)
        block_n = int(str(tune["block_n"])) if d <= 128 else 32
        block_m = max(16, _pow2(block_q * group))
    if gluon:
        from kvplan.kernels import gluon_decode as gd

        c_i32 = cache.view(-1).view(torch.int32)
        kw = _gluon_constexprs(fmt, p, hkv, group, d, block_size, block_q, block_m, block_n, tune, pdl)

        def gluon_args(parts: tuple[torch.Tensor, ...], tps: int) -> list[object]:
            return _gluon_arguments(
                query, out, c_i32, block_table, seq_lens, query_start_loc, k_scale, v_scale, scale,
                hkv, d, num_qb, parts, tps,
            )  # fmt: skip

    if num_splits is None:
        resident = None
        if gluon and float(str(tune["waves"])) > 0:  # fp32 stand-ins: the compile sees only dtypes
            stand_in = (_partials_stand_in(query.device),) * 3
            dtypes = (query.dtype, out.dtype, block_table.dtype, seq_lens.dtype, query_start_loc.dtype)
            resident = _gluon_resident(
                gd.attention_kernel, (b * num_qb, hkv, 2), dtypes, kw, lambda: gluon_args(stand_in, block_n)
            )
        num_splits = _choose_splits(programs, max_seq_len, sms, tune, resident)
    tps = _cdiv(_cdiv(max(max_seq_len, 1), num_splits), block_n) * block_n
    num_splits = max(1, _cdiv(max(max_seq_len, 1), tps))
    if num_splits > 1:
        o_part = torch.empty(num_splits, tq, hq, d, dtype=torch.float32, device=query.device)
        m_part = torch.empty(num_splits, tq, hq, dtype=torch.float32, device=query.device)
        l_part = torch.empty_like(m_part)
    else:
        o_part = m_part = l_part = out  # unused
    if gluon:
        args = gluon_args((o_part, m_part, l_part), tps)
        gd.attention_kernel[(b * num_qb, hkv, num_splits)](*args, DIRECT=num_splits == 1, **kw)
    else:
        _launch_triton(
            query, out, o_part, m_part, l_part, _views(cache, fmt), block_table, seq_lens,
            query_start_loc, fmt, p, scale, k_scale, v_scale, hkv, group, d, block_size, num_qb, tps,
            block_q, block_m, block_n, num_splits, tune, cuda, pdl,
        )  # fmt: skip
    if num_splits > 1:
        block_d = min(d, comb["block_d"] or d)
        tk.combine_kernel[(tq, hq, d // block_d)](
            out, o_part, m_part, l_part, tq, hq, out.stride(0), out.stride(1),
            D=d, SPLITS=num_splits, SPLITS_P2=_pow2(num_splits), BLOCK_D=block_d,
            BLOCK_S=min(comb["block_s"] or 1 << 30, _pow2(num_splits)),
            PDL=pdl, num_warps=comb["num_warps"], **({"launch_pdl": True} if pdl else {}),
        )  # fmt: skip
    return out


def _launch_triton(
    query: torch.Tensor, out: torch.Tensor, o_part: torch.Tensor, m_part: torch.Tensor,
    l_part: torch.Tensor, views: tuple[torch.Tensor, ...], block_table: torch.Tensor,
    seq_lens: torch.Tensor, query_start_loc: torch.Tensor, fmt: KVFormat, p: _Plan, scale: float,
    k_scale: torch.Tensor | float | None, v_scale: torch.Tensor | float | None, hkv: int,
    group: int, d: int, block_size: int, num_qb: int, tps: int, block_q: int, block_m: int,
    block_n: int, num_splits: int, tune: dict[str, object], cuda: bool, pdl: bool,
) -> None:  # fmt: skip
    u8, p16, f16, f32 = views
    tq, hq = query.shape[:2]
    dt, magic, magic_off = _DOT_TYPES[query.dtype]
    words = bool(tune["word_loads"]) and (query.dtype == torch.bfloat16 or not cuda)
    if bool(tune["fp8_fp16"]) and p.k_kind == p.v_kind == int(tk.FP8.value) and query.dtype == torch.bfloat16:
        dt, magic, magic_off = _DOT_TYPES[torch.float16]
    v_dt, v_magic, v_magic_off = dt, magic, magic_off  # INT4 values: P.V in fp16 (the kernel says why)
    if p.v_kind == int(tk.INT4.value) and query.dtype == torch.bfloat16:
        v_dt, v_magic, v_magic_off = _DOT_TYPES[torch.float16]
    tk.attention_kernel[(seq_lens.shape[0] * num_qb, hkv, num_splits)](
        query, out, o_part, m_part, l_part, u8, p16, f16, f32, block_table, seq_lens,
        query_start_loc, *_scales(k_scale, v_scale, hkv, query.device),
        _half_hadamard(d, query.device, query.dtype), scale * _LOG2E, query.stride(0), query.stride(1),
        out.stride(0), out.stride(1),
        block_table.stride(0), tq, hq,
        HKV=hkv, G=group, D=d, PAGE=block_size, PAGE_NBYTES=p.page_nbytes,
        K_KIND=p.k_kind, V_KIND=p.v_kind, K_ROT=fmt.k.rotation is Rotation.HADAMARD, K_CODE=p.k_code,
        V_CODE=p.v_code, K_META=p.k_meta, V_META=p.v_meta, num_qb=num_qb,
        tokens_per_split=tps, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n,
        DIRECT=num_splits == 1, DT=dt,
        DOT_PREC="ieee" if query.dtype == torch.float32 else "tf32",
        ROT_PREC=str(TUNING["rot_prec"]) if cuda else "ieee",
        MAGIC=magic, MAGIC_OFF=magic_off, SWAP_QK=bool(tune["swap_qk"]),
        ASM=bool(tune["asm_convert"]) and cuda,
        WORDS=words,
        I8K=bool(tune["int8_qk"]) and p.k_kind in (int(tk.INT8.value), int(tk.INT4.value)),
        V_DT=v_dt, V_MAGIC=v_magic, V_MAGIC_OFF=v_magic_off, PDL=pdl,
        num_warps=tune["num_warps"], num_stages=tune["num_stages"], **_maxnreg(tune),
    )  # fmt: skip


def _maxnreg(tune: dict[str, object]) -> dict[str, int]:
    n = int(str(tune["maxnreg"]))
    return {"maxnreg": n} if n else {}


def _gluon_arguments(
    query: torch.Tensor,
    out: torch.Tensor,
    c_i32: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    k_scale: torch.Tensor | float | None,
    v_scale: torch.Tensor | float | None,
    scale: float,
    hkv: int,
    d: int,
    num_qb: int,
    parts: tuple[torch.Tensor, ...],
    tps: int,
) -> list[object]:
    """The Gluon kernel's runtime arguments: `parts` the split-K partials (o, m, l), `tps` the
    tokens a split."""
    dev = query.device
    return [
        query, out, *parts, c_i32, block_table, seq_lens, query_start_loc,
        *_scales(k_scale, v_scale, hkv, dev), _half_hadamard(d, dev, query.dtype),
        scale * _LOG2E, query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        block_table.stride(0), query.shape[0], query.shape[1], num_qb, tps,
    ]  # fmt: skip


def _gluon_constexprs(
    fmt: KVFormat, p: _Plan, hkv: int, group: int, d: int, block_size: int, block_q: int, block_m: int,
    block_n: int, tune: dict[str, object], pdl: bool,
) -> dict[str, object]:  # fmt: skip
    """The Gluon kernel's constexprs and launch options, but DIRECT (pdl: the split-K merge is a
    programmatic dependent launch)."""
    capped = _maxnreg(tune)
    return dict(
        HKV=hkv, G=group, D=d, PAGE=block_size, PAGE_NBYTES=p.page_nbytes, K_KIND=p.k_kind,
        V_KIND=p.v_kind, K_ROT=fmt.k.rotation is Rotation.HADAMARD, K_CODE=p.k_code, V_CODE=p.v_code,
        K_META=p.k_meta, V_META=p.v_meta, BLOCK_Q=block_q, M=block_m, BN=block_n,
        UNROLL=int(str(tune["unroll"])), LAZY=bool(tune["lazy"]), PREFETCH=bool(tune["prefetch"]),
        SWAP=bool(tune["swap"]) and block_n >= 16, JOINT=bool(tune["joint"]), PDL=pdl,
        EARLY=bool(tune["early"]) and not capped,
        PAGE_AHEAD=bool(tune["page_ahead"]) and bool(tune["prefetch"]), num_warps=1,
        **capped,
    )  # fmt: skip


@lru_cache(maxsize=8)
def _partials_stand_in(device: torch.device) -> torch.Tensor:
    return torch.empty(4, dtype=torch.float32, device=device)


# (kernel, its arguments' dtypes and constexprs) -> programs an SM holds at once, or None
_RESIDENT: dict[tuple[object, ...], int | None] = {}


def _gluon_resident(
    kernel: object,
    grid: tuple[int, ...],
    dtypes: tuple[torch.dtype, ...],
    kw: dict[str, object],
    arguments: Callable[[], list[object]],
) -> int | None:
    """Programs an SM holds at once of the split-K Gluon launch with constexprs `kw` (its other
    arguments' dtypes follow from `dtypes`, the caller's tensors'), from its compiled register and
    shared-memory use: compiled here, with `arguments()`, if it is not yet. Cached by dtypes and
    constexprs, so a hit builds no arguments. None where the kernel has no compiled form to ask
    (the CPU emulator's stand-in, a compile-only driver)."""
    key = (id(kernel), dtypes, tuple(kw.items()))  # (kw is built in one order: no sorting)
    if key not in _RESIDENT:
        try:
            args = arguments()
            compiled = kernel.warmup(*args, grid=grid, DIRECT=False, **kw)  # type: ignore[attr-defined]
            compiled._init_handles()  # loads the module: n_regs is known from here on
            props = _device_limits(args[0].device)  # type: ignore[attr-defined]
            _RESIDENT[key] = resident_programs(
                int(compiled.n_regs), int(compiled.metadata.num_warps), int(compiled.metadata.shared), *props
            )
        except AttributeError:
            _RESIDENT[key] = None
    return _RESIDENT[key]


def resident_programs(
    n_regs: int, num_warps: int, shared: int, max_warps: int = 64, sm_shared: int = 228 * 1024
) -> int:
    """Programs of `num_warps` warps an SM holds at once: 64K registers, given out 256 a warp; at
    most `max_warps` warps and 32 programs; `sm_shared` bytes of shared memory, 1 KB of it kept for
    each program (defaults: sm_90, the H100/H200; _gluon_resident passes the device's own)."""
    per_warp = -(-max(n_regs, 1) * 32 // 256) * 256
    by_regs = 65536 // per_warp // num_warps
    by_shared = sm_shared // (shared + 1024)
    return max(1, min(32, max_warps // num_warps, by_regs, by_shared))


@lru_cache(maxsize=8)
def _device_limits(device: torch.device) -> tuple[int, int]:
    """(warps, shared-memory bytes) an SM of `device` holds (sm_90's on a CPU tensor)."""
    if device.type != "cuda":
        return 64, 228 * 1024
    p = torch.cuda.get_device_properties(device)
    return p.max_threads_per_multi_processor // 32, p.shared_memory_per_multiprocessor


@lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _choose_splits(
    programs: int, max_seq_len: int, sms: int, tune: dict[str, object], resident: int | None = None
) -> int:
    """Context splits (flash-decoding): with `resident` (programs an SM holds at once) and a
    "waves" setting, as many as fit in that many full waves of the GPU, so no last wave runs
    nearly empty; else enough that the grid covers the GPU programs_per_sm times."""
    min_tokens = int(str(tune["min_tokens_per_split"]))
    waves = float(str(tune.get("waves", 0)))
    if resident and waves > 0:
        want = int(waves * resident * sms) // programs
    else:
        want = -(-int(str(tune["programs_per_sm"])) * sms // programs)
    return max(1, min(want, max_seq_len // min_tokens))


# query dtype -> (dot dtype, int4 magic-number bits, the value they add); fp32 converts plainly
_DOT_TYPES = {
    torch.bfloat16: (tl.bfloat16, 0x4300, 128.0),
    torch.float16: (tl.float16, 0x6400, 1024.0),
    torch.float32: (tl.float32, 0, 0.0),
}
