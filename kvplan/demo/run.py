"""`kvplan demo`: the whole stack on one machine, no GPU, no Redis, no Docker.

Starts four simulated vLLM replicas (two buckets: BF16 baselines, an INT8 and an INT4
candidate), the router with the in-memory flag store in front of them, Prometheus when it is
installed (scraping router and workers with the plan's rules loaded), and a load generator;
prints the URLs and a live summary. The router runs the rollout controller on its own counters;
with --redis the flags live in a private redis-server and `kvplan rollout run` is started as the
fleet's controller instead (analysing through Prometheus). Every process
it starts is its child and is stopped on Ctrl-C, SIGTERM or at the end of --duration; children
also die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from kvplan.dashboards import build, rules
from kvplan.deploy import labels, prometheus, yaml_text
from kvplan.deploy.router_server import ADMIN_TOKEN_ENV
from kvplan.errors import InputError
from kvplan.plan import Bucket, Plan, Pool, Rollout, save_plan

MODEL = "llama-3.1-8b"
GPU = "h100"
READY = "kvplan demo ready:"


@dataclass(frozen=True)
class DemoPool:
    bucket: str
    max_tokens: int
    name: str
    kv_format: str


# (bucket, its max tokens, pool, KV format); the first pool of a bucket is its baseline.
POOLS = (
    DemoPool("8k", 8192, "demo-8k-bf16", "bf16"),
    DemoPool("8k", 8192, "demo-8k-int8", "int8"),
    DemoPool("32k", 32768, "demo-32k-bf16", "bf16"),
    DemoPool("32k", 32768, "demo-32k-int4", "int4"),
)
WEIGHTS = {"8k": 50, "32k": 20}  # initial candidate weights (the flag store owns them afterwards)


@dataclass(frozen=True)
class DemoOptions:
    duration: float = 0.0  # seconds; 0 runs until interrupted
    rps: float = 4.0
    port: int = 8080  # router; 0 picks a free one
    prometheus: bool = True
    prometheus_port: int = 9090  # 0 picks a free one; a busy 9090 falls back to a free one
    scrape_interval: str = "2s"
    speed_factor: float = 1.0  # simulated GPU seconds per wall second (sim workers)
    seed: int = 0
    workdir: Path | None = None  # default: a temporary directory, removed at the end
    # Opt-in: a local redis-server as the flag store plus the rollout controller, so that
    # `kvplan rollout start` from a second terminal is analysed and stepped. Default: in memory.
    redis: bool = False


def demo_plan(endpoints: dict[str, str]) -> Plan:
    """The demo's pool plan; `endpoints` maps pool name -> URL of its one replica."""
    buckets = []
    for name in dict.fromkeys(p.bucket for p in POOLS):
        members = [p for p in POOLS if p.bucket == name]
        pools = [
            Pool(
                name=p.name,
                model=MODEL,
                kv_format=p.kv_format,
                max_model_len=p.max_tokens,
                gpu=GPU,
                endpoints=(endpoints[p.name],) if p.name in endpoints else (),
            )
            for p in members
        ]
        buckets.append(
            Bucket(
                name=name,
                max_tokens=members[0].max_tokens,
                baseline=pools[0],
                candidates=tuple(pools[1:]),
                rollout=Rollout(weight=WEIGHTS[name]),
            )
        )
    return Plan(buckets=tuple(buckets), generated_by="kvplan demo")


def free_port(preferred: int = 0) -> int:
    """`preferred` when it can be bound on loopback, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the demo process dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    log: IO[str]
    url: str = ""


@dataclass
class Stack:
    """The processes the demo started, stopped in reverse order."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> Child:
        log = (self.workdir / f"{name}.log").open("w+")
        proc = subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            # Own process group: a terminal's Ctrl-C reaches only the demo, which stops children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop(self, timeout: float = 10.0) -> list[str]:
        """SIGTERM every child (newest first), wait, SIGKILL stragglers; names of those killed."""
        killed = []
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
                killed.append(child.name)
            if child.proc.stdout:
                child.proc.stdout.close()
            child.log.close()
        return killed


def _first_line(child: Child, timeout: float) -> str:
    """The child's first stdout line (its URL announcement), or why it never came."""
    import selectors

    assert child.proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(child.proc.stdout, selectors.EVENT_READ)
    try:
        if sel.select(timeout):
            line = child.proc.stdout.readline()
            if line:
                return line.strip()
    finally:
        sel.close()
    child.log.flush()
    child.log.seek(0)
    tail = child.log.read()[-1500:]
    raise RuntimeError(f"{child.name} did not start (exit {child.proc.poll()}): {tail.strip()}")


def _wait_http(url: str, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} not ready at {url} after {timeout:.0f}s {last}")


