"""A killed endpoint under load: no request fails that had not started streaming."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from router_procs import MODEL, Backend, RouterProc, plan_dict

CHAT = "/v1/chat/completions"


def test_killed_endpoint_under_load_loses_only_started_streams(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    a = backends("a", tokens=20, token_delay=0.01)
    b = backends("b", tokens=20, token_delay=0.01)
    r = router(plan_dict([a.url, b.url]))
    done = threading.Event()
    results: list[tuple[bool, int | None, int, bool, str]] = []  # stream, status, bytes, complete, error
    lock = threading.Lock()
    count = [0]

    def one(i: int, http: httpx.Client) -> None:
        stream = i % 2 == 0
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        got, status, complete, error = 0, None, False, ""
        try:
            with http.stream("POST", r.url + CHAT, json=body) as resp:
                status = resp.status_code
                data = b""
                for chunk in resp.iter_raw():
                    got += len(chunk)
                    data += chunk
                complete = data.endswith(b"data: [DONE]\n\n") if stream else data.endswith(b"}")
        except httpx.HTTPError as exc:
            error = repr(exc)
        with lock:
            results.append((stream, status, got, complete, error))
            count[0] += 1
            if count[0] == 60:
                done.set()

    def worker(start: int) -> None:
        with httpx.Client(timeout=30) as http:
            for i in range(start, 400, 16):
                one(i, http)

    killer = threading.Thread(target=lambda: (done.wait(60), a.kill()))
    killer.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(worker, range(16)))
    killer.join()

    assert len(results) == 400
    failed = [x for x in results if not (x[1] == 200 and x[3])]
    for stream, status, got, _, error in failed:
        # only a stream that had already delivered bytes may break
        assert stream and status == 200 and got > 0, (stream, status, got, error)
    served_after_kill = httpx.get(r.admin_url + "/metrics", timeout=5).text
    assert f'kvplan_router_endpoint_healthy{{endpoint="{a.url}",pool="short-bf16"}} 0.0' in served_after_kill


def test_300_concurrent_streams_all_complete(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    """A light version of the 1,000-stream benchmark (bench/router_bench.py)."""
    import asyncio

    a = backends("a", tokens=10, token_delay=0.05)
    b = backends("b", tokens=10, token_delay=0.05)
    r = router(plan_dict([a.url, b.url]), "--max-in-flight", "512")
    host, port = r.url.removeprefix("http://").split(":")
    body = (
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": true}' % MODEL.encode()
    )

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        data = await reader.read()
        writer.close()
        return data

    async def all_streams() -> list[bytes]:
        return await asyncio.gather(*(one() for _ in range(300)))

    results = asyncio.run(all_streams())
    assert all(x.startswith(b"HTTP/1.1 200") and x.count(b"data: ") == 12 for x in results)
    assert all(x.rstrip().endswith(b"0") for x in results)  # chunked stream properly terminated


def test_worker_dying_between_head_and_body_is_retried(
    backends: Callable[..., Backend], router: Callable[..., RouterProc]
) -> None:
    """The router holds a response head back until body bytes come, so this is still retryable."""
    a, b = backends("a"), backends("b")
    plan = plan_dict([a.url, b.url])
    plan["buckets"][0]["endpoint_choice"] = {"policy": "round-robin"}  # a is first choice within two
    r = router(plan)
    a.control(crash_after_head=True)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for i in range(4):
        resp = httpx.post(r.url + CHAT, json=body, headers={"X-Request-Id": f"r{i}"}, timeout=10)
        assert resp.status_code == 200 and resp.headers["x-backend"] == "b"
        assert resp.json()["choices"][0]["message"]["content"]
    # a really died on the request routed to it (wait: its exit may still be under way)
    assert a.proc.wait(timeout=10) is not None
