"""The router's upstream connection pool against a real local HTTP server (uvloop, loopback)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from kvplan.router.upstream import UpstreamConnection, UpstreamError, UpstreamPool

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def _server() -> tuple[asyncio.Server, tuple[str, int]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(RESPONSE)
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


def _exchange(conn: UpstreamConnection) -> asyncio.Future[bool]:
    def take(up: UpstreamConnection) -> bool:
        up.attach(lambda b: None)
        return True

    conn.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 5.0, 5.0, take)
    return conn.done


def test_a_connection_closed_before_its_callback_is_never_reused_or_written() -> None:
    """uvloop marks a transport closed before connection_lost runs: a pooled connection in that
    state is skipped by acquire, and a send on it is a retryable UpstreamError, not RuntimeError."""

    async def main() -> None:
        server, addr = await _server()
        pool = UpstreamPool()
        conn = await pool.acquire(addr)
        assert await _exchange(conn)
        pool.release(conn)
        assert conn.transport is not None
        conn.transport.abort()  # connection_lost is only scheduled: conn.closed is still False
        assert not conn.closed
        fresh = await pool.acquire(addr)
        assert fresh is not conn
        assert await _exchange(fresh)
        with pytest.raises(UpstreamError) as err:
            _exchange(conn)
        assert err.value.reused
        server.close()
        pool.close()

    uvloop.run(main())


async def _overrunning_server(split: bool) -> tuple[asyncio.Server, tuple[str, int]]:
    """Answers every request with a 2-byte body and then a second, unrequested response: in the
    same write, or a moment later (`split`)."""
    extra = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSMUGG"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            if split:
                writer.write(RESPONSE)
                await writer.drain()
                await asyncio.sleep(0.05)  # the stray bytes come after the response was taken
                writer.write(extra)
            else:
                writer.write(RESPONSE + extra)
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


@pytest.mark.parametrize("split", [False, True])
def test_bytes_past_an_upstream_content_length_never_answer_the_next_request(split: bool) -> None:
    async def main() -> None:
        server, addr = await _overrunning_server(split)
        pool = UpstreamPool()
        bodies = []
        for _ in range(3):
            conn = await pool.acquire(addr)
            got: list[bytes] = []

            def take(up: UpstreamConnection, got: list[bytes] = got) -> bool:
                up.attach(got.append)
                return True

            conn.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", 5.0, 5.0, take)
            assert await conn.done
            bodies.append(b"".join(got))
            pool.release(conn)
            for _ in range(100):  # until the stray bytes arrived and closed it
                if conn.closed or not split:
                    break
                await asyncio.sleep(0.01)
            assert conn.closed  # never reused
        assert bodies == [b"ok"] * 3
        server.close()
        pool.close()

    uvloop.run(main())