def start_workers(stack: Stack, opts: DemoOptions) -> dict[str, str]:
    """One simulated replica per pool, all started at once; pool -> URL."""
    from kvplan.workers.sim.launch import READY_PREFIX

    started = []
    for p in POOLS:
        cmd = [
            sys.executable, "-m", "kvplan.cli", "worker", "sim",
            "--model", MODEL, "--gpu", GPU, "--kv-format", p.kv_format,
            "--max-model-len", str(p.max_tokens), "--port", "0",
            "--speed-factor", str(opts.speed_factor), "--seed", str(opts.seed),
            "--mean-output-tokens", "96",
        ]  # fmt: skip
        started.append((p, stack.spawn(p.name, cmd)))
    urls = {}
    for p, child in started:
        line = _first_line(child, 60)
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"{p.name}: unexpected first line {line!r}")
        child.url = line[len(READY_PREFIX) :].split()[0]
        _wait_http(f"{child.url}/health", child, 30)
        urls[p.name] = child.url
    return urls


def start_redis(stack: Stack) -> str:
    """A private redis-server on a free loopback port, no persistence; returns the store URL."""
    binary = shutil.which("redis-server") or "redis-server"  # presence checked before anything starts
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    child = stack.spawn("redis", cmd)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {child.proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as conn:
            conn.sendall(b"PING\r\n")
            if conn.recv(16).startswith(b"+PONG"):
                child.url = f"redis://127.0.0.1:{port}/0"
                return child.url
        time.sleep(0.05)
    raise RuntimeError("redis-server did not answer PING")


def start_controller(stack: Stack, plan_path: Path, store: str, metrics_url: str, port: int) -> Child:
    """`kvplan rollout run`: analyses every progressing rollout once per its interval."""
    from kvplan.deploy.router_server import controller_args

    args = controller_args(store, metrics_url, port, str(plan_path))
    child = stack.spawn("rollout-controller", [sys.executable, "-m", "kvplan.cli", *args])
    child.url = f"http://127.0.0.1:{port}"
    _wait_http(f"{child.url}/metrics", child, 30)
    return child


def start_router(stack: Stack, plan_path: Path, port: int, token: str, store: str | None = None) -> Child:
    cmd = [sys.executable, "-m", "kvplan.cli", "serve", "--plan", str(plan_path), "--port", str(port)]
    if store:
        cmd += ["--flag-store", store]
    child = stack.spawn("router", cmd, {ADMIN_TOKEN_ENV: token})
    child.url = f"http://127.0.0.1:{port}"
    _first_line(child, 60)  # "kvplan router listening on ..."
    _wait_http(f"{child.url}/health", child, 30)
    return child


def prometheus_config(plan: Plan, router: str, opts: DemoOptions, controller: str | None) -> dict[str, Any]:
    pools = [
        prometheus.PoolTargets(labels.pool_labels(b, p), tuple(e.split("://", 1)[1] for e in p.endpoints))
        for b in plan.buckets
        for p in b.pools
    ]
    return prometheus.config(
        [router.split("://", 1)[1]],
        pools,
        ["kvplan.rules.yml", "plan.rules.yml"],
        scrape_interval=opts.scrape_interval,
        evaluation_interval=opts.scrape_interval,
        controller_targets=[controller] if controller else [],
    )


def start_prometheus(
    stack: Stack, plan: Plan, router: str, opts: DemoOptions, controller: str | None = None
) -> Child | None:
    binary = shutil.which("prometheus")
    if not opts.prometheus or binary is None:
        return None
    conf = stack.workdir / "prometheus"
    conf.mkdir(exist_ok=True)
    (conf / "prometheus.yml").write_text(yaml_text.dump(prometheus_config(plan, router, opts, controller)))
    (conf / "kvplan.rules.yml").write_text(build.rules_text(plan.slo))
    (conf / "plan.rules.yml").write_text(build.plan_rules_text(rules.plan_rule_groups(plan)))
    port = free_port(opts.prometheus_port)
    cmd = [
        binary,
        f"--config.file={conf / 'prometheus.yml'}",
        f"--storage.tsdb.path={conf / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    child = stack.spawn("prometheus", cmd)
    child.url = f"http://127.0.0.1:{port}"
    _wait_http(f"{child.url}/-/ready", child, 60)
    return child


# -- load ------------------------------------------------------------------------------------


def _prompt(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens as the router estimates them (one per 3 bytes)."""
    words = ("kv", "cache", "page", "token", "head", "layer", "scale", "quant", "pool", "route")
    out: list[str] = []
    size = 0
    while size < tokens * 3:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def sample_request(rng: random.Random) -> tuple[int, int]:
    """(prompt tokens, max_tokens): 70% short chats for the 8k bucket, 30% long documents."""
    if rng.random() < 0.7:
        return int(rng.lognormvariate(math.log(1200), 0.8)) % 7000 + 50, rng.choice((64, 128, 256))
    return rng.randint(9000, 30000), rng.choice((64, 128))


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


async def _one(client: httpx.AsyncClient, rng: random.Random, stats: LoadStats, user: str) -> None:
    prompt_tokens, max_tokens = sample_request(rng)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": _prompt(rng, prompt_tokens)}],
        "max_tokens": max_tokens,
        "stream": True,
        "user": user,
    }
    stats.sent += 1
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for _ in resp.aiter_raw():
                pass
            stats.by_status[resp.status_code] = stats.by_status.get(resp.status_code, 0) + 1
            if resp.status_code == 200:
                stats.ok += 1
            else:
                stats.failed += 1
    except httpx.HTTPError:
        stats.failed += 1


async def generate_load(router: str, opts: DemoOptions, stats: LoadStats, stop: asyncio.Event) -> None:
    """Poisson arrivals at `rps` from 200 users (cohorts hash per user) until `stop`."""
    rng = random.Random(opts.seed)
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=router, timeout=120.0, limits=limits) as client:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.expovariate(opts.rps))
            if stop.is_set():
                break
            task = asyncio.create_task(_one(client, rng, stats, f"user-{rng.randrange(200)}"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- summary ---------------------------------------------------------------------------------


@dataclass
class PoolSummary:
    requests: float = 0.0
    ttft_p50: float = math.nan
    kv_usage: float = math.nan
    running: float = 0.0


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus-style histogram_quantile over cumulative (le, count) pairs."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


async def summarize(
    client: httpx.AsyncClient, router: str, workers: dict[str, str]
) -> dict[str, PoolSummary]:
    """Requests and TTFT p50 per pool from the router's /metrics, KV usage from each worker's."""
    from prometheus_client.parser import text_string_to_metric_families

    from kvplan import metric_names as vm
    from kvplan.router import metrics as rm

    out = {name: PoolSummary() for name in workers}
    ttft: dict[str, dict[float, float]] = {name: {} for name in workers}
    text = (await client.get(f"{router}/metrics")).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            pool = s.labels.get("pool", "")
            if pool not in out:
                continue
            if s.name == f"{rm.REQUESTS}_total":
                out[pool].requests += s.value
            elif s.name == f"{rm.TTFT_SECONDS}_bucket":
                le = float(s.labels["le"])
                ttft[pool][le] = ttft[pool].get(le, 0.0) + s.value
    for pool, url in workers.items():
        out[pool].ttft_p50 = _quantile(0.5, list(ttft[pool].items()))
        for family in text_string_to_metric_families((await client.get(f"{url}/metrics")).text):
            for s in family.samples:
                if s.name == vm.KV_CACHE_USAGE:
                    out[pool].kv_usage = s.value
                elif s.name == vm.NUM_REQUESTS_RUNNING:
                    out[pool].running = s.value
    return out


def _table(summary: dict[str, PoolSummary], stats: LoadStats) -> Any:
    from rich.table import Table

    table = Table(title=f"requests sent {stats.sent}, ok {stats.ok}, failed {stats.failed}", expand=False)
    for col in ("pool", "format", "requests", "TTFT p50", "KV usage", "running"):
        table.add_column(col, justify="left" if col in ("pool", "format") else "right")
    formats = {p.name: p.kv_format for p in POOLS}
    for pool, s in summary.items():
        ttft = "-" if math.isnan(s.ttft_p50) else f"{s.ttft_p50 * 1000:.0f} ms"
        kv = "-" if math.isnan(s.kv_usage) else f"{s.kv_usage:.1%}"
        table.add_row(pool, formats[pool], f"{s.requests:.0f}", ttft, kv, f"{s.running:.0f}")
    return table


def _line(summary: dict[str, PoolSummary]) -> str:
    parts = []
    for pool, s in summary.items():
        ttft = "-" if math.isnan(s.ttft_p50) else f"{s.ttft_p50 * 1000:.0f}ms"
        kv = "-" if math.isnan(s.kv_usage) else f"{s.kv_usage:.1%}"
        parts.append(f"{pool}: {s.requests:.0f} req, ttft p50 {ttft}, kv {kv}")
    return "; ".join(parts)


async def _run_loop(
    router: str, workers: dict[str, str], opts: DemoOptions, stop: asyncio.Event
) -> LoadStats:
    from rich.console import Console
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    stats = LoadStats()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    load = asyncio.create_task(generate_load(router, opts, stats, stop))
    progress = Progress(
        TextColumn("load"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
    )
    task = progress.add_task("load", total=opts.duration or None)
    started = loop.time()
    summary: dict[str, PoolSummary] = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
        last_line = 0.0
        with live or contextlib.nullcontext():
            while not stop.is_set():
                elapsed = loop.time() - started
                if opts.duration and elapsed >= opts.duration:
                    break
                with contextlib.suppress(httpx.HTTPError):
                    summary = await summarize(client, router, workers)
                progress.update(task, completed=elapsed)
                if live is not None:
                    from rich.console import Group

                    live.update(Group(progress, _table(summary, stats)))
                elif elapsed - last_line >= 5:
                    print(f"[{elapsed:5.0f}s] sent {stats.sent} ok {stats.ok} failed {stats.failed} | "
                          f"{_line(summary)}", flush=True)  # fmt: skip
                    last_line = elapsed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
    stop.set()
    await load
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    if summary:
        console.print(_table(summary, stats))
    return stats


def _banner(
    router: Child, prom: Child | None, workers: dict[str, str], token: str, workdir: Path, store: str | None
) -> str:
    env = f"KVPLAN_ROUTER={router.url} {ADMIN_TOKEN_ENV}={token}"
    if store:
        env += f" KVPLAN_FLAG_STORE={store} KVPLAN_PLAN={workdir / 'pools.yaml'}"
        rollout = [
            "  kvplan rollout start --bucket 8k --steps 60,80,100 --interval 30s   # the controller steps it",
            "  kvplan rollout status",
        ]
    else:  # the router runs the rollout controller itself on its own counters
        rollout = [
            "  kvplan flags set-weight --bucket 8k --weight 80   # a rollout step by hand",
            "  kvplan rollout start --bucket 8k --steps 60,80,100 --interval 30s   # or analysed steps",
            "  kvplan rollout status",
        ]
    lines = [
        f"router       {router.url}  (OpenAI API under /v1, metrics at /metrics, admin API under /admin)",
        f"admin token  {token}",
        f"prometheus   {prom.url}"
        if prom
        else "prometheus   not installed (or --no-prometheus): no alerts, no queries",
        *(f"worker       {url}  {name}" for name, url in workers.items()),
        f"flag store   {store or 'in memory (inside the router)'}",
        f"plan         {workdir / 'pools.yaml'}   logs: {workdir}/*.log",
        "",
        "From a second terminal:",
        f"  export {env}",
        "  kvplan flags show",
        "  kvplan flags kill --bucket 32k --reason test ; kvplan flags unkill --bucket 32k",
        *rollout,
        "Grafana: import dashboards/*.json with a Prometheus data source at the URL above.",
    ]
    return "\n".join(lines)


def run(opts: DemoOptions) -> int:
    """Start everything, run until --duration or a signal, stop everything. Returns an exit code."""
    owned = opts.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="kvplan-demo-")) if owned else Path(opts.workdir or ".")
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir)
    interrupted = False

    def on_signal(signum: int, _: Any) -> None:
        raise KeyboardInterrupt  # during start-up: unwind to the finally below

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print("starting 4 simulated workers, the router and Prometheus ...", flush=True)
        if opts.redis and shutil.which("redis-server") is None:
            raise InputError("--redis needs redis-server on PATH (scripts/setup.sh test installs it)")
        workers = start_workers(stack, opts)
        plan = demo_plan(workers)
        plan_path = workdir / "pools.yaml"
        save_plan(plan, plan_path)
        token = secrets.token_urlsafe(16)
        store = start_redis(stack) if opts.redis else None
        router = start_router(stack, plan_path, free_port(opts.port), token, store)
        # The controller's port is chosen first: Prometheus scrapes it, and it queries Prometheus.
        controller_port = free_port() if store else 0
        controller = f"127.0.0.1:{controller_port}" if store else None
        prom = start_prometheus(stack, plan, router.url, opts, controller)
        if store:
            source = prom.url if prom else f"{router.url}/metrics"
            start_controller(stack, plan_path, store, source, controller_port)
        print(_banner(router, prom, workers, token, workdir, store), flush=True)
        print(f"{READY} router={router.url} prometheus={prom.url if prom else ''} token={token}", flush=True)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, previous[s])
        stats = asyncio.run(_run_loop(router.url, workers, opts, asyncio.Event()))
        statuses = dict(sorted(stats.by_status.items()))
        print(f"load: {stats.sent} sent, {stats.ok} ok, {stats.failed} failed, by status {statuses}")
    except KeyboardInterrupt:
        interrupted = True
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not abandon children
        killed = stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        print(
            f"stopped {len(stack.children)} processes"
            + (f" (killed: {', '.join(killed)})" if killed else ""),
            flush=True,
        )
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
    return 130 if interrupted else 0
