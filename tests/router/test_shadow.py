"""The shadow sender in process, over an injected httpx transport: what it sends, what it counts,
what it stores (redacted), and that a full queue drops at once instead of waiting."""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvplan.plan import Plan, parse_plan
from kvplan.router.endpoints import Endpoint
from kvplan.router.metrics import RouterMetrics
from kvplan.router.settings import ShadowSettings
from kvplan.router.shadow import ShadowJob, ShadowSender, greedy_body, redact

PLAN = parse_plan("""
buckets:
  - name: short
    max_tokens: 2048
    baseline: {name: base, model: m, max_model_len: 2048}
    candidates: [{name: cand, model: m, kv_format: int4, max_model_len: 2048}]
""")
BASE, CAND = Endpoint("base", "http://base:1", 8), Endpoint("cand", "http://cand:2", 8)
WORDS = {"Paris": 1, "is": 2, "the": 3, "capital": 4, "Lyon": 5}


def _ids(text: str) -> list[int]:
    return [WORDS.get(w, 99) for w in text.split()]


class Pools:
    """Both pools behind one MockTransport: answers per host, every request kept."""

    def __init__(self, base: str = "Paris is the capital", cand: str = "Lyon is the capital") -> None:
        self.answers = {"base": base, "cand": cand}
        self.seen: list[httpx.Request] = []
        self.fail_candidate: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        host = {"127.0.0.1": "cand"}.get(request.url.host, request.url.host)
        if request.url.port == 1001:
            host = "base"
        body = json.loads(request.content)
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"count": 0, "tokens": _ids(body["prompt"])})
        if host == "cand" and self.fail_candidate:
            return httpx.Response(self.fail_candidate, json={"error": {"message": "boom"}})
        answer = {"role": "assistant", "content": self.answers[host]}
        return httpx.Response(200, json={"choices": [{"index": 0, "message": answer}]})


def _job(body: dict[str, object], tee: list[bytes] | None) -> ShadowJob:
    return ShadowJob("short", [BASE], [CAND], "base", "cand", "/v1/chat/completions",
                     json.dumps(body).encode(), "req-1", tee, False)  # fmt: skip


def _client_answer(text: str) -> list[bytes]:
    return [json.dumps({"choices": [{"message": {"content": text}}]}).encode()]


async def _run(pools: Pools, jobs: list[tuple[ShadowJob, bool]], settings: ShadowSettings) -> RouterMetrics:
    metrics = RouterMetrics(PLAN)
    sender = ShadowSender(metrics, settings, transport=httpx.MockTransport(pools))
    sender.start()
    try:
        for job, ok in jobs:
            sender.offer(job, ok)
        await asyncio.wait_for(sender.drain(), 10)
    finally:
        await sender.close()
    return metrics


def _count(metrics: RouterMetrics, family: str, *labels: str) -> float:
    return float(getattr(metrics, family).labels(*labels).value)


def test_greedy_body_keeps_max_tokens_and_forces_greedy_non_streamed() -> None:
    client = {"model": "m", "max_tokens": 7, "temperature": 0.8, "stream": True,
              "stream_options": {"include_usage": True}, "seed": 3, "n": 2}  # fmt: skip
    body, model = greedy_body(json.dumps(client).encode())
    assert model == "m"
    assert json.loads(body) == {
        "model": "m",
        "max_tokens": 7,
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "stream": False,
    }


def test_a_greedy_client_answer_is_paired_with_the_candidates_greedy_copy(tmp_path: Path) -> None:
    pools = Pools()
    log = tmp_path / "shadow.jsonl"
    body = {"model": "m", "messages": [{"role": "user", "content": "mail bob@example.com"}], "temperature": 0,
            "max_tokens": 5}  # fmt: skip
    job = _job(body, _client_answer("Paris is the capital"))
    m = asyncio.run(_run(pools, [(job, True)], ShadowSettings(record_share=100, log_path=str(log))))
    chats = [r for r in pools.seen if r.url.path == "/v1/chat/completions"]
    assert [r.url.host for r in chats] == ["cand"]  # the client's own answer is the baseline's
    sent = json.loads(chats[0].content)
    assert sent["temperature"] == 0 and sent["max_tokens"] == 5 and sent["stream"] is False
    assert chats[0].headers["x-kvplan-shadow"] == "1"
    assert {r.url.host for r in pools.seen if r.url.path == "/tokenize"} == {"cand"}
    assert _count(m, "shadow_sampled", "short", "cand") == _count(m, "shadow_pairs", "short", "cand") == 1
    tokens = m.shadow_agreement.labels("short", "cand", "tokens")
    assert sum(tokens.counts) == 1 and tokens.sum == pytest.approx(0.75)  # [1,2,3,4] vs [5,2,3,4]
    assert m.shadow_agreement.labels("short", "cand", "exact").sum == 0.0
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["baseline_source"] == "client" and record["tokens"] == pytest.approx(0.75)
    assert record["prompt"] == "mail [email]"
    assert (record["baseline_answer"], record["candidate_answer"]) == (
        "Paris is the capital",
        "Lyon is the capital",
    )


