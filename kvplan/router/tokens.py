"""Prompt tokens, counted for bucket choice and kept for prefix identity.

With a tokenizer file (the plan's `tokenizer`, a Hugging Face `tokenizer.json`) the text is
counted with the model's own tokenizer, plus the chat template's overhead: ChatML and Llama-3
style templates wrap each message in about 5 special/format tokens (`<|im_start|>role\\n ...
<|im_end|>\\n`) and add a generation prompt and BOS (about 4). Without a tokenizer the count is an
estimate of one token per 3 UTF-8 bytes (English runs about 4 bytes per token, code and CJK closer
to 3): erring high sends a borderline request to the larger bucket instead of a pool that would
reject it.

The same single tokenization also gives the prompt's tokens as fixed-width units (token ids as
4-byte words, or the text's bytes in 3-byte units for the estimate), template markers in place,
so the prefix-cache policy can cut them into the pool's KV blocks without tokenizing again.
"""

from __future__ import annotations

import zlib
from array import array
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

MESSAGE_OVERHEAD = 5  # template tokens around each chat message
REQUEST_OVERHEAD = 4  # generation prompt + BOS
BYTES_PER_TOKEN_ESTIMATE = 3
KEYS_PER_SPACING = 8  # prefix keys at each spacing before the spacing doubles (see key_ends)
MAX_KEYED_TOKENS = 1 << 24
ID_UNIT = 4  # bytes per token id in PromptTokens.data (array "I")
_MARK = b"\xff"  # never in UTF-8 text; as a token-id byte it makes an id beyond any vocabulary


class TokenCounter(Protocol):
    unit: int  # bytes per token in `encode`'s output

    def encode(self, text: str) -> bytes: ...


def _units(data: bytes, unit: int) -> int:
    """Tokens in `data` (a partial last unit counts: the estimate rounds up)."""
    return -(-len(data) // unit)


class EstimateCounter:
    """No tokenizer: ceil(UTF-8 bytes / 3); the bytes themselves are the tokens."""

    unit = BYTES_PER_TOKEN_ESTIMATE

    def encode(self, text: str) -> bytes:
        return text.encode()


class TokenizerCounter:
    """The model's own tokenizer (`tokenizers` library), without special tokens (the template adds them)."""

    unit = ID_UNIT

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(path)

    def encode(self, text: str) -> bytes:
        if not text:
            return b""
        return array("I", self._tok.encode(text, add_special_tokens=False).ids).tobytes()


@cache
def key_ends(first: int) -> tuple[int, ...]:
    """Token positions where prefix keys end: `first` apart for KEYS_PER_SPACING keys, then twice
    as far apart for as many, and so on (128 tokens: 128, 256, ... 1024, 1280, ... 3072, 3584,
    ...). Fixed positions, whatever the prompt's length, so every prompt sharing a head has the
    same keys for it; a prompt of T tokens has about 8 x log2(T / (8 x first) + 1) keys (first
    128: 8 at 1024 tokens, 40 at 32768), and the end of its cached part is known to within an
    eighth of it."""
    ends: list[int] = []
    end, step = 0, first
    while end + step <= MAX_KEYED_TOKENS:
        end += step
        ends.append(end)
        if len(ends) % KEYS_PER_SPACING == 0:
            step *= 2
    return tuple(ends)


@dataclass(frozen=True, slots=True)
class PromptTokens:
    """A prompt as the router tokenized it: its token count, and its tokens as `unit`-byte units."""

    count: int
    data: bytes
    unit: int

    def block_keys(self, block_size: int) -> list[int]:
        """One key per full block of `block_size` tokens, chained: key i identifies blocks 0..i.

        crc32 is chainable (`crc32(block, previous)` is the crc of the whole prefix), runs in C
        and is the same in every process, so router replicas agree. The block index in the high
        bits means only equal-length prefixes can collide (~1 in 4e9 per pair; a collision
        misroutes one request, nothing more). A 12K-token prompt in 16-token blocks: ~0.3 ms.
        """
        step = block_size * self.unit
        view = memoryview(self.data)
        keys: list[int] = []
        crc = 0
        for index, start in enumerate(range(0, len(self.data) - step + 1, step)):
            crc = zlib.crc32(view[start : start + step], crc)
            keys.append(index << 32 | crc)
        return keys

    def prefix_keys(self, first: int) -> list[int]:
        """Chained keys ending at `key_ends(first)` (whole tokens only): key i identifies the
        prompt up to its end, like `block_keys` with blocks growing along the prompt."""
        unit = self.unit
        tokens = len(self.data) // unit
        view = memoryview(self.data)
        keys: list[int] = []
        crc = start = 0
        for index, end in enumerate(key_ends(first)):
            if end > tokens:
                break
            crc = zlib.crc32(view[start * unit : end * unit], crc)
            keys.append(index << 32 | crc)
            start = end
        return keys


def content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _marker(unit: int, tokens: int, tag: str = "") -> bytes:
    """`tokens` template tokens (BOS, a message header with its role) as data units."""
    return (_MARK + tag.encode()).ljust(tokens * unit, _MARK)[: tokens * unit]


def _padded(data: bytes, unit: int) -> bytes:
    """Whole units, so that the next message starts on a token boundary."""
    return data + b"\0" * (-len(data) % unit)


def chat_prompt(counter: TokenCounter, messages: list[dict[str, Any]]) -> PromptTokens:
    unit = counter.unit
    total = REQUEST_OVERHEAD
    parts = [_marker(unit, 1)]  # BOS
    for m in messages:
        data = counter.encode(content_text(m.get("content")))
        n = _units(data, unit)
        header = _marker(unit, MESSAGE_OVERHEAD, str(m.get("role", "")))
        if m.get("name"):
            name = counter.encode(str(m["name"]))
            n += _units(name, unit) + 1
            header += _padded(name, unit) + _marker(unit, 1)
        total += MESSAGE_OVERHEAD + n
        parts += (header, _padded(data, unit))
    return PromptTokens(total, b"".join(parts), unit)


def completion_prompt(counter: TokenCounter, prompt: Any) -> PromptTokens:
    """Completions `prompt`: a string, token ids, or a batch of either (the largest one must fit;
    prefix identity follows the first)."""
    if isinstance(prompt, str):
        data = counter.encode(prompt)
        return PromptTokens(_units(data, counter.unit) + 1, _marker(counter.unit, 1) + data, counter.unit)
    if prompt and all(isinstance(t, int) for t in prompt):
        try:
            data = array("I", prompt).tobytes()
        except OverflowError:  # ids beyond 32 bits: counted, without prefix identity
            data = b""
        return PromptTokens(len(prompt), data, ID_UNIT)
    batch = [completion_prompt(counter, p) for p in prompt]
    if not batch:
        return PromptTokens(0, b"", counter.unit)
    largest = max(t.count for t in batch)
    return PromptTokens(largest, batch[0].data, batch[0].unit)
