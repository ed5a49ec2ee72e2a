"""vLLM's own log lines about memory and capacity, read from an engine's log (pure functions)."""

from __future__ import annotations

import re
from typing import Any

_NUM = r"([\d,]+(?:\.\d+)?)"
PATTERNS: dict[str, re.Pattern[str]] = {
    "available_kv_gib": re.compile(r"Available KV cache memory: " + _NUM + " GiB"),
    "kv_cache_tokens": re.compile(r"(?:GPU|CPU) KV cache size: " + _NUM + " tokens"),
    "concurrency_len": re.compile(r"Maximum concurrency for " + _NUM + " tokens per request"),
    "max_concurrency": re.compile(r"tokens per request: " + _NUM + "x"),
    "model_load_gib": re.compile(r"Model loading took " + _NUM + " GiB"),
    "model_load_s": re.compile(r"Model loading took [\d.]+ GiB memory and " + _NUM + " seconds"),
    "init_engine_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took " + _NUM),
    "cuda_graph_estimate_gib": re.compile(r"Estimated CUDA graph memory: " + _NUM + " GiB total"),
    "graph_capture_s": re.compile(r"Graph capturing finished in " + _NUM + " secs"),
    "graph_capture_gib": re.compile(r"Graph capturing finished in [\d.]+ secs, took " + _NUM + " GiB"),
}
_BACKEND = re.compile(r"Using (\S+) (?:attention )?backend")
_INTS = {"kv_cache_tokens", "concurrency_len"}


def parse_vllm_log(text: str) -> dict[str, Any]:
    """The figures vLLM logged (the last occurrence of each), and the attention backend it chose."""
    out: dict[str, Any] = {}
    for key, pat in PATTERNS.items():
        found = pat.findall(text)
        if found:
            raw = found[-1].replace(",", "")
            out[key] = int(float(raw)) if key in _INTS else float(raw)
    backends = _BACKEND.findall(text)
    if backends:
        out["attention_backend"] = backends[-1].rstrip(".")
    return out


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])
