"""How much HTTP load one simulated worker takes in instant mode (`--speed-factor 0`).

Routers and demos use the simulated worker as a backend; this says when it, rather than the
thing under test, becomes the bottleneck. Load from `wrk` (one thread) against
`kvplan worker sim --speed-factor 0`, chat completions, streaming and not.

    .venv/bin/python bench/capacity_sim_http.py [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kvplan.workers.sim.launch import sim_worker_process

RESULTS = Path(__file__).parent / "results"
LUA = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk(url: str, body: dict[str, object], connections: int, seconds: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.format(body=json.dumps(body)))
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"errors under load:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {"req_s": rps, "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (apt-get install wrk)")

    rows = []
    sim_args = [
        "--kv-format",
        "int8",
        "--speed-factor",
        "0",
        "--max-model-len",
        "8192",
        "--mean-output-tokens",
        "0",
    ]
    with sim_worker_process(sim_args) as url:
        for stream in (False, True):
            body = {
                "model": "llama-3.1-8b",
                "messages": [{"role": "user", "content": "Say something."}],
                "max_tokens": args.tokens,
                "stream": stream,
            }
            for c in (1, 16, 64):
                r = wrk(f"{url}/v1/chat/completions", body, c, args.seconds)
                rows.append({"stream": stream, "connections": c, **r})
                print(rows[-1], file=sys.stderr)

    lines = [
        "# Simulated worker under HTTP load (instant mode)",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}; device: 2-core CPU (shared), loopback; "
        f"load average at end {os.getloadavg()[0]:.1f}",
        f"- command: `.venv/bin/python {' '.join(sys.argv)}`",
        f"- worker: `kvplan worker sim {' '.join(sim_args)}`; load: wrk -t1, {args.seconds} s per cell, "
        f"chat completions of {args.tokens} tokens (one SSE chunk per token when streaming)",
        "",
        "| mode | connections | req/s | p50 ms |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {'stream' if r['stream'] else 'json'} | {r['connections']} | {r['req_s']:.0f} | "
        f"{r['p50_ms']:.2f} |"
        for r in rows
    ]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.write:
        (RESULTS / "capacity_sim_http.md").write_text(md)


if __name__ == "__main__":
    main()
