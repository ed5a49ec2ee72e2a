"""Validation of OpenAI request bodies: parsed once, checked field by field, errors name the param."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kvplan.router.api_errors import invalid

CHAT = "chat"
COMPLETION = "completion"


@dataclass(slots=True)
class Completion:
    """What routing needs from a chat or completion request (the raw body is forwarded untouched)."""

    kind: str  # CHAT or COMPLETION
    model: str
    stream: bool
    max_tokens: int | None
    user: str | None
    messages: list[dict[str, Any]] | None
    prompt: Any
    structured: bool = False  # offers tools or asks for JSON output (kvplan.router.policy.precision)


def _json(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid("The request body is empty; send a JSON object.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(data, dict):
        raise invalid(f"The request body must be a JSON object, not {type(data).__name__}.")
    return data


def _positive_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{name}' must be an integer, got {type(value).__name__}: {value!r}", param=name)
    if value < 1:
        raise invalid(f"'{name}' must be at least 1, got {value}", param=name, code="invalid_value")
    return value


def _messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array of message objects", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise invalid(f"'messages[{i}]' must be an object with a string 'role'", param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):
            _content_parts(i, content)
        elif content is not None and not isinstance(content, str):
            raise invalid(
                f"'messages[{i}].content' must be a string or an array of content parts",
                param=f"messages[{i}].content",
            )
    return messages


def _content_parts(i: int, parts: list[Any]) -> None:
    """Each part an object with a string `type`; a text part's `text` a string. Other part types
    (images, audio) pass through for vLLM to check."""
    for j, part in enumerate(parts):
        param = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid(f"'{param}' must be a content part: an object with a string 'type'", param=param)
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise invalid(f"'{param}.text' must be a string", param=f"{param}.text")


def _token(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _prompt(data: dict[str, Any]) -> Any:
    prompt = data.get("prompt")
    ok = isinstance(prompt, str) or (
        isinstance(prompt, list)
        and prompt
        and (
            all(isinstance(p, str) for p in prompt)
            or all(_token(p) for p in prompt)
            or all(isinstance(p, list) and all(_token(t) for t in p) for p in prompt)
        )
    )
    if not ok:
        raise invalid(
            "'prompt' must be a string, an array of strings, or an array of token ids", param="prompt"
        )
    return prompt


def parse(kind: str, body: bytes) -> Completion:
    data = _json(body)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a string", param="model")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid(f"'stream' must be a boolean, got {type(stream).__name__}", param="stream")
    completion_tokens = _positive_int(data, "max_completion_tokens") if kind == CHAT else None
    max_tokens = _positive_int(data, "max_tokens")
    if completion_tokens is not None:
        max_tokens = completion_tokens  # OpenAI's newer name wins
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("'user' must be a string", param="user")
    messages = _messages(data) if kind == CHAT else None
    prompt = _prompt(data) if kind == COMPLETION else None
    fmt = data.get("response_format")
    structured = bool(data.get("tools")) or (
        isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    )
    return Completion(kind, model, stream, max_tokens, user, messages, prompt, structured)
