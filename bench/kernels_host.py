"""Host time of kvplan's kernel launch path: what `api.paged_attention` and `api.write_kv` spend
in Python (checks, launch planning, arguments) before their kernels run. An eager caller pays it
every layer (vLLM runs attention outside its CUDA graphs in mixed prefill/decode steps:
kvplan's backend captures uniform single-token decode only).

The kernels are replaced by stand-ins that take their arguments and return, so this runs on
any machine (no GPU) and times api's own code on the GPU's launch path (`cuda=True`, 132 SMs, the
Gluon kernel where it applies); Triton's launcher, which comes on top, is not included. The same
launch path at a baseline git revision (--baseline: its kvplan/kernels/api.py, loaded from git,
with KVFormat.head_page uncached where that revision's formats.py did not cache it) is timed in
the same run, alternating with the working tree's.

    python bench/kernels_host.py --baseline 3c772f6 --out bench/results/kernels_host.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import triton

from kvplan import formats
from kvplan.formats import get_format
from kvplan.kernels import api, gluon_decode, triton_kernels

HQ, HKV, D, PAGE, SMS = 32, 8, 128, 16, 132  # bench/kernels_decode.py's layer, the H200's SMs
SHAPES = [(1, 32768), (32, 32768), (64, 1024)]
FORMATS = ["int4", "fp8_e4m3", "int4_hadamard", "bf16"]
ROOT = Path(__file__).resolve().parent.parent


class StandIn:
    """A kernel that takes its launch and returns (and reports a compile for occupancy)."""

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        return lambda *args, **kwargs: None

    def warmup(self, *args: Any, **kwargs: Any) -> Any:
        meta = types.SimpleNamespace(num_warps=1, shared=1024)
        return types.SimpleNamespace(n_regs=168, metadata=meta, _init_handles=lambda: None)


def uncached_layouts(f: Callable[[], object]) -> Callable[[], object]:
    """f with KVFormat.head_page computed at every call, as before formats cached it (the
    baseline's api.py runs with the working tree's formats.py)."""

    def g() -> object:
        formats._head_page = UNCACHED
        try:
            return f()
        finally:
            formats._head_page = CACHED

    return g


CACHED = formats._head_page
UNCACHED = formats._head_page.__wrapped__


def git_show(rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def api_at(rev: str) -> types.ModuleType:
    """kvplan/kernels/api.py as it was at git revision `rev`, as a module of its own."""
    src = git_show(rev, "kvplan/kernels/api.py")
    spec = importlib.util.spec_from_loader(f"kvplan_api_{rev}", loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses look their module up)
    exec(compile(src, f"{rev}:kvplan/kernels/api.py", "exec"), mod.__dict__)
    return mod


def on_the_gpu_path(mod: types.ModuleType) -> None:
    """`mod`'s public entry points as on CUDA tensors: the Triton/Gluon launch path taken and
    launched as for the GPU (cuda=True, SMS SMs) with these CPU tensors."""
    attention, write = mod._attention_triton, mod._write_triton
    mod._use_triton = lambda t, fmt, backend: True
    mod._attention_triton = lambda *a, **k: attention(*a, **k, cuda=True, sms=SMS)
    mod._write_triton = lambda *a: write(*a[:-1], True)  # (its last argument: cuda)


def _fp8_scale(fmt_name: str, one: bool) -> torch.Tensor | None:
    """fp8's static scale: one a KV head, or (one) vLLM's one-element per-layer _k_scale."""
    return None if "fp8" not in fmt_name else torch.full((1 if one else HKV,), 0.02)


def decode_call(
    mod: types.ModuleType, fmt_name: str, batch: int, ctx: int, one: bool = False
) -> Callable[[], object]:
    fmt = get_format(fmt_name)
    cache = torch.empty(batch * ctx // PAGE + 4, HKV, fmt.head_page(D, PAGE).nbytes, dtype=torch.uint8)
    table = torch.zeros(batch, ctx // PAGE, dtype=torch.int32)
    lens = torch.full((batch,), ctx, dtype=torch.int32)
    qsl = torch.arange(batch + 1, dtype=torch.int32)
    q = torch.empty(batch, HQ, D, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    ks = _fp8_scale(fmt_name, one)

    def f() -> object:
        return mod.paged_attention(
            q, cache, table, lens, qsl, fmt, PAGE, D**-0.5, ks, ks, max_query_len=1, max_seq_len=ctx, out=out
        )

    return f


def write_call(mod: types.ModuleType, fmt_name: str, tokens: int, one: bool = False) -> Callable[[], object]:
    fmt = get_format(fmt_name)
    cache = torch.empty(tokens // PAGE + 4, HKV, fmt.head_page(D, PAGE).nbytes, dtype=torch.uint8)
    k = torch.empty(tokens, HKV, D, dtype=torch.bfloat16)
    slot = torch.arange(tokens, dtype=torch.int64)
    ks = _fp8_scale(fmt_name, one)
    return lambda: mod.write_kv(k, k, cache, slot, fmt, PAGE, ks, ks)


def per_call_us(f: Callable[[], object], calls: int, repeats: int) -> list[float]:
    for _ in range(50):
        f()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        out.append((time.perf_counter() - t0) / calls * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="git revision whose api.py is the baseline")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    for name in ("calls", "repeats"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name} must be positive, got {getattr(args, name)}")
    try:
        base = api_at(args.baseline)
    except subprocess.CalledProcessError:
        ap.error(f"unknown git revision {args.baseline!r} (or it has no kvplan/kernels/api.py)")
    gluon_decode.attention_kernel = StandIn()  # type: ignore[assignment]
    triton_kernels.attention_kernel = StandIn()  # type: ignore[assignment]
    triton_kernels.combine_kernel = StandIn()  # type: ignore[assignment]
    triton_kernels.write_kernel = StandIn()  # type: ignore[assignment]
    mods = {"baseline": base, "now": api}
    for mod in mods.values():
        mod.GLUON_VERSION = triton.__version__  # the GPU's launch path (Gluon where it applies)
        on_the_gpu_path(mod)
    cases: list[tuple[str, dict[str, Callable[[], object]]]] = []
    for name in FORMATS:
        for b, ctx in SHAPES:
            cases.append(
                (f"decode {name} {b}x{ctx}", {k: decode_call(m, name, b, ctx) for k, m in mods.items()})
            )
        for tokens in (1, 2048):
            cases.append(
                (f"write {name} {tokens}", {k: write_call(m, name, tokens) for k, m in mods.items()})
            )
    one = "fp8_e4m3 one scale"  # vLLM's per-layer scale: it was expanded (a copy) every call
    cases.append(
        (f"decode {one} 32x32768", {k: decode_call(m, "fp8_e4m3", 32, 32768, True) for k, m in mods.items()})
    )
    cases.append((f"write {one} 1", {k: write_call(m, "fp8_e4m3", 1, True) for k, m in mods.items()}))
    if "_head_page" not in git_show(args.baseline, "kvplan/formats.py"):
        for _, fns in cases:
            fns["baseline"] = uncached_layouts(fns["baseline"])
    rows = []
    print(f"{'case':<32} {'baseline us':>12} {'now us':>8} {'x':>6}")
    for label, fns in cases:
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeats):  # alternate, so drift hits both
            for k, f in fns.items():
                times[k] += per_call_us(f, max(args.calls // args.repeats, 1), 1)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"case": label, **{f"{k}_us": v for k, v in med.items()}})
        print(f"{label:<32} {med['baseline']:12.1f} {med['now']:8.1f} {med['baseline'] / med['now']:6.2f}")
    if args.out:
        doc = {
            "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "baseline": args.baseline, "rows": rows,
        }  # fmt: skip
        Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
