"""OpenAPI 3.1 documents of what the router serves and validates, at /openapi.json on each listener.

The API listener's document holds the OpenAI subset kvplan checks itself (kvplan.router.inputs:
the fields routing reads, each with the type and bounds that get a 400 otherwise; every other
field passes through to vLLM untouched) and /v1/models, /health, /ready. The admin listener's
holds /admin (bodies as the admin API checks them) and /metrics. The schemas are pydantic models
written to match the hand-written validators; tests/router/test_fuzz.py generates bodies from
these documents and checks the router agrees with them.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from kvplan.router.admin import MAX_ACTOR

PositiveInt = Annotated[int, Field(ge=1)]
Actor = Annotated[str, Field(min_length=1, max_length=MAX_ACTOR, pattern=r"^[^\x00-\x1f\x7f]+$")]


class _Open(BaseModel):
    """Other fields are allowed and forwarded as sent."""

    model_config = ConfigDict(extra="allow", regex_engine="python-re")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class OtherPart(_Open):
    """Any other content part (image_url, input_audio, ...): passed through for vLLM to check."""

    type: Annotated[str, Field(pattern=r"^(?!text$)")]


class Message(_Open):
    role: str
    content: str | list[TextPart | OtherPart] | None = None


class ChatCompletionRequest(_Open):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool = False
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    user: str | None = None


class CompletionRequest(_Open):
    model: Annotated[str, Field(min_length=1)]
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1)]
    )
    stream: bool = False
    max_tokens: PositiveInt | None = None
    user: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx the router answers, in OpenAI's shape."""

    error: ErrorDetail


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: Actor = "admin-api"
    reason: str = ""


class WeightChange(Change):
    weight: Annotated[int, Field(ge=0, le=100)]


class RolloutStart(Change):
    steps: str | list[int] = "10,25,50,100"
    interval: str | float = "5m"
    failure_limit: int = 1
    thresholds: dict[str, Annotated[float, Field(ge=0)]] | None = None


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _op(
    summary: str, ok: str | None = None, body: str | None = None, errors: tuple[int, ...] = ()
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", **(_json(ok) if ok else {})}}
    for status in errors:
        responses[str(status)] = {"description": "error", **_json("ErrorResponse")}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


def _document(title: str, paths: dict[str, Any], models: list[type[BaseModel]]) -> bytes:
    _, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    doc = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    return json.dumps(doc, indent=1).encode()


@functools.cache
def api_document() -> bytes:
    completion_errors = (400, 404, 405, 408, 413, 414, 429, 431, 502, 503)
    paths = {
        "/v1/chat/completions": {
            "post": _op(
                "Chat completion, routed by context length", None, "ChatCompletionRequest", completion_errors
            )
        },
        "/v1/completions": {
            "post": _op(
                "Text completion, routed by context length", None, "CompletionRequest", completion_errors
            )
        },
        "/v1/models": {"get": _op("The models the plan serves", errors=(405,))},
        "/health": {"get": _op("The router runs", errors=(405,))},
        "/ready": {"get": _op("Every bucket has a healthy endpoint (else 503)", errors=(405, 503))},
    }
    return _document(
        "kvplan router: OpenAI API", paths, [ChatCompletionRequest, CompletionRequest, ErrorResponse]
    )


@functools.cache
def admin_document() -> bytes:
    bucket = {"name": "bucket", "in": "path", "required": True, "schema": {"type": "string"}}
    auth = (400, 401, 404, 405, 409, 503)

    def with_bucket(op: dict[str, Any]) -> dict[str, Any]:
        return {**op, "parameters": [bucket]}

    limit = {"name": "limit", "in": "query", "schema": {"type": "integer"}}
    paths = {
        "/admin/plan": {"get": _op("The plan in use", errors=auth)},
        "/admin/state": {"get": _op("Flag state and endpoint health", errors=auth)},
        "/admin/history": {"get": {**_op("Audit history", errors=auth), "parameters": [limit]}},
        "/admin/reload": {"post": _op("Re-read the plan file", errors=auth)},
        "/admin/buckets/{bucket}/weight": {
            "post": with_bucket(_op("Set the rollout weight", None, "WeightChange", auth))
        },
        "/admin/buckets/{bucket}/kill": {"post": with_bucket(_op("Kill switch on", None, "Change", auth))},
        "/admin/buckets/{bucket}/unkill": {"post": with_bucket(_op("Kill switch off", None, "Change", auth))},
        "/admin/buckets/{bucket}/rollout/start": {
            "post": with_bucket(_op("Start a rollout", None, "RolloutStart", auth))
        },
        **{
            f"/admin/buckets/{{bucket}}/rollout/{op}": {
                "post": with_bucket(_op(f"Rollout: {op}", None, "Change", auth))
            }
            for op in ("pause", "resume", "abort")
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OK"}}}},
    }
    doc = _document("kvplan router: admin API", paths, [Change, WeightChange, RolloutStart, ErrorResponse])
    return doc
