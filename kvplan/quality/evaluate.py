"""Run an eval prompt set through a running router against a bucket's baseline and candidates.

The bucket's pools come from the router's plan (its admin API, `GET /admin/plan`). Each prompt goes
to every pool through the OpenAI API with greedy decoding; the pool is forced with
X-Kvplan-Force-Pool, which the router honours only with its admin token (X-Kvplan-Token). The router's own
X-Kvplan-Pool answer header is checked, so an answer is never silently from another pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from kvplan import headers
from kvplan.errors import InputError, KvplanError, NotFound, closest
from kvplan.plan import Plan
from kvplan.quality.answers import BadAnswer, whole_answer
from kvplan.quality.prompts import EvalPrompt


class EvalError(KvplanError):
    """The router or a pool could not answer an eval request (one line: which, and why)."""


@dataclass(frozen=True)
class Target:
    router: str
    token: str
    model: str
    bucket: str
    baseline: str
    candidates: tuple[str, ...]

    @property
    def pools(self) -> tuple[str, ...]:
        return (self.baseline, *self.candidates)


def pick_target(plan: Plan, router: str, token: str, bucket: str | None, candidates: Sequence[str]) -> Target:
    """The bucket (the only one when not named) and the candidates to compare (all by default)."""
    names = [b.name for b in plan.buckets]
    if bucket is None:
        if len(names) > 1:
            raise InputError(
                f"the router's plan has several buckets: give --bucket (one of {', '.join(names)})"
            )
        bucket = names[0]
    if bucket not in names:
        raise NotFound(f"unknown bucket {bucket!r}; buckets: {', '.join(names)}{closest(bucket, names)}")
    b = plan.bucket(bucket)
    known = [p.name for p in b.candidates]
    if not known:
        raise InputError(f"bucket {bucket!r} has no candidate pool to evaluate")
    for c in candidates:
        if c not in known:
            raise NotFound(
                f"pool {c!r} is not a candidate of bucket {bucket!r}; candidates: {', '.join(known)}"
                f"{closest(c, known)}"
            )
    chosen = tuple(dict.fromkeys(candidates)) or tuple(known)
    return Target(router.rstrip("/"), token, b.baseline.model_name, bucket, b.baseline.name, chosen)


def _error_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:200] or resp.reason_phrase


async def fetch_plan(client: httpx.AsyncClient, admin: str, token: str) -> Plan:
    """The plan the router serves, from its admin API."""
    where = f"the router's admin API at {admin}"
    try:
        resp = await client.get(
            f"{admin.rstrip('/')}/admin/plan", headers={"Authorization": f"Bearer {token}"}
        )
    except httpx.HTTPError as exc:
        raise EvalError(f"cannot reach {where}: {str(exc) or type(exc).__name__}") from exc
    if resp.status_code == 401:
        raise EvalError(f"{where} refused the admin token: {_error_message(resp)}")
    if resp.status_code != 200:
        raise EvalError(f"{where} answered {resp.status_code} for its plan: {_error_message(resp)}")
    try:
        return Plan.model_validate(resp.json())
    except ValueError as exc:  # pydantic's ValidationError and JSON errors are ValueErrors
        raise EvalError(f"{where} sent no kvplan plan from /admin/plan ({type(exc).__name__})") from exc


def request_body(target: Target, prompt: EvalPrompt, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model,
        "messages": list(prompt.messages),
        "temperature": 0,
        "max_tokens": prompt.max_tokens or max_tokens,
    }
    if prompt.tools:
        body["tools"] = list(prompt.tools)
    return body


async def ask(
    client: httpx.AsyncClient, target: Target, pool: str, prompt: EvalPrompt, max_tokens: int
) -> str:
    forced = {headers.name(headers.FORCE_POOL): pool, headers.name(headers.FORCE_TOKEN): target.token}
    try:
        resp = await client.post(
            f"{target.router}/v1/chat/completions",
            json=request_body(target, prompt, max_tokens),
            headers=forced,
        )
    except httpx.HTTPError as exc:
        raise EvalError(
            f"pool {pool}, prompt {prompt.id}: no answer from the router ({str(exc) or type(exc).__name__})"
        ) from exc
    if resp.status_code != 200:
        raise EvalError(
            f"pool {pool}, prompt {prompt.id}: router answered {resp.status_code}: {_error_message(resp)}"
        )
    served = resp.headers.get(headers.name(headers.POOL))
    if served != pool:
        raise EvalError(
            f"pool {pool}, prompt {prompt.id}: served by {served!r} instead (is the router a kvplan router?)"
        )
    try:
        return whole_answer(resp.content)
    except BadAnswer as exc:
        raise EvalError(f"pool {pool}, prompt {prompt.id}: {exc}") from exc


Answers = dict[str, dict[str, str]]


async def run_prompts(
    client: httpx.AsyncClient,
    target: Target,
    prompts: Sequence[EvalPrompt],
    *,
    max_tokens: int,
    concurrency: int,
    on_answer: Callable[[], None] = lambda: None,
) -> Answers:
    """Every prompt against every pool, `concurrency` requests at a time; the first failure stops."""
    gate = asyncio.Semaphore(concurrency)
    answers: Answers = {p: {} for p in target.pools}

    async def one(pool: str, prompt: EvalPrompt) -> None:
        async with gate:
            answers[pool][prompt.id] = await ask(client, target, pool, prompt, max_tokens)
        on_answer()

    jobs = [asyncio.ensure_future(one(pool, p)) for p in prompts for pool in target.pools]
    try:
        await asyncio.gather(*jobs)
    finally:
        for job in jobs:
            job.cancel()
    return answers
