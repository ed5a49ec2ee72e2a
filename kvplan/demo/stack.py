"""The demo's processes: simulated workers, the router, Redis, Prometheus, the rollout controller.

Every process is the demo's child, in its own process group (a terminal's Ctrl-C reaches only the
demo, which stops them in order), and dies with the demo (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from kvplan.dashboards import build, rules
from kvplan.demo.config import GPU, MODEL, POOLS, DemoOptions
from kvplan.deploy import labels, prometheus, yaml_text
from kvplan.deploy.router_server import ADMIN_TOKEN_ENV, controller_args
from kvplan.plan import Plan
from kvplan.workers.sim.launch import READY_PREFIX


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
    admin_url: str = ""  # a router's admin API and /metrics


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
    args = controller_args(store, metrics_url, port, str(plan_path), metrics_host="127.0.0.1")
    child = stack.spawn("rollout-controller", [sys.executable, "-m", "kvplan.cli", *args])
    child.url = f"http://127.0.0.1:{port}"
    _wait_http(f"{child.url}/metrics", child, 30)
    return child


def start_router(stack: Stack, plan_path: Path, port: int, token: str, store: str | None = None) -> Child:
    cmd = [sys.executable, "-m", "kvplan.cli", "serve", "--plan", str(plan_path), "--port", str(port)]
    cmd += ["--admin-port", "0"]
    if store:
        cmd += ["--flag-store", store]
    child = stack.spawn("router", cmd, {ADMIN_TOKEN_ENV: token})
    child.url = f"http://127.0.0.1:{port}"
    line = _first_line(child, 60)  # "kvplan router listening on http://... admin http://..."
    child.admin_url = line.split(" admin ", 1)[1].split()[0]
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
