"""The official `openai` client against `kvplan serve` in front of simulated vLLM workers."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
import yaml
from router_procs import TOKEN, RouterProc

from kvplan.formats import get_format
from kvplan.workers.sim.launch import sim_worker_process

SERVED = "llama"


@pytest.fixture(scope="module")
def sim_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    common = [
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "h100",
        "--speed-factor",
        "0",
        "--served-model-name",
        SERVED,
    ]
    with (
        sim_worker_process([*common, "--kv-format", "bf16"]) as base_url,
        sim_worker_process([*common, "--kv-format", "int8"]) as cand_url,
    ):
        pool = {"model": SERVED, "max_model_len": 8192}
        plan = {
            "buckets": [
                {
                    "name": "short",
                    "max_tokens": 8192,
                    "baseline": {"name": "short-bf16", "kv_format": "bf16", "endpoints": [base_url], **pool},
                    "candidates": [
                        {"name": "short-int8", "kv_format": "int8", "endpoints": [cand_url], **pool}
                    ],
                    "rollout": {"weight": 50},
                }
            ]
        }
        path = tmp_path_factory.mktemp("sim") / "pools.yaml"
        path.write_text(yaml.safe_dump(plan))
        r = RouterProc(path)
        yield r
        r.stop()


@pytest.fixture
def oai(sim_router: RouterProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim_router.url}/v1", api_key="sk-test", max_retries=0)


def _regime(pool: str) -> str:
    return get_format("int8" if pool.endswith("int8") else "bf16").regime


def test_chat_completion_answers_with_pool_regime_and_request_id(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=SERVED,
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=8,
        extra_headers={"X-Request-Id": "req-123", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )
    pool = raw.headers["x-kvplan-pool"]
    assert pool in ("short-bf16", "short-int8")
    assert raw.headers["x-kv-regime"] == _regime(pool)
    assert raw.headers["x-request-id"] == "req-123"
    completion = raw.parse()
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_chat_streaming_yields_chunks_then_finish(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Count"}], max_tokens=12, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_completions_streaming_and_not(oai: openai.OpenAI) -> None:
    done = oai.completions.create(model=SERVED, prompt="Once upon a time", max_tokens=6)
    assert done.choices[0].text
    parts = list(oai.completions.create(model=SERVED, prompt="Once upon a time", max_tokens=6, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices)


def test_models_lists_the_plan_models(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == [SERVED]


def test_same_user_keeps_its_pool_and_both_pools_serve(oai: openai.OpenAI) -> None:
    pools_by_user: dict[str, set[str]] = {}
    for i in range(40):
        user = f"user-{i % 10}"
        raw = oai.chat.completions.with_raw_response.create(
            model=SERVED, messages=[{"role": "user", "content": "hi"}], max_tokens=2, user=user
        )
        pools_by_user.setdefault(user, set()).add(raw.headers["x-kvplan-pool"])
    assert all(len(p) == 1 for p in pools_by_user.values()), pools_by_user
    assert set().union(*pools_by_user.values()) == {"short-bf16", "short-int8"}


def test_unknown_model_is_404_listing_models(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"
    assert SERVED in str(err.value.message)


def test_too_long_is_400_context_length_exceeded(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model=SERVED, messages=[{"role": "user", "content": "word " * 30_000}], max_tokens=10
        )
    assert err.value.code == "context_length_exceeded"


def test_admin_token_is_not_needed_for_inference_but_for_admin(sim_router: RouterProc) -> None:
    import httpx

    assert httpx.get(f"{sim_router.admin_url}/admin/state").status_code == 401
    ok = httpx.get(f"{sim_router.admin_url}/admin/state", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["buckets"]["short"]["weight"] == 50
