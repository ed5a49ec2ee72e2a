"""The outside campaign's probes (issue 14) against a real stack, before and after, in one run.

Stack: two fake vLLM workers (tests/router/fake_vllm.py, uvicorn) and `kvplan serve` as real
processes on loopback. The same probes run against the router of this tree ("after") and, in the
same run, the router as of git revision --before ("before", default 7251db8: the tree the
campaign ran on), one after the other so they never share the CPU:

- bad client: a separate process sends only bad requests (client-provoked upstream 500s, bad
  content parts, malformed HTTP, oversized headers and URLs, deep JSON, pipelined floods never
  read, smuggling shapes, ...) for --bad-seconds, while a victim using the official `openai`
  client (no retries) sends chat, streamed chat and completions; every victim failure is counted.
  Slow-header, idle and short-body connections run alongside and are timed (how long they are held).
- flood: normal requests at a fixed rate (raw sockets, keep-alive) for --idle-seconds, then the
  same load while another process holds --slowloris connections (one header byte a second,
  reconnecting when closed) and sends --lines request lines of --line-mb MB at once (again and
  again with --repeat-lines) for --attack-seconds, then --idle-seconds alone again; p99 of the
  attacked window against the idle windows' (pooled), and the router's resident memory (RSS).
- single probes: upstream 500s provoked by a prompt, then normal requests (ejection); bad content
  parts through the openai client; 204 KB of pipelined GET /metrics never read (RSS); HEAD,
  methods, 431; admin and /metrics on the API listener, deep JSON and a forged actor.

    .venv/bin/python bench/robustness.py      # about 5 min; bench/results/robustness.{json,md}
    .venv/bin/python bench/robustness.py --bad-seconds 10 --idle-seconds 3 --attack-seconds 5 --no-before
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_bench import (
    MODEL,
    Procs,
    backend,
    check_args,
    kvplan_at,
    loadavg,
    one_pool_plan,
    rss_mib,
    run_header,
    source_of,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "router"))
sys.path.insert(0, str(ROOT / "tests"))

from fake_vllm import PROVOKE_500  # noqa: E402

from kvplan.procs import free_port  # noqa: E402

TOKEN = "robustness-admin-token-0123456789"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GOOD = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8})


@dataclass(frozen=True)
class Target:
    name: str  # "after" or "before"
    api: str  # host:port of the OpenAI API
    admin: str  # host:port of the admin API and /metrics (the API's own before the split)
    pid: int


def hostport(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}"
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


def chat(messages: Any, **fields: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": messages, **fields}).encode()


def pctl(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# -- the stack --
def start_router(procs: Procs, tmp: Path, urls: list[str], tag: str, src: Path) -> Target:
    (tmp / f"plan-{tag}.json").write_text(json.dumps(one_pool_plan(urls)))
    (tmp / f"token-{tag}").write_text(TOKEN + "\n")
    port = free_port()
    kvplan, env = kvplan_at(src)
    cmd = [*kvplan, "serve", "--plan", str(tmp / f"plan-{tag}.json")]
    cmd += ["--port", str(port), "--admin-token-file", str(tmp / f"token-{tag}"), "--log-level", "warning"]
    admin = port
    if "admin_port" in (src / "kvplan" / "router" / "cli.py").read_text():  # since the admin listener
        admin = free_port()
        cmd += ["--admin-port", str(admin)]
    p = procs.start(cmd, port, tmp / f"kvplan-{tag}.log", env=env)
    return Target(tag, f"127.0.0.1:{port}", f"127.0.0.1:{admin}", p.pid)


# -- raw exchanges --
async def exchange(addr: str, data: bytes, timeout: float = 3.0, read: bool = True) -> str:
    """Send `data`, read until the server closes or `timeout`: the status of the first answer,
    'reset' (closed by RST before any answer), 'closed' (FIN without an answer) or 'no answer'."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*hostport(addr)), timeout)
    except (OSError, TimeoutError):
        return "connect failed"
    got = b""
    try:
        try:
            writer.write(data)
            await writer.drain()
        except OSError:
            pass  # the router may refuse before all is sent: its answer is still readable
        if not read:
            await asyncio.sleep(0.5)  # a client that never reads, for a while
            return "unread"
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(got) < 12 and loop.time() < end:
            chunk = await asyncio.wait_for(reader.read(65536), end - loop.time())
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        if not got:
            return "reset"
    except TimeoutError:
        pass
    finally:
        writer.transport.abort()
    if got.startswith(b"HTTP/1.1 "):
        return got[9:12].decode()
    return "closed" if not got else "no answer"


