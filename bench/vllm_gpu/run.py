"""Run a set of engine configurations on the GPU machine, one engine process each, and collect
the results.

    python3 -m bench.vllm_gpu.run SET --out "$OUT" [--deadline-s 530] [--only NAME,NAME]

Per config: `python3 -m bench.vllm_gpu.engine` in its own process under a timeout, its output in a
log, vLLM's capacity lines parsed from that log and merged into its JSON result. The set's
reference config runs first (the others compare with its tokens and logits). Before each config
the runner checks the deadline: a config that would likely not finish is recorded as skipped, so
the call ends on time and says what it cut.

Written to --out (at most 8 files come back from the GPU machine): `SET.json` (every result,
rewritten after each config) and `SET-logs.tgz` (each config's log, config and result).
A short table is printed last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.vllm_gpu.configs import EngineConfig, get_set
from bench.vllm_gpu.logs import parse_vllm_log, tail

REPO = Path(__file__).resolve().parents[2]


def shares_gpu(cfg: EngineConfig) -> bool:
    """An engine with a fixed KV memory and a small utilisation can run beside others."""
    util = float(cfg.engine_args.get("gpu_memory_utilization", cfg.gpu_memory_utilization))
    return "kv_cache_memory_bytes" in cfg.engine_args and util <= 0.25


def run_one(cfg: EngineConfig, work: Path, timeout_s: float) -> dict[str, Any]:
    """One engine process; its result with the log's figures, or why there is none."""
    cfg_file, result_file, log_file = (work / f"{cfg.name}{ext}" for ext in (".config.json", ".json", ".log"))
    cfg_file.write_text(cfg.to_json())
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.vllm_gpu.engine", "--config", str(cfg_file),
           "--result", str(result_file), "--ref-dir", str(work / "ref")]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    t0 = time.perf_counter()
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
    wall = time.perf_counter() - t0
    text = log_file.read_text(errors="replace")
    try:
        result: dict[str, Any] = json.loads(result_file.read_text())
    except (OSError, ValueError):
        result = {"name": cfg.name, "label": cfg.label, "status": "failed", "error": "no result written"}
    if rc is None:
        result["status"] = "timeout"
        result["error"] = f"killed after {timeout_s:.0f} s (phases done: {sorted(result.get('phases', {}))})"
    result.update(rc=rc, wall_s=round(wall, 1), log=parse_vllm_log(text))
    if result["status"] != "ok":
        result["log_tail"] = tail(text)
    result_file.write_text(json.dumps(result, indent=1, default=str))
    return result


def run_set(
    name: str, out: Path, deadline_s: float, only: Sequence[str] = (), work_root: Path | None = None
) -> list:
    cfgs, parallel = get_set(name)
    if only:
        unknown = set(only) - {c.name for c in cfgs}
        if unknown:
            raise SystemExit(f"error: --only names not in set {name}: {sorted(unknown)}")
        cfgs = [c for c in cfgs if c.name in only or c.reference]
    work = (work_root or Path("/tmp/kvplan-gpu")) / name
    (work / "ref").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    meta = {
        "set": name,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "command": " ".join(sys.argv),
        "deadline_s": deadline_s,
    }
    results: dict[str, dict[str, Any]] = {}
    walls: list[float] = []

    def save() -> None:
        ordered = [results[c.name] for c in cfgs if c.name in results]
        meta["elapsed_s"] = round(time.perf_counter() - start, 1)
        (out / f"{name}.json").write_text(
            json.dumps({"meta": meta, "results": ordered}, indent=1, default=str)
        )

    def attempt(cfg: EngineConfig) -> None:
        left = deadline_s - (time.perf_counter() - start)
        likely = 0.0 if shares_gpu(cfg) else max(walls, default=0.0)  # the slowest so far
        if left < 20 or likely > left:
            why = f"deadline: {left:.0f} s left, a config took up to {likely:.0f} s"
            results[cfg.name] = {"name": cfg.name, "label": cfg.label, "status": "skipped", "error": why}
        else:
            r = run_one(cfg, work, min(cfg.timeout_s, left))
            results[cfg.name] = r
            walls.append(r["wall_s"])
        print(progress_line(results[cfg.name]), flush=True)
        save()

    # the reference first; then engines with a fixed, small KV memory side by side (`parallel` at
    # a time: their timings are not the point); then the rest alone on the GPU, in set order
    for cfg in (c for c in cfgs if c.reference):
        attempt(cfg)
    rest = [c for c in cfgs if not c.reference]
    sharing = [c for c in rest if shares_gpu(c)] if parallel > 1 else []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(attempt, sharing))
    for cfg in (c for c in rest if c not in sharing):
        attempt(cfg)
    save()
    with tarfile.open(out / f"{name}-logs.tgz", "w:gz") as tar:
        for f in sorted(work.glob("*.log")) + sorted(work.glob("*.json")):
            tar.add(f, arcname=f"{name}/{f.name}")
    ordered = [results[c.name] for c in cfgs]
    print(format_table(ordered))
    return ordered


