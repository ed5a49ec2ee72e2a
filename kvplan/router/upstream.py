"""A lean pooled HTTP/1.1 client for the upstream (vLLM) side: keep-alive connections per endpoint.

Responses are parsed with httptools and their body bytes are pushed to a sink callback as they
arrive (no queue, no task per chunk): the proxy's sink writes them straight to the client socket.
Timeouts are deadlines checked by one sweeper (`sweep`) instead of a timer per request or chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httptools

from kvplan.metric_names import ErrorKind
from kvplan.router.transport import Address, Exchange, Sink, UpstreamError

log = logging.getLogger("kvplan.router")

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"te", b"trailer", b"upgrade"}
)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, address: Address) -> None:
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
        self.answered = False  # the whole response arrived: any further byte is not ours
        self.on_head: Callable[[Exchange], bool] | None = None

    # -- protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.answered or not self.uses:
            self._overrun()  # bytes no request asked for (past a Content-Length, or unprompted)
            return
        self.got_bytes = True
        if self.idle_timeout:
            self.deadline = self._loop.time() + self.idle_timeout
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(ErrorKind.PROTOCOL, f"malformed upstream response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done.done():
            self.fail(ErrorKind.PROTOCOL, f"upstream closed the connection ({exc or 'EOF'})")

    def on_message_begin(self) -> None:
        if self.answered:  # a second response in the same bytes: never let it answer the next request
            self._overrun()
            raise httptools.HttpParserError("bytes after the response")

    def _overrun(self) -> None:
        if not self.closed:
            log.warning("upstream %s:%d sent bytes past its response; connection closed", *self.address)
        self.close()

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
        self.answered = True
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
        on_head: Callable[[Exchange], bool],
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
            raise UpstreamError(
                ErrorKind.PROTOCOL, "upstream connection already closed", reused=self.uses > 1
            )
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

    def pause_reading(self) -> None:
        """The client reads slower than this upstream sends: stop reading (TCP pushes back)."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def forward_headers(self) -> list[tuple[bytes, bytes]]:
        return [h for h in self.headers if h[0] not in _HOP_BY_HOP]

    @property
    def chunked_response(self) -> bool:
        return self.content_length is None

    def fail(self, kind: ErrorKind, message: str) -> None:
        # only a closed connection is the keep-alive race; a timeout is the endpoint's
        reused = kind is ErrorKind.PROTOCOL and self.uses > 1 and not self.got_bytes
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
                self.fail(ErrorKind.IDLE_TIMEOUT, f"no bytes from upstream for {self.idle_timeout:g}s")
            else:
                self.fail(ErrorKind.FIRST_BYTE_TIMEOUT, "upstream sent no response head in time")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """The production `Transport`: idle keep-alive connections per endpoint address, plus the set of
    busy ones (for timeouts)."""

    def __init__(self, connect_timeout: float = 2.0, max_idle: int = 512) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: dict[Address, list[UpstreamConnection]] = {}
        self.busy: set[UpstreamConnection] = set()

    async def acquire(self, address: Address) -> UpstreamConnection:
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
                ErrorKind.CONNECT, f"cannot connect to {address[0]}:{address[1]}: {exc}"
            ) from exc
        self.busy.add(proto)
        return proto

    def release(self, exchange: Exchange) -> None:
        """Return a connection whose exchange finished; anything unfinished is closed."""
        assert isinstance(exchange, UpstreamConnection)
        conn = exchange
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

    def discard(self, exchange: Exchange) -> None:
        assert isinstance(exchange, UpstreamConnection)
        self.busy.discard(exchange)
        exchange.close()

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
