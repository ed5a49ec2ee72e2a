"""Decode-attention and cache-write benchmark for kvplan's quantized-KV kernels (needs a CUDA GPU).

Single layer, Llama-3-8B shapes (32 q heads, 8 KV heads, head_dim 128), page 16, bf16 queries.
Every timed call is captured in a CUDA graph (as vLLM decodes) and replayed over several rotated
caches (> L2) back to back; time = median over repeats of (elapsed / replays).

Effective bandwidth = bytes read (codes + scales from formats.py, page table, query) + output
written, over time; compared with a device-to-device copy measured in the same run.
Baselines in the same run: kvplan's bf16 kernel, torch SDPA (flash backend, GQA) on a gathered
contiguous cache, FlexAttention (compiled) on the same contiguous cache.

    PYTHONPATH=. python bench/kernels_decode.py --out bench/results/kernels_h100.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
import triton

from kvplan.formats import get_format
from kvplan.kernels import api, reference

HQ, HKV, D, PAGE = 32, 8, 128, 16
DEV = (
    "cuda" if torch.cuda.is_available() else "cpu"
)  # cpu: a dry run of --sections check under TRITON_INTERPRET=1
QDT = torch.bfloat16 if DEV == "cuda" else torch.float16  # the interpreter's bf16 dot is broken
FORMATS = ["bf16", "fp8_e4m3", "int8", "int8_hadamard", "k8v4", "int4", "int4_hadamard"]
GRID = [(1, 32768), (8, 32768), (32, 4096), (32, 32768), (64, 1024), (1, 131072)]
CHECK_SHAPES = [
    (64, 16, 1),
    (128, 16, 1),
    (256, 16, 1),
    (128, 32, 1),
    (128, 64, 1),
    (128, 128, 1),
    (128, 16, 4),
    (64, 64, 8),
]  # (head_dim, page, queries per sequence)
ROTATE_BYTES = 400e6  # rotate among caches totalling at least this (L2 is 50 MB)


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


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=DEV).normal_()
    dst = torch.empty_like(src)
    t = timed([lambda: dst.copy_(src)], calls=8)
    return 2 * nbytes / t


class Case:
    """One decode shape in one format: rotated caches, block tables, queries."""

    def __init__(self, fmt_name: str, batch: int, ctx: int, q_len: int = 1, rotate: int | None = None):
        self.fmt = get_format(fmt_name)
        self.batch, self.ctx, self.q_len = batch, ctx, q_len
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

    def _fill(self, cache: torch.Tensor, perm: torch.Tensor) -> None:
        """Write random K/V (outlier key channel included) through the write kernel."""
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

    def bytes_moved(self) -> float:
        table = self.batch * math.ceil(self.ctx / PAGE) * 4
        qo = 2 * self.query.numel() * 2
        return self.cache_bytes + table + qo

    def time(self, num_splits: int | None = None) -> float:
        return timed([self.call(i, num_splits) for i in range(len(self.caches))])

    def free(self) -> None:
        self.caches.clear()
        self.tables.clear()
        torch.cuda.empty_cache()


def check_correctness(log: list[str], formats: list[str] | None = None) -> list[dict[str, object]]:
    """GPU kernels vs an fp64 reference on the dequantized cache: every format, head_dim, page."""
    rows = []
    torch.manual_seed(0)
    for name in formats or [*FORMATS, "fp16"]:
        fmt = get_format(name)
        for d, page, q_len in CHECK_SHAPES:
            if True:
                if True:
                    lens = [max(q_len, 1), 700, 2049, 33] if DEV == DEV else [q_len, 40, 17]
                    b = len(lens)
                    nb = sum(math.ceil(n / page) for n in lens) + 3
                    hkv, g = 2, 4
                    cache = reference.new_cache(fmt, nb, hkv, d, page, DEV)
                    perm = torch.randperm(nb, device=DEV)
                    maxb = max(math.ceil(n / page) for n in lens)
                    table = torch.zeros(b, maxb, dtype=torch.int32, device=DEV)
                    at, slots = 0, []
                    for i, n in enumerate(lens):
                        nblk = math.ceil(n / page)
                        table[i, :nblk] = perm[at : at + nblk].int()
                        at += nblk
                        pos = torch.arange(n, device=DEV)
                        slots.append(table[i, pos // page].long() * page + pos % page)
                    slot = torch.cat(slots)
                    qdt = torch.float16 if name == "fp16" else QDT
                    k = torch.randn(len(slot), hkv, d, device=DEV, dtype=qdt)
                    k[:, :, 5] *= 10
                    v = torch.randn_like(k)
                    ks = torch.tensor([0.03, 0.05], device=DEV) if "fp8" in name else None
                    api.write_kv(k, v, cache, slot, fmt, page, ks, ks)
                    ref_cache = reference.new_cache(fmt, nb, hkv, d, page, DEV)
                    reference.write_kv(k, v, ref_cache, slot, fmt, page, ks, ks)
                    kd, vd = reference.dequantize_pages(cache, fmt, d, page, ks, ks)
                    kr, vr = reference.dequantize_pages(ref_cache, fmt, d, page, ks, ks)
                    bl, of = slot // page, slot % page
                    w_err = float(
                        (kd[bl, :, of] - kr[bl, :, of]).norm() / kr[bl, :, of].norm()
                        + (vd[bl, :, of] - vr[bl, :, of]).norm() / vr[bl, :, of].norm()
                    )
                    qsl = torch.arange(b + 1, device=DEV, dtype=torch.int32) * q_len
                    q = torch.randn(b * q_len, hkv * g, d, device=DEV, dtype=qdt)
                    sl = torch.tensor(lens, device=DEV, dtype=torch.int32)
                    ref = reference.paged_attention(
                        q.double(), cache, table, sl, qsl, fmt, page, d**-0.5, ks, ks,
                        compute_dtype=torch.float64,
                    )  # fmt: skip
                    errs = []
                    for splits in (None, 1):
                        out = torch.full_like(q, float("nan"))
                        api.paged_attention(
                            q, cache, table, sl, qsl, fmt, page, d**-0.5, ks, ks,
                            num_splits=splits, out=out,
                        )  # fmt: skip
                        errs.append(float((out.double() - ref).norm() / ref.norm()))
                    rows.append(
                        {"format": name, "d": d, "page": page, "q_len": q_len,
                         "attn_rel_err": max(errs), "write_vs_ref": w_err}
                    )  # fmt: skip
    worst = max(r["attn_rel_err"] for r in rows)  # type: ignore[type-var]
    worst_w = max(r["write_vs_ref"] for r in rows)  # type: ignore[type-var]
    log.append(f"correctness: {len(rows)} cases, worst attention rel err {worst:.2e}, "
               f"worst write-vs-reference dequant diff {worst_w:.2e}")  # fmt: skip
    return rows


def contiguous_bf16(batch: int, ctx: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The torch baselines' inputs: a decode query and 2-6 rotated contiguous BF16 K/V caches."""
    n = max(2, min(6, math.ceil(ROTATE_BYTES / (batch * ctx * HKV * 512))))
    q = torch.randn(batch, HQ, 1, D, dtype=torch.bfloat16, device=DEV)
    kvs = [
        (
            torch.randn(batch, HKV, ctx, D, dtype=torch.bfloat16, device=DEV),
            torch.randn(batch, HKV, ctx, D, dtype=torch.bfloat16, device=DEV),
        )
        for _ in range(n)
    ]
    return q, kvs


