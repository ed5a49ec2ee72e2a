"""A small OpenAI-compatible server that behaves like a vLLM worker, for router tests and benchmarks.

It answers /v1/chat/completions and /v1/completions (JSON or SSE like vLLM), /v1/models, /health
and /metrics with vLLM's metric names (kvplan.metric_names.vllm) and labels. It is a raw ASGI app under
uvicorn (httptools, uvloop): an HTTP stack independent of the router's own. Tests steer it at run
time with `POST /_control` (health status, forced status code, scraped load, delays), and it
echoes the headers the router must pass through as `x-echo-*` response headers.

Run: python tests/router/fake_vllm.py --port 0 --model m  (prints "listening on http://HOST:PORT")
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time
from typing import Any

from kvplan.metric_names import vllm as vm

ECHO = (b"x-request-id", b"traceparent", b"tracestate", b"x-session-id", b"authorization")
# A prompt holding this text makes the worker fail with a 500 and a text traceback naming its own
# address, as vLLM does for an input its engine chokes on: a 5xx the request alone provokes.
PROVOKE_500 = "kvplan-provoke-500"


class FakeVllm:
    def __init__(self, model: str, name: str, tokens: int, token_delay: float) -> None:
        self.model = model
        self.name = name
        self.tokens = tokens
        self.token_delay = token_delay
        self.health_status = 200
        self.status = 200  # forced status for completions (e.g. 500, 429)
        self.delay = 0.0  # seconds before the response head
        self.waiting = 0.0
        self.kv_usage = 0.1
        self.running = 0
        self.served = 0
        self.cancelled = 0
        self.crash_after_head = False

    # -- responses --
    def _completion(self, kind: str, rid: str) -> bytes:
        created = int(time.time())
        usage = {"prompt_tokens": 5, "completion_tokens": self.tokens, "total_tokens": 5 + self.tokens}
        if kind == "chat":
            body: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "tok " * self.tokens},
                        "finish_reason": "length",
                    }
                ],
                "usage": usage,
            }
        else:
            body = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": self.model,
                "choices": [
                    {"index": 0, "text": "tok " * self.tokens, "finish_reason": "length", "logprobs": None}
                ],
                "usage": usage,
            }
        return json.dumps(body).encode()

    def _chunk(self, kind: str, rid: str, i: int) -> bytes:
        if kind == "chat":
            delta = {"role": "assistant", "content": ""} if i < 0 else {"content": "tok "}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": "" if i < 0 else "tok ", "finish_reason": None, "logprobs": None}
            obj = "text_completion"
        if i == self.tokens - 1:
            choice["finish_reason"] = "length"
        data = {
            "id": rid,
            "object": obj,
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
        }
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    def metrics_text(self) -> bytes:
        labels = f'{{engine="0",model_name="{self.model}"}}'
        lines = [
            f"# HELP {vm.NUM_REQUESTS_RUNNING} Number of requests in model execution batches.",
            f"# TYPE {vm.NUM_REQUESTS_RUNNING} gauge",
            f"{vm.NUM_REQUESTS_RUNNING}{labels} {float(self.running)}",
            f"# TYPE {vm.NUM_REQUESTS_WAITING} gauge",
            f"{vm.NUM_REQUESTS_WAITING}{labels} {float(self.waiting)}",
            f"# TYPE {vm.KV_CACHE_USAGE} gauge",
            f"{vm.KV_CACHE_USAGE}{labels} {self.kv_usage}",
            f"# TYPE {vm.REQUEST_SUCCESS}_total counter",
            f'{vm.REQUEST_SUCCESS}_total{{engine="0",finished_reason="length",model_name="{self.model}"}} '
            f"{float(self.served)}",
        ]
        return ("\n".join(lines) + "\n").encode()

    # -- ASGI --
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = dict(scope["headers"])
        if path in ("/v1/chat/completions", "/v1/completions"):
            kind = "chat" if path.endswith("chat/completions") else "completion"
            await self._complete(kind, body, headers, send, receive)
        elif path == "/health":
            await _reply(send, self.health_status, b"" if self.health_status == 200 else b'{"error":"dead"}')
        elif path == "/metrics":
            await _reply(send, 200, self.metrics_text(), b"text/plain; version=0.0.4")
        elif path == "/v1/models":
            data = {"object": "list", "data": [{"id": self.model, "object": "model", "max_model_len": 32768}]}
            await _reply(send, 200, json.dumps(data).encode())
        elif path == "/_control":
            for key, value in json.loads(body or b"{}").items():
                setattr(self, key, value)
            await _reply(send, 200, json.dumps(self.__dict__).encode())
        else:
            await _reply(send, 404, b'{"error":"not found"}')

    async def _complete(
        self, kind: str, body: bytes, headers: dict[bytes, bytes], send: Any, receive: Any
    ) -> None:
        try:
            req = json.loads(body)
        except ValueError:
            await _reply(send, 400, b'{"error":{"message":"bad json","type":"BadRequestError","code":400}}')
            return
        if req.get("model") != self.model:
            msg = {"error": {"message": f"The model `{req.get('model')}` does not exist.", "code": 404}}
            await _reply(send, 404, json.dumps(msg).encode())
            return
        if PROVOKE_500.encode() in body:
            trace = f"Traceback (most recent call last):\n  engine at {self.name}: ValueError\n"
            await _reply(send, 500, trace.encode(), b"text/plain; charset=utf-8")
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        extra = [(b"x-backend", self.name.encode())]
        extra += [(b"x-echo-" + h, headers[h]) for h in ECHO if h in headers]
        if self.status != 200:
            err = {"error": {"message": f"forced {self.status}", "type": "Error", "code": self.status}}
            await _reply(send, self.status, json.dumps(err).encode(), extra=extra)
            return
        rid = (headers.get(b"x-request-id") or b"cmpl-fake").decode()
        self.running += 1
        try:
            if not req.get("stream"):
                if self.crash_after_head:  # a worker dying between the response head and its body
                    await send({"type": "http.response.start", "status": 200, "headers": extra})
                    os._exit(1)
                await _reply(send, 200, self._completion(kind, rid), extra=extra)
            else:
                # uvicorn drops writes after a disconnect silently: watch for it like vLLM does
                gone = asyncio.Event()

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    gone.set()

                watcher = asyncio.get_running_loop().create_task(watch())
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), *extra],
                    }
                )
                await send(
                    {"type": "http.response.body", "body": self._chunk(kind, rid, -1), "more_body": True}
                )
                for i in range(self.tokens):
                    if self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    if gone.is_set():
                        self.cancelled += 1
                        return
                    await send(
                        {"type": "http.response.body", "body": self._chunk(kind, rid, i), "more_body": True}
                    )
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
                watcher.cancel()
            self.served += 1
        except (OSError, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


async def _reply(
    send: Any, status: int, body: bytes, ctype: bytes = b"application/json", extra: list[Any] | None = None
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", default="test-model")
    ap.add_argument("--name", default="fake")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--token-delay", type=float, default=0.0)
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    app = FakeVllm(args.model, args.name, args.tokens, args.token_delay)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=300,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
