"""Faults between a client and a real server, on loopback: TCP proxies.

`LossyProxy(port).lose_reply_to(b"EVALSHA")`: the next request that contains the marker reaches
the server (which acts on it), but its reply never reaches the client: both connections are
closed instead, as when a network or a stalled server drops a connection mid-call. Every other
byte passes through unchanged.

`SlowProxy(port, factor=10)`: the server made `factor` times slower. Each reply is held back
(factor - 1) times what the server took from the request's first byte to the reply's first byte,
then passed on unchanged (one request at a time per connection, as HTTP/1.1 clients send them).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine


class _Proxy:
    """A TCP proxy on its own event loop thread; subclasses pass each connection pair along."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=type(self).__name__)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._pair, sock=self._sock))
        self._ready.set()
        self._loop.run_forever()

    async def _pair(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _both(directions: tuple[Coroutine[None, None, None], ...], *writers: asyncio.StreamWriter) -> None:
    """Until one direction ends; then both connections are closed."""
    tasks = [asyncio.ensure_future(d) for d in directions]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    for w in writers:
        w.close()


class LossyProxy(_Proxy):
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self._marker: bytes | None = None
        self.lost = 0  # replies dropped so far
        super().__init__(target_port, host)

    def lose_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    async def _pair(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        doomed = asyncio.Event()  # this connection's next reply is to be lost

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    doomed.set()
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if doomed.is_set():
                    self.lost += 1
                    break
                client_w.write(data)
                await client_w.drain()
            client_w.close()
            server_w.close()

        await _both((upstream(), downstream()), client_w, server_w)


class SlowProxy(_Proxy):
    def __init__(self, target_port: int, factor: float, host: str = "127.0.0.1") -> None:
        assert factor >= 1, "a slow proxy cannot speed a server up"
        self.factor = factor
        self.held = 0  # replies held back so far
        super().__init__(target_port, host)

    async def _pair(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        asked: list[float] = []  # when the request being answered began (one at a time)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if not asked:
                    asked.append(time.monotonic())
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if asked:  # a reply's first bytes: hold it back (factor - 1) x the server's time
                    took = time.monotonic() - asked.pop()
                    self.held += 1
                    await asyncio.sleep((self.factor - 1) * took)
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        await _both((upstream(), downstream()), client_w, server_w)
