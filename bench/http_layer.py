"""The client-side HTTP layer alone: kvplan's hand-written server (kvplan/router/server.py, with
every limit of issue 14) against uvicorn's httptools protocol (and, with --compare REV, against
kvplan's server as of REV: what the limits cost), same handler, same run.

Both serve one trivial answer (200, a 200-byte JSON body) to POSTs, on uvloop, one process each;
wrk (one thread, keep-alive, a 150-byte JSON body) loads them in interleaved rounds, and each
server's CPU time per request is read from /proc: what the layer costs per request, the figure
that decides per-core throughput on a 2-core machine where wrk shares the cores. Then the
campaign's client-side probes against each (bench/robustness.py's): a header sent one byte a
second, an idle connection, a 64 MB request line, 204 KB of pipelined requests never read.

    .venv/bin/python bench/http_layer.py --compare eaae030  # bench/results/http_layer.{json,md}
    .venv/bin/python bench/http_layer.py --rounds 1 --seconds 2 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from robustness import held_seconds, huge_line
from router_bench import (
    Procs,
    check_args,
    cpu_seconds,
    kvplan_at,
    loadavg,
    rss_mib,
    run_header,
    source_of,
    wrk,
)

from kvplan.procs import free_port

ROOT = Path(__file__).resolve().parents[1]
ANSWER = json.dumps({"id": "x", "object": "chat.completion", "choices": [{"text": "t" * 120}]}).encode()


# -- the servers (each its own process: --serve NAME --port N) --
def serve_kvplan(port: int) -> None:
    import uvloop

    from kvplan.router import server

    async def handler(req: Any, conn: Any) -> None:
        conn.respond(200, [(b"content-type", b"application/json")], ANSWER)

    async def main() -> None:
        if not hasattr(server, "HttpLimits"):  # a tree from before issue 14's limits (--compare)
            await server.serve(handler, "127.0.0.1", port, 4 * 1024 * 1024)
            await asyncio.Event().wait()
        listener = await server.serve(handler, "127.0.0.1", port, server.HttpLimits())
        loop = asyncio.get_running_loop()

        def sweep() -> None:  # the router's deadline sweep, as kvplan serve runs it
            listener.sweep(loop.time())
            loop.call_later(0.25, sweep)

        sweep()
        await asyncio.Event().wait()

    uvloop.run(main())


def serve_uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )


SERVERS = {"kvplan": serve_kvplan, "uvicorn-httptools": serve_uvicorn}


async def probes(addr: str, pid: int, cap: float) -> dict[str, Any]:
    """How each server takes the campaign's slow, idle, huge and unread clients."""
    rss0 = rss_mib(pid)
    lines: list[dict[str, Any]] = []
    line = asyncio.to_thread(huge_line, addr, 64, 0.0, False, lines)
    host, port = addr.split(":")
    _, unread = await asyncio.open_connection(host, int(port))
    unread.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}" * 4000)  # 204 KB, never read
    header, idle, _ = await asyncio.gather(
        held_seconds(addr, b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ", b"a", cap),
        held_seconds(addr, b"", None, cap),
        line,
    )
    rss1 = rss_mib(pid)
    unread.transport.abort()
    return {
        "header_1_byte_per_s": header,
        "idle_connection": idle,
        "line_64mb": lines[0] if lines else None,
        "rss_mib_before_after": [round(rss0, 1), round(rss1, 1)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=4.0, help="wrk duration per server and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument(
        "--compare", metavar="REV", action="append", default=[], help="also kvplan's server as of git REV"
    )
    ap.add_argument("--probe-cap", type=float, default=20.0, help="longest a slow connection is timed")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        SERVERS[a.serve](a.port)
        return
    check_args(ap, a, ("seconds", "rounds", "conns", "probe_cap"), a.compare)

    tmp = Path(tempfile.mkdtemp(prefix="http-layer-"))
    script = tmp / "post.lua"
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 100}]})
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n')
    script.write_text(script.read_text() + 'wrk.headers["Content-Type"] = "application/json"\n')
    procs = Procs()
    result = run_header("http_layer.py")
    names = [*SERVERS, *(f"kvplan@{rev}" for rev in a.compare)]
    runs: dict[str, dict[int, list[dict[str, float]]]] = {name: {} for name in names}
    try:
        urls, pids = {}, {}
        for name in names:
            port = free_port()
            role = name.partition("@")[0]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", role, "--port", str(port)]
            env = None
            if "@" in name:  # the server from another tree: -P keeps this checkout off sys.path
                python, env = kvplan_at(source_of(name.partition("@")[2], tmp))
                env["PYTHONPATH"] += os.pathsep + str(ROOT / "bench")
                cmd = [python[0], "-P", *cmd[1:]]
            p = procs.start(cmd, port, tmp / f"{name}.log", health="/", env=env)
            urls[name], pids[name] = f"http://127.0.0.1:{port}", p.pid
        for url in urls.values():
            wrk(url, 16, 1, script)  # warm up
        for i in range(a.rounds):
            for conns in a.conns:
                for name in names[i % len(names) :] + names[: i % len(names)]:  # no server always first
                    cpu0 = cpu_seconds(pids[name])
                    run = wrk(urls[name], conns, a.seconds, script)
                    run["cpu_us_per_req"] = (cpu_seconds(pids[name]) - cpu0) / max(run["requests"], 1) * 1e6
                    runs[name].setdefault(conns, []).append(run)
        result["load_after"] = loadavg()
        result["probes"] = {
            name: asyncio.run(probes(urls[name].removeprefix("http://"), pids[name], a.probe_cap))
            for name in names
        }
    finally:
        procs.stop()
    summary: dict[str, Any] = {}
    for name, by_c in runs.items():
        summary[name] = {
            str(c): {
                "rps_median": statistics.median(r["rps"] for r in rs),
                "cpu_us_per_req_median": statistics.median(r["cpu_us_per_req"] for r in rs),
                "p50_ms_median": statistics.median(r["p50_ms"] for r in rs),
                "non_2xx": sum(int(r["non_2xx"]) for r in rs),
            }
            for c, rs in by_c.items()
        }
    result["summary"] = summary
    k = summary["kvplan"]
    result["ratios"] = {
        f"kvplan / {other}": {
            c: {
                "rps": k[c]["rps_median"] / summary[other][c]["rps_median"],
                "cpu_per_req": k[c]["cpu_us_per_req_median"] / summary[other][c]["cpu_us_per_req_median"],
            }
            for c in k
        }
        for other in names[1:]
    }
    result["raw"] = {name: {str(c): rs for c, rs in by_c.items()} for name, by_c in runs.items()}
    print(json.dumps({key: v for key, v in result.items() if key != "raw"}, indent=2))
    if not a.no_write:
        out = ROOT / "bench" / "results"
        (out / "http_layer.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "http_layer.md").write_text(report(result))


def report(r: dict[str, Any]) -> str:
    lines = [
        f"# HTTP layer alone: kvplan's server vs uvicorn (httptools), {r['date']}",
        "",
        f"- device: {r['device']}",
        f"- command: `{r['command']}`",
        f"- load average before / after: {r['load_before']} / {r['load_after']}",
        "- one trivial answer (200, JSON) per POST, uvloop, one process each; wrk -t1 keep-alive; "
        "medians over rounds, servers interleaved",
        "",
        "| server | conns | req/s | server CPU µs/req | p50 ms |",
        "|---|---|---|---|---|",
    ]
    for name, by_c in r["summary"].items():
        for c, s in by_c.items():
            lines.append(
                f"| {name} | {c} | {s['rps_median']:.0f} | {s['cpu_us_per_req_median']:.1f} | "
                f"{s['p50_ms_median']:.3f} |"
            )
    lines.append("")
    for label, by_c in r["ratios"].items():
        lines.append(
            f"- {label}: "
            + "; ".join(
                f"c={c} req/s {x['rps']:.2f}x, CPU per request {x['cpu_per_req']:.2f}x"
                for c, x in by_c.items()
            )
        )
    lines += ["", "Probes (bench/robustness.py's clients, against the server alone):", ""]
    lines += ["| server | 1 byte/s header | idle connection | 64 MB request line | RSS before -> after |"]
    lines += ["|---|---|---|---|---|"]
    for name, p in r.get("probes", {}).items():
        h, i, big = p["header_1_byte_per_s"], p["idle_connection"], p["line_64mb"] or {}
        lines.append(
            f"| {name} | {h['held_s']} s, {h['outcome']} | {i['held_s']} s, {i['outcome']} | "
            f"{big.get('mb_accepted')} MB taken, {big.get('status')} | "
            f"{p['rss_mib_before_after'][0]} -> {p['rss_mib_before_after'][1]} MiB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
