"""Running `kvplan demo` as a user would, for the end-to-end tests: a subprocess on free ports,
its banner parsed, `kvplan` commands from a "second terminal", queries to its Prometheus."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from support import ROOT
from support.grafana import substitute

from kvplan.demo.run import READY

__all__ = ["Running", "alerts", "cli", "demo_process", "query", "stop_with_sigint", "substitute"]


@dataclass
class Running:
    proc: subprocess.Popen[str]
    router: str  # the OpenAI API
    admin: str  # the router's admin API and /metrics
    prometheus: str
    token: str
    output: list[str]


def children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_until_ready(proc: subprocess.Popen[str], output: list[str], timeout: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith(READY):
            return line
    raise AssertionError("demo never became ready:\n" + "".join(output))


@contextlib.contextmanager
def demo_process(*extra: str) -> Iterator[Running]:
    """`kvplan demo` on free ports, Prometheus scraping every second."""
    cmd = [sys.executable, "-m", "kvplan.cli", "demo", "--port", "0", "--prometheus-port", "0",
           "--scrape-interval", "1s", "--rps", "6", *extra]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )  # fmt: skip
    output: list[str] = []
    try:
        ready = _read_until_ready(proc, output, 120)
        fields = dict(re.findall(r"(\w+)=(\S*)", ready))
        yield Running(proc, fields["router"], fields["admin"], fields["prometheus"], fields["token"], output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cli(running: Running, *args: str) -> subprocess.CompletedProcess[str]:
    """A `kvplan` command from a second terminal, with the environment the banner says to export."""
    env = {**os.environ, **dict(re.findall(r"(KVPLAN_\w+)=(\S+)", "".join(running.output)))}
    return subprocess.run(
        [sys.executable, "-m", "kvplan.cli", *args], capture_output=True, text=True, env=env
    )


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def alerts(running: Running) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{running.prometheus}/api/v1/alerts", timeout=10).json()["data"][
        "alerts"
    ]
    return found


def stop_with_sigint(running: Running, expected_children: int) -> str:
    """SIGINT, as Ctrl-C sends it; every child must be gone and the exit clean. Returns the output."""
    started = children(running.proc.pid)
    assert len(started) == expected_children, started
    running.proc.send_signal(signal.SIGINT)
    rest, _ = running.proc.communicate(timeout=30)
    assert running.proc.returncode == 0, rest
    assert f"stopped {expected_children} processes" in rest and "killed" not in rest, rest
    assert not [pid for pid in started if alive(pid)]
    with contextlib.suppress(httpx.ConnectError):
        httpx.get(f"{running.router}/health", timeout=2)
        raise AssertionError("the router still answers after the demo stopped")
    return rest
