"""Every client input is bounded: the campaign's probes against the router in process (real
sockets on loopback on the client side, the fake upstream transport behind it).

Each test waits for the router's own answer or close (with a deadline), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
import pytest
import uvloop
from fake_transport import FakeTransport, Reply
from inprocess import TOKEN, address, serving
from router_procs import MODEL, plan_dict

from kvplan.router.app import Router
from kvplan.router.server import HttpLimits

A = "http://127.0.0.1:1001"
CHAT = b"/v1/chat/completions"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
FAST = HttpLimits(header_timeout=0.3, body_timeout=0.3, keepalive_timeout=0.3, send_timeout=0.5, linger=0.3)

Scenario = Callable[[Router], Awaitable[None]]


def run(scenario: Scenario, http: HttpLimits = FAST, transport: FakeTransport | None = None) -> None:
    async def main() -> None:
        async with serving(plan_dict([A]), transport or FakeTransport(), http) as (router, _):
            await scenario(router)

    uvloop.run(main())


async def connect(router: Router, listener: str = "api") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", router.listeners[listener].port)


async def until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the router sends until it closes the connection (a reset ends it too)."""

    async def drain() -> bytes:
        got = b""
        try:
            while chunk := await reader.read(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return got

    return await asyncio.wait_for(drain(), timeout)


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
        % (
            path,
            len(body),
            extra,
            body,
        )
    )


def refusals(router: Router, reason: str) -> float:
    return float(router.metrics.client_refusals.labels(reason).value)


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def body_of(data: bytes) -> dict[str, Any]:
    return dict(json.loads(data.partition(b"\r\n\r\n")[2]))


def openai_error(data: bytes, status: int) -> dict[str, Any]:
    assert status_of(data) == status, data[:300]
    assert b"content-type: application/json" in data.partition(b"\r\n\r\n")[0].lower()
    err = body_of(data)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return dict(err)


# -- slow and idle clients --
def test_headers_sent_one_byte_at_a_time_get_408_after_the_header_timeout() -> None:
    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")

        async def trickle() -> None:
            for _ in range(100):
                writer.write(b"a")
                await asyncio.sleep(0.05)  # the attack's own pace, not a synchronisation

        task = asyncio.create_task(trickle())
        started = asyncio.get_running_loop().time()
        data = await until_closed(reader)
        task.cancel()
        held = asyncio.get_running_loop().time() - started
        openai_error(data, 408)
        assert 0.3 <= held < 2.0 and refusals(router, "header_timeout") == 1

    run(scenario)


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    async def scenario(router: Router) -> None:
        reader, _ = await connect(router)
        assert await until_closed(reader) == b""
        assert refusals(router, "idle_timeout") == 1

    run(scenario)


def test_an_idle_keep_alive_connection_is_closed() -> None:
    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        data = await until_closed(reader)
        assert status_of(data) == 200 and data.endswith(b'{"status":"ok"}')  # answered, then closed
        assert refusals(router, "idle_timeout") == 1

    run(scenario)


def test_a_content_length_longer_than_the_body_gets_408() -> None:
    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        writer.write(post(CHAT, BODY)[:-10])  # ten bytes short, then silence
        openai_error(await until_closed(reader), 408)
        assert refusals(router, "body_timeout") == 1

    run(scenario)


# -- sizes --
def test_a_64_mb_request_line_is_refused_at_8_kib_with_414() -> None:
    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        writer.write(b"GET /" + b"a" * 100_000)  # the rest of 64 MB would follow; nothing is buffered
        openai_error(await until_closed(reader), 414)
        assert refusals(router, "request_line_too_long") == 1
        async with httpx.AsyncClient() as client:
            assert (await client.get(router.url() + "/health")).status_code == 200

    run(scenario)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (b"x-filler: " + b"a" * 70_000 + b"\r\n", "headers_too_large"),  # one value over 64 KiB
        (b"".join(b"x-h%d: v\r\n" % i for i in range(101)), "too_many_headers"),
        (b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 2000) for i in range(40)), "headers_too_large"),
    ],
)
def test_header_blocks_over_their_bounds_get_431(headers: bytes, reason: str) -> None:
    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
        openai_error(await until_closed(reader), 431)
        assert refusals(router, reason) == 1

    run(scenario)


