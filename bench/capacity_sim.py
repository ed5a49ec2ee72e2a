"""How many concurrent 32K-context users each KV format holds before TTFT/TPOT SLOs break.

Drives the simulated worker's engine (vLLM v1 scheduling, blocks from the planner's memory model,
step times from the planner's roofline) on a simulated clock: deterministic and fast. N users in a
closed loop each send a request (prompt + output <= max_model_len), wait for the answer and send
the next one at once. Per N: p95 TTFT and p95 TPOT of the requests that start after a warm-up.
The largest N that meets both SLOs is set next to the planner's predictions for the same replica.

    .venv/bin/python bench/capacity_sim.py                      # prints the table
    .venv/bin/python bench/capacity_sim.py --write              # also bench/results/capacity_sim.{md,json}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kvplan.errors import KvplanError
from kvplan.formats import get_format
from kvplan.kernel_speeds import KERNELS
from kvplan.plan import Slo
from kvplan.planner.gpus import get_gpu
from kvplan.planner.models import get_model
from kvplan.planner.roofline import max_batch_within
from kvplan.workers.sim.engine import Engine
from kvplan.workers.sim.profile import WorkerProfile, build_profile, efficiency
from kvplan.workers.sim.simulation import Simulation

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Workload:
    max_model_len: int = 32768
    prompt_min: int = 28_672  # 28K..31.5K prompt + 256..1024 output: every request near 32K
    prompt_max: int = 31_744
    output_min: int = 256
    output_max: int = 1024
    duration_s: float = 600.0  # simulated
    warmup_s: float = 120.0
    seed: int = 1


@dataclass(frozen=True)
class Point:
    users: int
    requests: int
    ttft_p50: float
    ttft_p95: float
    tpot_p50: float
    tpot_p95: float
    output_tok_s: float
    preemptions: int
    mean_running: float


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run_point(profile: WorkerProfile, users: int, w: Workload) -> Point:
    sim = Simulation(Engine(profile.engine, profile.cost))
    rng = random.Random(w.seed * 7919 + users)
    starts = sorted(rng.uniform(0, 30.0) for _ in range(users))  # users log in over 30 s
    pending = [(t, u) for u, t in enumerate(starts)]
    count = 0
    owner: dict[str, int] = {}
    running_samples: list[int] = []

    def send(user: int) -> None:
        nonlocal count
        prompt = rng.randint(w.prompt_min, w.prompt_max)
        out = rng.randint(w.output_min, min(w.output_max, w.max_model_len - prompt))
        rid = f"u{user}-{count}"
        count += 1
        owner[rid] = user
        sim.submit(rid, prompt, out)

    while sim.now < w.duration_s:
        while pending and pending[0][0] <= sim.now:
            send(pending.pop(0)[1])
        if not sim.engine.has_work:
            sim.now = pending[0][0]
            continue
        result = sim.step()
        running_samples.append(len(sim.engine.running))
        for event in result.tokens:
            if event.finished:
                send(owner[event.request_id])  # the user asks the next question at once

    done = [
        t
        for t in sim.timelines.values()
        if t.arrival >= w.warmup_s and t.finished is not None and t.token_times
    ]
    if not done:  # nobody got an answer inside the window: saturated beyond measure
        inf = float("inf")
        return Point(users, 0, inf, inf, inf, inf, 0.0, sim.engine.num_preemptions, 0.0)
    tokens = sum(len(t.token_times) for t in done)
    ttft = [t.ttft for t in done]
    tpot = [t.tpot for t in done]
    return Point(
        users=users,
        requests=len(done),
        ttft_p50=p(ttft, 50),
        ttft_p95=p(ttft, 95),
        tpot_p50=p(tpot, 50),
        tpot_p95=p(tpot, 95),
        output_tok_s=tokens / (w.duration_s - w.warmup_s),
        preemptions=sim.engine.num_preemptions,
        mean_running=statistics.fmean(running_samples),
    )


def meets(point: Point, slo: Slo) -> bool:
    return point.ttft_p95 <= slo.ttft_seconds and point.tpot_p95 <= slo.itl_seconds


def users_within(points: list[Point], slo: Slo) -> int:
    """Users held before the SLO first breaks (N = 1, 2, ... in order)."""
    held = 0
    for point in points:
        if not meets(point, slo):
            break
        held = point.users
    return held


def predictions(profile: WorkerProfile, slo: Slo, w: Workload, kernels: str) -> dict[str, float]:
    c = profile.capacity
    prompt = (w.prompt_min + w.prompt_max) / 2
    output = (w.output_min + w.output_max) / 2
    context = int(prompt + output)
    # a request holds its prompt's blocks plus, on average, half of its output's
    held_blocks = (prompt + output / 2) / c.block_size
    gpu = get_gpu(profile.gpu)[0]
    tpot_batch = max_batch_within(
        get_model(profile.model),
        gpu,
        get_format(profile.kv_format),
        tpot_seconds=slo.itl_seconds,
        context_tokens=context,
        efficiency=efficiency(kernels, gpu.name),
    )
    return {
        "num_gpu_blocks": c.num_blocks,
        "kv_tokens": c.kv_tokens,
        "max_concurrency_vllm_log": round(c.max_concurrency, 2),  # "Maximum concurrency for 32768 tokens"
        "guaranteed_concurrency": c.guaranteed_concurrency,
        "expected_concurrency": round(c.expected_concurrency(held_blocks), 1),
        "tpot_slo_batch": tpot_batch,  # roofline: largest decode batch within the TPOT bound
        "predicted_users": min(int(c.expected_concurrency(held_blocks)), tpot_batch),
    }


def sweep(profile: WorkerProfile, w: Workload, slo: Slo, max_users: int) -> list[Point]:
    """Points for N = 1, 2, 3, ... until the SLO has broken three times in a row."""
    points: list[Point] = []
    misses = 0
    for users in range(1, max_users + 1):
        point = run_point(profile, users, w)
        points.append(point)
        misses = 0 if meets(point, slo) else misses + 1
        if misses >= 3:
            break
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--gpu", default="h100")
    ap.add_argument("--formats", default="bf16,fp8_e4m3,int8,k8v4,int4")
    ap.add_argument("--ttft", type=float, default=5.0, help="long-context p95 TTFT bound, s")
    ap.add_argument("--tpot", type=float, default=Slo().itl_seconds, help="p95 TPOT bound, s")
    ap.add_argument("--max-users", type=int, default=120)
    ap.add_argument("--kernels", default="kvplan", choices=KERNELS, help="whose decode kernels are timed")
    ap.add_argument("--write", action="store_true", help="record in bench/results/")
    args = ap.parse_args()
    try:
        efficiency(args.kernels, get_gpu(args.gpu)[0].name)
    except KvplanError as e:  # an unknown GPU, or one kvplan's kernels were not measured on
        ap.error(str(e))

    # Two SLO sets: the plan's defaults, and a long-context one (a 32K prefill alone takes ~1.6 s).
    slos = {"plan": Slo(), "long": Slo(ttft_seconds=args.ttft, itl_seconds=args.tpot)}
    loosest = Slo(
        ttft_seconds=max(s.ttft_seconds for s in slos.values()),
        itl_seconds=max(s.itl_seconds for s in slos.values()),
    )
    w = Workload()
    rows = []
    curves = {}
    t0 = time.perf_counter()
    for name in args.formats.split(","):
        profile = build_profile(
            args.model, args.gpu, name, max_model_len=w.max_model_len, kernels=args.kernels
        )
        points = sweep(profile, w, loosest, args.max_users)
        row: dict[str, object] = {"format": name}
        for key, slo in slos.items():
            held = users_within(points, slo)
            at = next((pt for pt in points if pt.users == held), None)
            row[key] = {
                "measured_users": held,
                **predictions(profile, slo, w, args.kernels),
                "at": asdict(at) if at else None,
            }
        rows.append(row)
        curves[name] = [asdict(pt) for pt in points]
        print(name, {k: row[k]["measured_users"] for k in slos}, file=sys.stderr)  # type: ignore[index]
    elapsed = time.perf_counter() - t0

    md = render(args, slos, w, rows, curves, elapsed)
    print(md)
    if args.write:
        RESULTS.mkdir(exist_ok=True)
        stem = "capacity_sim" if args.kernels == "kvplan" else f"capacity_sim_{args.kernels}_kernels"
        if args.gpu != "h100":  # (the first results, and their names, are the H100's)
            stem += f"_{args.gpu}"
        (RESULTS / f"{stem}.md").write_text(md)
        payload = {"meta": meta(args, slos, w, elapsed), "rows": rows, "curves": curves}
        (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")


def meta(args: argparse.Namespace, slos: dict[str, Slo], w: Workload, elapsed: float) -> dict[str, object]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"2-core CPU, simulated {args.gpu.upper()}",
        "command": ".venv/bin/python " + " ".join(sys.argv),
        "model": args.model,
        "gpu": args.gpu,
        "kernels": args.kernels,
        "slo": {k: {"ttft_p95_s": s.ttft_seconds, "tpot_p95_s": s.itl_seconds} for k, s in slos.items()},
        "workload": asdict(w),
        "wall_seconds": round(elapsed, 1),
    }


def render(
    args: argparse.Namespace,
    slos: dict[str, Slo],
    w: Workload,
    rows: list[dict],
    curves: dict[str, list[dict]],
    elapsed: float,
) -> str:
    m = meta(args, slos, w, elapsed)
    out = [
        f"# Capacity at 32K contexts: {args.model} on {args.gpu}, simulated worker",
        "",
        f"- date: {m['date']}; device: {m['device']}; wall time {m['wall_seconds']} s",
        f"- command: `{m['command']}`",
        f"- workload: N users in a closed loop, prompt {w.prompt_min}-{w.prompt_max} + output "
        f"{w.output_min}-{w.output_max} tokens (uniform, seeded), max_model_len {w.max_model_len}; "
        f"{w.duration_s:.0f} s simulated, requests arriving in the first {w.warmup_s:.0f} s discarded",
        "- engine: vLLM v1 scheduling (chunked prefill, 8192-token budget, incremental blocks, recompute "
        "preemption of the newest request), blocks from `kvplan.planner.memory.kv_capacity`, step times "
        "from `kvplan.planner.roofline` with "
        + (
            "vLLM's own quantized-KV kernel speeds (`kvplan.kernel_speeds.VLLM_KV_READ_EFFICIENCY`)"
            if args.kernels == "vllm"
            else f"kvplan's kernels as measured on the {args.gpu.upper()} "
            f"(`kvplan.kernel_speeds.KVPLAN_MEASURED_SPEEDUP['{args.gpu}']`: decode over BF16 at 32x32K)"
            if args.kernels == "measured"
            else "kvplan's kernels (default efficiencies: every format bandwidth-bound at its bytes)"
        ),
        "- planner columns (`kvplan.planner`): vLLM's logged max concurrency for 32768-token requests; "
        "guaranteed = usable blocks // blocks of one 32K request; expected = "
        "`Capacity.expected_concurrency` at this workload's mean held blocks (prompt + half the output); "
        "TPOT-SLO batch = `roofline.max_batch_within` (decode steps only); "
        "predicts = min(expected, TPOT batch)",
        "- measured users = the largest N such that every N' <= N met the SLO",
    ]
    for key, slo in slos.items():
        out += [
            "",
            f"## SLO `{key}`: p95 TTFT <= {slo.ttft_seconds:g} s, p95 TPOT <= {slo.itl_seconds * 1e3:g} ms",
            "",
            "| KV format | GPU blocks | KV tokens | vLLM max concurrency @32K | guaranteed | expected | "
            "TPOT-SLO batch | planner predicts | **measured users** | TTFT p95 | TPOT p95 | output tok/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            r = row[key]
            b = r["at"] or {}
            out.append(
                f"| {row['format']} | {r['num_gpu_blocks']:,} | {r['kv_tokens']:,} | "
                f"{r['max_concurrency_vllm_log']} | {r['guaranteed_concurrency']} | "
                f"{r['expected_concurrency']} | {r['tpot_slo_batch']} | "
                f"{r['predicted_users']} | **{r['measured_users']}** | "
                f"{b.get('ttft_p95', math.nan):.2f} s | {b.get('tpot_p95', math.nan) * 1000:.0f} ms | "
                f"{b.get('output_tok_s', 0):.0f} |"
            )
    out += ["", "## Curves: N users -> p95 TTFT s / p95 TPOT ms (preemptions)", ""]
    for name, pts in curves.items():
        cells = ", ".join(
            f"{pt['users']}: {pt['ttft_p95']:.1f}/{pt['tpot_p95'] * 1000:.0f} ({pt['preemptions']})"
            for pt in pts
            if pt["requests"]
        )
        out.append(f"- {name}: {cells}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
