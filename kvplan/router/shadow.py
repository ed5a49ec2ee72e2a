"""Shadow traffic: a sampled share of a bucket's baseline requests is also sent to its candidate,
off the client's path, and the two answers are compared.

`ShadowSender.tee` is one of the proxy's tees: before the first try of a baseline request it
makes one random draw against the bucket's shadow share (flag store); a picked request gets a
`ShadowCopy`, which follows the response and, once the client's exchange has ended, puts a job on
a bounded queue. A full queue drops the job and counts it, so the client never waits for a shadow
and a slow or failing candidate can neither slow nor fail it. A few worker tasks send the copies.

Both answers of a pair are greedy with the same max_tokens, so any difference is the KV format's,
not sampling's: when the client asked for greedy decoding (temperature 0), the baseline's answer
is the client's own (copied from the response as it went by); otherwise the baseline is asked
again, greedily. Copies carry `X-Kvplan-Shadow: 1` (usage and billing can leave them out), never
reach a client, and pass through the redaction hook before anything is stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from kvplan import headers
from kvplan.control.state import FlagSnapshot
from kvplan.metric_names import DecisionReason, Outcome, ShadowDrop
from kvplan.quality.answers import BadAnswer, answer_text
from kvplan.quality.compare import MEASURES, Agreement, agreement
from kvplan.router.endpoints import Endpoint
from kvplan.router.inputs import CHAT, COMPLETION, parse
from kvplan.router.metrics import RouterMetrics
from kvplan.router.provenance import ProvenanceLog
from kvplan.router.routes import PoolRoute, Route, RouteTable, prompt_text
from kvplan.router.settings import ShadowSettings

if TYPE_CHECKING:
    from kvplan.router.proxy import Outgoing

log = logging.getLogger("kvplan.router.shadow")

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SECRET = re.compile(r"\b(?:sk|pk|rk|ghp|xox[abp])[-_][A-Za-z0-9_-]{8,}\b|\bBearer\s+\S+", re.IGNORECASE)
_LONG_NUMBER = re.compile(r"(?<!\w)\+?\d(?:[\s-]?\d){6,}(?!\w)")  # phone, card, account numbers


def redact(text: str) -> str:
    """The default redaction hook: e-mail addresses, API keys and bearer tokens, and numbers of
    seven digits or more (phones, cards, accounts) become placeholders."""
    text = _EMAIL.sub("[email]", text)
    text = _SECRET.sub("[secret]", text)
    return _LONG_NUMBER.sub("[number]", text)


RECORD_FIELDS = (
    "ts",
    "request_id",
    "bucket",
    "baseline",
    "candidate",
    "baseline_source",  # "client" (the client's own greedy answer) or "replay"
    *MEASURES,
    "prompt",
    "baseline_answer",
    "candidate_answer",
)


@dataclass
class ShadowJob:
    bucket: str
    baseline: Sequence[Endpoint]
    candidate: Sequence[Endpoint]
    baseline_pool: str
    candidate_pool: str
    path: str  # /v1/chat/completions or /v1/completions
    body: bytes  # the client's request body
    request_id: str
    tee: list[bytes] | None  # the client's baseline answer as it went by (greedy requests)
    streamed: bool = False
    queued_at: float = field(default_factory=time.monotonic)

    def prompt(self) -> str:
        kind = CHAT if self.path.endswith("/chat/completions") else COMPLETION
        try:
            return prompt_text(parse(kind, self.body))
        except Exception:  # the client's body was accepted by the router; this only guards a record
            return ""


def greedy_body(body: bytes) -> tuple[bytes, str]:
    """The request as a greedy, non-streamed, single-choice copy (max_tokens untouched), and its model."""
    data: dict[str, Any] = orjson.loads(body)
    for key in ("stream_options", "seed", "logprobs", "top_logprobs", "best_of", "top_k", "min_p"):
        data.pop(key, None)
    data.update(temperature=0, top_p=1, n=1, stream=False)
    return orjson.dumps(data), str(data.get("model", ""))


def is_greedy(body: bytes) -> bool:
    """The client asked for one greedy answer: its own answer is the baseline's half of a pair."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("temperature") == 0 and data.get("n", 1) == 1