async def held_seconds(addr: str, first: bytes, trickle: bytes | None, cap: float) -> dict[str, Any]:
    """How long the router keeps a connection that sends `first` (then `trickle` once a second)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reader, writer = await asyncio.open_connection(*hostport(addr))
    if first:
        writer.write(first)

    async def drip() -> None:
        while trickle is not None:
            await asyncio.sleep(1.0)  # the attack's own pace
            writer.write(trickle)

    task = asyncio.create_task(drip())
    answer = b""
    try:
        answer = await asyncio.wait_for(reader.read(4096), cap)
        outcome = answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"
    except TimeoutError:
        outcome = "still open at the cap"
    except ConnectionResetError:
        outcome = "reset"
    task.cancel()
    writer.transport.abort()
    return {"held_s": round(loop.time() - t0, 1), "outcome": outcome, "cap_s": cap}


# -- bad client (its own process: --role bad) --
def bad_requests() -> dict[str, tuple[bytes, bool]]:
    """name -> (bytes, read the answer)."""
    nested = b"[" * 50_000 + b"]" * 50_000
    return {
        "provoked_500": (
            request("POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": f"x {PROVOKE_500}"}).encode()),
            True,
        ),
        "content_null": (
            request("POST", CHAT, chat([{"role": "user", "content": [{"type": "text", "text": None}]}])),
            True,
        ),
        "content_123": (request("POST", CHAT, chat([{"role": "user", "content": [123]}])), True),
        "content_obj": (request("POST", CHAT, chat([{"role": "user", "content": [{}]}])), True),
        "malformed": (b"THIS IS NOT HTTP\r\n\r\n", True),
        "headers_70k": (b"GET /health HTTP/1.1\r\nhost: x\r\nx-f: " + b"a" * 70_000 + b"\r\n\r\n", True),
        "headers_200": (
            b"GET /health HTTP/1.1\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(200)) + b"\r\n",
            True,
        ),
        "bad_json": (request("POST", CHAT, b"{not json"), True),
        "nested_json": (request("POST", CHAT, nested), True),
        "huge_length": (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n"
            + b"{" * 65536,
            True,
        ),
        "pipelined_unread": (b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n" * 400, False),
        "wrong_method": (b"DELETE /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n", True),
        "unknown_model": (
            request("POST", CHAT, json.dumps({"model": "nope", "messages": []}).encode()),
            True,
        ),
        "negative_max_tokens": (
            request("POST", CHAT, chat([{"role": "user", "content": "x"}], max_tokens=-1)),
            True,
        ),
        "long_url": (b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", True),
        "upgrade": (b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n", True),
        "cl_and_te": (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/state HTTP/1.1\r\nhost: x\r\n\r\n",
            True,
        ),
        "admin_guess": (b"GET /admin/state HTTP/1.1\r\nhost: x\r\nauthorization: Bearer guess\r\n\r\n", True),
    }


async def bad_client(addr: str, seconds: float, workers: int = 4) -> dict[str, Any]:
    kinds = bad_requests()
    names = list(kinds)
    seen: dict[str, Counter[str]] = {n: Counter() for n in names}
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def worker(i: int) -> None:
        k = i * len(names) // workers  # each worker goes through every kind, from its own start
        while loop.time() < end:
            name = names[k % len(names)]
            data, read = kinds[name]
            seen[name][await exchange(addr, data, read=read)] += 1
            k += 1

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return {
        "sent": sum(sum(c.values()) for c in seen.values()),
        "answers": {n: dict(c) for n, c in seen.items()},
    }


# -- victim (the official openai client, no retries) --
async def victim(addr: str, seconds: float, rate: float, workers: int = 4) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://{addr}/v1", api_key="sk-victim", max_retries=0, timeout=30)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    ok, failed, latencies = 0, 0, []
    errors: Counter[str] = Counter()
    messages: Any = [{"role": "user", "content": "hello"}]

    async def one(k: int) -> None:
        if k % 3 == 0:
            r = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
            assert r.choices[0].message.content
        elif k % 3 == 1:
            stream = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=8, stream=True
            )
            finish = [c.choices[0].finish_reason async for c in stream if c.choices]
            assert finish and finish[-1] is not None
        else:
            c = await client.completions.create(model=MODEL, prompt="hello", max_tokens=8)
            assert c.choices[0].text

    async def worker(i: int) -> None:
        nonlocal ok, failed
        k = i
        nxt = loop.time()
        while loop.time() < end:
            await asyncio.sleep(max(0.0, nxt - loop.time()))  # the victim's own pace
            nxt += workers / rate
            t0 = time.perf_counter()
            try:
                await one(k)
                ok += 1
                latencies.append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:
                failed += 1
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            k += workers

    await asyncio.gather(*(worker(i) for i in range(workers)))
    await client.close()
    return {
        "ok": ok,
        "failed": failed,
        "p50_ms": pctl(latencies, 0.5),
        "p99_ms": pctl(latencies, 0.99),
        "errors": dict(errors.most_common(5)),
    }


def role(*args: str) -> subprocess.Popen[str]:
    """This script in another process (--role ...): the attacker never shares the victim's CPU time."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def collect(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = p.communicate(timeout=timeout)
    return dict(json.loads(out.strip().splitlines()[-1]))


