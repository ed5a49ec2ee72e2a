"""vLLM-like backends and `kvplan serve` as real processes on loopback, ephemeral ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from kvplan.procs import ROUTER_READY, ready_url

ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("fake_vllm.py")
TOKEN = "test-admin-token"
MODEL = "test-model"


class Backend:
    """One fake vLLM worker process (tests/router/fake_vllm.py)."""

    def __init__(self, name: str, tokens: int = 8, token_delay: float = 0.0) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(FAKE),
                "--port",
                "0",
                "--model",
                MODEL,
                "--name",
                name,
                "--tokens",
                str(tokens),
                "--token-delay",
                str(token_delay),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = ready_url(self.proc, "listening on ", 30)

    def control(self, **settings: Any) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/_control", json=settings, timeout=5)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def plan_dict(
    baseline: list[str],
    candidate: list[str] | None = None,
    weight: int = 0,
    buckets: tuple[tuple[str, int], ...] = (("short", 4096),),
    **pool_extra: Any,
) -> dict[str, Any]:
    """A plan whose every bucket uses the same baseline (bf16) and candidate (int8) endpoints."""
    out = []
    for name, max_tokens in buckets:
        bucket: dict[str, Any] = {
            "name": name,
            "max_tokens": max_tokens,
            "baseline": {
                "name": f"{name}-bf16",
                "model": MODEL,
                "kv_format": "bf16",
                "max_model_len": max_tokens,
                "endpoints": baseline,
                **pool_extra,
            },
            "rollout": {"weight": weight},
        }
        if candidate is not None:
            bucket["candidates"] = [
                {
                    "name": f"{name}-int8",
                    "model": MODEL,
                    "kv_format": "int8",
                    "max_model_len": max_tokens,
                    "endpoints": candidate,
                    **pool_extra,
                }
            ]
        out.append(bucket)
    return {"buckets": out, "default_max_tokens": 64}


class RouterProc:
    """`kvplan serve` as a subprocess."""

    def __init__(self, plan_path: Path, *extra: str) -> None:
        token_file = plan_path.with_suffix(".token")
        token_file.write_text(TOKEN + "\n")
        self.plan_path = plan_path
        self.log_path = plan_path.with_suffix(".log")
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvplan.cli",
                "serve",
                "--plan",
                str(plan_path),
                "--port",
                "0",
                "--admin-token-file",
                str(token_file),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.url = ready_url(self.proc, ROUTER_READY, 30)
        self.admin = {"Authorization": f"Bearer {TOKEN}"}

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def poll(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until `condition()` holds (no fixed sleeps standing in for synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c
