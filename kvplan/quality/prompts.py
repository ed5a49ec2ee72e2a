"""The prompt set of `kvplan eval`: one JSON object per line, validated once, errors name the line.

    {"id": "copy-1", "task": "exact", "messages": [{"role": "user", "content": "..."}],
     "reference": "...", "max_tokens": 24}
    {"task": "citation", "messages": [...], "sources": ["S2", "S5"]}
    {"task": "tool_call", "messages": [...], "reference": {"name": "f", "arguments": {"x": 1}},
     "tools": [...]}
    {"task": "multi_turn", "messages": [user, assistant, user], "reference": "blue"}

`task` defaults to exact; `reference` is optional (without one, a pool is scored against the
baseline's answer); `sources` (citation) are the ids the answer must cite; `tools` are passed to
the server as they are (only for servers started with a tool-call parser); blank lines and lines
starting with `#` are skipped.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvplan.errors import InputError


class Task(enum.Enum):
    EXACT = "exact"  # the answer, normalised, equals the reference
    CITATION = "citation"  # the answer cites every given source id
    TOOL_CALL = "tool_call"  # the call's name and arguments equal the reference's
    MULTI_TURN = "multi_turn"  # the last answer of a conversation contains the reference


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    task: Task
    messages: tuple[dict[str, Any], ...]
    reference: str | ToolCall | None = None
    sources: tuple[str, ...] = ()
    max_tokens: int | None = None
    tools: tuple[dict[str, Any], ...] = field(default=())


_FIELDS = {"id", "task", "messages", "reference", "sources", "max_tokens", "tools"}


def _messages(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise InputError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
    return tuple(value)


def _tool_call(value: Any, where: str) -> ToolCall:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("name"), str)
        or not isinstance(value.get("arguments", {}), dict)
    ):
        raise InputError(f'{where}: a tool_call reference must be {{"name": str, "arguments": {{...}}}}')
    return ToolCall(value["name"], dict(value.get("arguments", {})))


def parse_prompt(data: Any, where: str, default_id: str) -> EvalPrompt:
    if not isinstance(data, dict):
        raise InputError(f"{where}: each line must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown fields {unknown}; known: {', '.join(sorted(_FIELDS))}")
    try:
        task = Task(data.get("task", Task.EXACT.value))
    except ValueError:
        known = ", ".join(t.value for t in Task)
        raise InputError(f"{where}: unknown task {data.get('task')!r}; one of {known}") from None
    messages = _messages(data.get("messages"), where)
    ref = data.get("reference")
    reference: str | ToolCall | None
    if ref is None:
        reference = None
    elif task is Task.TOOL_CALL:
        reference = _tool_call(ref, where)
    elif isinstance(ref, str):
        reference = ref
    else:
        raise InputError(f"{where}: 'reference' must be a string for task {task.value}")
    sources = data.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        raise InputError(f"{where}: 'sources' must be a list of source ids (strings)")
    if task is Task.CITATION and not sources:
        raise InputError(f"{where}: a citation prompt needs 'sources' (the ids its answer must cite)")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InputError(f"{where}: 'max_tokens' must be a positive integer")
    tools = data.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InputError(f"{where}: 'tools' must be a list of OpenAI tool objects")
    pid = data.get("id", default_id)
    if not isinstance(pid, str) or not pid:
        raise InputError(f"{where}: 'id' must be a non-empty string")
    return EvalPrompt(pid, task, messages, reference, tuple(sources), max_tokens, tuple(tools))


def load_prompts(path: Path) -> tuple[EvalPrompt, ...]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"cannot read prompt file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file (a JSONL prompt set is expected)") from None
    prompts: list[EvalPrompt] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{n}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{where}: not a JSON object ({exc})") from None
        prompts.append(parse_prompt(data, where, f"line-{n}"))
    if not prompts:
        raise InputError(f"{path}: no prompts (one JSON object per line expected)")
    ids = [p.id for p in prompts]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"{path}: prompt ids must be unique; repeated: {dup}")
    return tuple(prompts)
