"""Run the rendered vLLM servers: start, wait for /health, publish endpoints, restart, drain, stop.

The router learns endpoints from a runtime copy of the plan (`pools.runtime.yaml`: the plan with
each pool's `endpoints` filled), which `kvplan serve --plan` re-reads when it changes. A state
file beside it records what runs where (pid, port, log, device, KV memory) for `workers status`.

Each server runs in its own process group (vLLM forks an engine core and workers), so stopping a
replica signals exactly the processes this supervisor started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kvplan.errors import KvplanError
from kvplan.plan import Plan, save_plan
from kvplan.vllm_command import LaunchOptions
from kvplan.workers.launch import ReplicaLaunch, with_endpoints
from kvplan.workers.probe import is_healthy, requests_in_flight

STATE_VERSION = 1


class WorkerStartError(KvplanError):
    """A vLLM server died or never became healthy while starting; the message has its log tail."""


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Replica:
    launch: ReplicaLaunch
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    healthy: bool = False
    restart_at: float | None = None  # when a crashed server is due to be started again
    started_at: float = 0.0

    def spawn(self) -> None:
        self.launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.launch.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                list(self.launch.argv),
                env={**os.environ, **self.launch.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: engine core and workers stop with it
            )
        finally:
            log.close()
        self.healthy = False
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(10)
        self.signal_group(signal.SIGKILL)  # stragglers of the group (its engine core, workers)
        self.healthy = False


@dataclass
class Supervisor:
    plan: Plan
    launches: list[ReplicaLaunch]
    opts: LaunchOptions
    runtime_plan: Path
    state_file: Path
    start_timeout: float = 600.0
    parallel_starts: int = 2  # each CPU server takes ~4 GiB and both cores while it loads
    backoff: tuple[float, float] = (2.0, 60.0)  # first and largest restart delay
    say: Callable[[str], None] = print
    replicas: list[Replica] = field(init=False)

    def __post_init__(self) -> None:
        self.replicas = [Replica(lc) for lc in self.launches]

    # -- start ---------------------------------------------------------------------------------

    def start_all(self) -> None:
        """Start every replica, `parallel_starts` at a time; stop all and raise on a failed start."""
        try:
            for i in range(0, len(self.replicas), self.parallel_starts):
                wave = self.replicas[i : i + self.parallel_starts]
                for rep in wave:
                    rep.spawn()
                    self.say(f"started {rep.launch.name} (pid {rep.proc.pid if rep.proc else '?'}) "
                             f"on {rep.launch.url}, log {rep.launch.log_path}")  # fmt: skip
                self._wait_healthy(wave)
        except BaseException:
            self.stop_all()
            raise
        self.publish()

    def _wait_healthy(self, wave: list[Replica]) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = list(wave)
        while pending:
            for rep in list(pending):
                if not rep.alive():
                    code = rep.proc.returncode if rep.proc else None
                    raise WorkerStartError(
                        f"vLLM server {rep.launch.name} exited with code {code} while starting; "
                        f"last lines of {rep.launch.log_path}:\n{log_tail(rep.launch.log_path)}"
                    )
                if is_healthy(rep.launch.url):
                    rep.healthy = True
                    pending.remove(rep)
                    took = time.monotonic() - rep.started_at
                    self.say(f"{rep.launch.name} healthy after {took:.0f} s")
            if pending and time.monotonic() > deadline:
                names = ", ".join(r.launch.name for r in pending)
                tail = log_tail(pending[0].launch.log_path)
                raise WorkerStartError(f"{names} not healthy after {self.start_timeout:.0f} s; log:\n{tail}")
            if pending:
                time.sleep(0.5)

    # -- publish -------------------------------------------------------------------------------

    def endpoints(self) -> dict[str, list[str]]:
        eps: dict[str, list[str]] = {}
        for rep in self.replicas:
            if rep.healthy:
                eps.setdefault(rep.launch.pool, []).append(rep.launch.url)
        return eps

    def publish(self) -> None:
        """Write the runtime plan (healthy endpoints only) and the state file, each atomically."""
        _atomic_write(self.runtime_plan, lambda p: save_plan(with_endpoints(self.plan, self.endpoints()), p))
        state = {
            "version": STATE_VERSION,
            "device": self.opts.device.value,
            "kv_memory_bytes": self.opts.kv_memory_bytes,
            "runtime_plan": str(self.runtime_plan),
            "supervisor_pid": os.getpid(),
            "replicas": [
                {
                    "pool": r.launch.pool,
                    "replica": r.launch.replica,
                    "url": r.launch.url,
                    "pid": r.proc.pid if r.proc else None,
                    "healthy": r.healthy,
                    "restarts": r.restarts,
                    "log": str(r.launch.log_path),
                    "env": r.launch.env,
                    "argv": list(r.launch.argv),
                }
                for r in self.replicas
            ],
        }
        _atomic_write(self.state_file, lambda p: _write_text(p, json.dumps(state, indent=2)))

    # -- supervise -----------------------------------------------------------------------------

    def check_once(self, now: float | None = None) -> None:
        """One supervision step: notice crashes, restart with exponential backoff, re-publish."""
        now = time.monotonic() if now is None else now
        changed = False
        for rep in self.replicas:
            if rep.restart_at is not None:
                if now >= rep.restart_at:
                    rep.restart_at = None
                    rep.restarts += 1
                    rep.spawn()
                    self.say(f"restarted {rep.launch.name} (restart {rep.restarts})")
                continue
            if not rep.alive():
                delay = min(self.backoff[0] * 2**rep.restarts, self.backoff[1])
                code = rep.proc.returncode if rep.proc else None
                self.say(f"{rep.launch.name} exited with code {code}; restarting in {delay:.0f} s. "
                         f"Log tail:\n{log_tail(rep.launch.log_path, 5)}")  # fmt: skip
                rep.signal_group(signal.SIGKILL)  # leftovers of the dead server's group
                rep.healthy = False
                rep.restart_at = now + delay
                changed = True
            elif not rep.healthy and is_healthy(rep.launch.url):
                rep.healthy = True
                changed = True
                self.say(f"{rep.launch.name} healthy again")
        if changed:
            self.publish()

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.wait(interval):
            self.check_once()

    # -- stop ----------------------------------------------------------------------------------

    def drain_and_stop(self, drain_timeout: float = 30.0) -> None:
        """Unpublish every endpoint (the router stops sending), let in-flight requests finish
        (bounded by drain_timeout), then stop the servers."""
        live = [r for r in self.replicas if r.alive()]
        for r in self.replicas:
            r.healthy = False
        self.publish()
        deadline = time.monotonic() + drain_timeout
        while live and time.monotonic() < deadline:
            if all(requests_in_flight(r.launch.url) == 0 for r in live):
                break
            time.sleep(0.5)
        self.stop_all()

    def stop_all(self) -> None:
        for rep in self.replicas:
            rep.restart_at = None
            rep.stop()
        self.publish()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
