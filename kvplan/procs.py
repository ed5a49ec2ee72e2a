"""Local processes and ports: how kvplan's servers announce they are up, and how callers wait.

The router and the simulated worker print one line, `<prefix><url>`, on stdout once they listen;
the demo, the tests and the benchmarks wait for it (or for a port) with a deadline, never a fixed
sleep. Standard library only.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import time

ROUTER_READY = "kvplan router listening on "


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now (ephemeral; another process may still take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Until something accepts TCP connections on host:port (TimeoutError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def ready_url(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> str:
    """The URL of the first stdout line of `proc` that starts with `prefix`; RuntimeError if the
    process exits first, TimeoutError if no such line comes within `timeout` s."""
    return ready_line(proc, prefix, timeout).split()[0]


def router_urls(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, str]:
    """A starting router's listeners: {"api": url, "admin": url[, "metrics": url]}, from its line
    `<ROUTER_READY>http://api admin http://admin [metrics http://metrics]`."""
    first, *rest = ready_line(proc, ROUTER_READY, timeout).split()
    return {"api": first, **dict(zip(rest[::2], rest[1::2], strict=True))}


def ready_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> str:
    """The rest of the first stdout line of `proc` that starts with `prefix` (see `ready_url`)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before it was ready")
    raise TimeoutError(f"{proc.args!r} printed no {prefix!r} within {timeout} s")
