"""Every benchmark answers --help (exit 0, a usage line) without running or writing a result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def _written() -> dict[Path, int]:
    """Every file a benchmark could write: its results and the repo's data."""
    return {
        p: p.stat().st_mtime_ns
        for d in (BENCH / "results", ROOT / "data")
        for p in d.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_help_only_prints_usage(script: str) -> None:
    before = _written()
    run = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.startswith("usage: "), run.stdout[-500:] + run.stderr[-1500:]
    assert _written() == before, "--help wrote into bench/results or data/"
