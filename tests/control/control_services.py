"""Real services for the control tests .

redis-server and prometheus on loopback, on ephemeral ports, in temp dirs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

PLAN = """\
version: 1
slo: {ttft_seconds: 0.5, itl_seconds: 0.05}
buckets:
  - name: 8k
    max_tokens: 8192
    baseline: {name: b8k-bf16, model: llama-3.1-8b, max_model_len: 8192}
    candidates:
      - {name: b8k-int8, model: llama-3.1-8b, kv_format: int8, max_model_len: 8192}
  - name: 16k
    max_tokens: 16384
    baseline: {name: b16k-bf16, model: llama-3.1-8b, max_model_len: 16384}
    candidates:
      - {name: b16k-int4, model: llama-3.1-8b, kv_format: int4, max_model_len: 16384}
  - name: 32k
    max_tokens: 32768
    baseline: {name: b32k-bf16, model: llama-3.1-8b, max_model_len: 32768}
    candidates:
      - {name: b32k-int8, model: llama-3.1-8b, kv_format: int8, max_model_len: 32768}
    rollout: {weight: 10}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


class RedisServer:
    """A redis-server without persistence: a restart loses everything, as in production caches."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (scripts/setup.sh test installs it)"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], check=True, capture_output=True, text=True
        )
        return out.stdout
