"""Torch reference for every KV format: quantize, dequantize, cache write, paged attention.

Plain torch in fp32 (or fp64 where asked), no Triton: the CPU path of the vLLM plugin and the
ground truth the Triton kernels are tested against. Page regions come from `kvplan.formats`.

Code conventions shared with the Triton kernels (kvplan/kernels/triton_kernels.py):
- bf16/fp16 codes: the elements themselves, [page_tokens, head_dim] row-major.
- fp8_e4m3: x / scale saturated to +-448, static scale per tensor or per KV head (layer buffer).
- int8: symmetric, fp32 scale per (token, group); code in [-127, 127].
- int4: asymmetric, fp16 (scale, zero) per (token, group), x ~ code * scale + zero, code in
  [0, 15]; channel j sits in the low nibble and channel j + d/2 in the high nibble of byte j, so a
  kernel unpacks a row into two contiguous halves with one mask and one shift.
- int4 per channel (KIVI keys): fp16 (scale, zero) per channel over the page's tokens; the page's
  keys stay in full precision in a `KiviStage` until the page fills.
- rotation "hadamard": codes hold x @ H/sqrt(d); `dequantize` rotates back, so the dequantized
  cache is in the model's own basis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from kvplan.formats import Element, Granularity, HeadPageLayout, KVFormat, Rotation, TensorQuant

_QUERY_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_PAGE_SIZES = (16, 32, 64, 128)
_CODE_DTYPES = {Element.BF16: torch.bfloat16, Element.FP16: torch.float16, Element.FP32: torch.float32}


@lru_cache(maxsize=8)
def _hadamard_cpu(d: int) -> torch.Tensor:
    if d & (d - 1):
        raise ValueError(f"Hadamard rotation needs a power-of-two head_dim, got {d}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(d: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal, symmetric Hadamard matrix H/sqrt(d), [d, d]; x @ it @ it == x."""
    return (_hadamard_cpu(d) / math.sqrt(d)).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# quantize / dequantize one side (K or V)


def _static_scale(scale: torch.Tensor | float | None, x: torch.Tensor, head_axis: int | None) -> torch.Tensor:
    """A per-tensor scalar or per-KV-head [Hkv] static scale, broadcast against x [..., H, ..., D]."""
    s = torch.as_tensor(1.0 if scale is None else scale, dtype=torch.float32, device=x.device)
    if s.numel() == 1:
        return s.reshape(())
    if head_axis is None:
        raise ValueError("a per-head scale needs to know the head axis")
    shape = [1] * x.dim()
    shape[head_axis] = s.numel()
    return s.reshape(shape)


