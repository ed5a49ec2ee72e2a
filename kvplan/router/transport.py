"""What the proxy needs from an upstream transport: the seam between deciding and sending.

The router is given a `Transport` (production: `kvplan.router.upstream.UpstreamPool`, pooled
keep-alive HTTP/1.1 over loopback or the cluster network; tests: an in-process fake). The proxy
loop and the health probes only use these two protocols, so failover is tested without sockets
to any upstream, the way httpx's `MockTransport` stands in for its network transport.

An exchange is callback-driven to keep the hot path free of task switches: the response head is
offered to `on_head` the moment it is parsed (True: the caller took it and attached a body
sink; False: declined, `done` resolves False at once so the caller can try elsewhere), body
bytes go to the sink as they arrive, and `done` resolves True when the whole response arrived
(or raises `UpstreamError`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from kvplan.metric_names import ErrorKind

Sink = Callable[[bytes], None]
Address = tuple[str, int]


class UpstreamError(Exception):
    """An exchange failed: `kind` is CONNECT, FIRST_BYTE_TIMEOUT, IDLE_TIMEOUT or PROTOCOL."""

    def __init__(self, kind: ErrorKind, message: str, reused: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        # True when a reused keep-alive connection failed before any response byte: the server
        # closed it while idle, which says nothing about the endpoint's health.
        self.reused = reused


class Exchange(Protocol):
    """One request/response on one upstream connection (read the attributes once `on_head` ran)."""

    status: int
    content_length: int | None  # None: the response is chunked or ends at close
    forwarded: bool  # the head was taken by `on_head`: no retry from here on
    first_body_at: float  # loop time of the first body byte (0: none yet)
    done: asyncio.Future[bool]

    def send(
        self,
        data: bytes,
        first_byte_timeout: float,
        idle_timeout: float,
        on_head: Callable[[Exchange], bool],
    ) -> None: ...

    def forward_headers(self) -> list[tuple[bytes, bytes]]: ...

    def attach(self, sink: Sink) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Transport(Protocol):
    """Exchanges to upstream addresses; `acquire` raises `UpstreamError` (kind CONNECT) when it cannot."""

    def acquire(self, address: Address) -> Awaitable[Exchange]: ...

    def release(self, exchange: Exchange) -> None:
        """The exchange is over: keep its connection for reuse if it finished cleanly."""

    def discard(self, exchange: Exchange) -> None:
        """The exchange is abandoned: close its connection."""

    def sweep(self, now: float) -> None:
        """Enforce the exchanges' deadlines (called about four times a second)."""

    def close(self) -> None: ...


async def fetch(transport: Transport, address: Address, path: str, timeout: float) -> tuple[int, bytes]:
    """A small GET (health probes, metric scrapes): status and whole body."""
    exchange = await transport.acquire(address)
    chunks: list[bytes] = []
    try:
        host = f"{address[0]}:{address[1]}".encode()
        request = b"GET %s HTTP/1.1\r\nhost: %s\r\nuser-agent: kvplan-router\r\n\r\n" % (path.encode(), host)

        def collect(ex: Exchange) -> bool:
            ex.attach(chunks.append)
            return True

        exchange.send(request, timeout, timeout, collect)
        await exchange.done
    except BaseException:
        transport.discard(exchange)
        raise
    transport.release(exchange)
    return exchange.status, b"".join(chunks)
