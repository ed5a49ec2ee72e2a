"""A lean pooled HTTP/1.1 client for the upstream (vLLM) side: keep-alive connections per endpoint.

Responses are parsed with httptools and their body bytes are pushed to a sink callback as they
arrive (no queue, no task per chunk): the proxy's sink writes them straight to the client socket.
Timeouts are deadlines checked by one sweeper (`sweep`) instead of a timer per request or chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import Enum

import httptools


class FailKind(Enum):
    """Why an upstream exchange failed (values are the `kind` label of upstream_errors)."""

    CONNECT = "connect"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    PROTOCOL = "protocol"


class UpstreamError(Exception):
    def __init__(self, kind: FailKind, message: str, reused: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        # True when a reused keep-alive connection failed before any response byte: the server
        # closed it while idle, which says nothing about the endpoint's health.
        self.reused = reused


Sink = Callable[[bytes], None]

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"trailer", b"upgrade"}
)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.uses = 0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.head_received = False
        self.done: asyncio.Future[bool] = self._loop.create_future()  # True: whole response delivered
        self.sink: Sink | None = None
        self._early: list[bytes] = []
        self.got_bytes = False
        self.first_body_at = 0.0
        self.deadline = 0.0  # loop time; 0 = none
        self.idle_timeout = 0.0
        self.keep_alive = False
        self.forwarded = False  # the head went to the client: no retry from here on
        self.on_head: Callable[[UpstreamConnection], bool] | None = None

    # -- protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.idle_timeout:
            self.deadline = self._loop.time() + self.idle_timeout
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(FailKind.PROTOCOL, f"malformed upstream response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done.done():
            self.fail(FailKind.PROTOCOL, f"upstream closed the connection ({exc or 'EOF'})")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit():
                self.content_length = int(value)
        self.head_received = True
        if self.on_head is not None:
            if self.on_head(self):
                self.forwarded = True
            elif not self.done.done():
                self.done.set_result(False)  # declined: the caller retries elsewhere

    def on_body(self, body: bytes) -> None:
        if not self.first_body_at:
            self.first_body_at = self._loop.time()
        if self.sink is not None:
            self.sink(body)
        else:
            self._early.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self.deadline = 0.0
        if not self.done.done():
            self.done.set_result(True)

    # -- exchange --
    def send(
        self,
        data: bytes,
        first_byte_timeout: float,
        idle_timeout: float,
        on_head: Callable[[UpstreamConnection], bool],
    ) -> None:
        """Write a request. `done` resolves True once the whole response has arrived.

        The head is offered to `on_head` as soon as it is parsed: True means it was forwarded (body
        bytes go to the sink it attached); False resolves `done` with False at once.
        """
        if self.uses:
            self._reset()
        self.on_head = on_head
        self.uses += 1
        self.idle_timeout = idle_timeout
        self.deadline = self._loop.time() + first_byte_timeout
        if not self.usable:  # closed under us (peer reset, abort) before connection_lost ran
            self.closed = True
            raise UpstreamError(FailKind.PROTOCOL, "upstream connection already closed", reused=self.uses > 1)
        assert self.transport is not None
        self.transport.write(data)

    @property
    def usable(self) -> bool:
        """Open as far as the transport knows (uvloop refuses writes on a closing transport)."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def attach(self, sink: Sink) -> None:
        """Start delivering body bytes to `sink` (bytes already received are delivered first)."""
        self.sink = sink
        if self._early:
            early, self._early = self._early, []
            for chunk in early:
                sink(chunk)

    def forward_headers(self) -> list[tuple[bytes, bytes]]:
        return [h for h in self.headers if h[0] not in _HOP_BY_HOP]

    @property
    def chunked_response(self) -> bool:
        return self.content_length is None

    def fail(self, kind: FailKind, message: str) -> None:
        # only a closed connection is the keep-alive race; a timeout is the endpoint's
        reused = kind is FailKind.PROTOCOL and self.uses > 1 and not self.got_bytes
        err = UpstreamError(kind, message, reused=reused)
        self.closed = True
        self.deadline = 0.0
        if not self.done.done():
            self.done.set_exception(err)
            self.done.exception()  # mark retrieved: the waiter may be gone (cancelled)
        if self.transport is not None:
            self.transport.abort()

    def check_deadline(self, now: float) -> None:
        if self.deadline and now > self.deadline and not self.done.done():
            if self.head_received:
                self.fail(FailKind.IDLE_TIMEOUT, f"no bytes from upstream for {self.idle_timeout:g}s")
            else:
                self.fail(FailKind.FIRST_BYTE_TIMEOUT, "upstream sent no response head in time")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections per endpoint address, plus the set of busy ones (for timeouts)."""

    def __init__(self, connect_timeout: float = 2.0, max_idle: int = 512) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {}
        self.busy: set[UpstreamConnection] = set()

    async def acquire(self, address: tuple[str, int]) -> UpstreamConnection:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if conn.usable:
                self.busy.add(conn)
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(address), address[0], address[1]),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                FailKind.CONNECT, f"cannot connect to {address[0]}:{address[1]}: {exc}"
            ) from exc
        self.busy.add(proto)
        return proto

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose exchange finished; anything unfinished is closed."""
        self.busy.discard(conn)
        done = conn.done
        finished = done.done() and not done.cancelled() and done.exception() is None and done.result()
        if conn.closed or not conn.keep_alive or not finished:
            conn.close()
            return
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        self.busy.discard(conn)
        conn.close()

    def sweep(self, now: float) -> None:
        for conn in list(self.busy):
            conn.check_deadline(now)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self.busy):
            conn.close()
        self.busy.clear()


async def fetch(pool: UpstreamPool, address: tuple[str, int], path: str, timeout: float) -> tuple[int, bytes]:
    """A small GET (health probes, metric scrapes): status and whole body."""
    conn = await pool.acquire(address)
    chunks: list[bytes] = []
    try:
        host = f"{address[0]}:{address[1]}".encode()
        request = b"GET %s HTTP/1.1\r\nhost: %s\r\nuser-agent: kvplan-router\r\n\r\n" % (path.encode(), host)

        def collect(up: UpstreamConnection) -> bool:
            up.attach(chunks.append)
            return True

        conn.send(request, timeout, timeout, collect)
        await conn.done
    except BaseException:
        pool.discard(conn)
        raise
    pool.release(conn)
    return conn.status, b"".join(chunks)
