"""Compile kvplan's kernels for a GPU without running them: on a machine with no GPU (SASS and
register reports), or ahead of a benchmark in parallel processes (warm Triton's disk cache).

`compile_only()` installs a Triton driver that reports a CUDA target and turns every kernel
launch into a compile; `api` then runs its normal launch code on CPU tensors of the real shapes
(`cuda=True`, the real SM count), so each kernel is specialised exactly as on the GPU and lands
in Triton's cache (TRITON_CACHE_DIR), where the benchmark's own launches find it.

    # offline, Triton 3.6 (the GPU machine's version) in a venv of its own:
    python bench/kernels_compile.py --formats int4,int8 --shapes 32x32768 --gluon 1 --sass /tmp/sass
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

from kvplan.formats import get_format
from kvplan.kernels import api, reference

HQ, HKV, D, PAGE = 32, 8, 128, 16  # bench/kernels_decode.py's layer
COMPILED: list[Any] = []  # the kernels compiled under compile_only(), in order


class _CompileOnlyDriver:
    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


@contextlib.contextmanager
def compile_only(arch: int = 90) -> Iterator[None]:
    from triton.runtime.driver import driver

    orig = JITFunction.run

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        k = orig(self, *args, grid=grid, warmup=True, **kwargs)
        COMPILED.append(k)
        return k

    saved = driver._active  # may be None (no GPU here): never build a default driver
    driver.set_active(_CompileOnlyDriver(GPUTarget("cuda", arch, 32)))  # type: ignore[arg-type]
    JITFunction.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        JITFunction.run = orig  # type: ignore[method-assign]
        driver._active = saved


# api's launch tables as shipped before (variants "shipped_s6", "_s7", "_s8" of
# bench/kernels_decode.py): base, regimes, per-format overrides. s6: 2026-12-03; s7: 2026-12-04
# (commit ce52745), before one row max a group of tiles ("joint"); s8: 2026-12-04 (commit 7fddff3),
# before pages read a group ahead ("page_ahead") and the merge as a dependent launch on small grids
_Over = dict[str, object]
_Tables = tuple[_Over, dict[str, _Over], dict[str, dict[str, _Over]]]
_SWAPPED_128_S7: _Over = {"swap": True, "unroll": 1, "maxnreg": 128, "waves": 1}
_SWAPPED_JOINT_S8: _Over = {"swap": True, "unroll": 2, "joint": True, "maxnreg": 168, "waves": 2}
_BASE_S7: _Over = {"unroll": 2, "prefetch": True, "swap": False, "programs_per_sm": 8, "maxnreg": 0,
                   "waves": 1, "joint": False, "early": False, "page_ahead": False}  # fmt: skip
_REGIMES_S7: dict[str, _Over] = {"short": {}, "full": {}, "partial": {"swap": True, "waves": 2}, "small": {}}
_BY_FORMAT_S7: dict[str, dict[str, _Over]] = {
    "fp8_e4m3": {"partial": {"waves": 0, "programs_per_sm": 16}},
    "k8v4": {"full": {**_SWAPPED_128_S7, "waves": 2}, "partial": _SWAPPED_128_S7},
    "int4": {"full": {"swap": True, "maxnreg": 168, "waves": 2}, "partial": _SWAPPED_128_S7},
    "int4_hadamard": {"full": {**_SWAPPED_128_S7, "waves": 2}, "partial": _SWAPPED_128_S7},
}
PREVIOUS_GLUON: dict[str, _Tables] = {
    "s6": (
        {"unroll": 2, "prefetch": False, "swap": False, "programs_per_sm": 16, "maxnreg": 0, "waves": 0,
         "joint": False, "early": False, "page_ahead": False},
        {"short": {}, "full": {"programs_per_sm": 32}, "partial": {"unroll": 4},
         "small": {"programs_per_sm": 8, "unroll": 4}},
        {
            **{f: {"short": {"programs_per_sm": 8}}
               for f in ("fp8_e4m3", "int8_hadamard", "k8v4", "int4", "int4_hadamard")},
            "int8": {"short": {"unroll": 4}, "full": {"unroll": 4}},
            "int8_hadamard": {"short": {"programs_per_sm": 8}, "full": {"unroll": 4}},
        },
    ),
    "s7": (_BASE_S7, _REGIMES_S7, _BY_FORMAT_S7),
    # s8: "joint" and "early" in, the 4-bit formats on the swapped two-tile launch with it
    "s8": (
        {**_BASE_S7, "early": True},
        _REGIMES_S7,
        {**_BY_FORMAT_S7, "int4": {"full": _SWAPPED_JOINT_S8, "partial": _SWAPPED_JOINT_S8},
         "int4_hadamard": {"full": _SWAPPED_JOINT_S8, "partial": _SWAPPED_128_S7}},
    ),
}  # fmt: skip
_TABLES = (
    api.TUNING_GLUON,
    api.TUNING_GLUON_REGIME,
    api.TUNING_GLUON_BY_FORMAT,
    api.TUNING_COMBINE,
    api.TUNING_COMBINE_REGIME,
    api.TUNING_WRITE,
    api.TUNING_WRITE_BY_FORMAT,
)


@contextlib.contextmanager
def gluon_tuning(over: dict[str, object]) -> Iterator[None]:
    """api's launch tables with `over` applied (a benchmark variant): its keys replace TUNING_GLUON's,
    and the regimes and per-format settings (TUNING_GLUON_REGIME, TUNING_GLUON_BY_FORMAT) are set
    aside unless `over` says "per_format": True (variant `shipped`) or a key of PREVIOUS_GLUON
    ("s6", "s7": earlier tables), so each other variant is one launch at every shape. With the
    tables, `over`'s other keys hold in every regime and format (`shipped_pps`: waves 0)."""
    saved = [copy.deepcopy(dict(t)) for t in _TABLES]
    over = dict(over)
    per_format = over.pop("per_format", False)
    if isinstance(per_format, str):
        base, regimes, by_format = copy.deepcopy(PREVIOUS_GLUON[per_format])
        api.TUNING_GLUON.update(base)
        api.TUNING_GLUON_REGIME.clear()
        api.TUNING_GLUON_REGIME.update(regimes)
        api.TUNING_GLUON_BY_FORMAT.clear()
        api.TUNING_GLUON_BY_FORMAT.update(by_format)
    elif not per_format:
        api.TUNING_GLUON_REGIME.clear()
        api.TUNING_GLUON_BY_FORMAT.clear()
    if per_format is not True:  # (the tables before s10 had no merge setting by regime)
        api.TUNING_COMBINE_REGIME.clear()
    for key in [k for k in over if k.startswith("combine_")]:  # the split-K merge's, in every regime
        name = key.removeprefix("combine_")
        api.TUNING_COMBINE[name] = int(str(over.pop(key)))
        for entry in api.TUNING_COMBINE_REGIME.values():
            entry.pop(name, None)
    writes = [k for k in over if k.startswith("write_")]  # the cache write's: one launch, every format
    if writes:
        api.TUNING_WRITE_BY_FORMAT.clear()
    for key in writes:
        api.TUNING_WRITE[key.removeprefix("write_")] = int(str(over.pop(key)))
    api.TUNING_GLUON.update(over)
    if per_format:  # a setting given beside the tables holds in every regime and format
        for regime, entry in api.TUNING_GLUON_REGIME.items():
            api.TUNING_GLUON_REGIME[regime] = {k: v for k, v in entry.items() if k not in over}
        for fmt, regimes in api.TUNING_GLUON_BY_FORMAT.items():
            api.TUNING_GLUON_BY_FORMAT[fmt] = {
                r: {k: v for k, v in e.items() if k not in over} for r, e in regimes.items()
            }
    try:
        yield
    finally:
        for table, old in zip(_TABLES, saved, strict=True):
            table.clear()
            table.update(old)  # type: ignore[arg-type]


