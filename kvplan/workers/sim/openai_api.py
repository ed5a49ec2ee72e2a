"""OpenAI request validation and response shapes as vLLM's server produces them.

Pure functions: a parsed JSON body in, a `Completion` (what to generate) or an `ApiError` out;
token counts in, response dicts out. Messages and shapes follow vLLM's OpenAI server
(`vllm/entrypoints/openai/`), so clients and routers see the same errors and chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from kvplan.workers.sim.text import Tokenizer, chat_prompt_ids

Kind = Literal["chat", "completion"]


class ApiError(Exception):
    """An error response: HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    @property
    def type(self) -> str:
        return _ERROR_TYPES.get(self.status, "InternalServerError")

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}
        }


_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    413: "BadRequestError",
    503: "ServiceUnavailableError",
}


@dataclass(frozen=True)
class Completion:
    """A validated request: what the engine must generate and how to answer."""

    kind: Kind
    prompt_ids: tuple[int, ...]
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    ignore_eos: bool
    seed: int | None
    echo_text: str | None  # completions with echo=true repeat the prompt

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


def _field(body: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # bool is an int in Python; a JSON true is never a valid token count.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ApiError(400, f"'{name}' must be of type {_type_names(types)}, got a boolean", name)
    if not isinstance(value, types):
        raise ApiError(
            400, f"'{name}' must be of type {_type_names(types)}, got {type(value).__name__}", name
        )
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {int: "integer", str: "string", bool: "boolean", list: "array", dict: "object", float: "number"}
    seq = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in seq)


def _message_text(message: Any, index: int) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise ApiError(400, f"messages[{index}] must be an object", "messages")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise ApiError(400, f"messages[{index}].role is required", "messages")
    content = message.get("content")
    if content is None:
        return role, ""
    if isinstance(content, str):
        return role, content
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise ApiError(400, f"messages[{index}].content: only text parts are supported", "messages")
            texts.append(part["text"])
        return role, "\n".join(texts)
    raise ApiError(400, f"messages[{index}].content must be a string or a list of parts", "messages")


def prompt_ids(kind: Kind, body: dict[str, Any], tokenizer: Tokenizer) -> tuple[list[int], str | None]:
    """Token ids of the request's prompt, and its text when it had one."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty array", "messages")
        pairs = [_message_text(m, i) for i, m in enumerate(messages)]
        return chat_prompt_ids(tokenizer, pairs), None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "'prompt' must not be empty", "prompt")
        return tokenizer.encode(prompt), prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return list(prompt), None
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(
            400, "batched prompts are not supported by the simulated worker; send one prompt", "prompt"
        )
    raise ApiError(400, "'prompt' must be a string or a list of token ids", "prompt")


def parse_request(
    kind: Kind, body: Any, *, served_model_name: str, max_model_len: int, tokenizer: Tokenizer
) -> Completion:
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_model_name:
        raise ApiError(
            404, f"The model `{model}` does not exist. Valid aliases: {served_model_name}.", "model"
        )
    ids, text = prompt_ids(kind, body, tokenizer)
    n = _field(body, "n", int, 1)
    if n != 1:
        raise ApiError(400, "the simulated worker supports n=1 only", "n")
    name = (
        "max_completion_tokens"
        if kind == "chat" and body.get("max_completion_tokens") is not None
        else "max_tokens"
    )
    max_tokens = _field(body, name, int)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"{name} must be at least 1, got {max_tokens}.", name)
    prompt_len = len(ids)
    if prompt_len >= max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
            f"contains {prompt_len} input tokens, which exceeds this limit even without any output "
            "tokens. Please reduce the length of the input prompt.",
            "input_tokens",
        )
    stream = bool(_field(body, "stream", bool, False))
    options = _field(body, "stream_options", dict, {})
    if options and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    _field(body, "temperature", (int, float))
    seed = _field(body, "seed", int)
    echo = bool(_field(body, "echo", bool, False)) if kind == "completion" else False
    return Completion(
        kind=kind,
        prompt_ids=tuple(ids),
        # vLLM (`get_max_tokens`) clamps max_tokens to the context left instead of refusing it
        max_tokens=min(max_tokens or max_model_len, max_model_len - prompt_len),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        continuous_usage=bool(options.get("continuous_usage_stats", False)),
        ignore_eos=bool(_field(body, "ignore_eos", bool, False)),
        seed=seed,
        echo_text=text if echo else None,
    )


# -- responses ------------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def response_id(kind: Kind, base: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{base}"


def full_response(
    req: Completion, rid: str, model: str, created: int, text: str, completion_tokens: int, finish: str
) -> dict[str, Any]:
    if req.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning_content": None,
            },
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": (req.echo_text or "") + text,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        obj = "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage(req.prompt_tokens, completion_tokens),
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def stream_chunk(
    req: Completion,
    rid: str,
    model: str,
    created: int,
    text: str | None,
    finish: str | None,
    *,
    role: bool = False,
    completion_tokens: int = 0,
) -> dict[str, Any]:
    """One SSE chunk. `role` makes the chat stream's first chunk (role and empty content)."""
    choice: dict[str, Any]
    if req.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = None
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        obj = "text_completion"
    chunk: dict[str, Any] = {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if req.include_usage and req.continuous_usage:
        chunk["usage"] = usage(req.prompt_tokens, completion_tokens)
    return chunk


def usage_chunk(
    req: Completion, rid: str, model: str, created: int, completion_tokens: int
) -> dict[str, Any]:
    obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        # vLLM drops the null fields of this last chunk (exclude_none)
        "usage": {k: v for k, v in usage(req.prompt_tokens, completion_tokens).items() if v is not None},
    }


def models_list(model: str, root: str, max_model_len: int, created: int | None = None) -> dict[str, Any]:
    created = created if created is not None else int(time.time())
    return {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": root,
                "parent": None,
                "max_model_len": max_model_len,
                "permission": [],
            }
        ],
    }


def tokenize(
    body: Any, *, served_model_name: str, max_model_len: int, tokenizer: Tokenizer
) -> dict[str, Any]:
    """vLLM's `/tokenize`: a prompt or chat messages to token ids."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served_model_name:
        raise ApiError(
            404, f"The model `{model}` does not exist. Valid aliases: {served_model_name}.", "model"
        )
    kind: Kind = "chat" if "messages" in body else "completion"
    ids, _ = prompt_ids(kind, body, tokenizer)
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids, "token_strs": None}


def sse(data: dict[str, Any] | str) -> bytes:
    import json

    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def finish_reason(generated: int, max_tokens: int) -> str:
    return "length" if generated >= max_tokens else "stop"
