"""Side-by-side decode timing of kernel variants (tuning overrides) on one GPU, with a GPU check.

Each variant is a set of `api` tuning keys applied on top of the per-format defaults; every
variant is checked against the fp64 reference on the dequantized cache (outputs poisoned with NaN)
before it is timed. Same timing method and shapes as bench/kernels_decode.py (CUDA graph of 24
calls over rotated caches > L2, median of 7 replays).

    PYTHONPATH=. python bench/kernels_variants.py --out variants.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import traceback

import kernels_decode as kd
import torch
import triton

from kvplan.formats import KVFormat
from kvplan.kernels import api

QUANT = ["fp8_e4m3", "int8", "int8_hadamard", "k8v4", "int4", "int4_hadamard"]
# name -> tuning keys applied over each format's resolved tuning (api._tuning); the key
# "small_grid": False resolves as if the grid filled the GPU (no TUNING_SMALL_GRID).
VARIANTS: dict[str, dict[str, object]] = {
    "base": {},
    "no_int8_qk": {"int8_qk": False},
    "no_small_grid": {"small_grid": False},
}
SHAPES = [(32, 32768), (1, 32768), (64, 1024), (8, 32768)]

_orig_tuning = api._tuning


def use(variant: str) -> None:
    over = dict(VARIANTS[variant])
    small = over.pop("small_grid", True)

    def tuning(fmt: KVFormat, programs: int, sms: int) -> dict[str, object]:
        t = _orig_tuning(fmt, programs if small else 1 << 30, sms)
        t.update(over)
        return t

    api._tuning = tuning  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--formats", default=",".join(QUANT))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--variants-json", default="", help='{"name": {tuning key: value}} replaces VARIANTS')
    ap.add_argument("--shapes", default=",".join(f"{b}x{c}" for b, c in SHAPES))
    args = ap.parse_args()
    formats = args.formats.split(",")
    if args.variants_json:
        VARIANTS.clear()
        VARIANTS.update(json.loads(args.variants_json))
        args.variants = ",".join(VARIANTS)
    variants = args.variants.split(",")
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    props = torch.cuda.get_device_properties(0)
    res: dict[str, object] = {
        "device": props.name, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
        "triton": triton.__version__, "variants": VARIANTS, "check": {}, "time_us": {},
    }  # fmt: skip
    t0 = time.time()

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)

    # correctness first: a variant that fails is not timed
    ok: dict[str, bool] = {}
    kd.CHECK_SHAPES = [(128, 16, 1), (64, 32, 4)]
    for v in variants:
        use(v)
        log: list[str] = []
        try:
            rows = kd.check_correctness(log, formats)
            worst = max(float(r["attn_rel_err"]) for r in rows)  # type: ignore[arg-type]
            ok[v] = worst <= 1e-2 and all(r["attn_rel_err"] == r["attn_rel_err"] for r in rows)
            res["check"][v] = {"worst": worst, "rows": rows}  # type: ignore[index]
            print(f"check {v}: worst rel err {worst:.2e} ({time.time() - t0:.0f}s)", flush=True)
        except Exception as e:
            ok[v] = False
            res["check"][v] = {"error": traceback.format_exc()[-2000:]}  # type: ignore[index]
            print(f"check {v}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        save()
    times: dict[str, dict[str, float]] = {}
    for b, ctx in shapes:
        key = f"{b}x{ctx}"
        row: dict[str, float] = {}
        use("base")
        if b * ctx >= 32768:
            row["sdpa"] = kd.sdpa_time(b, ctx) * 1e6
        c = kd.Case("bf16", b, ctx)
        row["bf16"] = c.time() * 1e6
        row["bf16_bytes"] = c.bytes_moved()
        c.free()
        for name in formats:
            c = kd.Case(name, b, ctx)
            row[f"{name}_bytes"] = c.bytes_moved()
            for v in variants:
                if not ok.get(v):
                    continue
                use(v)
                try:
                    row[f"{name}:{v}"] = c.time() * 1e6
                except Exception as e:
                    print(f"{key} {name} {v} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            c.free()
            use("base")
            best = min(row[k] for k in ("sdpa", "bf16") if k in row)
            print(f"{key:9s} {name:14s} bf16 {row['bf16']:8.1f} best {best:8.1f} | " + " ".join(
                f"{v} {row[f'{name}:{v}']:8.1f} ({best / row[f'{name}:{v}']:.2f}x)"
                for v in variants if f"{name}:{v}" in row
            ) + f"  ({time.time() - t0:.0f}s)", flush=True)  # fmt: skip
        times[key] = row
        res["time_us"] = times
        save()
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
