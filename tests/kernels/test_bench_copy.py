"""bench/kernels_decode.sm_copy, the SM copy kernel that is one of the write target's copy
baselines: it copies every byte of a buffer whose size is not a multiple of its block."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from support import bench_module


@pytest.fixture
def kd() -> Iterator[object]:
    yield from bench_module("kernels_decode")


def test_sm_copy_copies_every_byte(kd: object) -> None:
    n = 4 * (kd.COPY_BLOCK + 37)  # type: ignore[attr-defined]  # a partial last program
    src = torch.randint(0, 256, (n,), dtype=torch.uint8)
    dst = torch.zeros_like(src)
    kd.sm_copy(src, dst)()  # type: ignore[attr-defined]
    assert torch.equal(src, dst)
