"""OpenAI-shaped HTTP errors: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json


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
        reason: str = "invalid_request",
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