def decode_launch(
    fmt_name: str, batch: int, ctx: int, q_len: int, sms: int, hq: int = HQ, hkv: int = HKV, d: int = D,
    page: int = PAGE, lens: list[int] | None = None, splits: int | None = None,
) -> None:  # fmt: skip
    """api's decode launch for these shapes on CPU tensors (the data is never read)."""
    fmt = get_format(fmt_name)
    lens = lens or [ctx] * batch
    nblocks = sum(math.ceil(n / page) for n in lens) + 3
    cache = torch.empty(nblocks, hkv, fmt.head_page(d, page).nbytes, dtype=torch.uint8)
    table = torch.zeros(len(lens), max(math.ceil(n / page) for n in lens), dtype=torch.int32)
    qdt = torch.float16 if fmt_name == "fp16" else torch.bfloat16
    q = torch.empty(len(lens) * q_len, hq, d, dtype=qdt)
    qsl = torch.arange(0, len(lens) + 1, dtype=torch.int32) * q_len
    ks = torch.full((hkv,), 0.02) if "fp8" in fmt_name else None
    sl = torch.tensor(lens, dtype=torch.int32)
    api._attention_triton(
        q, cache, table, sl, qsl, fmt, page, d**-0.5, ks, ks, q_len, max(lens), splits, torch.empty_like(q),
        cuda=True, sms=sms,
    )  # fmt: skip


