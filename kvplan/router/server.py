"""A lean HTTP/1.1 server on asyncio + httptools: the router's client-facing transport.

Why not an ASGI stack: on a 2-core machine every framework layer costs tens of microseconds per
request, and the target is <= 1 ms added at p50 and Rust-router throughput (measured against
uvicorn and granian in bench/http_layer.py). This module parses requests, hands a `Request` to
the application coroutine and writes bytes back, with write flow control (a slow client pauses
the upstream read instead of buffering) and cancellation of the handler when the client goes.

Every client input is bounded (`HttpLimits`): the request line (414), the header block and the
header count (431), the body (413), the time to send the headers and the gaps inside a body
(408), an idle keep-alive connection, pipelined requests ahead of the one being served (reading
pauses; beyond the bound, 429), and a client that stops reading (aborted after `send_timeout`).
Each refusal is counted by reason. Responses go out in request order: a refusal of a pipelined
request waits for the responses ahead of it, and so does a `100 Continue`.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import httptools

from kvplan.metric_names import RefusalReason

log = logging.getLogger("kvplan.router")

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_LINGER_BYTES = 1 << 20  # after a refusal, read (and drop) this much so the client sees the answer


@dataclass(frozen=True)
class HttpLimits:
    max_request_line: int = 8 * 1024  # bytes of the request target; 414 above
    max_header_bytes: int = 64 * 1024  # the whole header block; 431 above
    max_headers: int = 100  # header fields; 431 above
    max_body: int = 4 * 1024 * 1024  # bytes; 413 above
    header_timeout: float = 10.0  # seconds from a request's first byte (or the accept) to its last header
    body_timeout: float = 30.0  # seconds without a body byte while a body is due
    keepalive_timeout: float = 75.0  # seconds an idle keep-alive connection is kept
    max_pipelined: int = 16  # parsed requests waiting behind the one being served
    send_timeout: float = 60.0  # seconds a client may leave a full write buffer unread
    linger: float = 1.0  # seconds to drain a refused request's remaining bytes before closing


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))


def error_body(message: str, type: str = "invalid_request_error", code: str | None = None) -> bytes:
    """OpenAI's error shape, for the responses this layer writes itself."""
    return json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()


