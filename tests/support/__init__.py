"""Helpers shared by the tests and the benchmarks: waiting on a condition, stopping processes,
`kvplan serve` as a real process. The tests import it as `support` (pytest's `pythonpath` is
tests/); a benchmark puts tests/ on sys.path first."""

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def bench_module(name: str) -> Iterator[ModuleType]:
    """A benchmark script of bench/ imported as a module, for a pytest fixture to yield from
    (bench/ is on sys.path while the test runs)."""
    import importlib
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))
