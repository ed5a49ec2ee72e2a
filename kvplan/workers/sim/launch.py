"""Run a simulated worker: in this process (a thread) or as a subprocess, on an ephemeral port.

For tests and benchmarks of other parts:

    with sim_worker_process(["--model", "llama-3.1-8b", "--gpu", "h100", "--kv-format", "int8",
                             "--speed-factor", "0"]) as url:
        ...  # url answers /health

    with sim_worker_thread(build_profile(...), SimSettings(speed_factor=0)) as running:
        running.url, running.worker.kill()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kvplan.workers.sim.profile import WorkerProfile
from kvplan.workers.sim.server import SimSettings, SimWorker
from kvplan.workers.sim.text import Tokenizer

READY_PREFIX = "kvplan worker sim: listening on "


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(worker: SimWorker, sock: socket.socket) -> None:
    """Serve until interrupted (SIGINT/SIGTERM: uvicorn shuts down gracefully)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Streams at real speed can last minutes: on SIGTERM/SIGINT the engine stops, as
            # vLLM's does, so in-flight requests end at once and the server exits promptly.
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon_threadsafe(worker.kill, "The server is shutting down.")
            super().handle_exit(sig, frame)

    Server(_config(worker)).run(sockets=[sock])


def _config(worker: SimWorker) -> Any:
    import uvicorn

    return uvicorn.Config(
        worker.app(), log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )


def wait_healthy(url: str, timeout: float = 30.0, proc: subprocess.Popen[str] | None = None) -> None:
    """Poll `/health` until 200; raise with the reason when it does not come."""
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"simulated worker exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
            last = "not healthy"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.02)
    raise TimeoutError(f"simulated worker at {url} not healthy after {timeout:.0f}s: {last}")


@dataclass
class RunningWorker:
    url: str
    worker: SimWorker


@contextlib.contextmanager
def sim_worker_thread(
    profile: WorkerProfile,
    settings: SimSettings | None = None,
    *,
    host: str = "127.0.0.1",
    tokenizer: Tokenizer | None = None,
) -> Iterator[RunningWorker]:
    """A worker served by uvicorn in a daemon thread of this process; stopped on exit."""
    import uvicorn

    worker = SimWorker(profile, settings or SimSettings(), tokenizer)
    sock = bind(host, 0)
    server = uvicorn.Server(_config(worker))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = url_of(sock)
    try:
        wait_healthy(url)
        yield RunningWorker(url, worker)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def sim_worker_process(args: Sequence[str], *, timeout: float = 30.0) -> Iterator[str]:
    """`kvplan worker sim ARGS --port 0` as a subprocess; yields its URL once /health answers."""
    cmd = [sys.executable, "-m", "kvplan.cli", "worker", "sim", *args]
    if "--port" not in args:
        cmd += ["--port", "0"]
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - a file, not a pipe: nobody drains it while serving
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the worker prints its URL before serving, or exits
        if not line.startswith(READY_PREFIX):
            proc.wait(timeout=timeout)
            log.seek(0)
            raise RuntimeError(f"simulated worker did not start: {(line + log.read()).strip()[-2000:]}")
        url = line[len(READY_PREFIX) :].split()[0]
        wait_healthy(url, timeout, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
