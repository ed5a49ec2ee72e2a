"""Router benchmark: direct-to-backend, kvplan's router and vllm-router side by side, one run.

Backends: two vLLM-like fake workers (tests/router/fake_vllm.py: uvicorn + httptools + uvloop)
on loopback. Load: `wrk` (C, one thread) with a POST body, at 1, 16 and 64 concurrent
connections; targets are interleaved round by round so machine noise hits all of them alike,
and the median round is reported. Streaming time-to-first-byte at 1 concurrent is measured by a
raw-socket client. Then: 100,000 requests through kvplan's router with its resident memory
sampled after warm-up and at the end, and 1,000 concurrent streaming clients.

    .venv/bin/python bench/router_bench.py          # writes bench/results/router-<date>-<HHMM>.{md,json}
    .venv/bin/python bench/router_bench.py --quick  # shorter runs, no result files
    .venv/bin/python bench/router_bench.py --compare REV  # also kvplan's router as of git REV
                                                          # (repeatable: several revisions at once)
    .venv/bin/python bench/router_bench.py --policy-overhead  # prefix-cache vs P2C only (JSON on stdout)

--policy-overhead: two kvplan routers over the same two backends, one choosing endpoints by power
of two choices, one by prefix-cache affinity, interleaved round by round at c=1 (p50 added
latency) and c=16 (CPU per request). Every request carries a ~1,500-token system prompt and a
~600-token user message of its own (its number first), so the prefix policy hashes 12 keys,
walks the shared head and records new tail keys each time, as with real conversations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/support: waiting with a deadline

from support.waiting import poll  # noqa: E402

from kvplan.procs import free_port  # noqa: E402

FAKE = ROOT / "tests" / "router" / "fake_vllm.py"
BIN = Path(sys.executable).parent
MODEL = "bench-model"
CHAT_BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
        "max_tokens": 16,
    }
)
STREAM_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16, "stream": True}
)
PY_ROUTER_RPS = 110.0  # docs/facts.md §5: a Python (production-stack style) router on a 2-core box


def answers(port: int, path: str) -> bool:
    """One GET answered 200 (raw socket: no client library in the measured processes' way)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_http(port: int, path: str = "/health", timeout: float = 30.0) -> None:
    poll(lambda: answers(port, path), timeout, f"port {port} to answer {path}", interval=0.1)


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, cmd: list[str], port: int, log: Path, health: str = "/health", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_file = open(log, "wb")  # noqa: SIM115
        p = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.procs.append(p)
        wait_http(port, health)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def backend(procs: Procs, tmp: Path, name: str, tokens: int = 8, delay: float = 0.0) -> str:
    port = free_port()
    cmd = [sys.executable, str(FAKE), "--port", str(port), "--model", MODEL, "--name", name]
    procs.start([*cmd, "--tokens", str(tokens), "--token-delay", str(delay)], port, tmp / f"{name}.log")
    return f"http://127.0.0.1:{port}"


def check_args(
    ap: argparse.ArgumentParser, args: argparse.Namespace, positive: tuple[str, ...], revs: list[str]
) -> None:
    """Refuse non-positive counts and durations and unknown git revisions with one usage line
    (exit 2), before anything starts."""
    for flag in positive:
        values = getattr(args, flag)
        for value in values if isinstance(values, list) else [values]:
            if not value > 0:
                ap.error(f"--{flag.replace('_', '-')} must be positive, got {value}")
    for rev in revs:
        known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=ROOT,
                               capture_output=True)  # fmt: skip
        if known.returncode != 0:
            ap.error(f"unknown git revision {rev!r}")