async def campaign_bad_client(t: Target, seconds: float, cap: float, rate: float) -> dict[str, Any]:
    bad = role("--role", "bad", "--addr", t.api, "--seconds", str(seconds))
    slow_header = b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: "
    short_body = request("POST", CHAT, GOOD.encode())[:-10]
    timed = asyncio.gather(
        held_seconds(t.api, slow_header, b"a", cap),
        held_seconds(t.api, b"", None, cap),
        held_seconds(t.api, short_body, None, cap),
    )
    v, (header_1bps, idle, short) = await asyncio.gather(victim(t.api, seconds, rate), timed)
    b = await asyncio.to_thread(collect, bad, seconds + 60)
    return {
        "seconds": seconds,
        "victim": v,
        "bad_client": b,
        "held": {
            "header_1_byte_per_s": header_1bps,
            "idle_connection": idle,
            "content_length_too_long": short,
        },
    }


# -- flood: slowloris and huge request lines (its own process: --role flood) --
def huge_line(addr: str, mb: int, end: float, repeat: bool, out: list[dict[str, Any]]) -> None:
    chunk = b"a" * (1 << 20)
    first = True
    while first or (repeat and time.monotonic() < end):
        first = False
        sent, answer = 0, b""
        t0 = time.monotonic()
        try:
            s = socket.create_connection(hostport(addr), timeout=30)
        except OSError:
            continue
        try:
            s.sendall(b"GET /")
            for _ in range(mb):
                s.sendall(chunk)
                sent += len(chunk)
            s.sendall(b" HTTP/1.1\r\nhost: x\r\n\r\n")
        except OSError:
            pass  # refused part-way: the answer may still be there to read
        try:
            answer = s.recv(64)
        except OSError:
            pass
        finally:
            s.close()
        status = answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "no answer"
        out.append({"mb_accepted": round(sent / (1 << 20), 1), "status": status, "s": time.monotonic() - t0})


