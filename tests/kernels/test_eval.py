"""Accuracy on the real model (SmolLM2-135M-Instruct): two-pass perplexity through each format."""

from __future__ import annotations

import pytest

from kvplan.kernels import eval as E


@pytest.fixture(scope="module")
def rows() -> dict[str, E.FormatAccuracy]:
    # 512 tokens fill the cache, the next 300 are scored reading it (>= 256 positions)
    result = E.evaluate(("bf16", "fp8_e4m3", "int8", "int4_hadamard"), prefix=512, scored=300)
    return {r.name: r for r in result}


def test_the_cache_is_really_read_in_the_second_pass(rows: dict[str, E.FormatAccuracy]) -> None:
    # a one-pass measurement would make every format identical; here they differ
    assert len({round(r.ppl, 6) for r in rows.values()}) == len(rows)
    assert 5 < rows["fp32 (unquantized)"].ppl < 60
    assert rows["int8"].positions >= 256


def test_int8_fp8_and_shipped_int4_meet_the_accuracy_targets(rows: dict[str, E.FormatAccuracy]) -> None:
    for name in ("int8", "fp8_e4m3", "int4_hadamard"):
        assert E.verdict(rows[name]) == "met", E.table(list(rows.values()))


def test_fewer_bits_cost_more_perplexity(rows: dict[str, E.FormatAccuracy]) -> None:
    assert abs(rows["int8"].delta) < rows["int4_hadamard"].delta
