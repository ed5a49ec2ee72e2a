"""Quality gates on real vLLM (CPU build) serving SmolLM2-135M-Instruct, side by side in one run.

One stack (`kvplan workers up --device cpu`): a BF16 baseline (vLLM's attention) and kvplan INT8
and INT4 (Hadamard-rotated keys) candidates through the plugin, each behind `kvplan serve`:

1. shadow: client latency with shadow traffic at 0%, 10% and 100% of the baseline's requests
   (the candidate is INT8), interleaved 0,10,10,0 per request so a loaded machine's drift falls
   on every share alike; sequential greedy requests of 4 tokens; whether any answer changed; the
   agreement histogram as a real Prometheus scraping the router sees it;
2. rollout: a 50% step of a rollout with the quality gate (tests/quality/quality_stack.GATE) for
   INT4, then INT8, on a real Redis flag store, the controller ticked on its own clock: the
   decision, kill switch and audit trail; the shadow agreement of the 16 chat prompts (greedy, 24
   tokens) the gate read;
3. eval: `kvplan eval` on kvplan/quality/data/example_prompts.jsonl (score per pool and task type,
   `--max-regression 0.2`), and its exit 2 for a garbage prompt file, a missing pool, an
   unreachable router;
4. faults: the shadow candidate down (a local port nobody listens on) or 10x slower (a proxy in
   front of the INT8 server holding each reply 9x the server's time): failed client requests and
   counted drops.

    .venv/bin/python bench/quality_vllm_cpu.py            # prints the tables
    .venv/bin/python bench/quality_vllm_cpu.py --write    # also bench/results/quality_vllm_cpu.{md,json}

A section that fails is recorded with its error and the next ones still run (one vLLM start).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "workers"), str(REPO / "tests" / "quality"),
                str(REPO / "tests" / "control")]  # fmt: skip

from control_services import Prometheus, RedisServer  # noqa: E402
from quality_stack import (  # noqa: E402
    GATE,
    TOKEN,
    admin,
    gated_rollout,
    metric,
    serve,
    shadow_counts,
    shadow_settled,
    share_blocks,
)
from support.faults import SlowProxy  # noqa: E402
from support.router import RouterProcess  # noqa: E402
from support.waiting import poll  # noqa: E402
from workers_stack import BUCKET, PROMPTS, SERVED_NAME, Workers, write_plan  # noqa: E402

from kvplan.checkpoint import ensure_smollm2_checkpoint  # noqa: E402
from kvplan.metric_names import AgreementMeasure  # noqa: E402
from kvplan.metric_names import router as rm  # noqa: E402
from kvplan.plan import Plan  # noqa: E402
from kvplan.procs import free_port  # noqa: E402

BASELINE, INT8, INT4 = "smol-bf16", "smol-int8", "smol-int4h"
SLO = {"ttft_seconds": 120.0, "e2e_seconds": 300.0}
EXAMPLE = REPO / "kvplan/quality/data/example_prompts.jsonl"
MAX_REGRESSION = 0.2
DEVICE = "2-core CPU machine"
Runtime = dict[str, Any]


def plan_for(
    runtime: Runtime, candidates: list[str], shadow: int, endpoints: dict[str, str] | None = None
) -> dict[str, Any]:
    """One bucket: the baseline and these candidates (the first is the flag store's); `endpoints`
    replaces a pool's endpoints (a fault in front of it)."""
    p: dict[str, Any] = json.loads(json.dumps(runtime))
    (bucket,) = p["buckets"]
    by_name = {c["name"]: c for c in bucket["candidates"]}
    bucket["candidates"] = [by_name[c] for c in candidates]
    for c in bucket["candidates"]:
        if endpoints and c["name"] in endpoints:
            c["endpoints"] = [endpoints[c["name"]]]
    bucket["rollout"] = {"weight": 0, "shadow": shadow}
    p["slo"] = {**p.get("slo", {}), **SLO}
    return p


def chat(url: str, prompt: str, max_tokens: int) -> tuple[float, str, int]:
    """Seconds, answer, status of one greedy chat request (a failure is a status, not raised)."""
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}  # fmt: skip
    t = time.perf_counter()
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    except httpx.HTTPError:
        return time.perf_counter() - t, "", 0
    seconds = time.perf_counter() - t
    text = (r.json()["choices"][0]["message"]["content"] or "") if r.status_code == 200 else ""
    return seconds, text, r.status_code


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(pct(values, 0.5), 3), "p90": round(pct(values, 0.9), 3),
            "p99": round(pct(values, 0.99), 3), "mean": round(statistics.fmean(values), 3)}  # fmt: skip