async def slowloris(addr: str, n: int, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    opened, closed_by_router, held = 0, 0, []

    async def one() -> None:
        nonlocal opened, closed_by_router
        while loop.time() < end:
            try:
                reader, writer = await asyncio.open_connection(*hostport(addr))
            except OSError:
                await asyncio.sleep(0.5)
                continue
            opened += 1
            t0 = loop.time()
            writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
            while loop.time() < end:
                try:
                    writer.write(b"a")
                    if await asyncio.wait_for(reader.read(4096), 1.0) == b"":
                        break
                    break  # answered (408): the router closes next
                except TimeoutError:
                    continue  # one byte a second
                except OSError:
                    break
            if loop.time() < end:
                closed_by_router += 1
                held.append(loop.time() - t0)
            writer.transport.abort()

    await asyncio.gather(*(one() for _ in range(n)))
    return {
        "connections": n,
        "opened": opened,
        "closed_by_router": closed_by_router,
        "held_median_s": round(statistics.median(held), 1) if held else None,
    }


def flood(addr: str, n: int, lines: int, mb: int, seconds: float, repeat: bool) -> dict[str, Any]:
    end = time.monotonic() + seconds
    out: list[dict[str, Any]] = []
    threads = [threading.Thread(target=huge_line, args=(addr, mb, end, repeat, out)) for _ in range(lines)]
    for th in threads:
        th.start()
    slow = asyncio.run(slowloris(addr, n, seconds))
    for th in threads:
        th.join()
    return {
        "slowloris": slow,
        "lines": {
            "sent": len(out),
            "mb_each": mb,
            "mb_accepted_max": max((o["mb_accepted"] for o in out), default=0),
            "answers": dict(Counter(o["status"] for o in out)),
        },
    }


# -- steady normal load with latencies, and the router's RSS --
async def steady(addr: str, seconds: float, rate: float, conns: int = 4) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    period = conns / rate
    latencies: list[float] = []
    failed: Counter[str] = Counter()
    data = request("POST", CHAT, GOOD.encode())

    async def worker(i: int) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        nxt = loop.time() + period * i / conns
        while loop.time() < end:
            await asyncio.sleep(max(0.0, nxt - loop.time()))  # the load's fixed rate
            nxt += period
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(*hostport(addr))
                assert reader is not None
                writer.write(data)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await asyncio.wait_for(reader.readexactly(length), 10)
                if not head.startswith(b"HTTP/1.1 200"):
                    failed[head[9:12].decode()] += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1e3)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, IndexError) as exc:
                failed[type(exc).__name__] += 1
                if writer is not None:
                    writer.transport.abort()
                reader = writer = None
        if writer is not None:
            writer.transport.abort()

    await asyncio.gather(*(worker(i) for i in range(conns)))
    return {
        "requests": len(latencies) + sum(failed.values()),
        "failed": dict(failed),
        "p50_ms": pctl(latencies, 0.5),
        "p99_ms": pctl(latencies, 0.99),
        "latencies": latencies,
    }


async def rss_during(pid: int, coro: Any) -> tuple[Any, list[float]]:
    samples: list[float] = []

    async def sample() -> None:
        while True:
            samples.append(rss_mib(pid))
            await asyncio.sleep(0.1)  # the sampling period

    task = asyncio.create_task(sample())
    try:
        result = await coro
    finally:
        task.cancel()
    samples.append(rss_mib(pid))
    return result, samples


async def campaign_flood(t: Target, a: argparse.Namespace) -> dict[str, Any]:
    idle, rss_idle = await rss_during(t.pid, steady(t.api, a.idle_seconds, a.rate))
    attacker = role(
        "--role", "flood", "--addr", t.api, "--seconds", str(a.attack_seconds),
        "--slowloris", str(a.slowloris), "--lines", str(a.lines), "--line-mb", str(a.line_mb),
        *(["--repeat-lines"] if a.repeat_lines else []),
    )  # fmt: skip
    attacked, rss_attack = await rss_during(t.pid, steady(t.api, a.attack_seconds, a.rate))
    attack = await asyncio.to_thread(collect, attacker, a.attack_seconds + 120)
    idle_after, _ = await rss_during(t.pid, steady(t.api, a.idle_seconds, a.rate))
    rss_ref = statistics.median(rss_idle)
    pooled = idle.pop("latencies") + idle_after.pop("latencies")
    attacked.pop("latencies")
    idle = {"p50_ms": pctl(pooled, 0.5), "p99_ms": pctl(pooled, 0.99), "before": idle, "after": idle_after}
    return {
        "idle": idle,
        "attacked": attacked,
        "p99_ratio": attacked["p99_ms"] / idle["p99_ms"],
        "rss_idle_mib": round(rss_ref, 1),
        "rss_attack_max_mib": round(max(rss_attack), 1),
        "rss_growth_pct": (max(rss_attack) - rss_ref) / rss_ref * 100,
        "attack": attack,
    }


# -- single probes --
async def ready(t: Target) -> None:
    async def ok() -> bool:
        return await exchange(t.api, b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n") == "200"

    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while not await ok():  # the router's own readiness (probes bring ejected endpoints back)
        if loop.time() > end:
            raise TimeoutError(f"{t.name}: /ready not 200 within 30 s")
        await asyncio.sleep(0.2)


async def probe_provoked_500(t: Target, n: int = 20) -> dict[str, Any]:
    await ready(t)
    bad = request("POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": f"x {PROVOKE_500}"}).encode())
    raw = await raw_answer(t.api, bad)  # first: the upstream's own 500, not a later ejection's 503
    answers = Counter([await exchange(t.api, bad) for _ in range(n)])
    normal = Counter([await exchange(t.api, request("POST", CHAT, GOOD.encode())) for _ in range(50)])
    return {
        "provoked": n,
        "answers": dict(answers),
        "normal_after": dict(normal),
        "normal_failed_after": 50 - normal.get("200", 0),
        "error_content_type": header(raw, b"content-type"),
        "upstream_text_reached_client": b"Traceback" in raw,
    }


