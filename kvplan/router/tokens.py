"""Prompt token counting for bucket choice.

With a tokenizer file (the plan's `tokenizer`, a Hugging Face `tokenizer.json`) the text is
counted with the model's own tokenizer, plus the chat template's overhead: ChatML and Llama-3
style templates wrap each message in about 5 special/format tokens (`<|im_start|>role\\n ...
<|im_end|>\\n`) and add a generation prompt and BOS (about 4). Without a tokenizer the count is an
estimate of one token per 3 UTF-8 bytes (English runs about 4 bytes per token, code and CJK closer
to 3): erring high sends a borderline request to the larger bucket instead of a pool that would
reject it.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

MESSAGE_OVERHEAD = 5  # template tokens around each chat message
REQUEST_OVERHEAD = 4  # generation prompt + BOS
BYTES_PER_TOKEN_ESTIMATE = 3


class TokenCounter(Protocol):
    def count(self, text: str) -> int: ...


class EstimateCounter:
    """No tokenizer: ceil(UTF-8 bytes / 3)."""

    def count(self, text: str) -> int:
        return math.ceil(len(text.encode()) / BYTES_PER_TOKEN_ESTIMATE)


class TokenizerCounter:
    """The model's own tokenizer (`tokenizers` library), without special tokens (the template adds them)."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(path)

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def count_chat(counter: TokenCounter, messages: list[dict[str, Any]]) -> int:
    total = REQUEST_OVERHEAD
    for m in messages:
        total += MESSAGE_OVERHEAD + counter.count(content_text(m.get("content")))
        if m.get("name"):
            total += counter.count(str(m["name"])) + 1
    return total


def count_prompt(counter: TokenCounter, prompt: Any) -> int:
    """Completions `prompt`: a string, token ids, or a batch of either (the largest one must fit)."""
    if isinstance(prompt, str):
        return counter.count(prompt) + 1  # BOS
    if prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return max((count_prompt(counter, p) for p in prompt), default=0)