def sdpa_time(batch: int, ctx: int) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, kvs = contiguous_bf16(batch, ctx)

    def mk(k: torch.Tensor, v: torch.Tensor) -> Callable[[], object]:
        def f() -> object:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return sdpa(q, k, v, enable_gqa=True)

        return f

    t = timed([mk(k, v) for k, v in kvs])
    del kvs
    torch.cuda.empty_cache()
    return t


def flex_time(batch: int, ctx: int) -> float:
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    q, kvs = contiguous_bf16(batch, ctx)
    t = timed([lambda k=k, v=v: flex(q, k, v, enable_gqa=True) for k, v in kvs])
    del kvs
    torch.cuda.empty_cache()
    return t


def write_bench(copy_bw: float, log: list[str]) -> list[dict[str, object]]:
    """2048-token prefill chunk into the pages vs a same-size copy and the big-copy bandwidth."""
    rows = []
    t_tok = 2048
    n = 24  # rotated (key, value, cache) sets, ~400 MB in all
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
        src = [torch.empty(int(nbytes) // 2, dtype=torch.uint8, device=DEV) for _ in range(n)]
        dst = [torch.empty_like(x) for x in src]
        tc = timed([lambda a=a, b=b: b.copy_(a) for a, b in zip(src, dst, strict=True)])
        rows.append(
            {"format": name, "us": t * 1e6, "GBps": nbytes / t / 1e9,
             "frac_of_copy_bw": nbytes / t / copy_bw, "same_size_copy_GBps": nbytes / tc / 1e9,
             "frac_of_same_size_copy": tc / t}
        )  # fmt: skip
        log.append(f"write {name:14s} {t * 1e6:7.1f} us {nbytes / t / 1e9:7.0f} GB/s = "
                   f"{nbytes / t / copy_bw:5.1%} of copy bw, {tc / t:5.1%} of a same-size copy")  # fmt: skip
        del sets, src, dst
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--sections", default="check,grid,bytes,write,flex")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--splits", default="", help="comma list of forced split counts to sweep")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    formats = args.formats.split(",")
    if DEV == "cpu":
        log0: list[str] = []
        check_correctness(log0)
        print(log0[-1])
        return
    props = torch.cuda.get_device_properties(0)
    res: dict[str, object] = {
        "device": props.name,
        "sms": props.multi_processor_count,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    log: list[str] = [f"{props.name}, torch {torch.__version__}, triton {triton.__version__}"]
    t0 = time.time()

    def save() -> None:
        res["log"] = log
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1)

    if "check" in sections:
        res["correctness"] = check_correctness(log, formats if args.formats != ",".join(FORMATS) else None)
        print(log[-1], f"({time.time() - t0:.0f}s)", flush=True)
    copy_bw = copy_bandwidth()
    res["copy_GBps"] = copy_bw / 1e9
    log.append(f"device copy {copy_bw / 1e9:.0f} GB/s (read + write)")
    print(log[-1], flush=True)
    if "grid" in sections:
        grid = []
        for batch, ctx in GRID:
            base = {"sdpa": sdpa_time(batch, ctx)}
            if "flex" in sections:
                try:
                    base["flex"] = flex_time(batch, ctx)
                except Exception as e:  # a missing baseline is reported, not fatal
                    log.append(f"flex {batch}x{ctx} failed: {type(e).__name__}: {e}"[:200])
            row: dict[str, object] = {"batch": batch, "ctx": ctx, **{k: v * 1e6 for k, v in base.items()}}
            for name in formats:
                c = Case(name, batch, ctx)
                t = c.time()
                row[name] = t * 1e6
                row[name + "_GBps"] = c.bytes_moved() / t / 1e9
                if args.splits:
                    for s in args.splits.split(","):
                        row[f"{name}_s{s}"] = c.time(int(s)) * 1e6
                c.free()
            best_bf16 = min(v for k, v in row.items() if k in ("sdpa", "flex", "bf16"))
            row["best_bf16_us"] = best_bf16
            grid.append(row)
            line = f"{batch:>3}x{ctx:<6} sdpa {row['sdpa']:8.1f}" + (
                f" flex {row['flex']:8.1f}" if "flex" in row else ""
            )
            for name in formats:
                speedup = best_bf16 / row[name]
                line += f" | {name} {row[name]:8.1f}us {speedup:4.2f}x {row[name + '_GBps']:5.0f}GB/s"
            log.append(line)
            print(line, flush=True)
            res["grid"] = grid
            save()
    if "sweep" in sections:
        configs = [
            {"block_n": 64, "num_warps": 4, "num_stages": 2, "programs_per_sm": 2},
            {"block_n": 64, "num_warps": 4, "num_stages": 2, "programs_per_sm": 8},
            {"block_n": 128, "num_warps": 4, "num_stages": 3, "programs_per_sm": 8},
            {"block_n": 128, "num_warps": 4, "num_stages": 3, "programs_per_sm": 8, "swap_qk": True},
            {"block_n": 64, "num_warps": 4, "num_stages": 2, "programs_per_sm": 8, "swap_qk": True},
            {"block_n": 128, "num_warps": 4, "num_stages": 3, "programs_per_sm": 8, "rot_prec": "tf32x3"},
        ]
        sweep = []
        for batch, ctx in [(1, 32768), (32, 32768)]:
            for name in formats:
                c = Case(name, batch, ctx)
                for i, cfg in enumerate(configs):
                    if "rot_prec" in cfg and "hadamard" not in name:
                        continue
                    saved, saved_fmt = dict(api.TUNING), dict(api.TUNING_BY_FORMAT)
                    api.TUNING_BY_FORMAT.clear()
                    api.TUNING.update({"small_grid_per_sm": 0.0, **cfg})
                    try:
                        t = c.time()
                    except Exception as e:
                        log.append(f"sweep {name} cfg{i} failed: {type(e).__name__}"[:200])
                        t = float("nan")
                    api.TUNING.clear()
                    api.TUNING.update(saved)
                    api.TUNING_BY_FORMAT.update(saved_fmt)
                    sweep.append({"batch": batch, "ctx": ctx, "format": name, "cfg": i, **cfg, "us": t * 1e6})
                c.free()
                line = f"sweep {batch}x{ctx} {name:14s} " + " ".join(
                    f"c{r['cfg']}:{r['us']:7.1f}"
                    for r in sweep
                    if r["format"] == name and r["batch"] == batch
                )
                log.append(line)
                print(line, flush=True)
        res["sweep"] = sweep
    if "bytes" in sections:
        rows = []
        for name in ("bf16", "fp8_e4m3", "int8", "int4_hadamard"):
            for ctx in (4096, 8192, 16384, 32768, 65536, 131072):
                c = Case(name, 8, ctx)
                t = c.time()
                rows.append({"format": name, "batch": 8, "ctx": ctx, "us": t * 1e6,
                             "bytes": c.bytes_moved(), "GBps": c.bytes_moved() / t / 1e9})  # fmt: skip
                c.free()
            line = f"bytes {name:14s} " + " ".join(f"{r['us']:8.1f}" for r in rows if r["format"] == name)
            log.append(line)
            print(line, flush=True)
            res["time_follows_bytes"] = rows
            save()
    if "write" in sections:
        res["write"] = write_bench(copy_bw, log)
        print("\n".join(log[-len(FORMATS) :]), flush=True)
    save()
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
