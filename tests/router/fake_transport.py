"""An in-process upstream transport for router tests (the `Transport` protocol, no sockets upstream).

Each endpoint address plays a script: a callable from (address, request bytes) to a `Reply`
that says what this exchange does (fail before the head, answer a status and body in chunks,
break after some chunks, hang past the first-byte timeout); `refused` addresses refuse the
connection. The replies are
delivered on the event loop with `call_soon`, one chunk per loop turn, as a real socket would.
Health probes and load scrapes (GET /health, /metrics) answer like a vLLM server unless the
script says otherwise. Everything sent is recorded for the tests to inspect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from kvplan.metric_names import ErrorKind
from kvplan.metric_names import vllm as vm
from kvplan.router.transport import Address, Exchange, Sink, UpstreamError

METRICS = (
    f'{vm.NUM_REQUESTS_WAITING}{{model_name="m",engine="0"}} 0.0\n'
    f'{vm.KV_CACHE_USAGE}{{model_name="m",engine="0"}} 0.1\n'
).encode()


@dataclass
class Reply:
    status: int = 200
    chunks: tuple[bytes, ...] = (b'{"ok": true}',)
    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
    chunked: bool = False  # no content-length (a streamed response)
    fail: ErrorKind | None = None  # the exchange fails before the head
    stale: bool = False  # with `fail`: a reused keep-alive connection the server had closed
    break_after: int | None = None  # fail (PROTOCOL) after this many body chunks
    hang: bool = False  # no head: fails with FIRST_BYTE_TIMEOUT after the first-byte timeout
    gap: float = 0.0  # seconds between body chunks (0: one loop turn)


Script = Callable[[Address, bytes], Reply]


def always(reply: Reply) -> Script:
    return lambda address, request: reply


def path_of(request: bytes) -> bytes:
    return request.split(b" ", 2)[1]


@dataclass
class FakeTransport:
    scripts: dict[Address, Script] = field(default_factory=dict)
    health: dict[Address, int] = field(default_factory=dict)  # /health status per address (200)
    refused: set[Address] = field(default_factory=set)  # connections refused (acquire raises)
    sent: list[tuple[Address, bytes]] = field(default_factory=list)  # completions only
    released: int = 0
    discarded: int = 0

    def script(self, address: Address, script: Script | Reply) -> None:
        self.scripts[address] = always(script) if isinstance(script, Reply) else script

    def completions_to(self, address: Address) -> int:
        return sum(1 for a, _ in self.sent if a == address)

    def reply_for(self, address: Address, request: bytes) -> Reply:
        path = path_of(request)
        if path == b"/health":
            return Reply(status=self.health.get(address, 200), chunks=(b"",))
        if path == b"/metrics":
            return Reply(chunks=(METRICS,), headers=((b"content-type", b"text/plain"),))
        self.sent.append((address, request))
        return self.scripts.get(address, always(Reply()))(address, request)

    async def acquire(self, address: Address) -> FakeExchange:
        await asyncio.sleep(0)  # a connection is never ready in the same loop turn
        if address in self.refused:
            raise UpstreamError(ErrorKind.CONNECT, f"cannot connect to {address[0]}:{address[1]}: refused")
        return FakeExchange(self, address)

    def release(self, exchange: Exchange) -> None:
        self.released += 1

    def discard(self, exchange: Exchange) -> None:
        assert isinstance(exchange, FakeExchange)
        exchange.closed = True
        self.discarded += 1

    def sweep(self, now: float) -> None:
        pass  # hangs time out by their own timer

    def close(self) -> None:
        pass


class FakeExchange:
    def __init__(self, transport: FakeTransport, address: Address) -> None:
        self.transport = transport
        self.address = address
        self.loop = asyncio.get_running_loop()
        self.status = 0
        self.content_length: int | None = None
        self.forwarded = False
        self.first_body_at = 0.0
        self.done: asyncio.Future[bool] = self.loop.create_future()
        self.closed = False
        self.paused = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._sink: Sink | None = None

    def send(
        self, data: bytes, first_byte_timeout: float, idle_timeout: float, on_head: Callable[[Exchange], bool]
    ) -> None:
        reply = self.transport.reply_for(self.address, data)
        if reply.hang:
            self.loop.call_later(first_byte_timeout, self._fail, ErrorKind.FIRST_BYTE_TIMEOUT, False)
        elif reply.fail is not None:
            self.loop.call_soon(self._fail, reply.fail, reply.stale)
        else:
            self.loop.call_soon(self._head, reply, on_head)

    def _fail(self, kind: ErrorKind, reused: bool) -> None:
        if not self.done.done():
            self.done.set_exception(UpstreamError(kind, f"scripted {kind.value}", reused=reused))
            self.done.exception()  # retrieved: the waiter may be gone

    def _head(self, reply: Reply, on_head: Callable[[Exchange], bool]) -> None:
        self.status = reply.status
        self._headers = list(reply.headers)
        self.content_length = None if reply.chunked else sum(len(c) for c in reply.chunks)
        if not on_head(self):
            self.done.set_result(False)
            return
        self.forwarded = True
        self.loop.call_soon(self._body, reply, 0)

    def _body(self, reply: Reply, i: int) -> None:
        if self.closed or self.done.done():
            return
        if reply.break_after is not None and i == reply.break_after:
            self._fail(ErrorKind.PROTOCOL, False)
            return
        if i == len(reply.chunks):
            self.done.set_result(True)
            return
        if self.paused:  # the client's write buffer is full: the router stopped reading us
            self.loop.call_later(0.01, self._body, reply, i)
            return
        if not self.first_body_at:
            self.first_body_at = self.loop.time()
        assert self._sink is not None
        self._sink(reply.chunks[i])
        if reply.gap:
            self.loop.call_later(reply.gap, self._body, reply, i + 1)
        else:
            self.loop.call_soon(self._body, reply, i + 1)

    def forward_headers(self) -> list[tuple[bytes, bytes]]:
        return list(self._headers)

    def attach(self, sink: Sink) -> None:
        self._sink = sink

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