def test_a_sampled_client_request_is_replayed_greedily_on_the_baseline_too() -> None:
    pools = Pools(cand="Paris is the capital")
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0.7}
    m = asyncio.run(_run(pools, [(_job(body, None), True)], ShadowSettings()))
    assert sorted(r.url.host for r in pools.seen if r.url.path != "/tokenize") == ["base", "cand"]
    assert all(json.loads(r.content)["temperature"] == 0 for r in pools.seen if r.url.path != "/tokenize")
    assert m.shadow_agreement.labels("short", "cand", "exact").sum == 1.0


def test_an_unreadable_client_answer_drops_the_pair_without_asking_the_candidate() -> None:
    pools = Pools()
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = asyncio.run(_run(pools, [(_job(body, [b"<html>oops"]), True)], ShadowSettings()))
        gc.collect()
    assert _count(m, "shadow_dropped", "short", "cand", "baseline_failed") == 1 and not pools.seen
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]  # no coroutine left unawaited


@pytest.mark.parametrize("status", [500, 429, 404])
def test_a_failing_candidate_is_counted_never_raised(status: int) -> None:
    pools = Pools()
    pools.fail_candidate = status
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0}
    m = asyncio.run(_run(pools, [(_job(body, _client_answer("Paris")), True)], ShadowSettings()))
    assert _count(m, "shadow_dropped", "short", "cand", "candidate_failed") == 1
    assert _count(m, "shadow_pairs", "short", "cand") == 0


def test_a_failed_client_exchange_and_an_unreachable_candidate_are_dropped_and_counted() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def go() -> RouterMetrics:
        metrics = RouterMetrics(PLAN)
        sender = ShadowSender(metrics, ShadowSettings(), transport=httpx.MockTransport(refuse))
        sender.start()
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0}
        sender.offer(_job(body, _client_answer("x")), False)  # the client's own request failed
        sender.offer(_job(body, _client_answer("x")), True)
        await sender.drain()
        await sender.close()
        return metrics

    m = asyncio.run(go())
    assert _count(m, "shadow_dropped", "short", "cand", "baseline_failed") == 1
    assert _count(m, "shadow_dropped", "short", "cand", "candidate_failed") == 1
    assert _count(m, "shadow_sampled", "short", "cand") == 2


def test_a_full_queue_drops_at_once_and_counts() -> None:
    """With the candidate stuck, offers beyond the queue return at once and are counted."""
    release = asyncio.Event()

    async def go() -> RouterMetrics:
        async def stuck(request: httpx.Request) -> httpx.Response:
            await release.wait()
            return httpx.Response(503)

        metrics = RouterMetrics(PLAN)
        settings = ShadowSettings(queue=3, concurrency=1)
        sender = ShadowSender(metrics, settings, transport=httpx.MockTransport(stuck))
        sender.start()
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0}
        await asyncio.sleep(0)
        for _ in range(20):  # a plain call: an offer that waited for room would never return,
            sender.offer(_job(body, _client_answer("x")), True)  # the worker is stuck until release
        release.set()
        await sender.drain()
        await sender.close()
        return metrics

    assert not asyncio.iscoroutinefunction(ShadowSender.offer)
    m = asyncio.run(go())
    # 20 offers: at most 3 queued + 1 taken by the worker; the rest dropped, all without waiting
    dropped = _count(m, "shadow_dropped", "short", "cand", "queue_full")
    assert 16 <= dropped <= 17
    assert dropped + _count(m, "shadow_dropped", "short", "cand", "candidate_failed") == 20


def test_redaction_masks_mail_keys_and_long_numbers_only() -> None:
    text = "Call +1 415-555-0100 or mail a.b@c.io, key sk-abcdefghij12, card 4111 1111 1111 1111, year 2024"
    assert redact(text) == "Call [number] or mail [email], key [secret], card [number], year 2024"