def source_of(rev: str, tmp: Path) -> Path:
    """The kvplan package as of git revision `rev`, extracted beside the run (for --compare)."""
    dest = tmp / f"src-{rev.replace('/', '_')}"
    dest.mkdir()
    archive = subprocess.run(["git", "archive", rev, "kvplan"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def kvplan_at(src: Path) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `kvplan` from the source tree `src`. `-P`: without it,
    `python -m` puts the working directory (this checkout) first on sys.path, and a --compare
    router would silently run this tree's code; checked here, once per tree."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    where = subprocess.run(
        [sys.executable, "-P", "-c", "import kvplan; print(kvplan.__file__)"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(where).is_relative_to(src):
        raise RuntimeError(f"kvplan from {src} imports {where} instead")
    return [sys.executable, "-P", "-m", "kvplan.cli"], env


def one_pool_plan(urls: list[str], endpoint_choice: str | None = None) -> dict[str, Any]:
    """The benches' plan: one bucket "short" whose baseline pool "short-bf16" holds `urls`."""
    bucket: dict[str, Any] = {
        "name": "short",
        "max_tokens": 8192,
        "baseline": {
            "name": "short-bf16",
            "model": MODEL,
            "kv_format": "bf16",
            "max_model_len": 8192,
            "endpoints": urls,
        },
    }
    if endpoint_choice is not None:
        bucket["endpoint_choice"] = {"policy": endpoint_choice}
    return {"buckets": [bucket]}


def run_header(script: str) -> dict[str, Any]:
    """What every loopback bench result starts with: date, device, the command, the load before."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"2-core CPU machine ({os.cpu_count()} CPUs visible), loopback",
        "command": " ".join([".venv/bin/python", f"bench/{script}", *sys.argv[1:]]),
        "load_before": loadavg(),
    }


def kvplan_router(
    procs: Procs,
    tmp: Path,
    urls: list[str],
    tag: str,
    *extra: str,
    src: Path = ROOT,
    endpoint_choice: str | None = None,
) -> tuple[str, int]:
    path = tmp / f"plan-{tag}.json"  # JSON is YAML
    path.write_text(json.dumps(one_pool_plan(urls, endpoint_choice)))
    port = free_port()
    kvplan, env = kvplan_at(src)
    cmd = [*kvplan, "serve", "--plan", str(path), "--port", str(port)]
    if "admin_port" in (src / "kvplan" / "router" / "cli.py").read_text():  # not before the admin listener
        cmd += ["--admin-port", "0"]
    cmd += ["--log-level", "warning", "--provenance-log", str(tmp / f"provenance-{tag}.jsonl"), *extra]
    p = procs.start(cmd, port, tmp / f"kvplan-{tag}.log", env=env)
    return f"http://127.0.0.1:{port}", p.pid


def vllm_router(procs: Procs, tmp: Path, urls: list[str]) -> tuple[str, int] | None:
    exe = BIN / "vllm-router"
    if not exe.exists():
        return None
    port = free_port()
    cmd = [str(exe), "--worker-urls", *urls, "--port", str(port), "--policy", "power_of_two"]
    cmd += ["--log-level", "warning", "--prometheus-port", str(free_port())]
    p = procs.start(cmd, port, tmp / "vllm-router.log", health="/health")
    return f"http://127.0.0.1:{port}", p.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (from /proc): robust to a loaded machine,
    where throughput mostly measures the scheduler."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- wrk --
def wrk(url: str, conns: int, seconds: float, script: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan"),
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def lua_script(tmp: Path) -> Path:
    path = tmp / "post.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(CHAT_BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer sk-bench"\n'
    )
    return path


def conversation_script(tmp: Path) -> Path:
    """wrk: a shared ~1,500-token system prompt, then a ~600-token user message of each
    request's own (its number first), so every request shares a head and brings new tail keys."""
    system = " ".join(f"rule{i} keep answers short and cite the source" for i in range(100))
    head = json.dumps({"model": MODEL, "max_tokens": 16, "messages": [{"role": "system", "content": system}]})
    head = head[: -len("]}")] + ', {"role": "user", "content": "question number '
    tail = " about the cache and the router" * 60 + ', please answer briefly"}]}'
    path = tmp / "conversation.lua"
    path.write_text(
        "local n = 0\n"
        f"local head = {json.dumps(head)}\n"
        f"local tail = {json.dumps(tail)}\n"
        'local hdrs = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-bench"}\n'
        "request = function()\n"
        "  n = n + 1\n"
        '  return wrk.format("POST", nil, hdrs, head .. n .. tail)\n'
        "end\n"
    )
    return path


def policy_overhead(rounds: int, seconds: float) -> dict[str, Any]:
    """kvplan with prefix-cache vs kvplan with power of two choices, same backends, interleaved."""
    tmp = Path(tempfile.mkdtemp(prefix="router-policy-"))
    procs = Procs()
    try:
        a, b = backend(procs, tmp, "a"), backend(procs, tmp, "b")
        targets = {
            name: kvplan_router(procs, tmp, [a, b], name, endpoint_choice=name)
            for name in ("power-of-two", "prefix-cache")
        }
        script = conversation_script(tmp)
        for url, _ in targets.values():
            wrk(url, 16, 1, script)
        runs: dict[str, dict[int, list[dict[str, float]]]] = {n: {1: [], 16: []} for n in targets}
        names = list(targets)
        for i in range(rounds):
            for conns in (1, 16):
                for name in names if i % 2 == 0 else names[::-1]:
                    url, pid = targets[name]
                    cpu0 = cpu_seconds(pid)
                    run = wrk(url, conns, seconds, script)
                    run["cpu_us_per_req"] = (cpu_seconds(pid) - cpu0) / max(run["requests"], 1) * 1e6
                    runs[name][conns].append(run)
    finally:
        procs.stop()
    p2c, prefix = runs["power-of-two"], runs["prefix-cache"]
    bad = sum(r["non_2xx"] + r["socket_errors"] for by_c in runs.values() for rs in by_c.values() for r in rs)
    return {
        "rounds": rounds,
        "seconds": seconds,
        "errors": bad,
        "p50_ms_c1": {n: statistics.median(r["p50_ms"] for r in runs[n][1]) for n in runs},
        # paired round by round: the two ran back to back, so machine load drifts out
        "p50_ms_prefix_minus_p2c": statistics.median(
            x["p50_ms"] - y["p50_ms"] for x, y in zip(prefix[1], p2c[1], strict=True)
        ),
        "cpu_us_per_req_c16": {n: statistics.median(r["cpu_us_per_req"] for r in runs[n][16]) for n in runs},
        "rps_c16": {n: statistics.median(r["rps"] for r in runs[n][16]) for n in runs},
        "load_after": loadavg(),
    }


# -- streaming time to first byte (raw socket, one request at a time) --
def ttfb_ms(url: str, n: int) -> float:
    host, port = url.removeprefix("http://").split(":")
    body = STREAM_BODY.encode()
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    samples = []
    with socket.create_connection((host, int(port))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(req)
            data = s.recv(65536)
            while b"data:" not in data:
                data += s.recv(65536)
            samples.append(time.perf_counter() - t0)
            while not data.endswith(b"0\r\n\r\n"):  # drain the rest of the chunked stream
                data += s.recv(65536)
    return statistics.median(samples) * 1e3


# -- many concurrent streams --
async def _one_stream(host: str, port: int, body: bytes) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            ).encode()
            + body
        )
        data = await reader.read()  # until the server closes
        return data.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in data
    finally:
        writer.close()


async def _streams(url: str, n: int) -> tuple[int, float]:
    host, port = url.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(_one_stream(host, int(port), STREAM_BODY.encode()) for _ in range(n)), return_exceptions=True
    )
    ok = sum(r is True for r in results)
    return ok, time.perf_counter() - t0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs, no result files")
    ap.add_argument("--seconds", type=float, default=5.0, help="wrk duration per target and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100_000, help="for the memory test")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument(
        "--compare",
        metavar="REV",
        action="append",
        default=[],
        help="also run kvplan's router as of git revision REV (interleaved; repeatable)",
    )
    ap.add_argument(
        "--policy-overhead", action="store_true", help="only prefix-cache vs P2C (JSON on stdout, no files)"
    )
    args = ap.parse_args()
    check_args(ap, args, ("seconds", "rounds", "requests", "streams"), args.compare)
    if args.policy_overhead:
        if shutil.which("wrk") is None:
            sys.exit("error: wrk is not installed (apt-get install wrk)")
        print(json.dumps(policy_overhead(args.rounds, args.seconds), indent=2))
        return
    if args.quick:
        args.seconds, args.rounds, args.requests, args.streams = 2.0, 1, 20_000, 300
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    procs = Procs()
    result = run_header("router_bench.py")
    try:
        a, b = backend(procs, tmp, "a"), backend(procs, tmp, "b")
        kv_url, kv_pid = kvplan_router(procs, tmp, [a, b], "main")
        vr = vllm_router(procs, tmp, [a, b])
        vr_url = vr[0] if vr else None
        targets = {"direct": a, "kvplan": kv_url}
        pids = {"kvplan": kv_pid}
        for rev in args.compare:
            old = source_of(rev, tmp)
            name = f"kvplan@{rev}"
            targets[name], pids[name] = kvplan_router(procs, tmp, [a, b], f"compare-{rev}", src=old)
        if vr:
            targets["vllm-router"], pids["vllm-router"] = vr
        script = lua_script(tmp)
        for url in targets.values():  # warm up connections and caches
            wrk(url, 16, 1, script)

        table: dict[str, dict[int, list[dict[str, float]]]] = {t: {} for t in targets}
        names = list(targets)
        for i in range(args.rounds):
            order = names[i % len(names) :] + names[: i % len(names)]  # no target always first
            for conns in (1, 16, 64):
                for name in order:
                    pid = pids.get(name)
                    cpu0 = cpu_seconds(pid) if pid else 0.0
                    run = wrk(targets[name], conns, args.seconds, script)
                    if pid:
                        run["cpu_us_per_req"] = (cpu_seconds(pid) - cpu0) / max(run["requests"], 1) * 1e6
                    table[name].setdefault(conns, []).append(run)
        raw = {name: {c: list(runs) for c, runs in by_c.items()} for name, by_c in table.items()}
        summary: dict[str, dict[str, Any]] = {}
        for name, by_c in table.items():
            summary[name] = {}
            for conns, runs in by_c.items():
                runs.sort(key=lambda r: r["rps"])
                mid = runs[len(runs) // 2]
                summary[name][str(conns)] = {**mid, "rps_all": [r["rps"] for r in runs]}
                if name in pids:
                    summary[name][str(conns)]["cpu_us_per_req_median"] = statistics.median(
                        r["cpu_us_per_req"] for r in runs
                    )
        result["wrk"] = summary
        ttfb = {name: ttfb_ms(url, 300 if args.quick else 2000) for name, url in targets.items()}
        result["stream_ttfb_p50_ms"] = ttfb
        d, k = summary["direct"], summary["kvplan"]
        result["added_p50_ms"] = {
            "non_streaming": k["1"]["p50_ms"] - d["1"]["p50_ms"],
            "streaming_ttfb": ttfb["kvplan"] - ttfb["direct"],
        }
        if vr_url:
            v = summary["vllm-router"]
            result["vllm_router_added_p50_ms"] = v["1"]["p50_ms"] - d["1"]["p50_ms"]
            result["ratio_vs_vllm_router"] = {c: k[c]["rps"] / v[c]["rps"] for c in ("16", "64")}
        result["compares"] = [compare(rev, summary, raw, ttfb) for rev in args.compare]
        result["ratio_vs_python_router_110"] = {c: k[c]["rps"] / PY_ROUTER_RPS for c in ("16", "64")}
        result["load_after_throughput"] = loadavg()

        # 100,000 requests: resident memory after warm-up vs at the end
        warm = wrk(kv_url, 16, 2, script)
        rss_warm = rss_mib(kv_pid)
        served, rss_trace = 0, [rss_warm]
        while served < args.requests:
            seconds = max(1.0, min(10.0, (args.requests - served) / max(warm["rps"], 1.0)))
            run = wrk(kv_url, 16, seconds, script)
            served += int(run["requests"])
            rss_trace.append(rss_mib(kv_pid))
        result["memory"] = {
            "requests_after_warmup": served,
            "rss_warm_mib": rss_warm,
            "rss_end_mib": rss_trace[-1],
            "growth_pct": (rss_trace[-1] - rss_warm) / rss_warm * 100,
            "trace_mib": [round(x, 1) for x in rss_trace],
        }

        # 1,000 concurrent streams (20 tokens, 50 ms apart: each stream is open about 1 s)
        sa, sb = (
            backend(procs, tmp, "sa", tokens=20, delay=0.05),
            backend(procs, tmp, "sb", tokens=20, delay=0.05),
        )
        st_url, _ = kvplan_router(procs, tmp, [sa, sb], "streams", "--max-in-flight", "2048")
        ok, wall = asyncio.run(_streams(st_url, args.streams))
        result["streams"] = {
            "clients": args.streams,
            "completed": ok,
            "failed": args.streams - ok,
            "wall_s": wall,
        }
        result["load_after"] = loadavg()
    finally:
        procs.stop()

    print(json.dumps(result, indent=2))
    if not args.quick:
        write_results(result)


def compare(
    rev: str,
    summary: dict[str, Any],
    raw: dict[str, dict[int, list[dict[str, float]]]],
    ttfb: dict[str, float],
) -> dict[str, Any]:
    """This tree's router against the router as of `rev`, from the same interleaved rounds."""
    k, o, old = summary["kvplan"], summary[f"kvplan@{rev}"], f"kvplan@{rev}"
    return {
        "rev": rev,
        "rps_ratio_new_over_old": {c: k[c]["rps"] / o[c]["rps"] for c in ("1", "16", "64")},
        # round by round (the two ran back to back): robust to the machine's load drifting
        "rps_ratio_paired_median": {
            str(c): statistics.median(
                n["rps"] / p["rps"] for n, p in zip(raw["kvplan"][c], raw[old][c], strict=True)
            )
            for c in (1, 16, 64)
        },
        "p50_ms_c1_new_minus_old": k["1"]["p50_ms"] - o["1"]["p50_ms"],
        "cpu_us_per_req": {
            c: (k[c]["cpu_us_per_req_median"], o[c]["cpu_us_per_req_median"]) for c in ("1", "16", "64")
        },
        "ttfb_ms_new_minus_old": ttfb["kvplan"] - ttfb[old],
    }


def write_results(r: dict[str, Any]) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = r["date"][:16].replace(" ", "-").replace(":", "")  # one file pair per run: 2026-11-23-1914
    (out / f"router-{stamp}.json").write_text(json.dumps(r, indent=2) + "\n")
    w = r["wrk"]
    lines = [
        f"# Router benchmark, {r['date']}",
        "",
        f"- device: {r['device']}",
        f"- command: `{r['command']}`",
        f"- load average before / after throughput / at end: {r['load_before']} / "
        f"{r['load_after_throughput']} / {r['load_after']}",
        "- backends: 2 fake vLLM workers (tests/router/fake_vllm.py), non-streaming chat, 8 tokens",
        "- load: wrk -t1, median of the rounds (targets interleaved per round)",
        "",
        "| target | c=1 p50 ms | c=1 req/s | c=16 req/s | c=16 p50 ms | c=64 req/s | c=64 p50 ms "
        "| CPU µs/req c=1 / 16 / 64 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_c in w.items():
        cpu = " / ".join(
            f"{by_c[c].get('cpu_us_per_req_median', float('nan')):.0f}" for c in ("1", "16", "64")
        )
        lines.append(
            f"| {name} | {by_c['1']['p50_ms']:.3f} | {by_c['1']['rps']:.0f} | {by_c['16']['rps']:.0f} | "
            f"{by_c['16']['p50_ms']:.2f} | {by_c['64']['rps']:.0f} | {by_c['64']['p50_ms']:.2f} | {cpu} |"
        )
    lines += [
        "",
        "- streaming time to first byte, p50 ms (c=1): "
        + json.dumps({k: round(v, 3) for k, v in r["stream_ttfb_p50_ms"].items()}),
        f"- kvplan added p50 at c=1: non-streaming {r['added_p50_ms']['non_streaming']:.3f} ms, "
        f"streaming TTFB {r['added_p50_ms']['streaming_ttfb']:.3f} ms (target <= 1 ms)",
    ]
    if "ratio_vs_vllm_router" in r:
        rv = r["ratio_vs_vllm_router"]
        lines.append(
            f"- kvplan / vllm-router req/s: c=16 {rv['16']:.2f}x, c=64 {rv['64']:.2f}x (target >= 0.9x); "
            f"vllm-router added p50 at c=1: {r['vllm_router_added_p50_ms']:.3f} ms"
        )
    for c in r.get("compares", [r["compare"]] if "compare" in r else []):
        rr, pr = c["rps_ratio_new_over_old"], c["rps_ratio_paired_median"]
        lines.append(
            f"- kvplan / kvplan@{c['rev']} req/s (medians): c=1 {rr['1']:.3f}x, c=16 {rr['16']:.3f}x, "
            f"c=64 {rr['64']:.3f}x; median of per-round ratios: c=1 {pr['1']:.3f}x, c=16 {pr['16']:.3f}x, "
            f"c=64 {pr['64']:.3f}x; c=1 p50 {c['p50_ms_c1_new_minus_old']:+.3f} ms, "
            f"streaming TTFB {c['ttfb_ms_new_minus_old']:+.3f} ms"
        )
        cpu = c["cpu_us_per_req"]
        lines.append(
            "- router CPU per request, µs (new / old, median of rounds): "
            + ", ".join(f"c={n} {cpu[n][0]:.0f} / {cpu[n][1]:.0f}" for n in ("1", "16", "64"))
        )
    rp = r["ratio_vs_python_router_110"]
    lines.append(
        f"- kvplan / 110 req/s Python router: c=16 {rp['16']:.1f}x, c=64 {rp['64']:.1f}x (target >= 4x)"
    )
    m = r["memory"]
    lines.append(
        f"- memory: {m['requests_after_warmup']} requests after warm-up, RSS {m['rss_warm_mib']:.1f} -> "
        f"{m['rss_end_mib']:.1f} MiB ({m['growth_pct']:+.1f}%, target < 10%); trace {m['trace_mib']}"
    )
    s = r["streams"]
    lines.append(
        f"- concurrent streams: {s['clients']} clients, {s['completed']} completed, {s['failed']} failed, "
        f"{s['wall_s']:.1f} s wall"
    )
    (out / f"router-{stamp}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
