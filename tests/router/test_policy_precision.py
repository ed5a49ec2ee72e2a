"""The precision policy: risky requests stay off the candidate even inside the rollout weight."""

from __future__ import annotations

import json

import pytest

from kvplan.control.state import BucketFlags, FlagSnapshot
from kvplan.errors import PlanError
from kvplan.plan import parse_plan
from kvplan.router.endpoints import Availability, Saturation
from kvplan.router.inputs import CHAT, parse
from kvplan.router.policy import PolicyInput, RequestSignals, get_policy
from kvplan.router.policy.precision import cited_sources, risk
from kvplan.router.routes import RouteTable

PLAN = """
buckets:
  - name: rag
    max_tokens: 32768
    policy: precision
    baseline: {name: rag-bf16, model: m, max_model_len: 32768, endpoints: ["http://h:1"]}
    candidates:
      - {name: rag-int4, model: m, kv_format: int4, max_model_len: 32768, endpoints: ["http://h:2"]}
      - {name: rag-int8, model: m, kv_format: int8, max_model_len: 32768, endpoints: ["http://h:3"]}
    rollout: {weight: 100}
    precision: {to: rag-int8, structured: true, min_sources: 4, min_prompt_tokens: 200}
"""
FLAGS = BucketFlags("rag", "rag-bf16", "rag-int4", weight=100)


def _inp(signals: RequestSignals, pct: int = 5, down: frozenset[str] = frozenset()) -> PolicyInput:
    def state(pool: str) -> Availability:
        return Availability.UNHEALTHY if pool in down else Availability.AVAILABLE

    return PolicyInput("rag", FLAGS, pct, state, signals)


def _policy():  # type: ignore[no-untyped-def]
    return get_policy("precision", parse_plan(PLAN).bucket("rag"))


RETRIEVAL = " ".join(f"[{i}] Passage {i} says something about the topic." for i in range(1, 7))


def test_the_heuristic_counts_distinct_cited_sources() -> None:
    assert cited_sources(RETRIEVAL) == 6
    assert cited_sources("[1] a [1] again, [doc-2], [S3], [Source 4], <document index='5'>") == 5
    assert cited_sources("x = a[1] + b[i]; see [note]") == 1  # code indexing with a digit still counts once


@pytest.mark.parametrize(
    ("signals", "reason"),
    [
        (RequestSignals(precision_high=True), "precision_header"),
        (RequestSignals(structured=True), "precision_rule"),
        (RequestSignals(prompt_tokens=500, text=lambda: RETRIEVAL), "precision_prompt"),
    ],
)
def test_each_risk_keeps_the_request_off_the_candidate(signals: RequestSignals, reason: str) -> None:
    d = _policy().select(_inp(signals))
    assert (d.pool, d.reason) == ("rag-int8", reason)  # the plan's safe pool, not the INT4 candidate


def test_ordinary_requests_follow_the_weight() -> None:
    policy = _policy()
    assert (
        policy.select(_inp(RequestSignals(prompt_tokens=500, text=lambda: "a short chat"))).pool == "rag-int4"
    )
    short_rag = RequestSignals(prompt_tokens=100, text=lambda: RETRIEVAL)  # many sources, but short
    assert policy.select(_inp(short_rag)).pool == "rag-int4"
    half = BucketFlags("rag", "rag-bf16", "rag-int4", weight=50)
    outside = PolicyInput(
        "rag", half, 80, lambda _p: Availability.AVAILABLE, RequestSignals(precision_high=True)
    )
    assert (policy.select(outside).pool, policy.select(outside).reason) == ("rag-bf16", "weight")


def test_the_text_is_read_only_when_a_candidate_was_chosen() -> None:
    read: list[int] = []

    def text() -> str:
        read.append(1)
        return RETRIEVAL

    flags = BucketFlags("rag", "rag-bf16", "rag-int4", weight=0)
    inp = PolicyInput(
        "rag", flags, 50, lambda _p: Availability.AVAILABLE, RequestSignals(prompt_tokens=900, text=text)
    )
    assert _policy().select(inp).pool == "rag-bf16" and not read


def test_an_unavailable_safe_candidate_falls_back_to_the_baseline_with_the_same_reason() -> None:
    d = _policy().select(_inp(RequestSignals(precision_high=True), down=frozenset({"rag-int8"})))
    assert (d.pool, d.reason) == ("rag-bf16", "precision_header")


def test_without_a_plan_section_the_header_sends_to_the_baseline() -> None:
    d = get_policy("precision").select(_inp(RequestSignals(precision_high=True)))
    assert (d.pool, d.reason) == ("rag-bf16", "precision_header")
    assert risk(parse_plan(PLAN.replace("structured: true", "structured: false")).bucket("rag").precision,
                RequestSignals(structured=True)) is None  # fmt: skip


def test_the_route_table_passes_header_tools_and_prompt_to_the_policy() -> None:
    table = RouteTable(parse_plan(PLAN))
    for ep in table.endpoints.values():
        ep.scraped_at = 1000.0
    snap = FlagSnapshot({"rag": FLAGS})

    def decide(body: dict[str, object], high: bool = False) -> tuple[str, str]:
        comp = parse(CHAT, json.dumps({"model": "m", **body}).encode())
        r = table.decide(comp, "user-1", snap, 1000.0, Saturation(), precision_high=high)
        return r.pool.name, r.reason

    chat = {"messages": [{"role": "user", "content": "hello"}]}
    assert decide(chat) == ("rag-int4", "weight")
    assert decide(chat, high=True) == ("rag-int8", "precision_header")
    assert decide({**chat, "tools": [{"type": "function", "function": {"name": "f"}}]}) == (
        "rag-int8",
        "precision_rule",
    )
    assert decide({**chat, "response_format": {"type": "json_object"}}) == ("rag-int8", "precision_rule")
    long_rag = {"messages": [{"role": "user", "content": RETRIEVAL * 8}]}
    assert decide(long_rag) == ("rag-int8", "precision_prompt")


def test_a_safe_pool_outside_the_bucket_is_refused_with_its_line() -> None:
    with pytest.raises(PlanError, match=r"precision.to 'nope' is not a pool of this bucket"):
        parse_plan(PLAN.replace("to: rag-int8", "to: nope"))


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("{min_sources: 0}", "min_sources"),
        ("{min_prompt_tokens: -1}", "min_prompt_tokens"),
        ("{header: perhaps}", "header"),
        ("{structured: [1]}", "structured"),
        ("{to: 3}", "to"),
        ("{min_source: 4}", "min_source"),  # a misspelt key is refused, not ignored
    ],
)
def test_a_bad_precision_section_names_the_field(section: str, field: str) -> None:
    text = PLAN.replace("{to: rag-int8, structured: true, min_sources: 4, min_prompt_tokens: 200}", section)
    with pytest.raises(PlanError, match=rf"buckets\.0\.precision\.{field}: "):
        parse_plan(text)