# -- through the real Router (in process): the proxy's tee, the copy of the client's answer --

BASE_URL, CAND_URL = "http://127.0.0.1:1001", "http://127.0.0.1:1002"


def _router_plan(shadow: int) -> dict[str, object]:
    from router_procs import plan_dict

    plan = plan_dict([BASE_URL], [CAND_URL], weight=0)
    plan["buckets"][0]["rollout"]["shadow"] = shadow  # type: ignore[index]
    return plan


def _through_router(bodies: list[dict[str, object]], baseline: object, shadow: int = 100) -> tuple[Any, ...]:
    """Send `bodies` through an in-process Router whose baseline is the fake transport's script and
    whose shadow copies go to `Pools` (MockTransport); returns what each side saw."""
    from fake_transport import FakeTransport
    from inprocess import QUIET, TOKEN, address

    from kvplan.control.state import MemoryFlagStore
    from kvplan.router.app import Router
    from kvplan.router.settings import Listen, Settings

    upstream = FakeTransport()
    upstream.script(address(BASE_URL), baseline)  # type: ignore[arg-type]
    pools = Pools()

    async def main() -> tuple[list[httpx.Response], RouterMetrics]:
        p = Plan.model_validate(_router_plan(shadow))
        settings = Settings(limits=QUIET, admin_token=TOKEN)
        router = Router(
            p, MemoryFlagStore(p), settings, transport=upstream, shadow_transport=httpx.MockTransport(pools)
        )
        await router.start(Listen("127.0.0.1", 0))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as client:
                answers = [await client.post("/v1/chat/completions", json=b) for b in bodies]
            await asyncio.wait_for(router.shadow.drain(), 10)
        finally:
            await router.close()
        return answers, router.metrics

    answers, metrics = asyncio.run(main())
    pools_seen = [(r.url.host, r.url.path) for r in pools.seen]
    return answers, metrics, upstream, pools_seen


def _chat_reply(text: str) -> Any:
    from fake_transport import Reply

    return Reply(chunks=(json.dumps({"choices": [{"index": 0, "message": {"content": text}}]}).encode(),))


def test_a_greedy_client_request_is_paired_with_its_own_answer_and_never_changed() -> None:
    body = {"model": "test-model", "messages": [{"role": "user", "content": "q"}], "temperature": 0}
    answers, m, upstream, seen = _through_router([body], _chat_reply("Paris is the capital"))
    assert answers[0].status_code == 200 and answers[0].json()["choices"][0]["message"]["content"] == (
        "Paris is the capital"
    )
    assert "x-kvplan-shadow" not in answers[0].headers
    assert upstream.completions_to(("127.0.0.1", 1001)) == 1  # the baseline answered once: no replay
    assert seen == [
        ("127.0.0.1", "/v1/chat/completions"),
        ("127.0.0.1", "/tokenize"),
        ("127.0.0.1", "/tokenize"),
    ]
    assert _count(m, "shadow_pairs", "short", "short-int8") == 1
    assert m.shadow_agreement.labels("short", "short-int8", "tokens").sum == pytest.approx(0.75)


def test_a_sampled_request_is_replayed_and_a_failed_one_dropped() -> None:
    from fake_transport import Reply

    sampled = {"model": "test-model", "messages": [{"role": "user", "content": "q"}], "temperature": 0.9}
    answers, _, upstream, seen = _through_router([sampled], _chat_reply("Paris is the capital"))
    assert answers[0].status_code == 200 and upstream.completions_to(("127.0.0.1", 1001)) == 1
    assert [p for _, p in seen].count("/v1/chat/completions") == 2  # baseline replay + candidate copy
    greedy = {**sampled, "temperature": 0}
    answers, m, _, seen = _through_router([greedy], Reply(status=400, chunks=(b'{"error": {}}',)))
    assert answers[0].status_code == 400
    assert _count(m, "shadow_dropped", "short", "short-int8", "baseline_failed") == 1 and not seen


def test_shadow_share_zero_sends_nothing() -> None:
    body = {"model": "test-model", "messages": [{"role": "user", "content": "q"}], "temperature": 0}
    _, m, _, seen = _through_router([body] * 5, _chat_reply("x"), shadow=0)
    assert not seen and _count(m, "shadow_sampled", "short", "short-int8") == 0
