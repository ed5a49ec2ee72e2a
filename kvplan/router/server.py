"""A lean HTTP/1.1 server on asyncio + httptools: the router's client-facing transport.

Why not an ASGI stack: on a 2-core machine every framework layer costs tens of microseconds per
request, and the target is <= 1 ms added at p50 and Rust-router throughput. This module only
parses requests, hands a `Request` to the application coroutine and writes bytes back, with
write flow control (so a slow client pauses the upstream read instead of buffering) and
cancellation of the handler when the client disconnects. Keep-alive and pipelining are handled;
requests on one connection are served in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Protocol

import httptools

log = logging.getLogger("kvplan.router")

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
MAX_HEADER_BYTES = 64 * 1024  # beyond this a request is refused (400) instead of buffered


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))


class Request:
    """One parsed request. Header names are lower-case bytes; the body is complete."""

    __slots__ = (
        "body",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "raw_path",
        "received_at",
        "too_large",
    )

    def __init__(
        self,
        method: bytes,
        raw_path: bytes,
        path: str,
        query: str,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        received_at: float,
        too_large: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.received_at = received_at
        self.too_large = too_large


Handler = Callable[[Request, "Connection"], Awaitable[None]]


class Source(Protocol):
    """Where a streamed response comes from: paused while the client's write buffer is full."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection. The handler writes the response through `respond`/`start`/`write`."""

    def __init__(self, handler: Handler, max_body: int) -> None:
        self._handler = handler
        self._max_body = max_body
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.chunked = False
        self._head = b""  # response head not yet written (see `start`)
        self.keep_alive = True
        # Set by the proxy while streaming: paused/resumed with this connection's write buffer.
        self.upstream: Source | None = None

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pending.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client went away: cancel the upstream request too

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("request headers too large")
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._too_large = True
        elif self._headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits 1 s for this otherwise

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._size += len(body)
        if self._size > self._max_body:
            self._too_large = True
            self._body = []
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        raw_path, _, query = self._url.partition(b"?")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            self._parser.get_method(),
            raw_path,
            raw_path.decode("latin-1"),
            query.decode("latin-1"),
            self._headers,
            body,
            self._parser.should_keep_alive(),
            self._loop.time(),
            self._too_large,
        )
        if self._task is None:
            self._start(request)
        else:
            self._pending.append(request)

    # -- serving --
    def _start(self, request: Request) -> None:
        self.chunked = False
        self._head = b""
        self.keep_alive = request.keep_alive
        self._task = self._loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            await self._handler(request, self)
        except asyncio.CancelledError:
            self._abort()
            return
        except Exception:
            log.exception("unhandled error serving %s", request.path)
            if self.transport is not None and not self.closed:
                self._abort()
            return
        finally:
            self._task = None
            self.upstream = None
        if not self.keep_alive:
            self._close()
        elif self._pending and not self.closed:
            self._start(self._pending.popleft())

    def _fail(self, status: int, message: bytes) -> None:
        if self.transport is None or self.closed:
            return
        body = b'{"error":{"message":"%s","type":"invalid_request_error","param":null,"code":null}}' % (
            message.replace(b'"', b"'")
        )
        self.transport.write(
            status_line(status)
            + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    # -- response API for handlers --
    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole response in one write."""
        if self.closed or self.transport is None:
            return
        parts = [status_line(status)]
        parts.extend(b"%s: %s\r\n" % h for h in headers)
        parts.append(b"content-length: %d\r\n" % len(body))
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        self.transport.write(b"".join(parts))

    def start(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None) -> None:
        """Prepare the status line and headers; they leave with the first body bytes (one write, one
        syscall) or at `finish`. The body follows through `write` (chunked when there is no length)."""
        parts = [status_line(status)]
        parts.extend(b"%s: %s\r\n" % h for h in headers)
        if content_length is None:
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self.chunked = False
            parts.append(b"content-length: %d\r\n" % content_length)
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self._head = b"".join(parts)

    def write(self, data: bytes) -> None:
        """Body bytes, framed as a chunk when the response is chunked. Never blocks."""
        if self.closed or self.transport is None or not data:
            return
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self._head:
            data, self._head = self._head + data, b""
        self.transport.write(data)

    def finish(self) -> None:
        if self.closed or self.transport is None:
            return
        tail = b"0\r\n\r\n" if self.chunked else b""
        if self._head or tail:
            self.transport.write(self._head + tail)
            self._head = b""

    def unsent(self) -> bool:
        """A response was started but not one byte of it has been written yet."""
        return bool(self._head)

    def reset_response(self) -> None:
        """Forget a started, still unsent response (the proxy retries elsewhere)."""
        self._head = b""
        self.chunked = False
        self.upstream = None

    def abandon(self) -> None:
        """The response cannot be completed (upstream broke mid-body): close so the client sees it."""
        self.keep_alive = False
        self._abort()


async def serve(
    handler: Handler, host: str, port: int, max_body: int, backlog: int = 4096, **kw: Any
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: Connection(handler, max_body), host, port, backlog=backlog, reuse_address=True, **kw
    )
