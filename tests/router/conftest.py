"""Fixtures: vLLM-like backends and `kvplan serve` as real processes (see router_procs.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from router_procs import Backend, RouterProc


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def start(name: str, **kw: Any) -> Backend:
        b = Backend(name, **kw)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Callable[..., RouterProc]]:
    started: list[RouterProc] = []

    def start(plan: dict[str, Any], *extra: str) -> RouterProc:
        path = tmp_path / f"pools{len(started)}.yaml"
        path.write_text(yaml.safe_dump(plan))
        r = RouterProc(path, *extra)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
