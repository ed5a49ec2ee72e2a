"""OpenAI-shaped HTTP errors: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from http import HTTPStatus

import orjson

from kvplan.metric_names import RejectReason


class ApiError(Exception):
    """An error answered to the client; `reason` is the rejected-metric label when it ends routing."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        reason: RejectReason = RejectReason.INVALID_REQUEST,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.reason = reason
        self.headers = headers

    def body(self) -> bytes:
        err = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": err}).encode()


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def upstream_error(status: int, body: bytes) -> bytes:
    """An upstream error response in OpenAI's shape: its own message and type when it carries them
    (vLLM's `{"error": {...}}`, the older flat `{"object": "error", "message": ...}`, or FastAPI's
    `{"detail": "..."}`), else a generic message. Nothing else of the body (a text traceback, an
    internal address) reaches the client."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    inner = data.get("error") if isinstance(data, dict) else None
    fields: dict[str, object] = inner if isinstance(inner, dict) else data if isinstance(data, dict) else {}
    message = fields.get("message", fields.get("detail"))
    if not isinstance(message, str) or not message:
        message = f"The upstream server answered {status} {_phrase(status)}."
    kind = fields.get("type")
    default_type = "invalid_request_error" if status < 500 else "upstream_error"
    param, code = fields.get("param"), fields.get("code")
    err = {
        "message": message,
        "type": kind if isinstance(kind, str) else default_type,
        "param": param if isinstance(param, str) else None,
        "code": code if isinstance(code, str | int) and not isinstance(code, bool) else None,
    }
    return orjson.dumps({"error": err})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
