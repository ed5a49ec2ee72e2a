"""Turn the GPU harness's results (SET.json files from $OUT) into bench/results markdown, with the
capacity check against `kvplan size`. Runs on the build machine (kvplan's own environment).

    .venv/bin/python -m bench.vllm_gpu.report measure1.json measure2.json [discovery.json ...] \
        --md bench/results/vllm_gpu_h200.md

Capacity, per config that started: vLLM's logged "GPU KV cache size" and "Maximum concurrency"
against `kvplan size ... --kv-cache-memory-gib <logged>` (and with the worker's exact byte count),
and `kvplan size` from model + GPU alone against the logged available KV memory.
vLLM's own dtypes are sized as the kvplan format with the same bytes per token-head
(auto = bf16, fp8 = fp8_e4m3, int8_per_token_head = int8: 264 B at head 128, int4_per_token_head
= int4: 136 B).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.vllm_gpu.configs import BATCH_A, CONTEXT_A, MODELS, VLLM_SAME_BYTES, EngineConfig
from bench.vllm_gpu.run import summarize

KVPLAN = str(Path(sys.executable).with_name("kvplan"))
GIB = 2**30


def kvplan_format(cfg: EngineConfig) -> str | None:
    return cfg.kv_format if cfg.attention == "kvplan" else VLLM_SAME_BYTES.get(cfg.kv_cache_dtype)


def catalog_gpu(device_name: str | None) -> str | None:
    """kvplan's catalog name for the GPU torch reported ("NVIDIA H100 80GB HBM3" -> h100), or None
    for a card the report does not know (then there is no model + GPU sizing to compare)."""
    name = (device_name or "").upper()
    if "H200" in name:
        return "h200"
    if "H100" in name:
        return "h100-pcie" if "PCIE" in name else "h100"
    return None


def kvplan_size(cfg: EngineConfig, fmt: str, kv_gib: float | None, gpu: str) -> dict[str, Any]:
    """`kvplan size` for this config's model, GPU and engine settings (the CLI a user runs)."""
    cmd = [
        KVPLAN,
        "size",
        str(MODELS / f"{cfg.model}.json"),
        "--gpu",
        gpu,
        "-k",
        fmt,
        "--json",
        "--max-model-len",
        str(cfg.max_model_len),
        "--gpu-memory-utilization",
        str(cfg.gpu_memory_utilization),
        "--block-size",
        str(cfg.block_size),
        "--max-num-batched-tokens",
        str(cfg.max_num_batched_tokens),
        "--max-num-seqs",
        str(cfg.max_num_seqs),
        "--no-enforce-eager" if cfg.cuda_graphs else "--enforce-eager",
    ]
    if kv_gib is not None:
        cmd += ["--kv-cache-memory-gib", repr(kv_gib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1], "command": " ".join(cmd[1:])}
    doc = json.loads(proc.stdout)
    f = doc["formats"][0]
    keys = ("kv_tokens", "max_concurrency", "num_blocks", "available_kv_bytes")
    return {**{k: f[k] for k in keys}, "memory": doc["memory_per_gpu"], "command": " ".join(cmd[1:])}


def _size_on(device: str | None, cfg: EngineConfig, fmt: str, kv_gib: float | None) -> dict[str, Any]:
    """`kvplan size` on the card torch named for the run, or why there is none."""
    gpu = catalog_gpu(device)
    if gpu is None:
        return {"error": f"no kvplan GPU for {device!r} (the report maps H100 and H200)"}
    return kvplan_size(cfg, fmt, kv_gib, gpu)


