"""Failover in process: the real Router and client socket, a fake upstream transport.

Retry before the first byte only, baseline fallback, a 4xx is never an endpoint fault, ejection
and recovery; the decision itself (`Failover`) without any server. The few process-level tests
that prove the real thing stay in test_failover.py and test_routing.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvloop
from fake_transport import FakeTransport, Reply
from inprocess import address, serving
from router_procs import MODEL, plan_dict

from kvplan.metric_names import ErrorKind
from kvplan.plan import Plan
from kvplan.router.api_errors import ApiError
from kvplan.router.app import Router
from kvplan.router.endpoint_policy import Pick
from kvplan.router.endpoints import Saturation
from kvplan.router.failover import Failover, GiveUp, NextEndpoint, SwitchToBaseline
from kvplan.router.monitor import probe_all
from kvplan.router.proxy import Outgoing
from kvplan.router.routes import Route, RouteTable
from kvplan.router.tokens import PromptTokens

A, B, C = "http://127.0.0.1:1001", "http://127.0.0.1:1002", "http://127.0.0.1:1003"
CHAT = "/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
STREAM = (b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n")

Scenario = Callable[[Router, httpx.AsyncClient], Awaitable[None]]


def rotating(plan: dict[str, Any]) -> dict[str, Any]:
    """Round-robin endpoint choice: which endpoint a request tries first is known, not drawn."""
    for bucket in plan["buckets"]:
        bucket["endpoint_choice"] = {"policy": "round-robin"}
    return plan


def run(plan: dict[str, Any], transport: FakeTransport, scenario: Scenario, **limits: Any) -> None:
    async def main() -> None:
        async with serving(rotating(plan), transport, **limits) as (router, client):
            await scenario(router, client)

    uvloop.run(main())


def endpoint(router: Router, url: str) -> object:
    return next(e for e in router.table.endpoints.values() if e.url == url)


def counter(router: Router, name: str, *labels: str) -> float:
    return float(getattr(router.metrics, name).labels(*labels).value)


# -- the decision alone --
def _table(weight: int = 100) -> RouteTable:
    return RouteTable(Plan.model_validate(plan_dict([A], [B, C], weight=weight)))


def _pick() -> Pick:
    return Pick(PromptTokens(4, b"", 4), 0.0, Saturation())


def test_decision_tries_each_candidate_endpoint_then_the_baseline_then_gives_up() -> None:
    table = _table()
    cand, base = table.pools["short-int8"], table.pools["short-bf16"]
    for ep in table.endpoints.values():
        ep.scraped_at = 0.0  # fresh load
    f = Failover(cand, base, max_attempts=5, retry_after=1)
    seen = []
    for _ in range(2):
        step = f.next(_pick())
        assert isinstance(step, NextEndpoint) and step.endpoint.pool == "short-int8"
        seen.append(step.endpoint.url)
        f.failed(step.endpoint, f.last_error or _err())
    assert sorted(seen) == [B, C]  # never the same endpoint twice
    assert f.next(_pick()) == SwitchToBaseline(base)
    step = f.next(_pick())
    assert isinstance(step, NextEndpoint) and step.endpoint.url == A
    f.failed(step.endpoint, _err())
    give_up = f.next(_pick())
    assert isinstance(give_up, GiveUp) and give_up.error.status == 502
    assert f.attempts == 3


def test_decision_stops_at_max_attempts_and_a_stale_connection_is_not_a_try() -> None:
    table = _table()
    cand, base = table.pools["short-int8"], table.pools["short-bf16"]
    f = Failover(cand, base, max_attempts=1, retry_after=1)
    first = f.next(_pick())
    assert isinstance(first, NextEndpoint)
    f.stale()  # the pooled connection had been closed by the endpoint: try again
    again = f.next(_pick())
    assert isinstance(again, NextEndpoint)
    assert not f.may_retry(again.endpoint)  # a retryable head would be forwarded: no try left
    f.declined(again.endpoint)
    assert isinstance(f.next(_pick()), GiveUp)


def test_decision_without_a_healthy_endpoint_is_503_and_a_full_pool_429() -> None:
    table = _table()
    base = table.pools["short-bf16"]
    (ep,) = base.endpoints
    ep.healthy = False
    step = Failover(base, base, 3, 2).next(_pick())
    assert isinstance(step, GiveUp) and step.error.status == 503
    ep.healthy, ep.in_flight = True, ep.max_in_flight
    step = Failover(base, base, 3, 2).next(_pick())
    assert isinstance(step, GiveUp) and step.error.status == 429
    assert (b"retry-after", b"2") in step.error.headers


def _err() -> ApiError:
    return ApiError(502, "upstream failed")


# -- the proxy loop over the fake transport --
def test_a_refused_connection_is_retried_elsewhere_and_ejects_at_once() -> None:
    t = FakeTransport()

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        t.refused.add(address(A))  # after the start-up probes found it healthy
        for _ in range(10):
            r = await client.post(CHAT, json=BODY)
            assert r.status_code == 200
        assert t.completions_to(address(B)) == 10
        assert endpoint(router, A).healthy is False  # type: ignore[attr-defined]
        assert counter(router, "upstream_errors", "short-bf16", "connect") == 1

    run(plan_dict([A, B]), t, scenario)


def test_no_retry_once_bytes_reached_the_client() -> None:
    t = FakeTransport()
    t.script(address(A), Reply(chunks=STREAM, chunked=True, break_after=1))
    t.script(address(B), Reply(chunks=STREAM, chunked=True))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        broken = 0
        for _ in range(20):
            try:
                r = await client.post(CHAT, json={**BODY, "stream": True})
                assert r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n")
            except httpx.RemoteProtocolError:
                broken += 1
        assert broken == t.completions_to(address(A)) > 0  # every request A took broke ...
        assert len(t.sent) == 20  # ... and none of them was sent again
        assert counter(router, "upstream_errors", "short-bf16", "protocol") == broken
        assert (
            router.metrics.requests.labels("short", "short-bf16", "bf16; kv=bf16", "stream_broken").value
            == broken
        )

    run(plan_dict([A, B]), t, scenario)


def test_a_head_held_back_without_body_is_still_retried() -> None:
    """The head leaves with the first body bytes: a failure before them is a failure before the first byte."""
    t = FakeTransport()
    t.script(address(A), Reply(chunks=STREAM, chunked=True, break_after=0))
    t.script(address(B), Reply(chunks=STREAM, chunked=True))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        for _ in range(10):
            r = await client.post(CHAT, json={**BODY, "stream": True})
            assert r.status_code == 200 and r.content == b"".join(STREAM)
        assert t.completions_to(address(A)) >= 1
        assert t.completions_to(address(B)) == 10

    run(plan_dict([A, B]), t, scenario)


def test_a_failing_candidate_falls_back_to_the_baseline() -> None:
    t = FakeTransport()
    t.script(address(C), Reply(fail=ErrorKind.PROTOCOL))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        t.refused.add(address(B))
        r = await client.post(CHAT, json=BODY)
        assert r.status_code == 200 and r.headers["x-kvplan-pool"] == "short-bf16"
        assert [a for a, _ in t.sent] == [address(C), address(A)]  # B refused before anything was sent
        assert counter(router, "decisions", "short", "short-bf16", "retry") == 1
        assert counter(router, "decisions", "short", "short-int8", "weight") == 1

    run(plan_dict([A], [B, C], weight=100), t, scenario)


@pytest.mark.parametrize("status", [400, 404, 422])
def test_a_4xx_is_never_an_endpoint_fault_nor_retried(status: int) -> None:
    t = FakeTransport()
    rejected = Reply(status=status, chunks=(b'{"error": {"message": "bad"}}',))
    t.script(address(A), rejected)
    t.script(address(B), rejected)

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        for _ in range(20):
            assert (await client.post(CHAT, json=BODY)).status_code == status
        assert len(t.sent) == 20  # one try each
        for url in (A, B):
            ep = endpoint(router, url)
            assert ep.healthy and ep.failures == 0  # type: ignore[attr-defined]
        assert counter(router, "retries", "short", "short-bf16") == 0

    run(plan_dict([A, B]), t, scenario)


def test_a_500_is_retried_elsewhere_but_never_ejects_the_endpoint() -> None:
    """A prompt the worker rejects with 500 is the request's doing: any client could send it."""
    t = FakeTransport()
    t.script(address(A), Reply(status=500, chunks=(b"Internal Server Error",)))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        for _ in range(30):
            assert (await client.post(CHAT, json=BODY)).status_code == 200
        a = endpoint(router, A)
        failed = t.completions_to(address(A))
        assert failed > 10 and a.healthy is True  # type: ignore[attr-defined]  # well past 5 in a row
        assert counter(router, "upstream_errors", "short-bf16", "http_5xx") == failed

    run(plan_dict([A, B]), t, scenario)


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_in_a_row_eject_until_a_probe_after_the_ejection_time(status: int) -> None:
    t = FakeTransport()
    t.script(address(A), Reply(status=status, chunks=(b"Bad Gateway",)))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        for _ in range(30):
            assert (await client.post(CHAT, json=BODY)).status_code == 200
        a = endpoint(router, A)
        assert t.completions_to(address(A)) == 5 and a.healthy is False  # type: ignore[attr-defined]
        await probe_all(router.table.endpoints.values(), router.upstream, 1.0)
        assert a.healthy is False  # type: ignore[attr-defined]  # still inside its ejection time
        a.ejected_until = 0.0  # type: ignore[attr-defined]  # the ejection time is over
        t.script(address(A), Reply())
        await probe_all(router.table.endpoints.values(), router.upstream, 1.0)
        assert a.healthy is True and a.failures == 0  # type: ignore[attr-defined]

    run(plan_dict([A, B]), t, scenario)