def quantize(
    x: torch.Tensor,
    side: TensorQuant,
    scale: torch.Tensor | float | None = None,
    head_axis: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Quantize x [..., D] (per channel: [..., P, D], over P) -> (codes, meta).

    codes: uint8 for fp8/int8/int4 (int4 packed, [..., D/2]), the element dtype for bf16/fp16.
    meta: fp32 [..., groups] (symmetric), fp16 [..., groups, 2] (asymmetric: scale, zero),
    fp16 [..., D, 2] per channel, or None (static or no scale).
    """
    x = x.float()
    if side.rotation is Rotation.HADAMARD:
        x = x @ hadamard(x.shape[-1], x.device)
    el = side.element
    if el in _CODE_DTYPES:
        return x.to(_CODE_DTYPES[el]), None
    if el is Element.FP8_E4M3:
        s = _static_scale(scale, x, head_axis)
        q = (x / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return q.view(torch.uint8), None
    qmax = 127 if el is Element.INT8 else 15
    if side.granularity is Granularity.PER_CHANNEL:
        lo, hi = x.amin(dim=-2, keepdim=True), x.amax(dim=-2, keepdim=True)  # [..., 1, D]
        sc, zero = _asym_params(lo, hi, qmax)
        codes = ((x - zero) / sc).round().clamp(0, qmax)
        meta = torch.stack([sc.squeeze(-2), zero.squeeze(-2)], dim=-1).to(torch.float16)
        return _pack(codes, el), meta
    d = x.shape[-1]
    g = side.groups_per_token(d)
    xg = x.reshape(*x.shape[:-1], g, d // g)
    if side.symmetric:
        amax = xg.abs().amax(dim=-1, keepdim=True)
        sc = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        codes = (xg / sc).round().clamp(-qmax, qmax).reshape(x.shape)
        return _pack(codes, el), sc.squeeze(-1)
    sc, zero = _asym_params(xg.amin(dim=-1, keepdim=True), xg.amax(dim=-1, keepdim=True), qmax)
    codes = ((xg - zero) / sc).round().clamp(0, qmax).reshape(x.shape)
    meta = torch.cat([sc, zero], dim=-1).to(torch.float16)
    return _pack(codes, el), meta


def _asym_params(lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16-representable (scale, zero); a zero range gets scale 1 so codes are 0, never NaN."""
    fmax = torch.finfo(torch.float16).max
    rng = hi - lo
    sc = torch.where(rng > 0, rng / qmax, torch.ones_like(rng)).clamp(max=fmax)
    sc = sc.to(torch.float16).float()
    sc = torch.where(sc > 0, sc, torch.ones_like(sc))  # range below fp16's smallest subnormal
    zero = lo.clamp(-fmax, fmax).to(torch.float16).float()
    return sc, zero


def _pack(codes: torch.Tensor, el: Element) -> torch.Tensor:
    if el is Element.INT8:
        return codes.to(torch.int8).view(torch.uint8)
    c = codes.to(torch.uint8)
    half = c.shape[-1] // 2
    return c[..., :half] | (c[..., half:] << 4)


def _unpack_int4(codes: torch.Tensor) -> torch.Tensor:
    return torch.cat([codes & 15, codes >> 4], dim=-1).float()


def dequantize(
    codes: torch.Tensor,
    meta: torch.Tensor | None,
    side: TensorQuant,
    scale: torch.Tensor | float | None = None,
    head_axis: int | None = None,
) -> torch.Tensor:
    """Inverse of `quantize`, in fp32 and in the model's basis (rotation undone)."""
    el = side.element
    if el in _CODE_DTYPES:
        x = codes.float()
    elif el is Element.FP8_E4M3:
        f = codes.view(torch.float8_e4m3fn).float()
        x = f * _static_scale(scale, f, head_axis)
    else:
        assert meta is not None
        q = codes.view(torch.int8).float() if el is Element.INT8 else _unpack_int4(codes)
        if side.granularity is Granularity.PER_CHANNEL:
            m = meta.float()
            x = q * m[..., 0].unsqueeze(-2) + m[..., 1].unsqueeze(-2)
        else:
            d = q.shape[-1]
            g = side.groups_per_token(d)
            qg = q.reshape(*q.shape[:-1], g, d // g)
            m = meta.float()
            xg = qg * m.unsqueeze(-1) if side.symmetric else qg * m[..., 0:1] + m[..., 1:2]
            x = xg.reshape(q.shape)
    if side.rotation is Rotation.HADAMARD:
        x = x @ hadamard(x.shape[-1], x.device)
    return x


# ---------------------------------------------------------------------------------------------
# page regions


def check_cache(kv_cache: torch.Tensor, fmt: KVFormat, head_dim: int, block_size: int) -> torch.Tensor:
    """Validate and return the cache as [num_blocks, num_kv_heads, head_page_nbytes] uint8."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if block_size not in SUPPORTED_PAGE_SIZES:
        raise ValueError(f"page size {block_size} not supported; supported: {SUPPORTED_PAGE_SIZES}")
    if kv_cache.dtype != torch.uint8:
        raise ValueError(f"kv_cache must be uint8 bytes, got {kv_cache.dtype}")
    if not kv_cache.is_contiguous():  # a flattened copy would take the writes silently
        raise ValueError("kv_cache must be contiguous ([num_blocks, num_kv_heads, head_page_nbytes])")
    if kv_cache.dim() == 4:  # vLLM's [blocks, heads, tokens, C] view of the same memory
        kv_cache = kv_cache.flatten(2)
    nbytes = fmt.head_page(head_dim, block_size).nbytes
    if kv_cache.dim() != 3 or kv_cache.shape[2] != nbytes:
        raise ValueError(
            f"kv_cache must be [num_blocks, num_kv_heads, {nbytes}] for {fmt.name} at head_dim "
            f"{head_dim}, page {block_size}; got {tuple(kv_cache.shape)}"
        )
    return kv_cache


def new_cache(
    fmt: KVFormat,
    num_blocks: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """An allocated cache [num_blocks, num_kv_heads, head_page_nbytes] uint8, poisoned with 0xFF."""
    nbytes = fmt.head_page(head_dim, block_size).nbytes
    return torch.full((num_blocks, num_kv_heads, nbytes), 0xFF, dtype=torch.uint8, device=device)


def _region(cache: torch.Tensor, layout: HeadPageLayout, name: str, dtype: torch.dtype) -> torch.Tensor:
    r = layout.region(name)
    return cache[:, :, r.offset : r.offset + r.nbytes].view(dtype)


@dataclass
class PageViews:
    """Typed views into one layer's pages: codes [NB, H, P, D or D/2], meta per granularity."""

    k_codes: torch.Tensor
    v_codes: torch.Tensor
    k_meta: torch.Tensor | None
    v_meta: torch.Tensor | None


def page_views(cache: torch.Tensor, fmt: KVFormat, head_dim: int, block_size: int) -> PageViews:
    cache = check_cache(cache, fmt, head_dim, block_size)
    layout = fmt.head_page(head_dim, block_size)
    nb, h = cache.shape[:2]

    def codes(name: str, side: TensorQuant) -> torch.Tensor:
        dt = _CODE_DTYPES.get(side.element, torch.uint8)
        width = head_dim // 2 if side.element is Element.INT4 else head_dim
        return _region(cache, layout, name, dt).reshape(nb, h, block_size, width)

    def meta(name: str, side: TensorQuant) -> torch.Tensor | None:
        if not side.granularity.in_page:
            return None
        if side.granularity is Granularity.PER_CHANNEL:
            return _region(cache, layout, name, torch.float16).reshape(nb, h, head_dim, 2)
        g = side.groups_per_token(head_dim)
        if side.symmetric:
            return _region(cache, layout, name, torch.float32).reshape(nb, h, block_size, g)
        return _region(cache, layout, name, torch.float16).reshape(nb, h, block_size, g, 2)

    return PageViews(
        codes("k_codes", fmt.k), codes("v_codes", fmt.v), meta("k_meta", fmt.k), meta("v_meta", fmt.v)
    )


# ---------------------------------------------------------------------------------------------
# KIVI staging: keys in full precision until their page fills


@dataclass
class KiviStage:
    """Full-precision keys of pages that are not full yet (per-channel key formats only).

    One row per partially written page, found by block id, so the plugin passes no extra index:
    `write_kv` stages a page's keys until all `block_size` offsets are written, then quantizes the
    page with per-channel scales and frees the row; a write at offset 0 restarts a page (vLLM
    reused the block); `paged_attention` reads staged pages from here. Rows needed: the number of
    sequences with a partial last page (max_num_seqs). Memory: rows x heads x page x d fp32.
    """

    keys: torch.Tensor  # [rows, Hkv, block_size, D] fp32
    block_of_row: torch.Tensor = field(init=False)  # [rows] int64, -1 = free
    filled: torch.Tensor = field(init=False)  # [rows, block_size] bool

    def __post_init__(self) -> None:
        rows, _, p, _ = self.keys.shape
        self.block_of_row = torch.full((rows,), -1, dtype=torch.int64)
        self.filled = torch.zeros(rows, p, dtype=torch.bool)

    @classmethod
    def empty(cls, rows: int, num_kv_heads: int, block_size: int, head_dim: int) -> KiviStage:
        return cls(torch.zeros(rows, num_kv_heads, block_size, head_dim))

    def row_of(self, block: int) -> int | None:
        hit = (self.block_of_row == block).nonzero()
        return int(hit[0, 0]) if len(hit) else None

    def claim(self, block: int) -> int:
        row = self.row_of(block)
        if row is None:
            free = (self.block_of_row < 0).nonzero()
            if not len(free):
                raise ValueError(f"KIVI stage is full ({len(self.block_of_row)} rows)")
            row = int(free[0, 0])
            self.block_of_row[row] = block
            self.filled[row] = False
        return row


# ---------------------------------------------------------------------------------------------
# cache write and attention


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
) -> None:
    """Quantize key/value [T, Hkv, D] and store them at slot_mapping [T] (-1 = skip)."""
    check_shapes_for_write(key, value, kv_cache, slot_mapping)
    views = page_views(kv_cache, fmt, key.shape[-1], block_size)
    slots = slot_mapping.long().to(key.device)
    keep = slots >= 0
    blocks, offs = slots[keep] // block_size, slots[keep] % block_size
    if len(blocks) and int(blocks.max()) >= views.k_codes.shape[0]:
        raise ValueError(f"slot_mapping points past the cache ({views.k_codes.shape[0]} blocks)")
    sides: tuple[tuple[TensorQuant, torch.Tensor, object, torch.Tensor, torch.Tensor | None, bool], ...]
    sides = (
        (fmt.k, key, k_scale, views.k_codes, views.k_meta, True),
        (fmt.v, value, v_scale, views.v_codes, views.v_meta, False),
    )
    for side, x, scale, codes_v, meta_v, is_key in sides:
        xs = x[keep]
        if side.granularity is Granularity.PER_CHANNEL:
            if not is_key or kivi_stage is None:
                raise ValueError(f"{fmt.name} stores keys per channel: pass a KiviStage")
            _write_per_channel(xs, blocks, offs, codes_v, meta_v, side, kivi_stage)
            continue
        codes, meta = quantize(xs, side, scale, head_axis=1)  # type: ignore[arg-type]
        codes_v[blocks, :, offs] = codes
        if meta_v is not None and meta is not None:
            meta_v[blocks, :, offs] = meta


def _write_per_channel(
    x: torch.Tensor,
    blocks: torch.Tensor,
    offs: torch.Tensor,
    codes_v: torch.Tensor,
    meta_v: torch.Tensor | None,
    side: TensorQuant,
    stage: KiviStage,
) -> None:
    assert meta_v is not None
    for t in range(len(blocks)):
        b, o = int(blocks[t]), int(offs[t])
        row = stage.row_of(b)
        if o == 0 and row is not None:
            stage.filled[row] = False
        row = stage.claim(b)
        stage.keys[row, :, o] = x[t].float()
        stage.filled[row, o] = True
        if bool(stage.filled[row].all()):
            page = stage.keys[row]  # [Hkv, P, D]
            codes, meta = quantize(page, side)
            assert meta is not None
            codes_v[b] = codes
            meta_v[b] = meta
            stage.block_of_row[row] = -1


def check_shapes_for_write(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    if key.dim() != 3 or key.shape != value.shape:
        raise ValueError(
            f"key and value must both be [T, Hkv, D]; got {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(f"slot_mapping must be [T={key.shape[0]}], got {tuple(slot_mapping.shape)}")
    if kv_cache.shape[1] != key.shape[1]:
        raise ValueError(f"kv_cache has {kv_cache.shape[1]} KV heads, key has {key.shape[1]}")
    if key.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"key/value dtype {key.dtype} not supported (bf16, fp16, fp32)")


def dequantize_pages(
    kv_cache: torch.Tensor,
    fmt: KVFormat,
    head_dim: int,
    block_size: int,
    k_scale: torch.Tensor | float | None = None,
    v_scale: torch.Tensor | float | None = None,
    kivi_stage: KiviStage | None = None,
    blocks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantized pages, K and V [n, Hkv, P, D] fp32, staged keys included: the pages listed in
    `blocks` (n of them), or the whole cache when blocks is None."""
    v = page_views(kv_cache, fmt, head_dim, block_size)

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or blocks is None else t[blocks]

    k = dequantize(pick(v.k_codes), pick(v.k_meta), fmt.k, k_scale, head_axis=1)  # type: ignore[arg-type]
    val = dequantize(pick(v.v_codes), pick(v.v_meta), fmt.v, v_scale, head_axis=1)  # type: ignore[arg-type]
    if kivi_stage is not None:
        ids = torch.arange(v.k_codes.shape[0]) if blocks is None else blocks.cpu()
        for row in (kivi_stage.block_of_row >= 0).nonzero().flatten().tolist():
            hit = (ids == kivi_stage.block_of_row[row]).nonzero().flatten()
            k[hit.to(k.device)] = kivi_stage.keys[row].to(k.device)
    return k, val


def check_shapes_for_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32),
) -> tuple[int, int]:
    """Validate; return (batch, GQA group size)."""
    if query.dim() != 3:
        raise ValueError(f"query must be [Tq, Hq, D], got {tuple(query.shape)}")
    if query.dtype not in dtypes:
        raise ValueError(f"query dtype {query.dtype} not supported ({dtypes})")
    hkv = kv_cache.shape[1]
    if query.shape[1] % hkv:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {hkv} KV heads")
    b = seq_lens.shape[0]
    if block_table.dim() != 2 or block_table.shape[0] != b:
        raise ValueError(f"block_table must be [B={b}, max_blocks], got {tuple(block_table.shape)}")
    if query_start_loc.shape != (b + 1,):
        raise ValueError(f"query_start_loc must be [B+1={b + 1}], got {tuple(query_start_loc.shape)}")
    return b, query.shape[1] // hkv


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
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Causal paged attention for any number of queries per sequence -> [Tq, Hq, D] (query dtype).

    Sequence b owns queries query_start_loc[b]:query_start_loc[b+1] (q_len of them), which are its
    last q_len positions: query i sees cached positions < seq_lens[b] - q_len + i + 1.
    """
    b, group = check_shapes_for_attention(
        query, kv_cache, block_table, seq_lens, query_start_loc, (*_QUERY_DTYPES, torch.float64)
    )
    d = query.shape[-1]
    out = torch.zeros(query.shape, dtype=compute_dtype, device=query.device)
    qsl, lens = query_start_loc.tolist(), seq_lens.tolist()
    for i in range(b):
        q0, q1, n = qsl[i], qsl[i + 1], int(lens[i])
        q_len = q1 - q0
        if q_len == 0 or n == 0:
            continue
        if q_len > n:
            raise ValueError(f"sequence {i}: {q_len} queries but only {n} cached tokens")
        pages = block_table[i, : (n + block_size - 1) // block_size].long()
        # only this sequence's pages are dequantized: the CPU plugin calls this every layer and step
        kp, vp = dequantize_pages(kv_cache, fmt, d, block_size, k_scale, v_scale, kivi_stage, pages)
        hkv = kp.shape[1]
        k = kp.transpose(0, 1).reshape(hkv, -1, d)[:, :n].to(compute_dtype)
        v = vp.transpose(0, 1).reshape(hkv, -1, d)[:, :n].to(compute_dtype)
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)  # [Hq, n, D]
        q = query[q0:q1].to(compute_dtype).transpose(0, 1)  # [Hq, q_len, D]
        s = (q @ k.transpose(1, 2)) * scale
        pos = torch.arange(n, device=query.device)
        limit = n - q_len + torch.arange(q_len, device=query.device) + 1
        s = s.masked_fill(pos[None, :] >= limit[:, None], float("-inf"))
        out[q0:q1] = (torch.softmax(s, dim=-1) @ v).transpose(0, 1)
    return out.to(query.dtype)