def capacity_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        log, cfg = r.get("log", {}), r.get("config_obj")
        fmt = kvplan_format(cfg) if cfg else None
        if "available_kv_gib" not in log or fmt is None or not (MODELS / f"{cfg.model}.json").is_file():
            continue
        # kvplan sizes the card the run was on; one it cannot name is said in every column
        device = r.get("env", {}).get("gpu")
        given = _size_on(device, cfg, fmt, log["available_kv_gib"])
        exact_bytes = r.get("engine", {}).get("memory", {}).get("available_kv_cache_memory_bytes")
        exact = _size_on(device, cfg, fmt, exact_bytes / GIB) if exact_bytes else {}
        alone = _size_on(device, cfg, fmt, None)
        row = {"set": r["set"], "name": r["name"], "format": fmt, "logged_gib": log["available_kv_gib"],
               "logged_tokens": log.get("kv_cache_tokens"), "logged_conc": log.get("max_concurrency"),
               "engine_blocks": r.get("engine", {}).get("num_gpu_blocks"), "given": given, "exact": exact,
               "alone": alone}  # fmt: skip
        # vLLM prints the KV memory rounded to 0.01 GiB: the logged tokens must lie between
        # kvplan's tokens at the rounding's two ends (and equal them with the engine's exact bytes)
        gib = log["available_kv_gib"]
        ends = [_size_on(device, cfg, fmt, g) for g in (gib - 0.005, gib + 0.005)]
        row["size_errors"] = list(dict.fromkeys(e["error"] for e in (given, *ends) if "error" in e))
        row["tokens_equal"] = _within(row["logged_tokens"], [e.get("kv_tokens") for e in ends])
        conc = [_round2(e.get("max_concurrency")) for e in ends]
        row["conc_equal"] = _within(row["logged_conc"], conc)
        row["exact_blocks_equal"] = exact.get("num_blocks") == row["engine_blocks"] if exact else None
        if "available_kv_bytes" in alone:
            pred = alone["available_kv_bytes"] / GIB
            row["alone_gib"], row["alone_err"] = pred, pred / row["logged_gib"] - 1
        rows.append(row)
    return rows


def _within(logged: float | None, ends: list[Any]) -> bool:
    return logged is not None and None not in ends and ends[0] <= logged <= ends[1]


