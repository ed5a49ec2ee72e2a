"""vLLM-like backends and `kvplan serve` as real processes on loopback, ephemeral ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from support import ROOT
from support.procs import stop
from support.router import RouterProcess
from support.waiting import poll

from kvplan.procs import ready_url

__all__ = ["MODEL", "ROOT", "TOKEN", "Backend", "RouterProc", "client", "plan_dict", "poll"]

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
        stop(self.proc, 5)


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


class RouterProc(RouterProcess):
    """`kvplan serve` as a subprocess, its admin API on TOKEN."""

    def __init__(self, plan_path: Path, *extra: str) -> None:
        super().__init__(plan_path, *extra, token=TOKEN, timeout=30)


@contextmanager
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c
