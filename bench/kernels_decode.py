"""Decode-attention and cache-write benchmark for kvplan's quantized-KV kernels (needs a CUDA GPU).

Single layer, Llama-3-8B shapes (32 q heads, 8 KV heads, head_dim 128), page 16, bf16 queries.
Every timed call is captured in a CUDA graph (as vLLM decodes) and replayed over 2-6 rotated
caches (> L2) back to back; time = median over 7 replays of (elapsed / calls). Effective
bandwidth = bytes read (codes + scales from formats.py, page table, query) + output written.

Sections (one call runs any set of them, in this order: check, realkv, write, sweep; the JSON is
rewritten after each):
- check:  every kernel path vs an fp64 reference on the dequantized cache, small shapes
          (8 formats x head_dim 64/128/256 x pages 16-128 x 1/4/8 queries, split and not,
          NaN-poisoned outputs); the Gluon path for the 6 formats it serves.
- sweep:  every format x VARIANT at the GRID shapes, side by side with kvplan's bf16 kernel and
          torch SDPA in the same run. Every timed launch is also checked (4 sequences of the
          batch vs fp64 on its own dequantized cache; bound 5e-3): the grid-shape check.
- realkv: SmolLM2-135M's real K/V/queries (data/kv) through every format and variant.
- write:  the cache write of a 2,048-token chunk vs the device copy bandwidth (the fastest of a
          graph memcpy node, an eager copy and an SM copy kernel) and same-size copies.
Before the sections, every kernel they launch is compiled in parallel processes (--jobs) into
Triton's cache (bench/kernels_compile.py), so compile time stays out of the device budget.

    PYTHONPATH=. python bench/kernels_decode.py --sections check,sweep,realkv,write --out r.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels_compile as kc

from kvplan.formats import get_format
from kvplan.kernels import api, reference

HQ, HKV, D, PAGE = kc.HQ, kc.HKV, kc.D, kc.PAGE
DEV = "cuda" if torch.cuda.is_available() else "cpu"
FORMATS = ["bf16", "fp8_e4m3", "int8", "int8_hadamard", "k8v4", "int4", "int4_hadamard"]
QUANT = FORMATS[1:]
GRID = [(32, 32768), (1, 32768), (1, 131072), (64, 1024), (8, 32768), (32, 4096)]  # priority order
# name -> api.TUNING_GLUON overrides. "triton" is the Triton kernel (bench/results/kernels_h100.md),
# "shipped" api's tables as they are, "shipped_s6"/"_s7"/"_s8" as they were on 2026-12-03 / at
# commits ce52745 / 7fddff3 (kernels_compile.PREVIOUS_GLUON); every other name is one
# Gluon launch at every shape, spelt [sw_][pf_][j_]u<unroll>[_r<maxnreg>][_pps<programs an SM>]
# [_w<waves of the programs an SM holds>][_mt<min tokens a split>][_cd<merge columns a program>
# [_cs<merge splits a step>]] (variant_settings):
# e.g. sw_pf_u2_r168_pps32 is S^T = K Q^T, the next two tiles' loads issued before this group's
# math, at most 168 registers a thread, 32 programs an SM; j_: one row max a group of tiles
# ("joint"), not a tile
VARIANTS: dict[str, dict[str, object]] = {
    "triton": {"gluon": False},
    "shipped": {"gluon": True, "per_format": True},
    "shipped_s6": {"gluon": True, "per_format": "s6"},
    "shipped_s7": {"gluon": True, "per_format": "s7"},
    "shipped_s8": {"gluon": True, "per_format": "s8"},
    "shipped_pps": {"gluon": True, "per_format": True, "waves": 0},  # splits by programs_per_sm
    # the tables with one row max a group of tiles ("joint") on, and off, in every regime and format
    "shipped_j": {"gluon": True, "per_format": True, "joint": True},
    "shipped_nj": {"gluon": True, "per_format": True, "joint": False},
    # the tables with the first group's loads after the query prologue in every launch (no "early")
    "shipped_ne": {"gluon": True, "per_format": True, "early": False},
    # the tables with every group's pages read in the iteration of its loads (no "page_ahead")
    "shipped_npa": {"gluon": True, "per_format": True, "page_ahead": False},
    # the split-K merge as a programmatic dependent launch in every regime (shipped: small grids);
    # bf16 too
    "shipped_pdl": {"gluon": True, "per_format": True, "combine_pdl": 1},
    "gluon": {"gluon": True},  # api.TUNING_GLUON's base launch alone
    # the split-K merge in [32 splits, 32 columns] tiles (api.TUNING_COMBINE)
    "shipped_comb32": {"gluon": True, "per_format": True, "combine_block_d": 32, "combine_block_s": 32,
                       "combine_num_warps": 2},
}  # fmt: skip
_LAUNCH = re.compile(
    r"(sw_)?(pf_)?(j_)?u(\d+)(?:_r(\d+))?(?:_pps(\d+))?(?:_w(\d+))?(?:_mt(\d+))?(?:_cd(\d+))?(?:_cs(\d+))?"
)


def _settings(name: str) -> dict[str, object]:
    settings = variant_settings(name)
    assert settings is not None, name  # names are checked before anything runs
    return settings


def variant_settings(name: str) -> dict[str, object] | None:
    """The api.TUNING_GLUON overrides a variant name stands for (VARIANTS or the launch grammar)."""
    if name in VARIANTS:
        return VARIANTS[name]
    m = _LAUNCH.fullmatch(name)
    if m is None:
        return None
    swap, prefetch, joint, unroll, cap, pps, waves, min_tokens, comb_d, comb_s = m.groups()
    return {
        "gluon": True, "swap": bool(swap), "prefetch": bool(prefetch), "joint": bool(joint),
        "unroll": int(unroll),
        "maxnreg": int(cap or 0), "programs_per_sm": int(pps or 16), "waves": int(waves or 0),
        "min_tokens_per_split": int(min_tokens or 128),
        **({"combine_block_d": int(comb_d), "combine_block_s": int(comb_s or 0)} if comb_d else {}),
    }  # fmt: skip


# the variants the check section runs (those asked for): the Triton kernel, the Gluon kernel's
# base settings, and its prefetching loop
CHECK_VARIANTS = (
    "triton",
    "shipped",
    "u2",
    "pf_u2",
    "sw_pf_u1",
    "sw_pf_u2",
    "sw_pf_u2_r168",
    "sw_pf_u1_r128",
    "shipped_j",
    "pf_j_u2",
    "sw_pf_j_u2",
    "shipped_ne",
    "shipped_npa",
    "shipped_pdl",
)
CHECK_SHAPES = [
    (64, 16, 1),
    (128, 16, 1),
    (256, 16, 1),
    (128, 32, 1),
    (128, 128, 1),
    (128, 16, 4),
    (64, 64, 8),
]
CHECK_LENS = [700, 2049, 33]  # + q_len: a one-page sequence
CHECK_HKV, CHECK_G = 2, 4
BOUND = 5e-3
ROTATE_BYTES = 400e6  # rotate among caches totalling at least this (L2 is 50-60 MB)
REALKV = Path(__file__).resolve().parent.parent / "data" / "kv" / "smollm2_135m_kv.pt"
REALKV_VARIANTS = ["triton", "shipped"]  # accuracy: the two kernels, not every launch setting


def timed(fns: list[Callable[[], object]], repeats: int = 7, calls: int = 24) -> float:
    """Median seconds per call: `calls` calls cycling through fns captured in ONE CUDA graph (as
    vLLM captures a whole decode step), so host launch overhead is not what is measured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:
            f()  # warm up (compile, caches) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    n = max(calls, len(fns))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(n):
            fns[i % len(fns)]()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / n)
    return statistics.median(times)


