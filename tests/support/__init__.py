"""Helpers shared by the tests and the benchmarks: waiting on a condition, stopping processes,
`kvplan serve` as a real process. The tests import it as `support` (pytest's `pythonpath` is
tests/); a benchmark puts tests/ on sys.path first."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