class Request:
    """One parsed request. Header names are lower-case bytes; the body is complete."""

    __slots__ = (
        "body",
        "headers",
        "keep_alive",
        "method",
        "path",
        "peer",
        "query",
        "raw_path",
        "received_at",
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
        peer: str = "",
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.received_at = received_at
        self.peer = peer  # the client's address, for logs


Handler = Callable[[Request, "Connection"], Awaitable[None]]
OnRefusal = Callable[[RefusalReason], None]


class Source(Protocol):
    """Where a streamed response comes from: paused while the client's write buffer is full."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing this connection's input."""


class Phase(enum.Enum):
    """Where the parser is in the client's byte stream."""

    BETWEEN = 0  # between requests (or before the first)
    HEAD = 1  # inside a request line or headers
    BODY = 2  # inside a body
    STOPPED = 3  # refused: nothing more is parsed


class Connection(asyncio.Protocol):
    """One client connection. The handler writes the response through `respond`/`start`/`write`."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._handler = listener.handler
        self._lim = listener.limits
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._peer = ""
        self._parser = httptools.HttpRequestParser(self)
        self._phase = Phase.BETWEEN
        self._url: list[bytes] = []
        self._url_size = 0
        self._head_bytes = 0  # bytes fed while the current request's head was incomplete
        self._headers: dict[bytes, bytes] = {}
        self._header_count = 0
        self._header_size = 0
        self._body: list[bytes] = []
        self._size = 0
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._refusal = b""  # a refusal waiting for the responses ahead of it
        self._continue_owed = False  # a `100 Continue` waiting for the responses ahead of it
        self._lingering = 0  # bytes still to drop after a refusal (-1: not lingering)
        self._write_blocked = False
        self._start_on_resume = False
        self._eof = False  # the client closed its sending side
        self.deadline = 0.0  # loop time; 0 = none (checked by `Listener.sweep`)
        self.closed = False
        self.chunked = False
        self._head = b""  # response head not yet written (see `start`)
        self._head_only = False  # the request is HEAD: responses carry no body
        self._responded = False  # some response to the current request was written or started
        self.keep_alive = True
        # Set by the proxy while streaming: paused/resumed with this connection's write buffer.
        self.upstream: Source | None = None

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._listener.connections.add(self)
        self.deadline = self._loop.time() + self._lim.header_timeout  # the first request's head

    def data_received(self, data: bytes) -> None:
        if self._phase is Phase.STOPPED:
            self._linger(len(data))
            return
        if (
            self._phase is Phase.HEAD
            and self._head_bytes > self._lim.max_request_line + self._lim.max_header_bytes
        ):
            self._refuse(431, "The request headers are too large.", RefusalReason.HEADERS_TOO_LARGE)
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "Protocol upgrades are not supported.", RefusalReason.MALFORMED)
        except httptools.HttpParserError as exc:  # also our own _Stop: then _refuse ran already
            self._refuse(400, f"Malformed HTTP request: {exc}", RefusalReason.MALFORMED)
        if self._phase is Phase.HEAD:
            self._head_bytes += len(data)

    def eof_received(self) -> bool | None:
        """The client will send nothing more: answer what it asked for, then close."""
        if self._phase is Phase.STOPPED or (self._task is None and not self._pending):
            return None  # the transport closes itself
        self._eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._listener.connections.discard(self)
        self._pending.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client went away: cancel the upstream request too

    def pause_writing(self) -> None:
        self._write_blocked = True
        self.deadline = self._loop.time() + self._lim.send_timeout
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        self._rearm()
        if self.upstream is not None:
            self.upstream.resume_reading()
        if self._start_on_resume:
            self._start_on_resume = False
            self._next()

    # -- httptools callbacks --
    def on_message_begin(self) -> None:
        self._phase = Phase.HEAD
        self._url = []
        self._url_size = 0
        self._head_bytes = 0
        self._headers = {}
        self._header_count = 0
        self._header_size = 0
        self._body = []
        self._size = 0
        if not self._write_blocked:
            self.deadline = self._loop.time() + self._lim.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > self._lim.max_request_line:
            self._refuse(414, "The request URI is too long.", RefusalReason.REQUEST_LINE_TOO_LONG)
            raise _Stop
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_size += len(name) + len(value)
        if self._header_count > self._lim.max_headers:
            self._refuse(431, "Too many request header fields.", RefusalReason.TOO_MANY_HEADERS)
            raise _Stop
        if self._header_size > self._lim.max_header_bytes:
            self._refuse(431, "The request headers are too large.", RefusalReason.HEADERS_TOO_LARGE)
            raise _Stop
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._phase = Phase.BODY
        if not self._write_blocked:
            self.deadline = self._loop.time() + self._lim.body_timeout
        length = self._headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._lim.max_body:
            self._refuse_too_large()
            raise _Stop
        if self._headers.get(b"expect", b"").lower() == b"100-continue":
            if self._task is None and not self._pending:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits 1 s for this otherwise
            else:
                self._continue_owed = True  # never inside the response before it

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._lim.max_body:
            self._refuse_too_large()
            raise _Stop
        self._body.append(body)
        if not self._write_blocked:
            self.deadline = self._loop.time() + self._lim.body_timeout

    def on_message_complete(self) -> None:
        self._phase = Phase.BETWEEN
        self._continue_owed = False
        raw_path = b"".join(self._url)
        raw_path, _, query = raw_path.partition(b"?")
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
            self._peer,
        )
        if self._task is None and not self._pending and not self._write_blocked:
            self._start(request)
            return
        if len(self._pending) >= self._lim.max_pipelined:
            self._refuse(429, "Too many pipelined requests; wait for the responses.", RefusalReason.PIPELINE)
            raise _Stop
        self._pending.append(request)
        if self._task is None:  # the client does not read its responses: serve on resume_writing
            self._start_on_resume = True
        elif not self._write_blocked:
            self.deadline = 0.0
        if self.transport is not None:
            self.transport.pause_reading()  # the client is ahead of us: let TCP hold the rest

    # -- serving --
    def _start(self, request: Request) -> None:
        self.chunked = False
        self._head = b""
        self._responded = False
        self._head_only = request.method == b"HEAD"
        self.keep_alive = request.keep_alive
        if self._phase is Phase.BETWEEN and not self._write_blocked:
            self.deadline = 0.0  # the handler runs: no client deadline until it is done
        self._task = self._loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            await self._handler(request, self)
        except asyncio.CancelledError:
            self._abort()
            return
        except Exception:
            log.exception("unhandled error serving %s", request.path)
            self._internal_error()
            return
        finally:
            self._task = None
            self.upstream = None
        if not self.keep_alive or (self._eof and not self._pending):
            self._close()
        else:
            self._next()

    def _next(self) -> None:
        """The response is done: serve the next pipelined request, or owe nothing and wait."""
        if self.closed:
            return
        if self._write_blocked:
            self._start_on_resume = True  # the client is not reading: produce nothing more
            return
        if self._pending:
            request = self._pending.popleft()
            if not self._pending and self._phase is not Phase.STOPPED and self.transport is not None:
                self.transport.resume_reading()
            self._start(request)
            return
        if self._refusal:
            self._send_refusal()
            return
        if self._continue_owed:
            self._continue_owed = False
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._rearm()

    def _rearm(self) -> None:
        """The deadline for what the connection waits for now (none while a handler runs)."""
        now = self._loop.time()
        if self._phase is Phase.STOPPED:
            self.deadline = now + self._lim.linger
        elif self._phase is Phase.HEAD:
            self.deadline = now + self._lim.header_timeout
        elif self._phase is Phase.BODY:
            self.deadline = now + self._lim.body_timeout
        elif self._task is None and not self._pending:
            self.deadline = now + self._lim.keepalive_timeout
        else:
            self.deadline = 0.0

    def expired(self, now: float) -> None:
        """Called by the listener's sweep once `deadline` has passed."""
        if self._write_blocked:
            self._listener.on_refusal(RefusalReason.SEND_TIMEOUT)
            self._abort()  # the client stopped reading: nothing can be delivered
        elif self._phase is Phase.STOPPED:
            self._abort()  # done lingering
        elif self._phase is Phase.HEAD:
            self._refuse(408, "The request headers did not arrive in time.", RefusalReason.HEADER_TIMEOUT)
        elif self._phase is Phase.BODY:
            self._refuse(408, "The request body did not arrive in time.", RefusalReason.BODY_TIMEOUT)
        elif self._task is None and not self._pending:
            self._listener.on_refusal(RefusalReason.IDLE_TIMEOUT)
            self._close()
        else:
            self.deadline = 0.0  # a handler runs: it has its own timeouts

    def _refuse_too_large(self) -> None:
        self._refuse(
            413,
            f"Request body exceeds the limit of {self._lim.max_body} bytes.",
            RefusalReason.BODY_TOO_LARGE,
            code="body_too_large",
        )

    def _refuse(self, status: int, message: str, reason: RefusalReason, code: str | None = None) -> None:
        """Answer `status` and close: now, or after the responses to requests ahead of this one."""
        if self._phase is Phase.STOPPED or self.closed:
            return
        self._listener.on_refusal(reason)
        self._phase = Phase.STOPPED  # requests after the refused one are never read
        body = error_body(message, code=code)
        self._refusal = (
            status_line(status)
            + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        if self._task is None and not self._pending:
            self._send_refusal()
        elif self.transport is not None:
            self.transport.pause_reading()  # answered in order, after the requests ahead of it

    def _send_refusal(self) -> None:
        """Write the refusal, stop writing, and drain what the client still sends for a moment, so
        that closing does not reset the connection before the client read the answer."""
        data, self._refusal = self._refusal, b""
        transport = self.transport
        if transport is None or self.closed:
            return
        transport.write(data)
        self._lingering = _LINGER_BYTES
        self.deadline = self._loop.time() + self._lim.linger
        if transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()
        else:
            self._close()

    def _linger(self, n: int) -> None:
        self._lingering -= n
        if self._lingering < 0 and self._task is None and not self._refusal:
            self._abort()

    def _internal_error(self) -> None:
        """A bug in a handler: a 500 in OpenAI's shape if nothing was written yet, else a reset."""
        if self.closed or self.transport is None:
            return
        if self._head:  # started but nothing written: still free to answer
            self._head, self._responded = b"", False
        if self._responded:
            self._abort()
            return
        self.keep_alive = False
        self.respond(
            500, [(b"content-type", b"application/json")], error_body("Internal error.", "server_error")
        )
        self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

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
        """A whole response in one write (HEAD: the same head, no body)."""
        if self.closed or self.transport is None:
            return
        self._responded = True
        parts = [status_line(status)]
        parts.extend(b"%s: %s\r\n" % h for h in headers)
        parts.append(b"content-length: %d\r\n" % len(body))
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not self._head_only:
            parts.append(body)
        self.transport.write(b"".join(parts))

    def start(self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None) -> None:
        """Prepare the status line and headers; they leave with the first body bytes (one write, one
        syscall) or at `finish`. The body follows through `write` (chunked when there is no length)."""
        self._responded = True
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
        self._responded = False
        self.upstream = None

    def abandon(self) -> None:
        """The response cannot be completed (upstream broke mid-body): close so the client sees it."""
        self.keep_alive = False
        self._abort()


class Listener:
    """A listening socket, its connections and their deadlines."""

    def __init__(self, handler: Handler, limits: HttpLimits, on_refusal: OnRefusal) -> None:
        self.handler = handler
        self.limits = limits
        self.on_refusal = on_refusal
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def sweep(self, now: float) -> None:
        for conn in [c for c in self.connections if c.deadline and now > c.deadline]:
            conn.expired(now)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def serve(
    handler: Handler,
    host: str,
    port: int,
    limits: HttpLimits,
    on_refusal: OnRefusal = lambda reason: None,
    backlog: int = 4096,
    **kw: Any,
) -> Listener:
    listener = Listener(handler, limits, on_refusal)
    loop = asyncio.get_running_loop()
    listener.server = await loop.create_server(
        lambda: Connection(listener), host, port, backlog=backlog, reuse_address=True, **kw
    )
    return listener