def test_an_answer_between_gateway_errors_resets_the_count() -> None:
    t = FakeTransport()
    calls = [0]

    def every_fifth_ok(addr: tuple[str, int], request: bytes) -> Reply:
        calls[0] += 1
        return Reply() if calls[0] % 5 == 0 else Reply(fail=ErrorKind.PROTOCOL)

    t.script(address(A), every_fifth_ok)

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        for _ in range(40):
            assert (await client.post(CHAT, json=BODY)).status_code == 200
        assert endpoint(router, A).healthy is True  # type: ignore[attr-defined]  # never 5 in a row

    run(plan_dict([A, B]), t, scenario)


def test_requests_alone_never_eject_more_than_half_a_pool() -> None:
    """Every endpoint fails every request (as a request that crashes workers would make them): one
    of two is ejected, the other keeps taking requests; a pool of one is never ejected by requests."""
    t = FakeTransport()
    for url in (A, B, C):
        t.script(address(url), Reply(fail=ErrorKind.PROTOCOL))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        for _ in range(30):
            r = await client.post(CHAT, json=BODY)
            assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
            assert "127.0.0.1" not in r.text  # internal addresses stay inside
        healthy = {url: endpoint(router, url).healthy for url in (A, B, C)}  # type: ignore[attr-defined]
        assert sorted(healthy[u] for u in (B, C)) == [False, True] and healthy[A] is True

    run(plan_dict([A], [B, C], weight=100), t, scenario)