class ShadowCopy:
    """Follows one picked baseline response (kvplan.router.proxy.TeeCopy) and queues its job."""

    __slots__ = ("chunks", "job", "sender")

    def __init__(self, sender: ShadowSender, job: ShadowJob) -> None:
        self.sender = sender
        self.job = job
        self.chunks = job.tee

    def write(self, data: bytes) -> None:
        if self.chunks is not None:
            self.chunks.append(data)

    def reset(self) -> None:
        if self.chunks is not None:
            self.chunks.clear()

    def finished(self, route: Route, status: int, outcome: Outcome) -> None:
        ok = outcome is Outcome.OK and status == 200 and route.pool.name == self.job.baseline_pool
        self.sender.offer(self.job, ok)


class ShadowFailed(Exception):
    def __init__(self, reason: ShadowDrop, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ShadowSender:
    def __init__(
        self,
        metrics: RouterMetrics,
        settings: ShadowSettings,
        *,
        snapshot: Callable[[], FlagSnapshot] | None = None,
        table: Callable[[], RouteTable] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.redact = settings.redact or redact
        self._snapshot = snapshot
        self._table = table
        self.rng = rng or random.Random()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(settings.queue)
        self._workers: list[asyncio.Task[None]] = []
        self.records = ProvenanceLog(settings.log_path, fields=RECORD_FIELDS)

    # -- the proxy's side: cheap calls, no I/O --
    def pick(self, share: int) -> bool:
        """One draw against the bucket's shadow share (percent)."""
        return share > 0 and self.rng.random() * 100.0 < share

    def tee(self, route: Route, out: Outgoing) -> ShadowCopy | None:
        """The proxy's tee: a copy to follow this request when the bucket's share picks it."""
        if route.reason == DecisionReason.FORCED or self._snapshot is None or self._table is None:
            return None
        table = self._table()
        bucket = route.bucket.bucket.name
        flags = table.flags(self._snapshot(), bucket)
        if route.pool.name != flags.baseline or not self.pick(flags.effective_shadow):
            return None
        candidate = table.pools.get(flags.candidate or "")
        if candidate is None:
            return None
        return ShadowCopy(self, self.job(bucket, route.pool, candidate, out))

    def job(self, bucket: str, baseline: PoolRoute, candidate: PoolRoute, out: Outgoing) -> ShadowJob:
        return ShadowJob(
            bucket,
            baseline.endpoints,
            candidate.endpoints,
            baseline.name,
            candidate.name,
            out.path.decode("latin-1"),
            out.body,
            out.request_id.decode("latin-1"),
            [] if is_greedy(out.body) else None,
            out.stream,
        )

    def offer(self, job: ShadowJob, client_ok: bool) -> None:
        """Queue a copy of a finished baseline exchange, or drop and count it at once."""
        labels = (job.bucket, job.candidate_pool)
        self.metrics.shadow_sampled.labels(*labels).inc()
        if not client_ok:  # no baseline answer to pair with (error, broken stream, cancelled)
            self.metrics.shadow_dropped.labels(*labels, ShadowDrop.BASELINE_FAILED).inc()
            return
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.labels(*labels, ShadowDrop.QUEUE_FULL).inc()

    # -- lifecycle --
    def start(self) -> None:
        s = self.settings
        limits = httpx.Limits(max_connections=4 * s.concurrency, max_keepalive_connections=4 * s.concurrency)
        self._client = httpx.AsyncClient(timeout=s.timeout, limits=limits, transport=self._transport)
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(s.concurrency)]
        self.records.start()

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        self.records.close()

    async def drain(self) -> None:
        """Until every queued copy was sent and compared (tests, graceful stop)."""
        await self.queue.join()

    # -- the workers --
    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self.compare(job)
            except ShadowFailed as exc:
                self.metrics.shadow_dropped.labels(job.bucket, job.candidate_pool, exc.reason).inc()
                log.debug("shadow %s dropped: %s", job.request_id, exc)
            except Exception:  # a shadow must never take the router down
                drop = ShadowDrop.CANDIDATE_FAILED
                self.metrics.shadow_dropped.labels(job.bucket, job.candidate_pool, drop).inc()
                log.exception("shadow %s failed", job.request_id)
            finally:
                self.queue.task_done()

    async def compare(self, job: ShadowJob) -> Agreement:
        body, model = greedy_body(job.body)
        if job.tee is not None:
            source = "client"
            base = self._answer(b"".join(job.tee), job.streamed, ShadowDrop.BASELINE_FAILED)
            cand = await self._ask(job.candidate, job.path, body, ShadowDrop.CANDIDATE_FAILED)
        else:  # both asked at once; a failure of either drops the pair
            source = "replay"
            candidate = self._ask(job.candidate, job.path, body, ShadowDrop.CANDIDATE_FAILED)
            replay = self._ask(job.baseline, job.path, body, ShadowDrop.BASELINE_FAILED)
            answers = await asyncio.gather(replay, candidate, return_exceptions=True)
            for failed in answers:
                if isinstance(failed, BaseException):
                    raise failed
            base, cand = (str(a) for a in answers)
        ep = self._endpoint(job.candidate, ShadowDrop.TOKENIZE_FAILED)
        base_ids, cand_ids = await self._tokens(ep, model, base), await self._tokens(ep, model, cand)
        a = agreement(base, cand, base_ids, cand_ids)
        m = self.metrics
        m.shadow_pairs.labels(job.bucket, job.candidate_pool).inc()
        for measure, value in a.as_dict().items():
            m.shadow_agreement.labels(job.bucket, job.candidate_pool, measure).observe(value)
        if self.rng.random() * 100.0 < self.settings.record_share:
            r = self.redact
            self.records.append(
                (time.time(), job.request_id, job.bucket, job.baseline_pool, job.candidate_pool, source,
                 *a.as_dict().values(), r(job.prompt()), r(base), r(cand))
            )  # fmt: skip
        return a

    def _endpoint(self, endpoints: Sequence[Endpoint], reason: ShadowDrop) -> Endpoint:
        """Any healthy endpoint with room (copies keep out of the pool's own endpoint policy and its
        prefix table: they are not the pool's traffic)."""
        eligible = [e for e in endpoints if e.healthy and e.in_flight < e.max_in_flight]
        if not eligible:
            raise ShadowFailed(reason, "no healthy endpoint")
        return self.rng.choice(eligible)

    def _answer(self, body: bytes, streamed: bool, reason: ShadowDrop) -> str:
        try:
            return answer_text(body, streamed)
        except BadAnswer as exc:
            raise ShadowFailed(reason, str(exc)) from exc

    async def _post(self, ep: Endpoint, path: str, body: bytes, reason: ShadowDrop) -> bytes:
        assert self._client is not None, "ShadowSender.start() was not called"
        hdrs = {"content-type": "application/json", headers.name(headers.SHADOW): "1"}
        try:
            resp = await self._client.post(ep.url + path, content=body, headers=hdrs)
        except httpx.HTTPError as exc:
            raise ShadowFailed(reason, f"{ep.url}: {exc or type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise ShadowFailed(reason, f"{ep.url} answered {resp.status_code}")
        return resp.content

    async def _ask(self, endpoints: Sequence[Endpoint], path: str, body: bytes, reason: ShadowDrop) -> str:
        ep = self._endpoint(endpoints, reason)
        return self._answer(await self._post(ep, path, body, reason), False, reason)

    async def _tokens(self, ep: Endpoint, model: str, text: str) -> list[int]:
        """Token ids of an answer, from the pool's own tokenizer (vLLM's /tokenize)."""
        if not text:
            return []
        req = orjson.dumps({"model": model, "prompt": text, "add_special_tokens": False})
        raw = await self._post(ep, "/tokenize", req, ShadowDrop.TOKENIZE_FAILED)
        try:
            tokens = orjson.loads(raw)["tokens"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ShadowFailed(ShadowDrop.TOKENIZE_FAILED, f"{ep.url}/tokenize: {exc}") from exc
        return [int(t) for t in tokens]