def timed_eager(fn: Callable[[], object], repeats: int = 7, calls: int = 8) -> float:
    """Median seconds per call of `calls` eager launches back to back (for calls long enough
    that launch overhead is negligible: a 2 GiB copy)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / calls)
    return statistics.median(times)


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)


COPY_BLOCK = 4096  # int32 elements a program: 4 warps, eight 16-byte loads and stores a thread


def sm_copy(src: torch.Tensor, dst: torch.Tensor) -> Callable[[], object]:
    """A copy done by the SMs (a Triton kernel) of two same-size byte buffers (a multiple of 4)."""
    a, b = src.view(torch.int32), dst.view(torch.int32)
    grid = (triton.cdiv(a.numel(), COPY_BLOCK),)
    return lambda: _copy_kernel[grid](a, b, a.numel(), BLOCK=COPY_BLOCK, num_warps=4)


def copy_bandwidths(nbytes: int = 2 << 30) -> dict[str, float]:
    """A 2 GiB device-to-device copy three ways, bytes read + written per second. torch's copy_
    captured in a CUDA graph becomes a memcpy node, which measured ~2.8 TB/s on the H200 where the
    library's notes give ~4.3 for an eager copy, and on an H100 (2026-12-05,
    bench/results/kernels_h100_s11_write.json) 2,450 GB/s against 3,043 eager and 3,016 for the SM
    copy kernel in a graph: the ceiling for the write target is the fastest of the three,
    `copy_ceiling` (write targets judged against the memcpy node alone read ~20% high)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEV).random_(0, 255)
    dst = torch.empty_like(src)
    out = {
        "graph_memcpy": 2 * nbytes / timed([lambda: dst.copy_(src)], calls=8),
        "eager_memcpy": 2 * nbytes / timed_eager(lambda: dst.copy_(src)),
    }
    dst.zero_()
    out["graph_sm_copy"] = 2 * nbytes / timed([sm_copy(src, dst)], calls=8)
    if not torch.equal(src, dst):
        raise RuntimeError("the SM copy kernel did not copy its input")
    return out