async def raw_answer(addr: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*hostport(addr))
    writer.write(data)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = header(head, b"content-length")
        body = await asyncio.wait_for(reader.readexactly(int(length)), 5) if length.isdigit() else b""
        return head + body
    except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
        return f"{type(exc).__name__}".encode()
    finally:
        writer.transport.abort()


def header(raw: bytes, name: bytes) -> str:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip().decode("latin-1")
    return ""


async def probe_content_parts(t: Target) -> dict[str, str]:
    import openai

    await ready(t)
    client = openai.AsyncOpenAI(base_url=f"http://{t.api}/v1", api_key="sk-x", max_retries=0, timeout=10)
    out = {}
    for name, part in (("text null", {"type": "text", "text": None}), ("123", 123), ("{}", {})):
        try:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [part]}])  # type: ignore[list-item,misc]
            out[name] = "200"
        except openai.APIStatusError as exc:
            out[name] = f"{exc.status_code} {type(exc).__name__}"
        except openai.APIError as exc:
            out[name] = type(exc).__name__
    await client.close()
    return out


async def probe_pipeline_unread(t: Target, seconds: float = 5.0) -> dict[str, Any]:
    """The campaign's 204 KB of pipelined GET /metrics from a client that never reads (on the
    listener that serves /metrics: the API's own before the split)."""
    await ready(t)
    rss0 = rss_mib(t.pid)
    _, writer = await asyncio.open_connection(*hostport(t.admin))
    one = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n"
    writer.write(one * (204_800 // len(one)))
    _, samples = await rss_during(t.pid, asyncio.sleep(seconds))  # the client never reads, for a while
    writer.transport.abort()
    return {"rss_before_mib": round(rss0, 1), "rss_max_mib": round(max(samples), 1), "seconds": seconds}


async def probe_http(t: Target) -> dict[str, Any]:
    await ready(t)
    reader, writer = await asyncio.open_connection(*hostport(t.api))
    writer.write(b"HEAD /health HTTP/1.1\r\nhost: x\r\n\r\nGET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        after_head = await asyncio.wait_for(reader.read(9), 5)
    finally:
        writer.transport.abort()
    return {
        "head_followed_by": after_head.decode("latin-1"),
        "POST /health": await exchange(t.api, request("POST", "/health")),
        "GET /v1/chat/completions": await exchange(
            t.api, b"GET /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n"
        ),
        "header over 64 KiB": await exchange(t.api, bad_requests()["headers_70k"][0]),
        "64 KiB request line": await exchange(
            t.api, b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\nhost: x\r\n\r\n"
        ),
    }


async def probe_admin(t: Target) -> dict[str, Any]:
    """Last: the forged actor may kill the bucket on a router that accepts it."""
    await ready(t)
    auth = f"authorization: Bearer {TOKEN}\r\n"
    forged = json.dumps({"actor": "ops\nadmin kill bucket=short actor=root"}).encode()
    return {
        "GET /admin/state on the API listener": await exchange(
            t.api, request("GET", "/admin/state", extra=auth)
        ),
        "GET /metrics on the API listener": await exchange(t.api, request("GET", "/metrics")),
        "deep JSON admin body": await exchange(
            t.admin, request("POST", "/admin/buckets/short/kill", b"[" * 100_000 + b"]" * 100_000, auth)
        ),
        "actor with a newline": await exchange(
            t.admin, request("POST", "/admin/buckets/short/kill", forged, auth)
        ),
        "/openapi.json": await exchange(t.api, request("GET", "/openapi.json")),
    }


async def campaign(t: Target, a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"target": t.name}
    print(f"[{t.name}] bad client for {a.bad_seconds} s", file=sys.stderr, flush=True)
    await ready(t)
    out["bad_client"] = await campaign_bad_client(t, a.bad_seconds, a.held_cap, a.victim_rate)
    print(f"[{t.name}] single probes", file=sys.stderr, flush=True)
    out["provoked_500"] = await probe_provoked_500(t)
    out["content_parts"] = await probe_content_parts(t)
    out["pipeline_unread"] = await probe_pipeline_unread(t)
    print(f"[{t.name}] flood", file=sys.stderr, flush=True)
    await ready(t)
    out["flood"] = await campaign_flood(t, a)
    out["http"] = await probe_http(t)
    out["admin"] = await probe_admin(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--before", default="7251db8", help="git revision of the 'before' router")
    ap.add_argument("--no-before", action="store_true", help="only the router of this tree")
    ap.add_argument("--bad-seconds", type=float, default=60.0, help="bad client and victim")
    ap.add_argument("--victim-rate", type=float, default=20.0, help="victim requests per second")
    ap.add_argument("--held-cap", type=float, default=40.0, help="longest a slow connection is timed")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="normal load alone")
    ap.add_argument("--attack-seconds", type=float, default=20.0, help="normal load under the flood")
    ap.add_argument("--rate", type=float, default=40.0, help="normal requests per second")
    ap.add_argument("--slowloris", type=int, default=200, help="slow-header connections")
    ap.add_argument("--lines", type=int, default=4, help="huge request lines sent at once")
    ap.add_argument("--line-mb", type=int, default=64, help="MB per request line")
    ap.add_argument("--repeat-lines", action="store_true", help="send the huge lines again and again")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where results go")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--role", choices=("bad", "flood"), help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role == "bad":
        print(json.dumps(asyncio.run(bad_client(a.addr, a.seconds))))
        return
    if a.role == "flood":
        print(json.dumps(flood(a.addr, a.slowloris, a.lines, a.line_mb, a.seconds, a.repeat_lines)))
        return

    durations = ("bad_seconds", "victim_rate", "held_cap", "idle_seconds", "attack_seconds", "rate")
    check_args(ap, a, (*durations, "slowloris", "lines", "line_mb"), [] if a.no_before else [a.before])
    tmp = Path(tempfile.mkdtemp(prefix="robustness-"))
    procs = Procs()
    result: dict[str, Any] = {
        **run_header("robustness.py"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "runs": {},
    }
    try:
        urls = [backend(procs, tmp, "a"), backend(procs, tmp, "b")]
        targets = [start_router(procs, tmp, urls, "after", ROOT)]
        if not a.no_before:
            result["before_rev"] = a.before
            targets.append(start_router(procs, tmp, urls, "before", source_of(a.before, tmp)))
        for t in targets:
            result["runs"][t.name] = asyncio.run(campaign(t, a))
        result["load_after"] = loadavg()
    finally:
        procs.stop()
    print(json.dumps(result, indent=2))
    if not a.no_write:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "robustness.json").write_text(json.dumps(result, indent=2) + "\n")
        (a.out / "robustness.md").write_text(report(result))


def report(r: dict[str, Any]) -> str:
    runs = r["runs"]
    names = list(runs)
    lines = [
        f"# Robustness campaign (issue 14), {r['date']}",
        "",
        f"- device: {r['device']}; commit {r['commit']}"
        + (f"; before = kvplan as of {r['before_rev']}" if "before_rev" in r else ""),
        f"- command: `{r['command']}`",
        f"- load average before / after: {r['load_before']} / {r.get('load_after')}",
        "- stack: 2 fake vLLM workers (tests/router/fake_vllm.py) + `kvplan serve`, loopback; each router "
        "alone on the machine's share while probed",
        "",
        "## What it must show",
        "",
        "| figure | " + " | ".join(names) + " | target |",
        "|---|" + "---|" * len(names) + "---|",
    ]

    def row(label: str, fn: Any, target: str) -> None:
        cells = []
        for n in names:
            try:
                cells.append(fn(runs[n]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    def fl(x: dict[str, Any]) -> dict[str, Any]:
        return dict(x["flood"])

    row(
        "victim requests failed while a client sent only bad requests",
        lambda x: (
            f"{x['bad_client']['victim']['failed']} of "
            f"{x['bad_client']['victim']['ok'] + x['bad_client']['victim']['failed']} "
            f"({x['bad_client']['seconds']:.0f} s, {x['bad_client']['bad_client']['sent']} bad requests)"
        ),
        "0",
    )
    row(
        "normal p99 idle -> under slowloris + huge lines",
        lambda x: (
            f"{fl(x)['idle']['p99_ms']:.1f} -> {fl(x)['attacked']['p99_ms']:.1f} ms "
            f"({fl(x)['p99_ratio']:.2f}x)"
        ),
        "<= 2x",
    )
    row(
        "router RSS idle -> max under attack",
        lambda x: (
            f"{fl(x)['rss_idle_mib']:.0f} -> {fl(x)['rss_attack_max_mib']:.0f} MiB "
            f"({fl(x)['rss_growth_pct']:+.0f}%)"
        ),
        "<= +20%",
    )
    row(
        "normal requests failed under attack",
        lambda x: f"{sum(fl(x)['attacked']['failed'].values())} of {fl(x)['attacked']['requests']}",
        "0",
    )
    lines += [
        "",
        "## Per item",
        "",
        "| item | probe | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]

    def item(no: str, label: str, fn: Any) -> None:
        cells = []
        for n in names:
            try:
                cells.append(str(fn(runs[n])))
            except (KeyError, TypeError):
                cells.append("n/a")
        lines.append(f"| {no} | {label} | " + " | ".join(cells) + " |")

    def held(key: str) -> Any:
        return lambda x: "{held_s} s, {outcome}".format(**x["bad_client"]["held"][key])

    def lines_of(x: dict[str, Any]) -> str:
        lines_ = fl(x)["attack"]["lines"]
        return f"{lines_['mb_accepted_max']} MB, answers {lines_['answers']}"

    def slow(x: dict[str, Any]) -> str:
        s = fl(x)["attack"]["slowloris"]
        return f"{s['held_median_s']} s, {s['closed_by_router']} of {s['opened']} closed by the router"

    def p500(x: dict[str, Any]) -> str:
        p = x["provoked_500"]
        return f"{p['error_content_type']}; {p['upstream_text_reached_client']}"

    def pipe(x: dict[str, Any]) -> str:
        p = x["pipeline_unread"]
        return f"{p['rss_before_mib']} -> {p['rss_max_mib']} MiB"

    def http(key: str) -> Any:
        return lambda x: x["http"][key]

    items: list[tuple[str, str, Any]] = [
        ("1", "normal requests failed after 20 prompt-provoked upstream 500s",
         lambda x: f"{x['provoked_500']['normal_failed_after']} of 50"),
        ("2", "4 x 64 MB request lines: most MB the router took before answering", lines_of),
        ("2", "64 KiB request line", http("64 KiB request line")),
        ("4", "204 KB pipelined GET /metrics never read: router RSS", pipe),
        ("5", "content part null / 123 / {} (openai client)",
         lambda x: ", ".join(f"{k}: {v}" for k, v in x["content_parts"].items())),
        ("6", "1 byte/s header: held, then", held("header_1_byte_per_s")),
        ("6", "idle connection: held, then", held("idle_connection")),
        ("6", "200 slowloris: median held", slow),
        ("8", "Content-Length longer than the body: held, then", held("content_length_too_long")),
        ("8", "HEAD /health then GET: bytes after the HEAD's head",
         lambda x: repr(x["http"]["head_followed_by"])),
        ("8", "POST /health", http("POST /health")),
        ("8", "GET /v1/chat/completions", http("GET /v1/chat/completions")),
        ("9", "header over 64 KiB", http("header over 64 KiB")),
        ("9", "upstream 500 answered as; upstream text reached the client", p500),
    ]  # fmt: skip
    for key in (
        "GET /admin/state on the API listener",
        "GET /metrics on the API listener",
        "deep JSON admin body",
        "actor with a newline",
        "/openapi.json",
    ):
        items.append(("9" if key != "/openapi.json" else "-", key, lambda x, k=key: x["admin"][k]))
    for no, label, fn in items:
        item(no, label, fn)
    lines += ["", "## Bad client's requests (answers by kind, last run)", ""]
    for n in names:
        answers = runs[n]["bad_client"]["bad_client"]["answers"]
        lines.append(f"- {n}: " + "; ".join(f"{k} {v}" for k, v in answers.items()))
    for n in names:
        errs = runs[n]["bad_client"]["victim"]["errors"]
        if errs:
            lines.append(f"- {n} victim errors: {errs}")
    lines += [
        "",
        "Items 3 (probe flapping), 7 (bytes past an upstream's Content-Length), 100 Continue on a "
        "pipelined request, and 10-13 (flag store, CLI) are covered by tests, not by this harness: "
        "tests/router/test_failover_inprocess.py, test_upstream.py, test_http_limits.py, "
        "tests/control/test_control_outages.py, test_control_cli_audit.py.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