def write_launch(fmt_name: str, tokens: int, hkv: int = HKV, d: int = D, page: int = PAGE) -> None:
    fmt = get_format(fmt_name)
    cache = torch.empty(tokens // page * 4, hkv, fmt.head_page(d, page).nbytes, dtype=torch.uint8)
    k = torch.empty(tokens, hkv, d, dtype=torch.bfloat16)
    ks = torch.full((hkv,), 0.02) if "fp8" in fmt_name else None
    slot = torch.arange(tokens, dtype=torch.int64)
    reference.check_cache(cache, fmt, d, page)
    api._write_triton(k, k, cache, slot, fmt, page, ks, ks, cuda=True)


def warm_one(job: tuple[str, dict[str, Any], dict[str, object]]) -> tuple[str, float, str]:
    """Compile one launch (in a worker process): (kind, arguments, TUNING_GLUON overrides)."""
    kind, kw, over = job
    t0 = time.time()
    try:
        with compile_only(), gluon_tuning(over):
            (decode_launch if kind == "decode" else write_launch)(**kw)
        return kind, time.time() - t0, ""
    except Exception as e:  # reported by the caller; the real launch will compile it again
        return kind, time.time() - t0, f"{type(e).__name__}: {e}"[:300]


def warm(
    jobs: list[tuple[str, dict[str, Any], dict[str, object]]], procs: int, timeout: float = 1e9
) -> list[tuple[str, float, str]]:
    """Compile every job in `procs` processes (spawned: no CUDA context is inherited); past
    `timeout` seconds the rest is left to compile on first launch."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(procs) as pool:
        pending = pool.map_async(warm_one, jobs, chunksize=1)
        try:
            return pending.get(timeout)
        except mp.TimeoutError:
            pool.terminate()
            return [("?", 0.0, f"not compiled: warm-up past {timeout:.0f} s") for _ in jobs]


# ---------------------------------------------------------------------------------------------
# SASS reports (offline)


def _bin(tool: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def sass_report(kernel: Any, out_dir: str, tag: str) -> str:
    """Registers, spills, shared memory, and the main loop's instruction mix of a compiled kernel."""
    os.makedirs(out_dir, exist_ok=True)
    cubin = os.path.join(out_dir, tag + ".cubin")
    with open(cubin, "wb") as f:
        f.write(kernel.asm["cubin"])
    sass = subprocess.run([_bin("cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
    with open(os.path.join(out_dir, tag + ".sass"), "w") as f:
        f.write(sass)
    res = subprocess.run([_bin("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", res)
    lines = [
        (int(a, 16), ins.strip())
        for a, ins in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)
        if not ins.startswith("/*")
    ]
    loops = []
    for addr, ins in lines:  # backward branches: loop bodies
        b = re.search(r"BRA\s+(?:`\(.*?\)\s*)?0x([0-9a-f]+)", ins)
        if b and int(b.group(1), 16) < addr:
            loops.append((int(b.group(1), 16), addr))
    desc = []
    for lo, hi in sorted(set(loops)):
        body = [re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0] for a, i in lines if lo <= a <= hi]
        top = " ".join(f"{k}:{v}" for k, v in Counter(body).most_common(8))
        desc.append(f"loop {lo:#x}-{hi:#x} {len(body)} instrs ({top})")
    regs = f"REG {m.group(1)} SHARED {m.group(2)} LOCAL {m.group(3)}" if m else res.strip()
    return f"{tag}: {regs}; {len(lines)} instrs; " + "; ".join(desc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="int4")
    ap.add_argument("--shapes", default="32x32768", help="BATCHxCTX[xQLEN],...")
    ap.add_argument("--gluon", default="1", help="TUNING_GLUON['gluon']: 1 or 0")
    ap.add_argument("--tuning-json", default="{}", help="more TUNING_GLUON overrides")
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--sass", default="", help="folder for cubin/SASS and a report")
    args = ap.parse_args()
    import json

    over = {"gluon": args.gluon == "1", **json.loads(args.tuning_json)}
    for name in args.formats.split(","):
        for shape in args.shapes.split(","):
            b, ctx, *ql = (int(x) for x in shape.split("x"))
            COMPILED.clear()
            t0 = time.time()
            with compile_only(), gluon_tuning(over):
                decode_launch(name, b, ctx, ql[0] if ql else 1, args.sms)
            print(f"{name} {shape}: {len(COMPILED)} kernels compiled in {time.time() - t0:.1f}s", flush=True)
            if args.sass:
                for i, k in enumerate(COMPILED):
                    print("  " + sass_report(k, args.sass, f"{name}_{shape}_{i}_{k.name}"))


if __name__ == "__main__":
    sys.exit(main())