def _round2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _fmt(x: Any, spec: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return spec.format(x)


def load(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every result of every file, with its set name and its EngineConfig (from the set's source
    of truth: the config the engine wrote into its log folder is the same JSON)."""
    from bench.vllm_gpu.configs import get_set

    out = []
    for p in paths:
        doc = json.loads(Path(p).read_text())
        set_name = doc["meta"]["set"]
        try:
            by_name = {c.name: c for c in get_set(set_name)[0]}
        except KeyError:
            by_name = {}
        for r in doc["results"]:
            r["set"], r["meta"], r["config_obj"] = set_name, doc["meta"], by_name.get(r["name"])
            out.append(r)
    return out


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def markdown(results: Sequence[dict[str, Any]], device_note: str) -> str:
    ok = [r for r in results if r.get("engine")]  # started: its phases that ran are reported
    envs = [r["env"] for r in results if r.get("env")]
    env = next((e for e in envs if e.get("gpu")), envs[0] if envs else {})
    gib = _fmt(env.get("gpu_total_bytes", 0) / GIB)
    lines = ["# kvplan's pools inside vLLM on the GPU", ""]
    lines.append(
        f"- device: {env.get('gpu', '?')} ({gib} GiB visible); vLLM {env.get('vllm')}, torch "
        f"{env.get('torch')}, Triton {env.get('triton')}, Python {env.get('python')}. {device_note}"
    )
    for meta in {(r["set"], r["meta"]["date"]): r["meta"] for r in results}.values():  # each run
        ref = next((r["name"] for r in results if r["set"] == meta["set"] and r.get("config_obj")
                    and r["config_obj"].reference), "none")  # fmt: skip
        lines.append(
            f"- set `{meta['set']}` (reference {ref}): {meta['date']}, {meta.get('elapsed_s')} s, "
            f"`{meta['command']}`"
        )

    runs = [
        [
            r["set"],
            r["name"],
            str(r.get("status")),
            _fmt(r.get("start_s"), "{:.1f}"),
            _fmt(r.get("wall_s"), "{:.0f}"),
            (r.get("error") or "")[:120],
        ]
        for r in results
    ]
    lines += ["", "## Runs", "", *table(["set", "config", "status", "start s", "wall s", "note"], runs)]

    corr = []
    for r in ok:
        c = r.get("phases", {}).get("correct")
        if c and "error" not in c and not c.get("role", "").startswith(("reference", "no reference")):
            corr.append(
                [
                    r["set"],
                    r["name"],
                    str(c.get("positions")),
                    _fmt(c.get("rel_err_max"), "{:.2e}"),
                    _fmt(c.get("rel_err_mean"), "{:.2e}"),
                    _fmt(c.get("prefill_logits_rel_err_max"), "{:.2e}"),
                    _fmt(c.get("argmax_agreement"), "{:.4f}"),
                    f"{len(c['flips'])} ({c['flips_near_tie']})" if "flips" in c else "-",
                    str(c.get("followed_forced_tokens")),
                    str(c.get("finite")),
                ]
            )
    head = [
        "set",
        "config",
        "positions",
        "rel. err max",
        "rel. err mean",
        "after prefill",
        "argmax agree",
        "flips (near ties)",
        "followed",
        "finite",
    ]
    lines += [
        "",
        "## Correct in the engine (teacher-forced on the set's reference: its greedy tokens and logits)",
        "",
        *table(head, corr),
    ]

    cap = capacity_rows(ok)
    caps = []
    for row in cap:
        g, e = row["given"], row["exact"]
        caps.append(
            [
                row["set"],
                row["name"],
                row["format"],
                str(row["logged_gib"]),
                _fmt(row["logged_tokens"], "{:,}"),
                _fmt(g.get("kv_tokens"), "{:,}"),
                str(row["logged_conc"]),
                _fmt(g.get("max_concurrency")),
                f"kvplan size failed: {row['size_errors'][0]}"
                if row["size_errors"]
                else str(row["tokens_equal"] and row["conc_equal"]),
                f"{_fmt(e.get('num_blocks'), '{:,}')} / {_fmt(row['engine_blocks'], '{:,}')}",
                _fmt(row.get("alone_gib")),
                row["alone"]["error"] if "error" in row["alone"] else _fmt(row.get("alone_err"), "{:+.2%}"),
            ]
        )
    head = [
        "set",
        "config",
        "sized as",
        "logged GiB",
        "logged tokens",
        "kvplan tokens",
        "logged conc",
        "kvplan conc",
        "equal",
        "blocks: kvplan (exact bytes) / vLLM",
        "kvplan from model+GPU GiB",
        "error",
    ]
    lines += ["", "## Capacity: vLLM's log against `kvplan size --kv-cache-memory-gib <logged>`", ""]
    lines += table(head, caps)

    speed = []
    for r in ok:
        s, d = summarize(r), r.get("phases", {}).get("decode", {})
        if d:
            a = d.get("a", {})
            speed.append(
                [
                    r["set"],
                    r["name"],
                    _fmt(s["prefill_tok_s"], "{:,.0f}"),
                    f"{a.get('batch')} x {a.get('context')}",
                    _fmt(s["a_step_ms"], "{:.1f}"),
                    _fmt(s["a_tok_s"], "{:,.0f}"),
                    _fmt(s["b_batch"], "{}"),
                    _fmt(s["b_step_ms"], "{:.1f}"),
                    _fmt(s["b_tok_s"], "{:,.0f}"),
                    f"{s['a_complete']}/{s['b_complete']}",
                ]
            )
    head = [
        "set",
        "config",
        "prefill tok/s",
        "(a) batch x ctx",
        "(a) step ms",
        "(a) tok/s",
        "(b) batch",
        "(b) step ms",
        "(b) tok/s",
        "complete a/b",
    ]
    lines += ["", "## Speed (decode; Llama-3.1-8B shapes, dummy weights)", "", *table(head, speed)]

    profs = []
    for r in ok:
        for p, d in r.get("phases", {}).get("decode", {}).items():
            prof = d.get("profile") if isinstance(d, dict) else None
            if prof:
                top = "; ".join(f"{k[:40]} {ms}" for k, ms, _ in prof["top_kernels"][:3])
                profs.append(
                    [
                        r["set"],
                        r["name"],
                        p,
                        str(prof["wall_ms"]),
                        str(prof["gpu_kernel_ms"]),
                        _fmt(prof["gpu_busy_share"], "{:.0%}"),
                        str(prof["kernel_launches"]),
                        top,
                    ]
                )
    head = ["set", "config", "point", "wall ms", "GPU kernel ms", "GPU busy", "launches", "top kernels (ms)"]
    lines += ["", "## One decode step profiled (eager mode)", "", *table(head, profs)]
    lines += ["", "## Targets", "", *targets(ok, cap)]
    return "\n".join(lines) + "\n"


def targets(ok: Sequence[dict[str, Any]], cap: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets, met or not, with the figures (first measurement of each config)."""
    first: dict[str, dict[str, Any]] = {}
    for r in ok:
        if r.get("set") != "smollm2":  # the real model is judged on its own below
            first.setdefault(r["name"], r)

    # speed: the runs at the point (a), 32 x 16K on the 8B shapes (not the quick small-model ones)
    full: dict[str, dict[str, Any]] = {}
    for r in ok:
        a = r.get("phases", {}).get("decode", {}).get("a", {})
        if (a.get("batch"), a.get("context")) == (BATCH_A, CONTEXT_A):
            full.setdefault(r["name"], r)

    def tok(name: str, point: str) -> float | None:
        r = full.get(name)
        return summarize(r)[f"{point}_tok_s"] if r else None

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    out = []
    c = first.get("kvplan-bf16", {}).get("phases", {}).get("correct", {})
    if c and c.get("role", "").startswith("teacher-forced"):
        same = c.get("argmax_agreement") == 1.0
        err = c.get("rel_err_max", math.inf)
        ties = f" ({c['flips_near_tie']} of {len(c['flips'])} flips near ties)" if c.get("flips") else ""
        out.append(
            f"- kvplan-bf16 vs vLLM bf16: logits rel. err max {_fmt(err, '{:.2e}')} (<= 1e-2), greedy "
            f"tokens identical: {same}{ties} -> {verdict(err <= 1e-2 and same)}"
        )
    smol = {r["name"]: r.get("phases", {}).get("correct", {}) for r in ok if r.get("set") == "smollm2"}
    for name, goal in (("kvplan-bf16", 1.0), ("kvplan-int8", 0.98)):
        c = smol.get(name, {})
        if "argmax_agreement" in c:
            out.append(
                f"- SmolLM2-135M (real weights) {name} vs vLLM bf16, teacher-forced greedy agreement "
                f"{c['argmax_agreement']:.3f} over {c.get('positions', '?')} positions, logits rel. err "
                f"max {_fmt(c.get('rel_err_max'), '{:.2e}')} (target >= {goal}) -> "
                f"{verdict(c['argmax_agreement'] >= goal)}"
            )
    for mode, sfx in (("eager", ""), ("CUDA graphs", "-graphs")):  # each side in the same mode
        for mine, theirs, p, goal in [
            ("kvplan-int4_hadamard", "vllm-int4_per_token_head", "a", 2.0),
            ("kvplan-int4_hadamard", "vllm-auto", "a", 1.0),
        ]:
            a, b = tok(mine + sfx, p), tok(theirs + sfx, p)
            if a and b:
                out.append(
                    f"- ({p}, {mode}) {mine} / {theirs}: {a:,.0f} / {b:,.0f} tok/s = {a / b:.2f}x "
                    f"(target >= {goal}x) -> {verdict(a / b >= goal)}"
                )
        names = ("kvplan-int4_hadamard", "kvplan-int4", "kvplan-k8v4")
        int4 = [(t, n) for n in names if (t := tok(n + sfx, "b"))]
        base = tok("vllm-auto" + sfx, "b")
        if int4 and base:
            best, name = max(int4)
            out.append(
                f"- (b, {mode}) best kvplan INT4 ({name}) / vLLM bf16: {best:,.0f} / {base:,.0f} tok/s = "
                f"{best / base:.2f}x (target >= 3x) -> {verdict(best / base >= 3)}"
            )
    if cap:
        eq = all(r["tokens_equal"] and r["conc_equal"] for r in cap)
        failed = [r["name"] for r in cap if r["size_errors"]]
        worst = max((abs(r["alone_err"]) for r in cap if "alone_err" in r), default=math.nan)
        judged = (
            f"not checked, kvplan size failed for {', '.join(failed)}" if failed else f"{eq} -> {verdict(eq)}"
        )
        out.append(
            "- capacity: logged tokens within kvplan size at the logged GiB +- its 0.005 rounding, and "
            "concurrency equal, for every config: " + judged
        )
        out.append(
            f"- kvplan size from model + GPU alone: worst error {_fmt(worst, '{:.2%}')} against the logged "
            f"available KV memory (target <= 2%) -> {verdict(worst <= 0.02)}"
        )
    return out or ["- no results to judge"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="SET.json files from the GPU machine's $OUT")
    ap.add_argument("--md", type=Path, required=True)
    ap.add_argument("--note", default="", help="what else to say about the device run (load, clocks)")
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        ap.error(f"no such result file: {', '.join(missing)}")
    try:
        results = load(args.results)
    except (ValueError, KeyError) as exc:  # not a SET.json of bench.vllm_gpu.run
        ap.error(f"not a GPU harness result ({type(exc).__name__}: {exc})")
    text = markdown(results, args.note)
    args.md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
