"""`kvplan demo`'s run: start the stack, print how to reach it, drive load with a live summary,
stop everything at --duration or on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from kvplan.demo.config import DemoOptions, demo_plan
from kvplan.demo.load import LoadStats, generate_load
from kvplan.demo.stack import (
    Child,
    Stack,
    free_port,
    start_controller,
    start_prometheus,
    start_redis,
    start_router,
    start_workers,
)
from kvplan.demo.summary import PoolSummary, line, summarize, table
from kvplan.deploy.router_server import ADMIN_TOKEN_ENV
from kvplan.errors import InputError
from kvplan.plan import save_plan

READY = "kvplan demo ready:"


async def _run_loop(
    router: str, admin: str, workers: dict[str, str], opts: DemoOptions, stop: asyncio.Event
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
                    summary = await summarize(client, admin, workers)
                progress.update(task, completed=elapsed)
                if live is not None:
                    from rich.console import Group

                    live.update(Group(progress, table(summary, stats)))
                elif elapsed - last_line >= 5:
                    print(f"[{elapsed:5.0f}s] sent {stats.sent} ok {stats.ok} failed {stats.failed} | "
                          f"{line(summary)}", flush=True)  # fmt: skip
                    last_line = elapsed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
    stop.set()
    await load
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    if summary:
        console.print(table(summary, stats))
    return stats


def _banner(
    router: Child, prom: Child | None, workers: dict[str, str], token: str, workdir: Path, store: str | None
) -> str:
    env = f"KVPLAN_ROUTER={router.admin_url} {ADMIN_TOKEN_ENV}={token}"
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
        f"router       {router.url}  (OpenAI API under /v1)",
        f"router admin {router.admin_url}  (admin API under /admin, metrics at /metrics; loopback)",
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
        prom = start_prometheus(stack, plan, router.admin_url, opts, controller)
        if store:
            source = prom.url if prom else f"{router.admin_url}/metrics"
            start_controller(stack, plan_path, store, source, controller_port)
        print(_banner(router, prom, workers, token, workdir, store), flush=True)
        urls = f"router={router.url} admin={router.admin_url} prometheus={prom.url if prom else ''}"
        print(f"{READY} {urls} token={token}", flush=True)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, previous[s])
        stats = asyncio.run(_run_loop(router.url, router.admin_url, workers, opts, asyncio.Event()))
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