def test_probes_need_three_failures_in_a_row() -> None:
    t = FakeTransport()

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        a = endpoint(router, A)
        t.health[address(A)] = 503
        for expected in (True, True, False):
            await probe_all(router.table.endpoints.values(), router.upstream, 1.0, 3)
            assert a.healthy is expected  # type: ignore[attr-defined]
        t.health[address(A)] = 200
        await probe_all(router.table.endpoints.values(), router.upstream, 1.0, 3)
        assert a.healthy is True  # type: ignore[attr-defined]
        t.health[address(A)] = 503  # a miss between answers starts the count again
        await probe_all(router.table.endpoints.values(), router.upstream, 1.0, 3)
        t.health[address(A)] = 200
        await probe_all(router.table.endpoints.values(), router.upstream, 1.0, 3)
        t.health[address(A)] = 503
        for _ in range(2):
            await probe_all(router.table.endpoints.values(), router.upstream, 1.0, 3)
        assert a.healthy is True  # type: ignore[attr-defined]

    run(plan_dict([A, B]), t, scenario)


def test_an_endpoint_that_never_answered_is_down_at_the_first_failed_probe() -> None:
    t = FakeTransport()
    t.health[address(A)] = 503

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        assert endpoint(router, A).healthy is False  # type: ignore[attr-defined]  # the start-up round

    run(plan_dict([A, B]), t, scenario)