def interleaved(router: RouterProcess, shares: list[int], max_tokens: int) -> dict[str, Any]:
    """Sequential requests, the bucket's shadow share set before each block of one share."""
    lat: dict[int, list[float]] = {s: [] for s in shares}
    answers: dict[int, dict[str, set[str]]] = {s: {} for s in shares}
    failed = 0
    for share, prompt in share_blocks(router, BUCKET, shares, PROMPTS):
        seconds, text, status = chat(router.url, prompt, max_tokens)
        failed += status != 200
        lat[share].append(seconds)
        answers[share].setdefault(prompt, set()).add(text)
    off = answers[shares[0]]
    changed = sum(answers[s][p] != off[p] for s in lat if s != shares[0] for p in answers[s] if p in off)
    return {
        "shares": {str(s): summary(v) for s, v in lat.items()},
        "answers_changed": changed,
        "failed": failed,
    }


def scraped(prom: Prometheus, query: str) -> float | None:
    rows = httpx.get(f"{prom.url}/api/v1/query", params={"query": query}, timeout=10).json()["data"]["result"]
    return float(rows[0]["value"][1]) if rows else None


def shadow_section(root: Path, runtime: Runtime, rounds: int) -> dict[str, Any]:
    with serve(root / "shadow", plan_for(runtime, [INT8], 0)) as router:
        (root / "prom").mkdir()
        prom = Prometheus(root / "prom", {"kvplan-router": [(router.metrics_url, {})]})
        try:
            res = interleaved(router, [0, 10, 10, 0] * rounds + [100] * (rounds * 2), 4)
            poll(shadow_settled(router, BUCKET, INT8), 600, "shadow copies compared", 0.5)
            res["shadow"] = counts = shadow_counts(router, BUCKET, INT8)
            sel = f'bucket="{BUCKET}",pool="{INT8}",measure="{AgreementMeasure.TOKENS.value}"'
            count_q = f"sum({rm.SHADOW_AGREEMENT}_count{{{sel}}})"
            poll(lambda: scraped(prom, count_q) == counts["pairs"], 60, "Prometheus scraping every pair", 0.5)
            mean_q = f"sum({rm.SHADOW_AGREEMENT}_sum{{{sel}}}) / {count_q}"
            res["prometheus"] = {"query": count_q, "pairs": scraped(prom, count_q),
                                 "mean_tokens_agreement": round(scraped(prom, mean_q) or 0.0, 3)}  # fmt: skip
        finally:
            prom.stop()
    return res


def agreement_means(router: RouterProcess, candidate: str) -> dict[str, float | None]:
    text = httpx.get(f"{router.metrics_url}/metrics", timeout=10).text
    out: dict[str, float | None] = {}
    for m in AgreementMeasure:
        labels = {"bucket": BUCKET, "pool": candidate, "measure": m.value}
        total = metric(text, f"{rm.SHADOW_AGREEMENT}_sum", **labels)
        n = metric(text, f"{rm.SHADOW_AGREEMENT}_count", **labels)
        out[m.value] = round(total / n, 3) if n else None
    return out


def rollout_section(root: Path, runtime: Runtime) -> dict[str, Any]:
    redis = RedisServer(root)
    redis.start()
    out: dict[str, Any] = {"gate": GATE.to_dict()}
    try:
        for db, cand in enumerate((INT4, INT8), start=1):
            plan = plan_for(runtime, [cand], 100)
            store = redis.url.rsplit("/", 1)[0] + f"/{db}"
            with serve(root / f"rollout-{cand}", plan, "--flag-store", store) as router:
                run = gated_rollout(
                    router, store, Plan.model_validate(plan), cand, GATE, PROMPTS, SERVED_NAME
                )
                done = asdict(asyncio.run(run))
                done["agreement"] = agreement_means(router, cand)
            done["failed"] = sum(s != 200 for s in done.pop("statuses"))
            done["requests"] = len(done.pop("pools"))
            out[cand] = done
    finally:
        redis.stop()
    return out


