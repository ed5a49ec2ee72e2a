"""The decision core without any I/O: tokens, bucket, policy, endpoint choice, metric buckets."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from kvplan.control.state import BucketFlags, FlagSnapshot, MemoryFlagStore
from kvplan.errors import NotFound
from kvplan.plan import Plan, parse_plan
from kvplan.router.api_errors import ApiError
from kvplan.router.endpoints import Availability, Endpoint, Saturation, availability
from kvplan.router.inputs import CHAT, COMPLETION, parse
from kvplan.router.metrics import RouterMetrics
from kvplan.router.monitor import parse_cache_config, parse_load
from kvplan.router.policy import PolicyInput, get_policy
from kvplan.router.routes import RouteTable
from kvplan.router.tokens import (
    MESSAGE_OVERHEAD,
    REQUEST_OVERHEAD,
    EstimateCounter,
    TokenizerCounter,
    chat_prompt,
    completion_prompt,
)

SAT = Saturation()
NOW = 1000.0

PLAN = """
buckets:
  - name: b16k
    max_tokens: 16384
    baseline: {name: p16-bf16, model: m, kv_format: bf16, max_model_len: 16384, endpoints: ["http://h:1"]}
    candidates: [{name: p16-int4, model: m, kv_format: int4, max_model_len: 16384, endpoints: ["http://h:2"]}]
    rollout: {weight: 100}
  - name: b32k
    max_tokens: 32768
    baseline: {name: p32-bf16, model: m, kv_format: bf16, max_model_len: 32768, endpoints: ["http://h:3"]}
    candidates: [{name: p32-int8, model: m, kv_format: int8, max_model_len: 32768, endpoints: ["http://h:4"]}]
    rollout: {weight: 100}
