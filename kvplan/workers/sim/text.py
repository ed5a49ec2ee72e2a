"""Token counting and deterministic pseudo-text for the simulated worker.

No model runs here, so the worker needs a tokenizer that is cheap, deterministic and consistent
with the text it generates: counting the generated text gives exactly the number of tokens the
engine produced. The default splits text into short pieces the way a BPE vocabulary roughly does
for English (a word of up to 8 letters with its leading space, a run of up to 3 digits, or one
other character), about 4.5 characters per token on prose. A real `tokenizer.json` can be given
instead so that the worker counts prompts exactly like the router does.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

VOCAB_SIZE = 128_256  # Llama 3's vocabulary size: token ids look plausible to clients

# " word", "digits", one other non-space character, or a run of spaces/newlines.
_PIECE = re.compile(r" ?[A-Za-z]{1,8}| ?\d{1,3}| ?[^\sA-Za-z\d]|\s+")

# Llama 3 chat template: <|begin_of_text|> once, then per message
# <|start_header_id|>role<|end_header_id|>\n\n content <|eot_id|> (5 tokens around the content),
# then the generation prompt <|start_header_id|>assistant<|end_header_id|>\n\n (4 tokens).
CHAT_BOS_TOKENS = 1
CHAT_TOKENS_PER_MESSAGE = 5
CHAT_GENERATION_PROMPT_TOKENS = 4

_TEXT = (
    "the of and to in is that it for as with was on be by at this are from or an which have not "
    "they one had but all were when we there can more if will each about their time would so "
    "what up out them other many then these some her like into has two more see way could "
    "people than first water been call who oil its now find long down day did get come made may "
    "part over new sound take only little work know place year live me back give most very after "
    "thing our just name good sentence man think say great where help through much before line "
    "right too mean old any same tell boy follow came want show also around form three small set "
    "put end does another well large must big even such because turn here why ask went men read "
    "need land different home us move try kind hand picture again change off play spell air away "
    "animal house point page letter mother answer found study still learn should world high every "
    "near add food between own below country plant last school father keep tree never start city "
    "earth eye light thought head under story saw left few while along might close something "
    "seem next hard open example begin life always those both paper together got group often run "
    "cache memory token model server request route pool bucket format scale block page latency"
)
_WORDS = tuple(w for w in _TEXT.split() if len(w) <= 8)  # one piece each, so counting the text is exact


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class PieceTokenizer:
    """The default tokenizer: regex pieces, ids from a stable hash of each piece."""

    def pieces(self, text: str) -> list[str]:
        return _PIECE.findall(text)

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(p.encode()) % VOCAB_SIZE for p in self.pieces(text)]


class FileTokenizer:
    """A Hugging Face `tokenizer.json` (the model's own vocabulary), without special tokens."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        self._tok = HfTokenizer.from_file(path)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)


def chat_prompt_ids(tokenizer: Tokenizer, messages: Sequence[tuple[str, str]]) -> list[int]:
    """Token ids of a chat prompt under the Llama 3 template (role, content) pairs.

    Special tokens get fixed ids above the ordinary vocabulary so the count is exact.
    """
    ids = [VOCAB_SIZE - 256]  # <|begin_of_text|>
    for role, content in messages:
        ids += [VOCAB_SIZE - 250, *tokenizer.encode(role), VOCAB_SIZE - 249, 271]
        ids += tokenizer.encode(content)
        ids.append(VOCAB_SIZE - 247)  # <|eot_id|>
    ids += [VOCAB_SIZE - 250, *tokenizer.encode("assistant"), VOCAB_SIZE - 249, 271]
    return ids


@dataclass(frozen=True)
class TextStream:
    """The output of one request: token i is always the same piece for the same seed."""

    seed: int

    def piece(self, index: int) -> str:
        rng = random.Random(self.seed * 1_000_003 + index)
        word = _WORDS[rng.randrange(len(_WORDS))]
        # Sentences of 6-17 words: a capital after each full stop keeps it readable.
        if index % 12 == 11:
            return "."
        return (" " if index else "") + (word.capitalize() if index % 12 == 0 else word)

    def text(self, count: int, start: int = 0) -> str:
        return "".join(self.piece(i) for i in range(start, start + count))


def request_seed(worker_seed: int, prompt_ids: Sequence[int], request_seed: int | None) -> int:
    """Same worker seed and same prompt (or same `seed` field) give the same answer."""
    if request_seed is not None:
        return zlib.crc32(f"{worker_seed}:{request_seed}".encode())
    data = b"".join(i.to_bytes(4, "little") for i in prompt_ids)
    return zlib.crc32(data, worker_seed & 0xFFFFFFFF)


def natural_length(seed: int, mean_tokens: int, floor: int = 16) -> int | None:
    """Where the pseudo-model emits end-of-sequence (None: never). Never before `floor`, so
    short `max_tokens` requests always get exactly what they asked for."""
    if mean_tokens <= 0:
        return None
    rng = random.Random(seed ^ 0x5EED)
    return floor + int(rng.expovariate(1.0 / max(1, mean_tokens - floor)))
