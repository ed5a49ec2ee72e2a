"""bench/kernels_compile.gluon_tuning, the one way benchmark variants change api's launch tables:
a variant sees only what it asks for, and every table is as it was afterwards."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from support import bench_module

from kvplan.formats import get_format
from kvplan.kernels import api


@pytest.fixture
def kc() -> Iterator[object]:
    yield from bench_module("kernels_compile")


def _tables() -> list[object]:
    return copy.deepcopy([api.TUNING_GLUON, api.TUNING_GLUON_REGIME, api.TUNING_GLUON_BY_FORMAT,
                          api.TUNING_COMBINE, api.TUNING_WRITE, api.TUNING_WRITE_BY_FORMAT])  # fmt: skip


@pytest.mark.parametrize(
    "over",
    [
        {"gluon": True, "unroll": 4, "combine_block_d": 32, "write_num_warps": 8},
        {"gluon": True, "per_format": True, "waves": 0},
        {"gluon": True, "per_format": "s6"},
        {"gluon": True, "per_format": "s7"},
    ],
)
def test_every_launch_table_is_restored(kc: object, over: dict[str, object]) -> None:
    before = _tables()
    with kc.gluon_tuning(over):  # type: ignore[attr-defined]
        assert _tables() != before
    assert _tables() == before


def test_a_write_variant_is_one_launch_for_every_format_and_tables_hold_beside_per_format(kc: object) -> None:
    int4h = get_format("int4_hadamard")
    with kc.gluon_tuning({"write_num_warps": 8}):  # type: ignore[attr-defined]
        assert api.TUNING_WRITE_BY_FORMAT == {} and api.TUNING_WRITE["num_warps"] == 8
    with kc.gluon_tuning({"gluon": True, "per_format": True, "waves": 0}):  # type: ignore[attr-defined]
        for regime in api.TUNING_GLUON_REGIME:
            assert api._gluon_tuning(int4h, *{"short": (8, 132, 1024), "full": (256, 132, 32768),
                                               "partial": (64, 132, 32768), "small": (8, 132, 32768)}[regime]
                                      )["waves"] == 0  # fmt: skip


def test_the_check_section_runs_only_variants_that_were_asked_for(kc: object) -> None:
    """bf16/fp16 pages (always the Triton kernel) are checked once, under a variant that was asked
    for: a --variants-json without "triton" made the check section ask for an unknown variant."""
    import kernels_decode as kd

    cases = kd.check_cases(["bf16", "int4"], ["shipped", "shipped_pdl"])
    assert {(c[0], c[1]) for c in cases} == {
        ("bf16", "shipped"),
        ("fp16", "shipped"),
        ("int4", "shipped"),
        ("int4", "shipped_pdl"),
    }
    with_triton = kd.check_cases(["bf16", "int4"], ["triton", "shipped"])
    assert {c[1] for c in with_triton if c[0] == "bf16"} == {"triton"}
    assert {c[1] for c in with_triton if c[0] == "int4"} == {"triton", "shipped"}
