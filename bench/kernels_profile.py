"""Where a decode step's time goes: each kernel's device time (torch.profiler) beside the step's
time in a CUDA graph (bench/kernels_decode.py's method), for api.paged_attention as shipped.

The difference between the graph time and the kernels' sum is the gaps between kernels (the
attention kernel's tail and the split-K merge's start). One GPU, one run:

    PYTHONPATH=. python bench/kernels_profile.py --out profile.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import defaultdict

import kernels_decode as kd
import torch
import triton

SHAPES = "1x32768,1x131072,32x32768,64x1024"
FORMATS = "bf16,fp8_e4m3,int8,int4"


def profile_case(case: kd.Case, steps: int = 40) -> dict[str, float]:
    """Mean device microseconds per step of each kernel the step launches."""
    calls = [case.call(i) for i in range(len(case.caches))]
    for f in calls:
        f()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(steps):
            calls[i % len(calls)]()
        torch.cuda.synchronize()
    per: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        if ev.device_time_total > 0:
            per[ev.key.split("(")[0][:40]] += ev.device_time_total / steps
    return dict(per)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--formats", default=FORMATS)
    args = ap.parse_args()
    unknown = [f for f in args.formats.split(",") if f not in kd.FORMATS]
    if unknown:
        ap.error(f"unknown format {', '.join(unknown)}; known: {', '.join(kd.FORMATS)}")
    shapes = kd.parse_shapes(ap, args.shapes)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (this benchmark times the kernels on the device)")
    props = torch.cuda.get_device_properties(0)
    kd.SMS = props.multi_processor_count
    res: dict[str, object] = {
        "device": props.name, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
        "triton": triton.__version__, "rows": [],
    }  # fmt: skip
    rows: list[dict[str, object]] = []
    for b, ctx in shapes:
        shape = f"{b}x{ctx}"
        for name in args.formats.split(","):
            case = kd.Case(name, b, ctx)
            graph_us = kd.timed([case.call(i) for i in range(len(case.caches))]) * 1e6
            kernels = profile_case(case)
            rows.append({"batch": b, "ctx": ctx, "format": name, "graph_us": graph_us, "kernels_us": kernels})
            parts = " + ".join(f"{k} {v:.1f}" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]))
            gap = graph_us - sum(kernels.values())
            print(f"{shape:>9} {name:<14} step {graph_us:7.1f} us = {parts} + gaps {gap:.1f}", flush=True)
            case.free()
    res["rows"] = rows
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