def progress_line(r: dict[str, Any]) -> str:
    s = summarize(r)
    return f"[{s['status']}] {r['name']} ({r.get('wall_s', 0)} s) {r.get('error', '')}".strip()


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a result: what the table and the report show."""
    ph, log = r.get("phases", {}), r.get("log", {})
    corr, pre, dec = ph.get("correct", {}), ph.get("prefill", {}), ph.get("decode", {})
    row: dict[str, Any] = {
        "name": r["name"], "label": r.get("label"), "status": r.get("status"), "start_s": r.get("start_s"),
        "kv_gib": log.get("available_kv_gib"), "kv_tokens": log.get("kv_cache_tokens"),
        "max_conc": log.get("max_concurrency"), "rel_err_max": corr.get("rel_err_max"),
        "agreement": corr.get("argmax_agreement"), "finite": corr.get("finite"),
        "prefill_tok_s": pre.get("tokens_per_s"), "wall_s": r.get("wall_s"),
    }  # fmt: skip
    for p in ("a", "b"):
        d = dec.get(p, {})
        row[f"{p}_batch"], row[f"{p}_step_ms"], row[f"{p}_tok_s"] = (
            d.get("batch"),
            d.get("step_ms"),
            d.get("tokens_per_s"),
        )
        row[f"{p}_complete"] = d.get("complete")
    return row


# (header, summary field, format)
COLUMNS = [
    ("config", "name", "{}"), ("status", "status", "{}"), ("start s", "start_s", "{:.1f}"),
    ("KV GiB", "kv_gib", "{:.2f}"), ("KV tokens", "kv_tokens", "{:,}"), ("conc", "max_conc", "{:.2f}"),
    ("relerr", "rel_err_max", "{:.1e}"), ("agree", "agreement", "{:.3f}"),
    ("prefill t/s", "prefill_tok_s", "{:,.0f}"),
    ("a ms", "a_step_ms", "{:.1f}"), ("a tok/s", "a_tok_s", "{:,.0f}"), ("b B", "b_batch", "{}"),
    ("b ms", "b_step_ms", "{:.1f}"), ("b tok/s", "b_tok_s", "{:,.0f}"), ("wall s", "wall_s", "{:.0f}"),
]  # fmt: skip


def format_table(results: Sequence[dict[str, Any]]) -> str:
    lines = [[h for h, _, _ in COLUMNS]]
    for r in results:
        s = summarize(r)
        lines.append([_f(s[key], fmt) for _, key, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("set", help="a config set of bench/vllm_gpu/configs.py")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/vllm_gpu")))
    ap.add_argument("--deadline-s", type=float, default=530.0, help="stop starting configs after this")
    ap.add_argument("--only", default="", help="comma-separated config names (the reference always runs)")
    ap.add_argument("--work", type=Path, default=None, help="per-run files (default /tmp/kvplan-gpu)")
    args = ap.parse_args(argv)
    try:
        results = run_set(
            args.set, args.out, args.deadline_s, [n for n in args.only.split(",") if n], args.work
        )
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0 if all(r.get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
