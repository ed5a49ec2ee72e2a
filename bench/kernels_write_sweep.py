"""Cache-write launch configurations side by side (tokens a program x warps x Hadamard block from
the index), one GPU, one run.

Same method as the write section of bench/kernels_decode.py (2,048-token chunk, 24 rotated sets,
against the device copy measured in the same run).

    PYTHONPATH=. python bench/kernels_write_sweep.py --out write_sweep.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import kernels_compile as kc
import kernels_decode as kd
import torch
import triton

from kvplan.kernels import api

# tokens a program x warps x Hadamard block computed in registers rather than loaded (0/1)
CONFIGS = "16x4x0,16x2x0,32x4x0,8x2x0,64x8x0,16x4x1,16x2x1"


def _configs_or_exit(ap: argparse.ArgumentParser, text: str) -> list[tuple[int, int, int]]:
    """--configs BLOCK_TxWARPS[xROT_FROM_INDEX],... ; a one-line usage error (exit 2) else."""
    out = []
    for c in text.split(","):
        parts = c.split("x")
        if not (2 <= len(parts) <= 3 and all(p.isdigit() for p in parts)):
            ap.error(f"--configs takes BLOCK_TxWARPS[xROT_FROM_INDEX],... (e.g. 16x4x0), got {c!r}")
        bt, w, r = (*(int(p) for p in parts), 0)[:3]
        if bt < 1 or bt & (bt - 1) or w not in (1, 2, 4, 8, 16) or r not in (0, 1):
            ap.error(f"--configs {c!r}: tokens a power of two, warps 1-16 (a power of two), last 0 or 1")
        out.append((bt, w, r))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--configs", default=CONFIGS, help="BLOCK_TxWARPSxROT_FROM_INDEX,...")
    ap.add_argument("--jobs", type=int, default=8, help="processes compiling the launches first")
    args = ap.parse_args()
    configs = _configs_or_exit(ap, args.configs)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (this benchmark times the kernels on the device)")
    t0 = time.time()
    fails = [e for _, _, e in kc.warm([
        ("write", {"fmt_name": f, "tokens": 2048}, {"write_block_t": bt, "write_num_warps": w,
                                                    "write_rot_from_index": r})
        for bt, w, r in configs for f in kd.FORMATS
    ], args.jobs) if e]  # fmt: skip
    print(f"warm-up {time.time() - t0:.0f} s, {len(fails)} failed {fails[:2]}", flush=True)
    props = torch.cuda.get_device_properties(0)
    bws = kd.copy_bandwidths()
    copy_bw = kd.copy_ceiling(bws)
    res: dict[str, object] = {
        "device": props.name, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
        "triton": triton.__version__, "copy_GBps": copy_bw / 1e9,
        "copy_baselines_GBps": {k: v / 1e9 for k, v in bws.items()}, "rows": [],
    }  # fmt: skip
    saved, saved_by = dict(api.TUNING_WRITE), dict(api.TUNING_WRITE_BY_FORMAT)
    api.TUNING_WRITE_BY_FORMAT.clear()  # each configuration for every format
    for bt, w, r in configs:
        api.TUNING_WRITE.update(block_t=bt, num_warps=w, rot_from_index=r)
        log: list[str] = []
        for row in kd.write_bench(copy_bw, log):
            res["rows"].append({"block_t": bt, "num_warps": w, "rot_from_index": r, **row})  # type: ignore[attr-defined]
        print(f"block_t {bt:3d} warps {w} rot_from_index {r}: " + " ".join(
            f"{x['format']} {x['frac_of_copy_bw']:.1%}" for x in res["rows"]  # type: ignore[attr-defined]
            if (x["block_t"], x["num_warps"], x["rot_from_index"]) == (bt, w, r)
        ), flush=True)  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    api.TUNING_WRITE.update(saved)
    api.TUNING_WRITE_BY_FORMAT.update(saved_by)


if __name__ == "__main__":
    main()
