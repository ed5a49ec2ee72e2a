"""Faults between a client and a real server, on loopback: a TCP proxy that can lose one reply.

`LossyProxy(port).lose_reply_to(b"EVALSHA")`: the next request that contains the marker reaches
the server (which acts on it), but its reply never reaches the client: both connections are
closed instead, as when a network or a stalled server drops a connection mid-call. Every other
byte passes through unchanged.
"""

from __future__ import annotations

import asyncio
import socket
import threading


class LossyProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._marker: bytes | None = None
        self.lost = 0  # replies dropped so far
        self._sock = socket.socket()
        self._sock.bind((host, 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lossy-proxy")
        self._thread.start()
        self._ready.wait(10)

    def lose_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._pair, sock=self._sock))
        self._ready.set()
        self._loop.run_forever()

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

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        client_w.close()
        server_w.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