def test_a_declared_body_over_the_limit_gets_413_before_it_is_sent() -> None:
    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n")
        err = openai_error(await until_closed(reader), 413)
        assert err["code"] == "body_too_large" and refusals(router, "body_too_large") == 1

    run(scenario)


# -- pipelining --
def test_pipelined_requests_beyond_the_bound_get_429_in_order() -> None:
    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n" * 40)  # one write, 40 requests
        data = await until_closed(reader)
        statuses = [int(x.split(b" ", 1)[0]) for x in data.split(b"HTTP/1.1 ")[1:]]
        assert statuses == [200] * 5 + [429]  # the one served, 4 waiting, then the refusal
        assert refusals(router, "pipeline") == 1

    run(scenario, HttpLimits(max_pipelined=4))


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_the_upstream_released() -> None:
    transport = FakeTransport()
    transport.script(address(A), Reply(chunks=(b"x" * 65536,) * 2000, chunked=True))

    async def scenario(router: Router) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", router.port))
        sock.setblocking(False)
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(post(CHAT, BODY))
        await asyncio.sleep(0)
        ep = next(iter(router.table.endpoints.values()))
        for _ in range(500):  # the send timeout (0.5 s) aborts the connection
            if refusals(router, "send_timeout") == 1 and ep.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert refusals(router, "send_timeout") == 1 and ep.in_flight == 0
        writer.close()

    run(scenario, transport=transport)


def test_100_continue_on_a_pipelined_request_waits_for_the_response_ahead() -> None:
    transport = FakeTransport()
    stream = (b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n")
    transport.script(address(A), Reply(chunks=stream, chunked=True, gap=0.05))

    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        first = post(CHAT, BODY)
        second = post(CHAT, BODY, b"expect: 100-continue\r\n")
        head = second[: second.index(b"\r\n\r\n") + 4]
        writer.write(first + head)
        seen = await asyncio.wait_for(reader.readuntil(b"HTTP/1.1 100 Continue\r\n\r\n"), 5)
        assert b"0\r\n\r\n" in seen and seen.index(b"0\r\n\r\n") < seen.index(b"HTTP/1.1 100")
        writer.write(BODY)
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert rest.startswith(b"HTTP/1.1 200")
        writer.close()

    run(scenario, HttpLimits(), transport)


# -- methods --
def test_head_answers_the_head_without_a_body() -> None:
    async def scenario(router: Router) -> None:
        reader, writer = await connect(router)
        writer.write(b"HEAD /health HTTP/1.1\r\nhost: x\r\n\r\nGET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), 5)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 15" in head
        assert rest.startswith(b"HTTP/1.1 200")  # the next response follows the head at once
        writer.close()

    run(scenario, HttpLimits())


def test_routes_refuse_other_methods_with_405_and_allow() -> None:
    async def scenario(router: Router) -> None:
        async with (
            httpx.AsyncClient(base_url=router.url()) as api,
            httpx.AsyncClient(
                base_url=router.url("admin"), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as admin,
        ):
            for resp, allow in (
                (await api.post("/health"), "GET, HEAD"),
                (await api.delete("/v1/models"), "GET, HEAD"),
                (await api.get("/v1/chat/completions"), "POST"),
                (await admin.delete("/admin/state"), "GET"),
                (await admin.get("/admin/buckets/short/kill"), "POST"),
                (await admin.post("/metrics"), "GET, HEAD"),
            ):
                assert resp.status_code == 405 and resp.headers["allow"] == allow, resp.text
                assert resp.json()["error"]["code"] == "method_not_allowed"

    run(scenario, HttpLimits())


# -- bodies --
@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "text", "text": None}], "messages[0].content[0].text"),
        ([{"type": "text", "text": 123}], "messages[0].content[0].text"),
        ([{"type": "text", "text": {}}], "messages[0].content[0].text"),
        ([None], "messages[0].content[0]"),
        ([123], "messages[0].content[0]"),
        ([{}], "messages[0].content[0]"),
    ],
)
def test_bad_content_parts_are_a_400_for_the_openai_client(content: list[Any], param: str) -> None:
    async def scenario(router: Router) -> None:
        client = openai.AsyncOpenAI(base_url=router.url() + "/v1", api_key="sk-test", max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])  # type: ignore[arg-type,misc]
        assert err.value.status_code == 400
        assert err.value.body["param"] == param  # type: ignore[index]
        await client.close()

    run(scenario, HttpLimits())