def kvplan_eval(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kvplan.cli", "eval", *args]
    env = {**os.environ, "KVPLAN_ADMIN_TOKEN": TOKEN}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def eval_section(root: Path, runtime: Runtime) -> dict[str, Any]:
    garbage = root / "garbage.jsonl"
    garbage.write_text('{"messages": [{"role": "user", "content": "ok"}]}\nthis is not json\n')
    nobody = f"http://127.0.0.1:{free_port()}"  # a local port nobody listens on
    with serve(root / "eval", plan_for(runtime, [INT8, INT4], 0)) as router:
        where = ("--router", router.url, "--admin", router.admin_url)
        t = time.perf_counter()
        run = kvplan_eval(str(EXAMPLE), *where, "--json", "--concurrency", "4", "--max-regression",
                          str(MAX_REGRESSION))  # fmt: skip
        seconds = time.perf_counter() - t
        bad = {
            "garbage prompt file": [str(garbage), *where],
            "missing pool": [str(EXAMPLE), *where, "--pool", "smol-int9"],
            "unreachable router": [str(EXAMPLE), "--router", nobody, "--admin", nobody],
            "unreachable router API (admin up)": [
                str(EXAMPLE),
                "--router",
                nobody,
                "--admin",
                router.admin_url,
            ],
        }
        errors = {}
        for name, args in bad.items():
            e = kvplan_eval(*args, timeout=120)
            lines = e.stderr.strip().splitlines()
            errors[name] = {
                "exit": e.returncode,
                "stderr_lines": len(lines),
                "line": lines[-1] if lines else "",
            }
    if not run.stdout.strip().startswith("{"):
        raise RuntimeError(f"kvplan eval exited {run.returncode}: {run.stderr.strip()[-500:]}")
    report = dict(json.loads(run.stdout))
    last = run.stderr.strip().splitlines()
    gate = {"exit": run.returncode, "line": last[-1] if last else ""}
    return {"report": report, "eval_seconds": round(seconds, 1), "max_regression": gate, "errors": errors}


def burst(url: str, n: int, max_tokens: int) -> list[int]:
    with ThreadPoolExecutor(4) as ex:
        return [s for _, _, s in ex.map(lambda i: chat(url, PROMPTS[i % len(PROMPTS)], max_tokens), range(n))]


def faults_section(root: Path, runtime: Runtime, rounds: int) -> dict[str, Any]:
    down = f"http://127.0.0.1:{free_port()}"  # a local port nobody listens on
    with serve(root / "down", plan_for(runtime, [INT8], 100, {INT8: down})) as router:
        statuses = burst(router.url, 16, 4)
        poll(shadow_settled(router, BUCKET, INT8), 120, "every shadow copy dropped", 0.5)
        res: dict[str, Any] = {"down": {"requests": len(statuses), "failed": sum(s != 200 for s in statuses),
                                        "shadow": shadow_counts(router, BUCKET, INT8)}}  # fmt: skip
    (int8_url,) = next(c for c in runtime["buckets"][0]["candidates"] if c["name"] == INT8)["endpoints"]
    proxy = SlowProxy(int(int8_url.rsplit(":", 1)[1].split("/")[0]), factor=10)
    small = ("--shadow-queue", "2", "--shadow-concurrency", "1")
    try:
        with serve(root / "slow", plan_for(runtime, [INT8], 0, {INT8: proxy.url}), *small) as router:
            slow = interleaved(router, [0, 100, 100, 0] * rounds, 4)
            poll(shadow_settled(router, BUCKET, INT8), 600, "every shadow copy compared or dropped", 0.5)
            slow["shadow"] = shadow_counts(router, BUCKET, INT8)
            admin(router, "POST", f"/admin/buckets/{BUCKET}/shadow", {"share": 100})
            statuses = burst(router.url, 16, 4)  # faster than one slow worker can take them
            poll(shadow_settled(router, BUCKET, INT8), 600, "every shadow copy compared or dropped", 0.5)
            after = shadow_counts(router, BUCKET, INT8)
            slow["burst"] = {"requests": len(statuses), "failed": sum(x != 200 for x in statuses),
                             "shadow": {k: v - slow["shadow"][k] for k, v in after.items()}}  # fmt: skip
            slow["replies_held"] = proxy.held
    finally:
        proxy.close()
    res["slow"] = slow
    return res


def _cell(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _latency_rows(shares: dict[Any, dict[str, float]]) -> list[str]:
    out = ["| shadow share | requests | p50 s | p90 s | p99 s | mean s |", "|" + "---|" * 6]
    for share, r in shares.items():
        out.append(f"| {share}% | {r['n']} | {r['p50']} | {r['p90']} | {r['p99']} | {r['mean']} |")
    return out


def _drops(c: dict[str, float]) -> str:
    parts = [f"{k} {_cell(v)}" for k, v in c.items() if k not in ("sampled", "pairs", "dropped") and v]
    return f"sampled {_cell(c['sampled'])}, compared {_cell(c['pairs'])}, dropped {_cell(c['dropped'])}" + (
        f" ({', '.join(parts)})" if parts else ""
    )


def md_shadow(s: dict[str, Any]) -> list[str]:
    out = ["## 1. Shadow traffic: client latency (candidate INT8, greedy, 4 tokens, sequential)", ""]
    out += _latency_rows(s["shares"])
    p = s["prometheus"]
    out += [
        "",
        f"- failed client requests: {s['failed']}; answers changed by shadowing: {s['answers_changed']}",
        f"- shadow copies: {_drops(s['shadow'])}",
        f"- Prometheus scrape: `{p['query']}` = {_cell(p['pairs'])} (the router counted "
        f"{_cell(s['shadow']['pairs'])}); mean token agreement {p['mean_tokens_agreement']}",
        "- a copy is queued only once the client's exchange has ended, so no client waits for one; at 100% "
        "each copy's generation on the candidate overlaps the next client request on the same 2 shared "
        "cores, the slowdown there (separate accelerators per pool would not share them)",
        "",
    ]
    return out


def md_rollout(r: dict[str, Any]) -> list[str]:
    g = r["gate"]
    out = [
        "## 2. Rollout with the quality gate (one 50% step, Redis flag store, 16 prompts shadowed, "
        "24 tokens)",
        "",
        f"Gate: mean shadow token agreement >= {g['min_agreement']:g} over >= {g['min_pairs']:g} pairs, "
        f"with error/TTFT/ITL checks (>= {g['min_requests']:g} requests per pool).",
        "",
        "| candidate | requests | failed | pairs | exact | prefix | tokens (gated) | length | decision | "
        "after: phase, weight, kill | audit trail (last) |",
        "|" + "---|" * 11,
    ]
    for cand in (INT4, INT8):
        c = r.get(cand)
        if c is None:
            continue
        a = c["agreement"]
        out.append(
            f"| {cand} | {c['requests']} | {c['failed']} | {_cell(c['shadow']['pairs'])} | "
            f"{_cell(a['exact'])} | {_cell(a['prefix'])} | {_cell(a['tokens'])} | {_cell(a['length'])} | "
            f"{c['action']} | "
            f"{c['rollout']}, {c['weight']}%, {'on' if c['killed'] else 'off'} | "
            f"{c['audit_action']}: {c['audit_reason']} |"
        )
    return [*out, ""]


def md_eval(e: dict[str, Any]) -> list[str]:
    ev = e["report"]
    cands = [c for c in (INT8, INT4) if c in ev["tasks"][0]["scores"]]
    out = [
        f"## 3. kvplan eval on the example set ({e['eval_seconds']} s; scores 0-1; difference candidate - "
        "baseline with 95% CI)",
        "",
        f"| task | n | {BASELINE} | " + " | ".join(f"{c} | diff" for c in cands) + " |",
        "|" + "---|" * (3 + 2 * len(cands)),
    ]
    for t in ev["tasks"]:
        row = f"| {t['task']} | {t['n']} | {t['scores'][BASELINE]:.3f} |"
        for c in cands:
            d = t["differences"][c]
            row += f" {t['scores'][c]:.3f} | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] |"
        out.append(row)
    g = e["max_regression"]
    out += [
        "",
        f"Ranking: {' > '.join(ev['ranking'])}. `--max-regression {MAX_REGRESSION:g}`: exit {g['exit']}, "
        f"`{g['line']}`",
        "",
    ]
    for cand, regs in ev.get("worst_regressions", {}).items():
        for r in regs[:3]:
            out.append(
                f"- worst {cand}: {r['prompt']} ({r['task']}) {r['baseline_score']:.2f} -> "
                f"{r['candidate_score']:.2f}: {r['candidate_answer'][:100]!r}"
            )
    out += ["", "| bad input | exit | stderr lines | message |", "|---|---|---|---|"]
    for name, x in e["errors"].items():
        out.append(f"| {name} | {x['exit']} | {x['stderr_lines']} | `{x['line']}` |")
    return [*out, ""]


def md_faults(f: dict[str, Any]) -> list[str]:
    d, s = f["down"], f["slow"]
    out = [
        "## 4. Shadow candidate down or 10x slower (client: greedy, 4 tokens)",
        "",
        f"- down (a local port nobody listens on, shadow 100%, 16 requests, 4 at a time): failed client "
        f"requests {d['failed']} of {d['requests']}; shadow copies: {_drops(d['shadow'])}",
        f"- 10x slower (INT8 behind a proxy holding each reply 9x the server's time, --shadow-queue 2 "
        f"--shadow-concurrency 1, sequential, shadow 0 and 100% interleaved): failed client requests "
        f"{s['failed']}; answers changed {s['answers_changed']}; shadow copies: {_drops(s['shadow'])}",
        f"- 10x slower, then a burst of {s['burst']['requests']} requests 4 at a time (shadow 100%): failed "
        f"client requests {s['burst']['failed']}; shadow copies: {_drops(s['burst']['shadow'])}",
        f"- replies the proxy held back (copies, their /tokenize calls, health probes): {s['replies_held']}",
        "",
    ]
    return out + _latency_rows(s["shares"]) + [""]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(res: dict[str, Any]) -> list[str]:
    """Issue 13's "what it must show", each with its figure from this run."""
    rows: list[tuple[str, str, bool]] = []
    if "error" not in res.get("shadow", {"error": ""}):
        s = res["shadow"]
        off, on = s["shares"]["0"], s["shares"]["10"]
        rows.append(
            (
                "10% shadow adds no client latency (the vLLM test's bounds: p50 <= 1.25x+0.1 s, "
                "p99 <= 1.5x+0.5 s)",
                f"p50 {off['p50']} -> {on['p50']} s, p99 {off['p99']} -> {on['p99']} s "
                f"({on['n']} requests each)",
                on["p50"] <= 1.25 * off["p50"] + 0.1 and on["p99"] <= 1.5 * off["p99"] + 0.5,
            )
        )
        rows.append(
            (
                "shadowing never changes a client's answer",
                f"{s['answers_changed']} changed, {s['failed']} failed",
                s["answers_changed"] == 0 and s["failed"] == 0,
            )
        )
        pairs = s["shadow"]["pairs"]
        rows.append(
            (
                "agreement metrics seen by a real Prometheus scrape",
                f"{_cell(s['prometheus']['pairs'])} pairs scraped of {_cell(pairs)}",
                pairs > 0 and s["prometheus"]["pairs"] == pairs,
            )
        )
    if "error" not in res.get("rollout", {"error": ""}):
        a, b = res["rollout"][INT4], res["rollout"][INT8]
        rows.append(
            (
                "INT4 gated rollout aborts, kill switch on, reason in the audit trail",
                f"{a['rollout']}, kill {'on' if a['killed'] else 'off'}, audit `{a['audit_reason']}`",
                a["rollout"] == "aborted" and a["killed"] and "shadow_agreement" in a["audit_reason"],
            )
        )
        rows.append(
            (
                "INT8 gated rollout promotes to 100%",
                f"{b['rollout']}, weight {b['weight']}%",
                b["rollout"] == "succeeded" and b["weight"] == 100 and not b["killed"],
            )
        )
    if "error" not in res.get("eval", {"error": ""}):
        ev = res["eval"]
        overall = ev["report"]["tasks"][-1]["scores"]
        rows.append(
            (
                "kvplan eval ranks INT8 above INT4 against BF16",
                ", ".join(f"{k} {v:.3f}" for k, v in overall.items()),
                ev["report"]["ranking"][0] == INT8 and overall[INT8] > overall[INT4],
            )
        )
        errs = ev["errors"]
        rows.append(
            (
                "garbage prompt file / missing pool / unreachable router: exit 2, one line",
                ", ".join(f"{k}: exit {x['exit']}, {x['stderr_lines']} line" for k, x in errs.items()),
                all(x["exit"] == 2 and x["stderr_lines"] == 1 for x in errs.values()),
            )
        )
    if "error" not in res.get("faults", {"error": ""}):
        d, w = res["faults"]["down"], res["faults"]["slow"]
        rows.append(
            (
                "shadow candidate down: 0 failed client requests, drops counted",
                f"{d['failed']} failed of {d['requests']}; {_cell(d['shadow']['dropped'])} of "
                f"{_cell(d['shadow']['sampled'])} copies dropped",
                d["failed"] == 0 and d["shadow"]["dropped"] == d["shadow"]["sampled"] > 0,
            )
        )
        sent = w["shares"]["0"]["n"] + w["shares"]["100"]["n"] + w["burst"]["requests"]
        fails, drops = (
            w["failed"] + w["burst"]["failed"],
            w["shadow"]["dropped"] + w["burst"]["shadow"]["dropped"],
        )
        rows.append(
            (
                "shadow candidate 10x slower: 0 failed client requests, drops counted",
                f"{fails} failed of {sent}; {_cell(drops)} copies dropped (queue_full)",
                fails == 0 and drops > 0,
            )
        )
    out = ["## Targets (issue 13)", "", "| target | figure | |", "|---|---|---|"]
    return [*out, *(f"| {t} | {f} | {_met(ok)} |" for t, f, ok in rows), ""]


SECTIONS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "shadow": md_shadow,
    "rollout": md_rollout,
    "eval": md_eval,
    "faults": md_faults,
}


def markdown(res: dict[str, Any]) -> str:
    out = ["# Quality gates on vLLM CPU: SmolLM2-135M-Instruct, BF16 vs kvplan INT8 and INT4 (Hadamard)", ""]
    out += [
        f"- date: {res['date']}",
        f"- device: {res['device']}",
        f"- command: `{res['command']}`",
        f"- load average at start / end: {res['load'][0]} / {res['load'][1]} (a machine shared with other "
        "jobs)",
        f"- wall time: {res['seconds']} s",
        "",
        *targets(res),
    ]
    for name, render in SECTIONS.items():
        if name not in res:
            continue
        if "error" in res[name]:
            out += [f"## {name}: FAILED", "", "```", res[name]["error"], "```", ""]
        else:
            out += render(res[name])
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write bench/results/quality_vllm_cpu.{md,json}")
    ap.add_argument(
        "--rounds", type=int, default=15, help="shadow latency: 0,10,10,0 blocks (4 requests each)"
    )
    ap.add_argument("--fault-rounds", type=int, default=6, help="slow candidate: 0,100,100,0 blocks")
    ap.add_argument("--from-json", type=Path, help="only render a recorded JSON result again (no vLLM)")
    args = ap.parse_args()
    out = REPO / "bench" / "results"
    if args.from_json:
        text = markdown(json.loads(args.from_json.read_text()))
        if args.write:
            (out / "quality_vllm_cpu.md").write_text(text)
        print(text)
        return
    started = time.monotonic()
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"{DEVICE} ({platform.machine()}, {os.cpu_count()} cores), vllm-cpu 0.32.0, float32, "
        "--enforce-eager",
        "command": ".venv/bin/python bench/quality_vllm_cpu.py" + (" --write" if args.write else ""),
        "load": [round(os.getloadavg()[0], 1), None],
        "seconds": None,
    }

    def record() -> None:
        res["load"][1] = round(os.getloadavg()[0], 1)
        res["seconds"] = round(time.monotonic() - started)
        if args.write:
            (out / "quality_vllm_cpu.md").write_text(markdown(res))
            (out / "quality_vllm_cpu.json").write_text(json.dumps(res, indent=2) + "\n")

    model_dir = ensure_smollm2_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = write_plan(
            root / "pools.yaml", model_dir, [(BASELINE, "bf16"), (INT8, "int8"), (INT4, "int4_hadamard")]
        )
        workers = Workers.up(plan, root / "run", [BASELINE, INT8, INT4], "--parallel-starts", "3")
        try:
            workers.wait_ready()
            res["startup_seconds"] = round(time.monotonic() - started)
            runtime = yaml.safe_load(workers.runtime_plan.read_text())
            runs: dict[str, Callable[[], dict[str, Any]]] = {
                "shadow": lambda: shadow_section(root, runtime, args.rounds),
                "rollout": lambda: rollout_section(root, runtime),
                "eval": lambda: eval_section(root, runtime),
                "faults": lambda: faults_section(root, runtime, args.fault_rounds),
            }
            for name, section in runs.items():
                t = time.monotonic()
                try:
                    res[name] = section()
                except Exception:
                    res[name] = {"error": traceback.format_exc(limit=4)}
                res[name]["seconds"] = round(time.monotonic() - t)
                print(
                    f"{name}: {res[name]['seconds']} s", "FAILED" if "error" in res[name] else "", flush=True
                )
                record()
        finally:
            workers.stop()
    record()
    print(markdown(res))


if __name__ == "__main__":
    main()
