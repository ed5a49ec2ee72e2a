"""The answer of an OpenAI chat or completion response as one text, whole or streamed. Pure.

A chat answer is its `content`, followed by its tool calls as canonical JSON (name, then the
arguments string as the server produced it), so two answers compare equal exactly when a client
would see the same text and the same calls. Only the first choice counts (shadow and eval
requests ask for one).
"""

from __future__ import annotations

import json
from typing import Any


class BadAnswer(ValueError):
    """The body is not an OpenAI chat/completion response."""


def _calls_text(calls: list[dict[str, Any]]) -> str:
    return "".join(
        "\n" + json.dumps({"name": c.get("name", ""), "arguments": c.get("arguments", "")}, sort_keys=True)
        for c in calls
    )


def _choice(data: Any) -> dict[str, Any]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        raise BadAnswer("no 'choices' in the response")
    if not choices:
        return {}
    first = choices[0]
    if not isinstance(first, dict):
        raise BadAnswer("a choice is not an object")
    return first


def whole_answer(body: bytes) -> str:
    """The answer of a non-streamed response."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadAnswer(f"not JSON: {exc}") from None
    choice = _choice(data)
    if "text" in choice:
        return str(choice.get("text") or "")
    message = choice.get("message") or {}
    calls = [c.get("function") or {} for c in message.get("tool_calls") or []]
    return str(message.get("content") or "") + _calls_text(calls)


def streamed_answer(body: bytes) -> str:
    """The answer of a server-sent event stream (`data: {...}` lines, `data: [DONE]` last)."""
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    for line in body.split(b"\n"):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            break
        try:
            choice = _choice(json.loads(payload))
        except ValueError as exc:
            raise BadAnswer(f"a stream event is not JSON: {exc}") from None
        if "text" in choice:
            text.append(str(choice.get("text") or ""))
            continue
        delta = choice.get("delta") or {}
        text.append(str(delta.get("content") or ""))
        for call in delta.get("tool_calls") or []:
            fn = call.get("function") or {}
            c = calls.setdefault(int(call.get("index", 0)), {"name": "", "arguments": ""})
            c["name"] += fn.get("name") or ""
            c["arguments"] += fn.get("arguments") or ""
    return "".join(text) + _calls_text([calls[i] for i in sorted(calls)])


def answer_text(body: bytes, streamed: bool) -> str:
    return streamed_answer(body) if streamed else whole_answer(body)
