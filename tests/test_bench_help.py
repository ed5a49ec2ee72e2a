"""Every benchmark answers --help (exit 0, a usage line) without running or writing a result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_help_only_prints_usage(script: str) -> None:
    results = {p: p.stat().st_mtime_ns for p in (BENCH / "results").iterdir()}
    run = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.startswith("usage: "), run.stdout[-500:] + run.stderr[-1500:]
    after = {p: p.stat().st_mtime_ns for p in (BENCH / "results").iterdir()}
    assert after == results, "--help wrote into bench/results"
