"""The pool plan: validation with field and line in every error."""

import pytest

from kvplan.errors import PlanError
from kvplan.plan import Plan, dump_plan, json_schema, parse_plan

GOOD = """\
version: 1
buckets:
  - name: 8k
    max_tokens: 8192
    baseline: {name: b8k-bf16, model: llama-3.1-8b, max_model_len: 8192}
    candidates:
      - {name: b8k-int8, model: llama-3.1-8b, kv_format: int8, max_model_len: 8192}
  - name: 32k
    max_tokens: 32768
    baseline: {name: b32k-bf16, model: llama-3.1-8b, max_model_len: 32768}
"""


def test_round_trip() -> None:
    plan = parse_plan(GOOD)
    assert [b.name for b in plan.buckets] == ["8k", "32k"]
    assert plan.pool("b8k-int8").kv_format == "int8"
    assert parse_plan(dump_plan(plan)) == plan


def test_schema_is_json_schema() -> None:
    schema = json_schema()
    assert schema["type"] == "object" and "buckets" in schema["properties"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "kv_format: int8",
            "kv_format: int3",
            r"<plan>:7: buckets.0.candidates.0.kv_format: unknown KV format",
        ),
        ("max_tokens: 32768", "max_tokens: -5", r"<plan>:9: buckets.1.max_tokens: .*greater than 0"),
        ("max_model_len: 32768}", "max_model_len: 16384}", r"<plan>:\d+: buckets.1: .*below the bucket"),
        ("name: 32k", "name: 8k", r"bucket names must be unique"),
        ("version: 1", "version: 9", r"<plan>:1: version: unsupported plan version 9"),
        ("model: llama-3.1-8b, max_model_len: 8192}", "max_model_len: 8192}", r"buckets.0.baseline.model"),
        ("name: 8k\n", "name: 8k\n    surprise: 1\n", r"<plan>:4: buckets.0.surprise: Extra inputs"),
        (
            "name: 8k\n",
            "name: 8k\n    rollout: {shadow: 150}\n",
            r"<plan>:4: buckets.0.rollout.shadow: .*less than or equal to 100",
        ),
        (
            "name: 8k\n",
            "name: 8k\n    rollout: {shadow: lots}\n",
            r"<plan>:4: buckets.0.rollout.shadow: .*valid integer",
        ),
    ],
)
def test_malformed_plan_names_field_and_line(old: str, new: str, expected: str) -> None:
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(PlanError, match=expected):
        parse_plan(text)


def test_not_yaml_names_the_line() -> None:
    with pytest.raises(PlanError, match=r"<plan>:[34]: not valid YAML"):
        parse_plan("version: 1\nbuckets:\n  - name: [unclosed\n")


def test_empty_file() -> None:
    with pytest.raises(PlanError, match="must be a YAML mapping"):
        parse_plan("")


def test_pool_parallelism_must_match_gpu_count() -> None:
    with pytest.raises(PlanError, match="gpus_per_replica"):
        parse_plan(GOOD.replace("max_model_len: 8192}", "max_model_len: 8192, tensor_parallel: 2}", 1))


def test_plan_model_is_frozen() -> None:
    plan: Plan = parse_plan(GOOD)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        plan.buckets[0].__setattr__("max_tokens", 1)