slo: {ttft_seconds: 0.7, e2e_seconds: 45}
"""


def _fresh(table: RouteTable) -> None:
    for ep in table.endpoints.values():
        ep.scraped_at = NOW


def _chat(text: str, max_tokens: int | None = None) -> bytes:
    import json

    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    return json.dumps(body).encode()


def test_dual_policy_is_configuration_int4_short_int8_long() -> None:
    table = RouteTable(parse_plan(PLAN))
    _fresh(table)
    snap = MemoryFlagStore(table.plan).snapshot()
    short = table.decide(parse(CHAT, _chat("hi", 1000)), "u", snap, NOW, SAT)
    long = table.decide(parse(CHAT, _chat("hi", 20_000)), "u", snap, NOW, SAT)
    assert (short.pool.name, short.pool.regime.split(";")[0]) == ("p16-int4", "int4")
    assert (long.pool.name, long.pool.regime.split(";")[0]) == ("p32-int8", "int8")
    with pytest.raises(ApiError) as err:
        table.decide(parse(CHAT, _chat("hi", 40_000)), "u", snap, NOW, SAT)
    assert err.value.code == "context_length_exceeded" and err.value.status == 400


def test_needed_tokens_use_plan_default_max_tokens() -> None:
    plan = parse_plan(PLAN.replace("slo:", "default_max_tokens: 16380\nslo:"))
    table = RouteTable(plan)
    _fresh(table)
    route = table.decide(parse(CHAT, _chat("hello")), "u", MemoryFlagStore(plan).snapshot(), NOW, SAT)
    assert route.bucket.bucket.name == "b32k" and route.needed_tokens == route.prompt_tokens + 16380


def _inp(flags: BucketFlags, pct: int, state: Availability = Availability.AVAILABLE) -> PolicyInput:
    return PolicyInput(flags.bucket, flags, pct, lambda _pool: state)


def test_length_bucket_policy_reasons() -> None:
    policy = get_policy("length-bucket")
    f = BucketFlags("b", "base", "cand", weight=30)
    assert policy.select(_inp(f, 30)).pool == "cand"
    assert (policy.select(_inp(f, 31)).pool, policy.select(_inp(f, 31)).reason) == ("base", "weight")
    killed = BucketFlags("b", "base", "cand", weight=100, killed=True)
    assert (policy.select(_inp(killed, 1)).pool, policy.select(_inp(killed, 1)).reason) == ("base", "killed")
    assert policy.select(_inp(f, 1, Availability.UNHEALTHY)).reason == "fallback"
    assert policy.select(_inp(f, 1, Availability.SATURATED)).reason == "fallback"
    assert policy.select(_inp(f, 1, Availability.STALE)).reason == "stale"
    assert policy.select(_inp(BucketFlags("b", "base", None), 1)).reason == "no_candidate"
    assert get_policy("baseline-only").select(_inp(f, 1)).pool == "base"
    with pytest.raises(NotFound, match="known: length-bucket"):
        get_policy("length-buckt")


def test_stale_load_counts_as_saturated() -> None:
    ep = Endpoint("p", "http://h:1", 8)
    assert availability([ep], NOW, SAT) is Availability.STALE  # never scraped
    ep.scraped_at = NOW - 1
    assert availability([ep], NOW, SAT) is Availability.AVAILABLE
    ep.kv_usage = 0.97
    assert availability([ep], NOW, SAT) is Availability.SATURATED
    ep.kv_usage, ep.scraped_at = 0.1, NOW - 10
    assert availability([ep], NOW, SAT) is Availability.STALE


def test_tokenizer_counts_with_chat_overhead(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "again": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    counter = TokenizerCounter(str(path))
    assert completion_prompt(counter, "hello world again hello").count == 4 + 1  # + BOS
    messages = [{"role": "system", "content": "hello"}, {"role": "user", "content": "world again"}]
    chat = chat_prompt(counter, messages)
    assert chat.count == 3 + 2 * MESSAGE_OVERHEAD + REQUEST_OVERHEAD
    # the tokens kept for prefix identity: BOS, then per message its header and its ids, aligned
    assert len(chat.data) == (1 + 2 * MESSAGE_OVERHEAD + 3) * chat.unit
    plan_text = PLAN.replace(
        "model: m, kv_format: bf16, max_model_len: 16384,",
        f"model: m, kv_format: bf16, max_model_len: 16384, tokenizer: {path.name},",
    )
    table = RouteTable(parse_plan(plan_text), plan_dir=tmp_path)
    assert isinstance(table.counters["m"], TokenizerCounter)
    assert completion_prompt(EstimateCounter(), "abcdefg").count == 3 + 1  # 7 bytes / 3, rounded up


def test_completion_prompt_forms() -> None:
    table = RouteTable(parse_plan(PLAN))
    assert table.tokens(parse(COMPLETION, b'{"model": "m", "prompt": [1, 2, 3, 4]}')).count == 4
    assert table.tokens(parse(COMPLETION, b'{"model": "m", "prompt": [[1, 2], [1, 2, 3]]}')).count == 3


def test_histograms_contain_slo_bounds_and_every_label_exists() -> None:
    plan: Plan = parse_plan(PLAN)
    text = generate_latest(RouterMetrics(plan).registry).decode()
    ttft = [x for x in text.splitlines() if x.startswith("kvplan_router_ttft_seconds_bucket")]
    e2e = [x for x in text.splitlines() if x.startswith("kvplan_router_e2e_seconds_bucket")]
    assert any('le="0.7"' in x for x in ttft) and any('le="45.0"' in x for x in e2e)
    for pool in ("p16-bf16", "p16-int4", "p32-bf16", "p32-int8"):
        for outcome in ("ok", "client_error", "upstream_error", "backpressure"):
            assert f'outcome="{outcome}",pool="{pool}"' in text
    assert 'reason="killed"' in text and 'reason="stale"' in text


def test_parse_vllm_load() -> None:
    text = (
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0\n'
        'vllm:num_requests_waiting_by_reason{reason="x"} 99\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75\n'
    )
    assert parse_load(text) == (5.0, 0.75)


def test_snapshot_without_bucket_falls_back_to_plan_defaults() -> None:
    table = RouteTable(parse_plan(PLAN))
    _fresh(table)
    empty = FlagSnapshot(buckets={})
    route = table.decide(parse(CHAT, _chat("hi", 100)), "u", empty, NOW, SAT)
    assert route.pool.name == "p16-int4"  # plan rollout weight 100


def test_block_size_and_cache_size_come_from_vllm_cache_config_info() -> None:
    from kvplan.workers.sim.metrics import CacheInfo, WorkerMetrics

    page = WorkerMetrics("m", 8192, CacheInfo(26914, 16, "auto", 0.92)).exposition().decode()
    assert parse_cache_config(page) == (16, 26914)
    assert parse_cache_config("vllm:num_requests_waiting 0.0\n") == (0, 0)  # an older vLLM: unknown


def test_serve_options_set_the_probe_timeout_and_the_staleness_bound() -> None:
    from kvplan.router.run import ServeOptions, settings_of
    from kvplan.router.settings import Listen

    def options(probe_timeout: float, load_stale_after: float) -> ServeOptions:
        return ServeOptions(
            plan_path=Path("pools.yaml"), api=Listen("127.0.0.1", 0), admin=Listen("127.0.0.1", 0),
            metrics=None, flag_store=None, admin_token_file=None, cohort_header=None,
            provenance_log=None, max_body=1024, max_in_flight=8, first_byte_timeout=1.0,
            idle_timeout=1.0, connect_timeout=1.0, probe_timeout=probe_timeout,
            load_stale_after=load_stale_after, header_timeout=1.0, body_timeout=1.0,
            keepalive_timeout=1.0, log_level="info",
        )  # fmt: skip

    slow = settings_of(options(5.0, 30.0))
    assert slow.limits.probe_timeout == 5.0
    ep = Endpoint("p", "http://h:1", 8)
    ep.scraped_at = NOW - 10  # ten seconds since the last answered scrape
    assert availability([ep], NOW, slow.saturation) is Availability.AVAILABLE
    assert availability([ep], NOW, settings_of(options(1.0, 3.0)).saturation) is Availability.STALE
