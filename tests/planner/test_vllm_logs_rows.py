"""bench/planner_vllm_logs.yaml's rows are checked before the bench sizes them: a misspelt sampler,
KV dtype or release would otherwise be read as a default (PyTorch's sampler, ...), silently."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.planner_vllm_logs import check_row

ROWS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "bench" / "planner_vllm_logs.yaml").read_text()
)["rows"]


def test_the_shipped_rows_pass() -> None:
    assert len(ROWS) >= 20
    for row in ROWS:
        check_row(row)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("sampler", "flashinfr", "sampler 'flashinfr' must be flashinfer, pytorch or absent"),
        ("kv_dtype", "fp8_e5m2", "kv_dtype 'fp8_e5m2' must be one of bf16, auto, bfloat16, float16, fp8,"),
        ("version", "0.x", "bad --vllm-version '0.x'"),
        ("version", None, "bad --vllm-version 'None'"),
    ],
)
def test_a_row_with_a_value_the_bench_cannot_read_is_refused(field: str, value: Any, says: str) -> None:
    row = {**ROWS[0], field: value}
    with pytest.raises(ValueError, match=f"row {ROWS[0]['id']}: ") as exc:
        check_row(row)
    assert says in str(exc.value)
