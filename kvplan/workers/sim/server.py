"""The simulated worker's HTTP server: a thin asyncio layer over the engine.

One task steps the engine while it has work; each step's simulated GPU time, multiplied by the
speed factor, is slept on the wall clock before its tokens are released (0 = as fast as the
event loop goes). Latency metrics are observed on the wall clock, as a client sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from kvplan.workers.sim import openai_api as api
from kvplan.workers.sim.engine import Engine, StepResult, prompt_block_hashes
from kvplan.workers.sim.metrics import CacheInfo, WorkerMetrics
from kvplan.workers.sim.profile import WorkerProfile
from kvplan.workers.sim.text import PieceTokenizer, TextStream, Tokenizer, natural_length, request_seed

VLLM_VERSION = "0.33.0"
INSTANT_STEPS_PER_TURN = 32  # the vLLM release whose API and metrics the worker imitates


@dataclass
class Live:
    """A request in flight, as the HTTP layer tracks it."""

    engine_id: str
    prompt_tokens: int
    target_tokens: int
    finish_reason: str  # "length" when the target is max_tokens, "stop" when the pseudo-model ends
    arrival: float
    queue: asyncio.Queue[tuple[int, bool] | api.ApiError] = field(default_factory=asyncio.Queue)
    first_token: float | None = None
    last_token: float | None = None
    queued: bool = False  # queue time observed
    done: bool = False


@dataclass(frozen=True)
class SimSettings:
    speed_factor: float = 1.0  # wall seconds per simulated GPU second; 0 = no waiting
    seed: int = 0
    mean_output_tokens: int = 256  # where the pseudo-model stops by itself (0: only max_tokens)
    api_key: str | None = None  # vLLM's --api-key: /v1/* then needs "Authorization: Bearer KEY"


class SimWorker:
    def __init__(
        self, profile: WorkerProfile, settings: SimSettings, tokenizer: Tokenizer | None = None
    ) -> None:
        if settings.speed_factor < 0:
            raise ValueError("speed_factor must be >= 0")
        self.profile = profile
        self.settings = settings
        self.tokenizer = tokenizer or PieceTokenizer()
        self.engine = Engine(profile.engine, profile.cost)
        own_blocks = profile.engine.num_gpu_blocks == profile.capacity.num_blocks
        self.metrics = WorkerMetrics(
            profile.served_model_name,
            profile.engine.max_model_len,
            CacheInfo(
                num_gpu_blocks=profile.engine.num_gpu_blocks,
                block_size=profile.engine.block_size,
                cache_dtype=profile.cache_dtype,
                gpu_memory_utilization=profile.gpu_memory_utilization,
                enable_prefix_caching=profile.engine.enable_prefix_caching,
                # the planner's figures hold only for the block count it computed
                kv_cache_size_tokens=profile.capacity.kv_tokens if own_blocks else None,
                kv_cache_max_concurrency=profile.capacity.max_concurrency if own_blocks else None,
            ),
        )
        self.dead = False
        self.created = int(time.time())
        self._live: dict[str, Live] = {}
        self._wake = asyncio.Event()
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None

    # -- engine loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except Exception:
            # Like vLLM's engine core dying: report it, fail what is in flight, /health says 503.
            logging.getLogger(__name__).exception("simulated engine failed")
            self.kill()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            if self.dead or not self.engine.has_work:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            if self.settings.speed_factor == 0:
                # Instant mode: several steps per turn of the event loop, then let handlers write.
                for _ in range(INSTANT_STEPS_PER_TURN):
                    if not self.engine.has_work:
                        break
                    self._deliver(self.engine.step(), time.monotonic())
                await asyncio.sleep(0)
                continue
            started = time.monotonic()
            result = self.engine.step()
            # Sleep to an absolute deadline so that per-step scheduling jitter does not add up.
            deadline = max(deadline, loop.time()) + result.duration * self.settings.speed_factor
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self._deliver(result, started)

    def _deliver(self, result: StepResult, started: float) -> None:
        m = self.metrics
        now = time.monotonic()
        for request_id in result.admitted:
            live = self._live.get(request_id)
            if live is not None and live.first_token is None and not live.queued:
                live.queued = True  # a preempted request's second admission is not queue time
                m.queue_time.observe(started - live.arrival)
        m.preemptions.inc(len(result.preempted))
        m.prefix_queries.inc(result.prefix_queried_tokens)
        m.prefix_hits.inc(result.prefix_hit_tokens)
        m.generation_tokens.inc(len(result.tokens))
        for event in result.tokens:
            live = self._live.get(event.request_id)
            if live is None:  # aborted while the step ran
                continue
            if live.first_token is None:
                live.first_token = now
                m.ttft.observe(now - live.arrival)
                m.prompt_tokens.inc(live.prompt_tokens)
            elif live.last_token is not None:
                m.itl.observe(now - live.last_token)
            live.last_token = now
            live.queue.put_nowait((event.index, event.finished))
            if event.finished:
                live.done = True
                del self._live[event.request_id]
                m.success[live.finish_reason].inc()
                m.e2e.observe(now - live.arrival)
                m.request_prompt_tokens.observe(live.prompt_tokens)
                m.request_generation_tokens.observe(event.index + 1)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.running.set(len(self.engine.running))
        self.metrics.waiting.set(len(self.engine.waiting))
        self.metrics.kv_usage.set(self.engine.kv_cache_usage)

    # -- requests -------------------------------------------------------------------------------

    def submit(
        self,
        prompt_tokens: int,
        target_tokens: int,
        finish_reason: str = "length",
        block_hashes: tuple[int, ...] = (),
    ) -> Live:
        engine_id = f"req-{next(self._ids)}"
        live = Live(engine_id, prompt_tokens, target_tokens, finish_reason, time.monotonic())
        self.engine.add(engine_id, prompt_tokens, target_tokens, block_hashes)
        self._live[engine_id] = live
        self._update_gauges()
        self._wake.set()
        return live

    def abort(self, live: Live) -> None:
        if not live.done and self._live.pop(live.engine_id, None) is not None:
            self.engine.abort(live.engine_id)
            self.metrics.success["abort"].inc()
            self._update_gauges()

    def kill(
        self, reason: str = "EngineCore encountered an issue. See stack trace for the root cause."
    ) -> None:
        """Make the engine dead, as after a CUDA error: /health 503, every request fails."""
        self.dead = True
        for live in list(self._live.values()):
            self.engine.abort(live.engine_id)
            live.queue.put_nowait(api.ApiError(500, reason))
        self._live.clear()
        self._update_gauges()

    def revive(self) -> None:
        self.dead = False
        self._wake.set()

    # -- HTTP -----------------------------------------------------------------------------------

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self.run())
            try:
                yield
            finally:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

        routes = [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completion, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/tokenize", self._tokenize, methods=["POST"]),
            Route("/version", self._version, methods=["GET"]),
            Route("/debug/engine/kill", self._kill, methods=["POST"]),
            Route("/debug/engine/revive", self._revive, methods=["POST"]),
            Route("/debug/prefix_cache/lookup", self._prefix_lookup, methods=["POST"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan)

    async def _chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def _completion(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    def _unauthorized(self, request: Request) -> Response | None:
        """vLLM's answer to a missing or wrong bearer token on /v1 (its own body, not OpenAI's)."""
        key = self.settings.api_key
        if key is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(token.encode()).digest()
        if scheme.lower() == "bearer" and hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest()):
            return None
        return JSONResponse({"error": "Unauthorized"}, status_code=401)

    async def _generate(self, request: Request, kind: api.Kind) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            if self.dead:
                raise api.ApiError(503, "The engine is dead; the server is shutting down.")
            body = await _json(request)
            req = api.parse_request(
                kind,
                body,
                served_model_name=self.profile.served_model_name,
                max_model_len=self.profile.engine.max_model_len,
                tokenizer=self.tokenizer,
            )
        except api.ApiError as exc:
            return _error(exc)
        base = request.headers.get("x-request-id") or uuid.uuid4().hex
        rid = api.response_id(kind, base)
        seed = request_seed(self.settings.seed, req.prompt_ids, req.seed)
        natural = None if req.ignore_eos else natural_length(seed, self.settings.mean_output_tokens)
        target = min(req.max_tokens, natural) if natural is not None else req.max_tokens
        hashes = prompt_block_hashes(req.prompt_ids, self.profile.engine.block_size)
        live = self.submit(req.prompt_tokens, target, api.finish_reason(target, req.max_tokens), hashes)
        text = TextStream(seed)
        headers = {"x-request-id": base}
        if req.stream:
            return StreamingResponse(
                self._stream(req, live, text, rid), media_type="text/event-stream", headers=headers
            )
        try:
            pieces: list[str] = []
            while True:
                item = await live.queue.get()
                if isinstance(item, api.ApiError):
                    return _error(item)
                index, finished = item
                pieces.append(text.piece(index))
                if finished:
                    break
        finally:
            self.abort(live)
        finish = api.finish_reason(len(pieces), req.max_tokens)
        model = self.profile.served_model_name
        body_out = api.full_response(req, rid, model, int(time.time()), "".join(pieces), len(pieces), finish)
        return JSONResponse(body_out, headers=headers)

    async def _stream(
        self, req: api.Completion, live: Live, text: TextStream, rid: str
    ) -> AsyncIterator[bytes]:
        model = self.profile.served_model_name
        created = int(time.time())
        produced = 0
        try:
            if req.kind == "chat":
                yield api.sse(api.stream_chunk(req, rid, model, created, None, None, role=True))
            elif req.echo_text:
                yield api.sse(api.stream_chunk(req, rid, model, created, req.echo_text, None))
            while True:
                item = await live.queue.get()
                if isinstance(item, api.ApiError):
                    yield api.sse(item.body())
                    break
                index, finished = item
                produced = index + 1
                finish = api.finish_reason(produced, req.max_tokens) if finished else None
                yield api.sse(
                    api.stream_chunk(
                        req, rid, model, created, text.piece(index), finish, completion_tokens=produced
                    )
                )
                if finished:
                    if req.include_usage:
                        yield api.sse(api.usage_chunk(req, rid, model, created, produced))
                    break
            yield b"data: [DONE]\n\n"
        finally:
            self.abort(live)  # a client that went away frees its blocks

    async def _models(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        p = self.profile
        return JSONResponse(
            api.models_list(p.served_model_name, p.model, p.engine.max_model_len, self.created)
        )

    async def _health(self, _: Request) -> Response:
        return Response(status_code=503 if self.dead else 200)

    async def _metrics(self, _: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def _tokenize(self, request: Request) -> Response:
        try:
            body = await _json(request)
            out = api.tokenize(
                body,
                served_model_name=self.profile.served_model_name,
                max_model_len=self.profile.engine.max_model_len,
                tokenizer=self.tokenizer,
            )
        except api.ApiError as exc:
            return _error(exc)
        return JSONResponse(out)

    async def _version(self, _: Request) -> Response:
        return JSONResponse({"version": VLLM_VERSION})

    async def _prefix_lookup(self, request: Request) -> Response:
        """How many leading tokens of this prompt the prefix cache holds right now (a benchmark's
        oracle router asks every replica; not a vLLM endpoint)."""
        try:
            body = await _json(request)
            if not isinstance(body, dict):
                raise api.ApiError(400, "request body must be a JSON object")
            ids, _ = api.prompt_ids("chat" if "messages" in body else "completion", body, self.tokenizer)
        except api.ApiError as exc:
            return _error(exc)
        hashes = prompt_block_hashes(ids, self.profile.engine.block_size)
        cached = len(self.engine.cached_prefix(hashes, len(ids))) * self.profile.engine.block_size
        return JSONResponse({"prompt_tokens": len(ids), "cached_tokens": cached})

    async def _kill(self, _: Request) -> Response:
        self.kill()
        return JSONResponse({"dead": True})

    async def _revive(self, _: Request) -> Response:
        self.revive()
        return JSONResponse({"dead": False})


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise api.ApiError(400, f"request body is not valid JSON: {exc}") from exc


def _error(exc: api.ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)