def test_a_bug_behind_a_request_is_a_500_in_openais_shape_not_a_reset() -> None:
    def broken_tee(route: object, out: object) -> None:
        raise RuntimeError("a bug")

    async def scenario(router: Router) -> None:
        router.proxy.tees = (broken_tee,)
        reader, writer = await connect(router)
        writer.write(post(CHAT, BODY))
        err = openai_error(await until_closed(reader), 500)
        assert err["type"] == "server_error" and "bug" not in err["message"]

    run(scenario, HttpLimits())


# -- admin --
def test_admin_and_metrics_are_not_on_the_api_listener() -> None:
    async def scenario(router: Router) -> None:
        async with httpx.AsyncClient() as client:
            for path in ("/admin/state", "/metrics"):
                resp = await client.get(router.url() + path, headers={"Authorization": f"Bearer {TOKEN}"})
                assert resp.status_code == 404 and "own listener" in resp.json()["error"]["message"]
            assert (await client.get(router.url("admin") + "/metrics")).status_code == 200
            state = await client.get(
                router.url("admin") + "/admin/state", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert state.status_code == 200
            assert (await client.get(router.url("admin") + "/v1/models")).status_code == 404

    run(scenario, HttpLimits())


def test_failed_logins_are_counted_and_logged_without_the_token(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(router: Router) -> None:
        async with httpx.AsyncClient(base_url=router.url("admin")) as client:
            assert (await client.get("/admin/state")).status_code == 401
            guess = "Bearer guess-" + "x" * 20
            assert (await client.get("/admin/state", headers={"Authorization": guess})).status_code == 401
        failures = router.metrics.admin_auth_failures
        assert failures.labels("missing").value == 1 and failures.labels("wrong").value == 1

    with caplog.at_level(logging.WARNING, logger="kvplan.router.admin"):
        run(scenario, HttpLimits())
    refused = [r.getMessage() for r in caplog.records if "login refused" in r.getMessage()]
    assert refused and "127.0.0.1" in refused[0]
    assert not any("guess-" in r.getMessage() for r in caplog.records)


def test_a_deeply_nested_admin_body_is_a_400_not_a_reset() -> None:
    async def scenario(router: Router) -> None:
        async with httpx.AsyncClient(base_url=router.url("admin")) as client:
            resp = await client.post(
                "/admin/buckets/short/kill",
                content=b"[" * 100_000 + b"]" * 100_000,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert resp.status_code == 400 and "parse the JSON" in resp.json()["error"]["message"]

    run(scenario, HttpLimits())


@pytest.mark.parametrize("actor", ["ops\nadmin kill bucket=short actor=root", "a\rb", "x" * 129, ""])
def test_an_actor_cannot_forge_log_lines(actor: str) -> None:
    async def scenario(router: Router) -> None:
        async with httpx.AsyncClient(base_url=router.url("admin")) as client:
            resp = await client.post(
                "/admin/buckets/short/kill",
                json={"actor": actor},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert resp.status_code == 400 and resp.json()["error"]["param"] == "actor"
            assert not router.store.snapshot().buckets["short"].killed

    run(scenario, HttpLimits())


def test_the_openapi_documents_are_served_on_each_listener() -> None:
    async def scenario(router: Router) -> None:
        async with httpx.AsyncClient() as client:
            api = (await client.get(router.url() + "/openapi.json")).json()
            admin = (await client.get(router.url("admin") + "/openapi.json")).json()
        assert api["openapi"].startswith("3.1") and "/v1/chat/completions" in api["paths"]
        assert "/admin/state" not in api["paths"] and "/admin/buckets/{bucket}/weight" in admin["paths"]
        assert "ChatCompletionRequest" in api["components"]["schemas"]

    run(scenario, HttpLimits())