def test_backpressure_is_retried_elsewhere_and_never_a_fault() -> None:
    t = FakeTransport()
    t.script(address(A), Reply(status=429))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        for _ in range(20):
            assert (await client.post(CHAT, json=BODY)).status_code == 200
        a = endpoint(router, A)
        assert a.healthy and a.failures == 0  # type: ignore[attr-defined]
        assert counter(router, "upstream_errors", "short-bf16", "backpressure") == t.completions_to(
            address(A)
        )

    run(plan_dict([A, B]), t, scenario)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b"Internal Server Error", "The upstream server answered 500 Internal Server Error."),
        (400, b'{"error": {"message": "bad prompt", "type": "BadRequestError", "code": 400}}', "bad prompt"),
        (400, b'{"object": "error", "message": "too long", "type": "BadRequestError"}', "too long"),
        (422, b'{"detail": "no such field"}', "no such field"),
    ],
)
def test_the_last_endpoints_error_is_answered_in_openais_shape(
    status: int, body: bytes, message: str
) -> None:
    t = FakeTransport()
    t.script(
        address(A),
        Reply(status=status, chunks=(body[:5], body[5:]), headers=((b"content-type", b"text/plain"),)),
    )

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        r = await client.post(CHAT, json=BODY)
        assert r.status_code == status and r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"] == message
        assert r.headers["x-kvplan-pool"] == "short-bf16"
        assert len(t.sent) == 1

    run(plan_dict([A]), t, scenario)


def test_a_candidates_5xx_is_retried_on_the_baseline() -> None:
    t = FakeTransport()
    t.script(address(B), Reply(status=500))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        r = await client.post(CHAT, json=BODY)
        assert r.status_code == 200 and r.headers["x-kvplan-pool"] == "short-bf16"
        assert [a for a, _ in t.sent] == [address(B), address(A)]

    run(plan_dict([A], [B], weight=100), t, scenario)


def test_a_first_byte_timeout_is_retried_elsewhere() -> None:
    t = FakeTransport()
    t.script(address(A), Reply(hang=True))

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        for _ in range(6):
            assert (await client.post(CHAT, json=BODY)).status_code == 200
        assert t.completions_to(address(B)) == 6
        hung = t.completions_to(address(A))
        assert counter(router, "upstream_errors", "short-bf16", "first_byte_timeout") == hung > 0

    run(plan_dict([A, B]), t, scenario, first_byte_timeout=0.05)


def test_a_stale_keep_alive_connection_is_not_the_endpoints_fault() -> None:
    t = FakeTransport()
    calls = [0]

    def once_stale(addr: tuple[str, int], request: bytes) -> Reply:
        calls[0] += 1
        return Reply(fail=ErrorKind.PROTOCOL, stale=True) if calls[0] == 1 else Reply()

    t.script(address(A), once_stale)

    async def scenario(router: Router, client: httpx.AsyncClient) -> None:
        assert (await client.post(CHAT, json=BODY)).status_code == 200
        assert t.completions_to(address(A)) == 2  # sent again on a fresh connection
        assert endpoint(router, A).failures == 0  # type: ignore[attr-defined]
        assert counter(router, "retries", "short", "short-bf16") == 0

    run(plan_dict([A]), t, scenario)


def test_a_tee_sees_every_routed_request_before_its_first_try() -> None:
    t = FakeTransport()
    seen: list[tuple[str, bytes]] = []

    def tee(route: Route, out: Outgoing) -> None:
        seen.append((route.pool.name, out.to(route.pool.endpoints[0])))
        assert not t.sent  # before anything went upstream

    async def main() -> None:
        async with serving(rotating(plan_dict([A])), t) as (router, client):
            router.proxy.tees = (tee,)
            assert (await client.post(CHAT, json=BODY)).status_code == 200
        assert seen == [("short-bf16", t.sent[0][1])]  # the same bytes the endpoint got

    uvloop.run(main())


def test_the_proxy_loop_and_failover_have_no_function_over_40_lines() -> None:
    import ast
    from pathlib import Path

    import kvplan.router

    root = Path(kvplan.router.__file__).parent
    long = [
        f"{name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for name in ("proxy.py", "failover.py", "transport.py", "outlier.py", "upstream.py")
        for node in ast.walk(ast.parse((root / name).read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 40  # type: ignore[operator]
    ]
    assert not long, long
