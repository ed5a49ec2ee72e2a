"""Cache-write launch configurations side by side (tokens a program x warps), one GPU, one run.

Same method as the write section of bench/kernels_decode.py (2,048-token chunk, 24 rotated sets,
against the device copy measured in the same run).

    PYTHONPATH=. python bench/kernels_write_sweep.py --out write_sweep.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import kernels_decode as kd
import torch
import triton

from kvplan.kernels import api

CONFIGS = [(bt, w) for bt in (16, 32, 64) for w in (2, 4, 8)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    copy_bw = kd.copy_bandwidth()
    res: dict[str, object] = {
        "device": props.name, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
        "triton": triton.__version__, "copy_GBps": copy_bw / 1e9, "rows": [],
    }  # fmt: skip
    saved = dict(api.TUNING_WRITE)
    for bt, w in CONFIGS:
        api.TUNING_WRITE.update(block_t=bt, num_warps=w)
        log: list[str] = []
        for row in kd.write_bench(copy_bw, log):
            res["rows"].append({"block_t": bt, "num_warps": w, **row})  # type: ignore[attr-defined]
        print(f"block_t {bt:3d} warps {w}: " + " ".join(
            f"{r['format']} {r['frac_of_copy_bw']:.1%}" for r in res["rows"]  # type: ignore[attr-defined]
            if r["block_t"] == bt and r["num_warps"] == w
        ), flush=True)  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    api.TUNING_WRITE.update(saved)


if __name__ == "__main__":
    main()