def copy_ceiling(bws: dict[str, float]) -> float:
    return max(bws.values())


@triton.jit
def _read_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * BLOCK * ITERS
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(ITERS):
        acc += tl.load(x_ptr + base + i * BLOCK + tl.arange(0, BLOCK))
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc))


def read_bandwidth(nbytes: int = 2 << 30) -> float:
    """A Triton read stream (16-byte loads, one value written per 64 KB): bytes read per second."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=DEV).normal_()
    block, iters = 1024, 16
    out = torch.empty(x.numel() // (block * iters), dtype=torch.float32, device=DEV)
    grid = (out.numel(),)
    return nbytes / timed(
        [lambda: _read_kernel[grid](x, out, BLOCK=block, ITERS=iters, num_warps=4)], calls=8
    )


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    with kc.gluon_tuning(_settings(name)):
        yield


def variants_for(fmt_name: str, names: list[str]) -> list[str]:
    """bf16/fp16 pages have one kernel (the Triton one): time it once, and once more under each
    variant that changes the split-K merge (which bf16's launch runs too)."""
    if fmt_name in QUANT:
        return names
    first = [n for n in names if n == "triton"][:1] or names[:1]
    return first + [
        n for n in names if n not in first and any(k.startswith("combine_") for k in _settings(n))
    ]


class Case:
    """One decode shape in one format: rotated caches, block tables, queries."""

    def __init__(self, fmt_name: str, batch: int, ctx: int, q_len: int = 1, rotate: int | None = None):
        self.fmt = get_format(fmt_name)
        self.name, self.batch, self.ctx, self.q_len = fmt_name, batch, ctx, q_len
        blocks_per_seq = math.ceil(ctx / PAGE)
        nblocks = batch * blocks_per_seq
        page = self.fmt.head_page(D, PAGE).nbytes
        self.cache_bytes = batch * ctx * HKV * self.fmt.bytes_per_token_head(D, PAGE)
        n = rotate or max(2, min(6, math.ceil(ROTATE_BYTES / (nblocks * HKV * page))))
        self.k_scale = torch.full((HKV,), 0.02, device=DEV) if "fp8" in fmt_name else None
        self.caches, self.tables = [], []
        for _ in range(n):
            cache = torch.empty(nblocks, HKV, page, dtype=torch.uint8, device=DEV)
            perm = torch.randperm(nblocks, device=DEV).int()
            self._fill(cache, perm)
            self.caches.append(cache)
            self.tables.append(perm.view(batch, blocks_per_seq))
        self.seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
        self.qsl = torch.arange(0, batch + 1, dtype=torch.int32, device=DEV) * q_len
        self.query = torch.randn(batch * q_len, HQ, D, dtype=torch.bfloat16, device=DEV)
        self.out = torch.empty_like(self.query)
        self._refs: dict[int, torch.Tensor] = {}

    def _fill(self, cache: torch.Tensor, perm: torch.Tensor) -> None:
        """Write random K/V (an outlier key channel included) through the write kernel."""
        tokens = cache.shape[0] * PAGE
        chunk = 65536
        slots_all = (perm.long()[:, None] * PAGE + torch.arange(PAGE, device=DEV)).flatten()
        for s in range(0, tokens, chunk):
            t = min(chunk, tokens - s)
            k = torch.randn(t, HKV, D, device=DEV, dtype=torch.bfloat16)
            k[:, :, 7] *= 8
            v = torch.randn(t, HKV, D, device=DEV, dtype=torch.bfloat16)
            api.write_kv(k, v, cache, slots_all[s : s + t], self.fmt, PAGE, self.k_scale, self.k_scale)

    def call(self, i: int, num_splits: int | None = None) -> Callable[[], object]:
        def f() -> object:
            return api.paged_attention(
                self.query, self.caches[i], self.tables[i], self.seq_lens, self.qsl, self.fmt,
                PAGE, D**-0.5, self.k_scale, self.k_scale, max_query_len=self.q_len,
                max_seq_len=self.ctx, num_splits=num_splits, out=self.out,
            )  # fmt: skip

        return f

    def check(self, seqs: int = 4) -> float:
        """The batch's launch (poisoned output) vs fp64 on the dequantized cache 0, for `seqs`
        sequences of the batch (first, last, between): relative error over them."""
        self.out.fill_(float("nan"))
        self.call(0)()
        picked = sorted({0, self.batch - 1, self.batch // 3, 2 * self.batch // 3})[:seqs]
        num = den = 0.0
        for j in picked:
            if j not in self._refs:
                self._refs[j] = reference.paged_attention(
                    self.query[j * self.q_len : (j + 1) * self.q_len].double(), self.caches[0],
                    self.tables[0][j : j + 1], self.seq_lens[j : j + 1], self.qsl[:2], self.fmt, PAGE,
                    D**-0.5, self.k_scale, self.k_scale, compute_dtype=torch.float64,
                )  # fmt: skip
            got = self.out[j * self.q_len : (j + 1) * self.q_len].double()
            num += float((got - self._refs[j]).norm() ** 2)
            den += float(self._refs[j].norm() ** 2)
        return math.sqrt(num / den) if math.isfinite(num) else float("nan")

    def bytes_moved(self) -> float:
        table = self.batch * math.ceil(self.ctx / PAGE) * 4
        return self.cache_bytes + table + 2 * self.query.numel() * 2

    def time(self, num_splits: int | None = None) -> float:
        return timed([self.call(i, num_splits) for i in range(len(self.caches))])

    def free(self) -> None:
        self.caches.clear()
        self.tables.clear()
        self._refs.clear()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# check: small shapes


def check_cases(formats: list[str], vnames: list[str]) -> list[tuple[str, str, int, int, int, int | None]]:
    """(format, variant, head_dim, page, queries per sequence, splits) of the check section: the
    Triton kernel and the Gluon one (the launch settings of the other variants are checked by
    the sweep at the grid shapes)."""
    out = []
    for name in [*formats, "fp16"] if "bf16" in formats else formats:
        # bf16/fp16 pages run the Triton kernel under any variant: once, under one that was asked for
        # (a --variants-json without "triton" has no variant of that name)
        asked = [v for v in CHECK_VARIANTS if v in vnames]
        for vname in asked if name in QUANT else (asked or vnames)[:1]:
            for d, page, q_len in CHECK_SHAPES:
                for splits in (None, 1):
                    out.append((name, vname, d, page, q_len, splits))
    return out


def check_one(name: str, vname: str, d: int, page: int, q_len: int, splits: int | None) -> dict[str, object]:
    fmt = get_format(name)
    lens = [q_len, *CHECK_LENS]
    b, hkv, g = len(lens), CHECK_HKV, CHECK_G
    nb = sum(math.ceil(n / page) for n in lens) + 3
    cache = reference.new_cache(fmt, nb, hkv, d, page, DEV)  # poisoned 0xFF: unwritten rows
    perm = torch.randperm(nb, device=DEV)
    table = torch.zeros(b, max(math.ceil(n / page) for n in lens), dtype=torch.int32, device=DEV)
    at, slots = 0, []
    for i, n in enumerate(lens):
        nblk = math.ceil(n / page)
        table[i, :nblk] = perm[at : at + nblk].int()
        at += nblk
        pos = torch.arange(n, device=DEV)
        slots.append(table[i, pos // page].long() * page + pos % page)
    slot = torch.cat(slots)
    qdt = torch.float16 if name == "fp16" else torch.bfloat16
    k = torch.randn(len(slot), hkv, d, device=DEV, dtype=qdt)
    k[:, :, 5] *= 10
    v = torch.randn_like(k)
    ks = torch.tensor([0.03, 0.05], device=DEV) if "fp8" in name else None
    api.write_kv(k, v, cache, slot, fmt, page, ks, ks)
    qsl = torch.arange(b + 1, device=DEV, dtype=torch.int32) * q_len
    q = torch.randn(b * q_len, hkv * g, d, device=DEV, dtype=qdt)
    sl = torch.tensor(lens, device=DEV, dtype=torch.int32)
    ref = reference.paged_attention(
        q.double(), cache, table, sl, qsl, fmt, page, d**-0.5, ks, ks, compute_dtype=torch.float64
    )
    out = torch.full_like(q, float("nan"))
    with variant(vname):
        api.paged_attention(q, cache, table, sl, qsl, fmt, page, d**-0.5, ks, ks, num_splits=splits, out=out)
    err = float((out.double() - ref).norm() / ref.norm())
    return {"format": name, "variant": vname, "d": d, "page": page, "q_len": q_len,
            "splits": splits, "rel_err": err, "ok": err <= BOUND}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# real K/V


def realkv(formats: list[str], vnames: list[str], log: list[str]) -> list[dict[str, object]]:
    """SmolLM2-135M's K/V of 3 layers (2048 tokens, 3 KV heads, d 64) into pages of each format;
    its last 16 queries decode as 1 query and as 16 (speculative-style) against them. Errors vs
    fp64 on the kernel's own dequantized cache (the bound) and vs the unquantized K/V (what the
    format costs, for reference)."""
    rec = torch.load(REALKV, map_location=DEV, weights_only=False)
    rows = []
    for li in rec["layers"]:
        k, v, q = rec[f"k{li}"], rec[f"v{li}"], rec[f"q{li}"]  # [T, 3, 64], [16, 9, 64]
        t, hkv, d = k.shape
        page = 16
        nb = math.ceil(t / page)
        table = torch.randperm(nb, device=DEV).int()[None]
        slot = (table[0].long()[:, None] * page + torch.arange(page, device=DEV)).flatten()[:t]
        sl = torch.tensor([t], device=DEV, dtype=torch.int32)
        exact = reference.new_cache(get_format("bf16"), nb, hkv, d, page, DEV)
        reference.write_kv(k.float(), v.float(), exact, slot, get_format("bf16"), page)
        for name in formats:
            fmt = get_format(name)
            ks = (
                (torch.stack([k.abs().amax((0, 2)), v.abs().amax((0, 2))]).float() / 448.0)
                if "fp8" in name
                else None
            )
            kss, vss = (ks[0], ks[1]) if ks is not None else (None, None)
            cache = reference.new_cache(fmt, nb, hkv, d, page, DEV)
            api.write_kv(k.bfloat16(), v.bfloat16(), cache, slot, fmt, page, kss, vss)
            for q_len in (1, 16):
                qq = q[-q_len:].bfloat16()
                qsl = torch.tensor([0, q_len], device=DEV, dtype=torch.int32)
                ref = reference.paged_attention(
                    qq.double(),
                    cache,
                    table,
                    sl,
                    qsl,
                    fmt,
                    page,
                    d**-0.5,
                    kss,
                    vss,
                    compute_dtype=torch.float64,
                )
                unq = reference.paged_attention(
                    qq.double(), exact, table, sl, qsl, get_format("bf16"), page, d**-0.5,
                    compute_dtype=torch.float64,
                )  # fmt: skip
                for vname in variants_for(name, vnames):
                    out = torch.full_like(qq, float("nan"))
                    with variant(vname):
                        api.paged_attention(qq, cache, table, sl, qsl, fmt, page, d**-0.5, kss, vss, out=out)
                    err = float((out.double() - ref).norm() / ref.norm())
                    q_err = float((out.double() - unq).norm() / unq.norm())
                    rows.append({"layer": li, "format": name, "variant": vname, "q_len": q_len,
                                 "rel_err": err, "vs_unquantized": q_err, "ok": err <= BOUND})  # fmt: skip
    worst = max(rows, key=lambda r: float(str(r["rel_err"])))
    log.append(
        f"realkv: {len(rows)} cases (layers {rec['layers']}, {t} tokens), worst {worst['rel_err']:.2e} "
        f"({worst['format']}, {worst['variant']}), {sum(not r['ok'] for r in rows)} over {BOUND}"
    )
    return rows


# ---------------------------------------------------------------------------------------------
# baselines and write


def sdpa_time(batch: int, ctx: int) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    n = max(2, min(6, math.ceil(ROTATE_BYTES / (batch * ctx * HKV * 512))))
    q = torch.randn(batch, HQ, 1, D, dtype=torch.bfloat16, device=DEV)
    kvs = [
        (torch.randn(batch, HKV, ctx, D, dtype=torch.bfloat16, device=DEV),) * 2 for _ in range(n)
    ]  # K = V: the same bytes read

    def mk(k: torch.Tensor, v: torch.Tensor) -> Callable[[], object]:
        def f() -> object:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return sdpa(q, k, v, enable_gqa=True)

        return f

    t = timed([mk(k, v) for k, v in kvs])
    del kvs
    torch.cuda.empty_cache()
    return t


def write_bench(copy_bw: float, log: list[str]) -> list[dict[str, object]]:
    """2048-token prefill chunk into the pages vs the device copy ceiling (`copy_bandwidths`) and
    vs same-size copies (a graph memcpy node and an SM copy kernel, the faster one)."""
    rows = []
    t_tok, n = 2048, 24  # rotated (key, value, cache) sets, ~400 MB in all
    for name in FORMATS:
        fmt = get_format(name)
        nblocks = t_tok // PAGE
        page = fmt.head_page(D, PAGE).nbytes
        sets = []
        for _ in range(n):
            k = torch.randn(t_tok, HKV, D, dtype=torch.bfloat16, device=DEV)
            v = torch.randn_like(k)
            cache = torch.empty(nblocks * 4, HKV, page, dtype=torch.uint8, device=DEV)
            slot = torch.randperm(nblocks * 4, device=DEV)[:nblocks].long()
            slot = (slot[:, None] * PAGE + torch.arange(PAGE, device=DEV)).flatten()
            sets.append((k, v, cache, slot))
        ks = torch.full((HKV,), 0.02, device=DEV) if "fp8" in name else None
        t = timed(
            [lambda s=s, f=fmt, k=ks: api.write_kv(s[0], s[1], s[2], s[3], f, PAGE, k, k) for s in sets]
        )
        nbytes = 2 * t_tok * HKV * D * 2 + t_tok * 8 + t_tok * HKV * fmt.bytes_per_token_head(D, PAGE)
        half = -(-int(nbytes) // 8) * 4  # bytes each side of the copy, a multiple of 4
        src = [torch.empty(half, dtype=torch.uint8, device=DEV) for _ in range(n)]
        dst = [torch.empty_like(x) for x in src]
        t_mem = timed([lambda a=a, b=b: b.copy_(a) for a, b in zip(src, dst, strict=True)])
        t_sm = timed([sm_copy(a, b) for a, b in zip(src, dst, strict=True)])
        tc = min(t_mem, t_sm)
        rows.append({"format": name, "us": t * 1e6, "GBps": nbytes / t / 1e9,
                     "frac_of_copy_bw": nbytes / t / copy_bw, "copy_GBps": copy_bw / 1e9,
                     "same_size_memcpy_us": t_mem * 1e6, "same_size_sm_copy_us": t_sm * 1e6,
                     "same_size_copy_GBps": nbytes / tc / 1e9, "frac_of_same_size_copy": tc / t})  # fmt: skip
        log.append(f"write {name:14s} {t * 1e6:7.1f} us {nbytes / t / 1e9:6.0f} GB/s = "
                   f"{nbytes / t / copy_bw:5.1%} of the copy ceiling, {tc / t:5.1%} of a same-size "
                   f"copy (memcpy node {t_mem * 1e6:.1f} us, SM copy {t_sm * 1e6:.1f} us)")  # fmt: skip
        del sets, src, dst
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------
# warm-up: every launch of the planned sections, compiled in parallel


def warm_jobs(sections: set[str], formats: list[str], vnames: list[str], grid: list[tuple[int, int]]) -> list:
    jobs: list[tuple[str, dict[str, Any], dict[str, object]]] = []
    for b, ctx in grid if "sweep" in sections else []:
        for name in formats:
            for vn in variants_for(name, vnames):
                jobs.append(
                    (
                        "decode",
                        {"fmt_name": name, "batch": b, "ctx": ctx, "q_len": 1, "sms": SMS},
                        _settings(vn),
                    )
                )
            jobs.append(("write", {"fmt_name": name, "tokens": min(65536, b * ctx)}, {}))
    if "check" in sections:
        for name, vn, d, page, q_len, splits in check_cases(formats, vnames):
            lens = [q_len, *CHECK_LENS]
            jobs.append(("decode", {"fmt_name": name, "batch": len(lens), "ctx": 0, "q_len": q_len,
                                    "sms": SMS, "hq": CHECK_HKV * CHECK_G, "hkv": CHECK_HKV, "d": d,
                                    "page": page, "lens": lens,
                                    "splits": splits}, _settings(vn)))  # fmt: skip
    if "realkv" in sections:
        for name in formats:
            for vn in variants_for(name, [v for v in vnames if v in REALKV_VARIANTS]):
                for q_len in (1, 16):
                    jobs.append(("decode", {"fmt_name": name, "batch": 1, "ctx": 2048, "q_len": q_len,
                                            "sms": SMS,
                                            "hq": 9, "hkv": 3, "d": 64}, _settings(vn)))  # fmt: skip
    if "write" in sections:
        jobs += [("write", {"fmt_name": name, "tokens": 2048}, {}) for name in formats]
    return jobs


SMS = 132


SECTIONS = {"check", "sweep", "realkv", "write", "smoke"}


def _arguments_or_exit(
    ap: argparse.ArgumentParser, sections: set[str], formats: list[str], vnames: list[str], shapes: str
) -> list[tuple[int, int]]:
    """Check the names and shapes before anything starts; a one-line usage error (exit 2) else."""
    for what, given, known in (("section", sections, SECTIONS), ("format", formats, FORMATS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            ap.error(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    unknown = [v for v in vnames if variant_settings(v) is None]
    if unknown:
        ap.error(f"unknown variant {', '.join(unknown)}; known: {', '.join(VARIANTS)} or {_LAUNCH.pattern}")
    grid = parse_shapes(ap, shapes)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (this benchmark times the kernels on the device)")
    return grid


def _known_keys() -> set[str]:
    """What a variant may set: api.TUNING_GLUON's keys, "per_format", combine_* and write_* keys."""
    return {
        *api.TUNING_GLUON, "per_format",
        *(f"combine_{k}" for k in api.TUNING_COMBINE), *(f"write_{k}" for k in api.TUNING_WRITE),
    }  # fmt: skip


def parse_variants_json(ap: argparse.ArgumentParser, text: str) -> dict[str, dict[str, object]]:
    """--variants-json {"name": {setting: value}}; a one-line usage error (exit 2) else."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        ap.error(f"--variants-json is not JSON: {exc.msg} at character {exc.pos}")
    if not isinstance(doc, dict) or not doc or not all(isinstance(v, dict) for v in doc.values()):
        ap.error('--variants-json takes {"name": {setting: value}, ...}')
    tables = {True, False, *kc.PREVIOUS_GLUON}
    for name, over in doc.items():
        unknown = sorted(set(over) - _known_keys())
        if unknown:
            ap.error(f"--variants-json {name}: unknown setting {', '.join(unknown)}")
        for key, value in over.items():
            if key == "per_format":
                continue
            default = api.TUNING_GLUON.get(key, 0)  # (combine_* and write_* settings are counts)
            if isinstance(default, bool) and not isinstance(value, bool):
                ap.error(f"--variants-json {name}: {key} is true or false, got {value!r}")
            if type(default) is int and (type(value) is not int or value < 0):
                ap.error(f"--variants-json {name}: {key} is a whole number >= 0, got {value!r}")
        if over.get("per_format", False) not in tables:
            ap.error(
                f"--variants-json {name}: per_format is true, false or one of {', '.join(kc.PREVIOUS_GLUON)}"
            )
    return doc


def parse_shapes(ap: argparse.ArgumentParser, shapes: str) -> list[tuple[int, int]]:
    """--shapes BATCHxCONTEXT,... as (batch, context) pairs; a one-line usage error (exit 2) else."""
    try:
        grid = [(int(b), int(c)) for b, c in (s.split("x") for s in shapes.split(","))]
    except ValueError:
        ap.error(f"--shapes takes BATCHxCONTEXT,... (e.g. 32x32768), got {shapes!r}")
    if any(b < 1 or c < 1 for b, c in grid):
        ap.error(f"--shapes: batch and context must be positive, got {shapes!r}")
    return grid


def main() -> None:
    global SMS
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--sections", default="check,sweep,realkv,write")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument(
        "--variants-json", default="", help='{"name": {TUNING_GLUON key: value}} replaces VARIANTS'
    )
    ap.add_argument("--shapes", default=",".join(f"{b}x{c}" for b, c in GRID))
    ap.add_argument("--jobs", type=int, default=12, help="compile processes (0: no warm-up)")
    # the second variant timed in a case ran ~10% slow at 1 x 128K in three H200 runs
    # (kernels_h200_s10_call1-3.json; cause not found): passes over the variants, the fastest kept
    ap.add_argument("--passes", type=int, default=1, help="sweep: passes over a case's variants")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; later sections are skipped past it")
    ap.add_argument("--warm-timeout", type=float, default=120, help="seconds for the warm-up")
    ap.add_argument("--smoke", type=int, default=1, help="first run the Gluon path in a child process")
    args = ap.parse_args()
    t0 = time.time()
    sections = set(args.sections.split(","))
    formats = args.formats.split(",")
    if args.variants_json:
        VARIANTS.clear()
        VARIANTS.update(parse_variants_json(ap, args.variants_json))
        args.variants = ",".join(VARIANTS)
    vnames = args.variants.split(",")
    grid = _arguments_or_exit(ap, sections, formats, vnames, args.shapes)
    props = torch.cuda.get_device_properties(0)
    SMS = props.multi_processor_count
    res: dict[str, Any] = {
        "device": props.name, "sms": SMS, "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__, "triton": triton.__version__, "bound": BOUND,
        "variants": {v: _settings(v) for v in vnames},
    }  # fmt: skip
    log: list[str] = [f"{props.name} ({SMS} SMs), torch {torch.__version__}, triton {triton.__version__}"]
    print(log[-1], flush=True)

    def save() -> None:
        res["log"] = log
        res["elapsed_s"] = time.time() - t0
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1, default=str)

    def over_budget(section: str) -> bool:
        if time.time() - t0 > args.budget:
            log.append(f"{section}: skipped, past the {args.budget:.0f} s budget")
            print(log[-1], flush=True)
            return True
        return False

    if args.jobs:
        jobs = warm_jobs(sections, formats, vnames, grid)  # type: ignore[arg-type]
        tw = time.time()
        done = kc.warm(jobs, args.jobs, args.warm_timeout)
        failed = [(j, d) for j, d in zip(jobs, done, strict=True) if d[2]]
        res["warm"] = {"jobs": len(jobs), "seconds": time.time() - tw, "cpu_seconds": sum(d[1] for d in done),
                       "failed": [f"{j[0]} {j[1].get('fmt_name')} {j[2]}: {d[2]}"
                                  for j, d in failed][:20]}  # fmt: skip
        log.append(f"warm-up: {len(jobs)} launches compiled in {time.time() - tw:.0f} s "
                   f"({args.jobs} processes, "
                   f"{sum(d[1] for d in done):.0f} CPU-s), {len(failed)} failed")  # fmt: skip
        print(log[-1], *res["warm"]["failed"][:5], sep="\n  ", flush=True)
        save()
    gluon_vns = [vn for vn in vnames if _settings(vn).get("gluon")]
    if args.smoke and gluon_vns:  # a crash (illegal address) would end this process's CUDA context
        cmd = [sys.executable, __file__, "--sections", "smoke", "--jobs", "0", "--smoke", "0"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        res["smoke"] = {"rc": r.returncode, "tail": (r.stdout + r.stderr)[-2000:]}
        log.append(f"smoke (Gluon path, child process): rc {r.returncode}; {r.stdout.strip()[-300:]}")
        print(log[-1], flush=True)
        if r.returncode != 0:
            vnames = [vn for vn in vnames if vn not in gluon_vns]
            log.append(f"Gluon variants dropped: {gluon_vns}\n{r.stderr[-1500:]}")
            print(log[-1], flush=True)
        save()
    if sections == {"smoke"}:  # the child: a few Gluon launches, errors printed
        worst = 0.0
        for name in QUANT:
            for d, page, q_len in CHECK_SHAPES[1:2] + CHECK_SHAPES[-1:]:
                r2 = check_one(name, "gluon", d, page, q_len, None)
                worst = max(worst, float(str(r2["rel_err"])))
        torch.cuda.synchronize()
        print(f"smoke ok: {2 * len(QUANT)} Gluon launches, worst rel err {worst:.2e}")
        return
    bws = copy_bandwidths()
    res["copy_baselines_GBps"] = {k: v / 1e9 for k, v in bws.items()}
    res["copy_GBps"] = copy_ceiling(bws) / 1e9
    res["read_GBps"] = read_bandwidth() / 1e9
    log.append(
        f"device copy {res['copy_GBps']:.0f} GB/s (read + write; "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in bws.items())
        + f"), Triton read stream {res['read_GBps']:.0f} GB/s"
    )
    print(log[-1], flush=True)

    if "check" in sections and not over_budget("check"):
        rows = []
        for case in check_cases(formats, vnames):
            try:
                rows.append(check_one(*case))
            except Exception as e:  # a failing path is a result, not the end of the run
                rows.append({"case": case, "error": f"{type(e).__name__}: {e}"[:300], "ok": False})
        res["check"] = rows
        bad = [r for r in rows if not r["ok"]]
        for vn in ("triton", "gluon"):
            errs = [float(str(r["rel_err"])) for r in rows if r.get("variant") == vn and "rel_err" in r]
            if errs:
                log.append(f"check {vn}: {len(errs)} cases, worst {max(errs):.2e}")
        log.append(f"check: {len(rows)} cases, {len(bad)} over {BOUND} or failed")
        for r in bad[:8]:
            log.append(f"  FAIL {r}")
        print("\n".join(log[-3 - min(8, len(bad)) :]), flush=True)
        save()

    if "realkv" in sections and not over_budget("realkv"):
        res["realkv"] = realkv(formats, [v for v in vnames if v in REALKV_VARIANTS], log)
        print(log[-1], flush=True)
        save()
    if "write" in sections and not over_budget("write"):
        res["write"] = write_bench(res["copy_GBps"] * 1e9, log)
        print("\n".join(log[-len(FORMATS) :]), flush=True)
    if "sweep" in sections:
        res["sweep"] = []
        for b, ctx in grid:
            if over_budget(f"sweep {b}x{ctx}"):
                break
            row: dict[str, Any] = {"batch": b, "ctx": ctx, "sdpa_us": sdpa_time(b, ctx) * 1e6}
            for name in formats:
                c = Case(name, b, ctx)
                for _ in range(args.passes):  # a cell: the fastest pass (one may be slow, below)
                    for vn in variants_for(name, vnames):
                        with variant(vn):
                            try:
                                t = c.time()
                                err = c.check()
                            except Exception as e:
                                log.append(
                                    f"sweep {b}x{ctx} {name} {vn} failed: {type(e).__name__}: {e}"[:300]
                                )
                                t, err = float("nan"), float("nan")
                        old = row.get(f"{name}/{vn}", {"us": math.inf})["us"]
                        if not t * 1e6 >= old:
                            row[f"{name}/{vn}"] = {
                                "us": t * 1e6,
                                "GBps": c.bytes_moved() / t / 1e9,
                                "rel_err": err,
                            }
                c.free()
            base = row.get(f"bf16/{variants_for('bf16', vnames)[0]}", {}).get("us", float("nan"))
            line = f"{b:>3}x{ctx:<6} sdpa {row['sdpa_us']:7.1f} bf16 {base:7.1f}us"
            for name in formats[1:] if formats[0] == "bf16" else formats:
                cells = {vn: row[f"{name}/{vn}"] for vn in variants_for(name, vnames)}
                best = min(cells, key=lambda vn: cells[vn]["us"] if math.isfinite(cells[vn]["us"]) else 1e99)
                worst_err = max(cells[vn]["rel_err"] for vn in cells)
                tri = cells.get("triton", {"us": math.nan})["us"]
                line += f" | {name} {base / cells[best]['us']:4.2f}x {best}"
                line += f" (triton {base / tri:4.2f}x) err {worst_err:.1e}"
            log.append(line)
            print(line, flush=True)
            res["sweep"].append(row)
            save()

    save()
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
