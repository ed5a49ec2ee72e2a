"""Traffic mixes: a file of requests (JSONL or CSV) or a `--context-mix` spec, as arrays.

Accepted columns / keys (first match wins):
  prompt tokens: prompt_tokens, input_tokens, input_length, ContextTokens
  output tokens: output_tokens, max_tokens, output_length, GeneratedTokens
  timestamp (optional): timestamp, arrival_time, TIMESTAMP; seconds, or milliseconds for
  `timestamp_ms` and for Mooncake traces (input_length/output_length); ISO date-times in CSV.
So the two shipped real traces (Azure CSV, Mooncake JSONL) load as they are.

Parsing runs in C for the common case (numpy.loadtxt for CSV, whole-file regex scans for JSONL);
anything unusual (ISO timestamps, a bad value) goes through an exact per-row reader that reports
the bad row with its 1-based line number and why (json.loads only to explain a bad line).
"""

from __future__ import annotations

import csv
import re
from array import array
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvplan.errors import InputError
from kvplan.planner.units import parse_tokens

if TYPE_CHECKING:
    import numpy as np

PROMPT_KEYS = ("prompt_tokens", "input_tokens", "input_length", "contexttokens")
OUTPUT_KEYS = ("output_tokens", "max_tokens", "output_length", "generatedtokens")
TIME_KEYS = ("timestamp", "arrival_time", "timestamp_ms")


@dataclass(frozen=True)
class Traffic:
    """Requests as arrays; `weight` (None: every request counts once) lets a context mix stand in
    for a file. `rps` is the arrival rate the plan sizes for."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    rps: float | None
    source: str
    weight: np.ndarray | None = None
    duration_s: float | None = None

    @property
    def total_tokens(self) -> np.ndarray:
        total: np.ndarray = self.prompt_tokens + self.output_tokens
        return total

    @property
    def requests(self) -> int:
        return int(self.prompt_tokens.shape[0])

    def share_above(self, tokens: int) -> float:
        """Share of requests (by weight) whose prompt + output exceeds `tokens`."""
        import numpy as np

        over = self.total_tokens > tokens
        if self.weight is None:
            return float(np.mean(over)) if self.requests else 0.0
        return float(np.sum(self.weight[over]) / np.sum(self.weight))


def parse_context_mix(spec: str, rps: float | None, output_tokens: int = 256) -> Traffic:
    """`8k:60,16k:25,32k:15` (total tokens per request : percent of requests)."""
    import numpy as np

    if rps is None or not rps > 0:
        raise InputError("--context-mix needs a positive --rps")
    if output_tokens <= 0:
        raise InputError(f"output tokens must be positive, got {output_tokens}")
    lengths, shares = [], []
    for part in spec.split(","):
        length, sep, share = part.partition(":")
        if not sep:
            raise InputError(f"bad context mix entry {part!r}: use LENGTH:PERCENT, like 8k:60")
        n = parse_tokens(length, "context length")
        try:
            s = float(share)
        except ValueError:
            raise InputError(f"bad share {share!r} in context mix entry {part!r}") from None
        if s <= 0:
            raise InputError(f"share in context mix entry {part!r} must be positive")
        if n <= output_tokens:
            raise InputError(f"context length {n} in {part!r} must exceed the {output_tokens} output tokens")
        lengths.append(n)
        shares.append(s)
    total = sum(shares)
    if abs(total - 100) > 0.5:
        raise InputError(f"context mix shares add up to {total:g}%, not 100%")
    out = np.full(len(lengths), output_tokens, dtype=np.int64)
    prompt = np.array(lengths, dtype=np.int64) - out
    source = f"context mix {spec} ({len(lengths)} lengths)"
    return Traffic(prompt, out, float(rps), source, np.array(shares) / total)


def _find(header: list[str], keys: tuple[str, ...]) -> int | None:
    low = [h.strip().lower() for h in header]
    for k in keys:
        if k in low:
            return low.index(k)
    return None


def _as_count(text: Any, where: str, field: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        try:
            f = float(text)
        except (TypeError, ValueError):
            raise InputError(f"{where}: {field} {text!r} is not a number") from None
        if f != int(f):
            raise InputError(f"{where}: {field} {text!r} is not a whole number") from None
        value = int(f)
    if value < 0:
        raise InputError(f"{where}: {field} {value} is negative")
    return value


def _iso_seconds(text: str) -> float:
    # Azure writes 7 fractional digits, more than datetime parses: keep microseconds.
    head, dot, frac = text.strip().partition(".")
    return datetime.fromisoformat(head + (dot + frac[:6] if dot else "")).timestamp()


def _load_csv(path: Path) -> tuple[array[int], array[int], float | None]:
    prompts: array[int] = array("q")
    outputs: array[int] = array("q")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty traffic file")
        pi, oi, ti = _find(header, PROMPT_KEYS), _find(header, OUTPUT_KEYS), _find(header, TIME_KEYS)
        if pi is None or oi is None:
            raise InputError(
                f"{path}:1: header needs prompt_tokens and output_tokens columns (got {', '.join(header)})"
            )
        width = max(pi, oi, ti if ti is not None else 0)
        t_first = t_last = None
        t_min_num = t_max_num = None
        numeric_time = None
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                prompts.append(int(row[pi]))
                outputs.append(int(row[oi]))
            except (ValueError, IndexError):
                if len(row) <= width:
                    raise InputError(f"{path}:{line}: expected {width + 1} columns, got {len(row)}") from None
                prompts.append(_as_count(row[pi], f"{path}:{line}", "prompt_tokens"))
                outputs.append(_as_count(row[oi], f"{path}:{line}", "output_tokens"))
            if prompts[-1] < 0 or outputs[-1] < 0:
                field = "prompt_tokens" if prompts[-1] < 0 else "output_tokens"
                raise InputError(f"{path}:{line}: {field} is negative")
            if ti is not None:
                stamp = row[ti]
                if numeric_time is None:
                    try:
                        float(stamp)
                        numeric_time = True
                    except ValueError:
                        numeric_time = False
                if numeric_time:
                    try:
                        v = float(stamp)
                    except ValueError:
                        raise InputError(f"{path}:{line}: timestamp {stamp!r} is not a number") from None
                    t_min_num = v if t_min_num is None else min(t_min_num, v)
                    t_max_num = v if t_max_num is None else max(t_max_num, v)
                else:
                    # ISO strings sort as text; parse only the first and last.
                    t_first = stamp if t_first is None or stamp < t_first else t_first
                    t_last = stamp if t_last is None or stamp > t_last else t_last
    duration = None
    if t_min_num is not None and t_max_num is not None:
        scale = 1000.0 if header[ti or 0].strip().lower() == "timestamp_ms" else 1.0
        duration = (t_max_num - t_min_num) / scale
    elif t_first is not None and t_last is not None:
        try:
            duration = _iso_seconds(t_last) - _iso_seconds(t_first)
        except ValueError:
            raise InputError(f"{path}: timestamps {t_first!r}..{t_last!r} are not ISO date-times") from None
    return prompts, outputs, duration


def _explain_jsonl(line_text: str, where: str) -> InputError:
    import json

    try:
        obj = json.loads(line_text)
    except ValueError as exc:
        return InputError(f"{where}: not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return InputError(f"{where}: each line must be a JSON object")
    for keys, field in ((PROMPT_KEYS[:3], "prompt_tokens"), (OUTPUT_KEYS[:3], "output_tokens")):
        key = next((k for k in keys if k in obj), None)
        if key is None:
            return InputError(f"{where}: missing {field} (or one of {', '.join(keys)})")
        _as_count(obj[key], where, field)
    return InputError(f"{where}: cannot read this request")


def _first_key(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in obj), None)


def _load_jsonl(path: Path) -> tuple[array[int], array[int], float | None]:
    """The exact reader: json.loads per line, so any bad line is named with its reason."""
    import json

    prompts: array[int] = array("q")
    outputs: array[int] = array("q")
    t_min = t_max = None
    ms = False
    with path.open() as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            where = f"{path}:{line}"
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise InputError(f"{where}: not valid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}: each line must be a JSON object")
            pk, ok = _first_key(obj, PROMPT_KEYS[:3]), _first_key(obj, OUTPUT_KEYS[:3])
            if pk is None or ok is None:
                raise _explain_jsonl(text, where)
            prompts.append(_as_count(obj[pk], where, "prompt_tokens"))
            outputs.append(_as_count(obj[ok], where, "output_tokens"))
            tk = _first_key(obj, TIME_KEYS)
            if tk is not None:
                try:
                    v = float(obj[tk])
                except (TypeError, ValueError):
                    raise InputError(f"{where}: {tk} {obj[tk]!r} is not a number") from None
                t_min = v if t_min is None else min(t_min, v)
                t_max = v if t_max is None else max(t_max, v)
                ms = ms or tk == "timestamp_ms" or pk == "input_length"
    if t_min is None or t_max is None:
        return prompts, outputs, None
    return prompts, outputs, (t_max - t_min) / (1000.0 if ms else 1.0)


def _fast_csv(path: Path) -> tuple[np.ndarray, np.ndarray, float | None] | None:
    """numpy's C parser for the common case (numeric columns); None sends the file to the exact
    per-row reader, which handles ISO timestamps and names the row of any bad value."""
    import numpy as np

    with path.open(newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        return None
    pi, oi, ti = _find(header, PROMPT_KEYS), _find(header, OUTPUT_KEYS), _find(header, TIME_KEYS)
    if pi is None or oi is None:
        return None
    cols = (pi, oi) if ti is None else (pi, oi, ti)
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=cols, dtype=np.float64, ndmin=2)
    except ValueError:
        return None
    if data.shape[0] == 0:
        return None
    counts = data[:, :2]
    if bool((counts < 0).any()) or bool((counts != np.floor(counts)).any()):
        return None
    duration = None
    if ti is not None:
        scale = 1000.0 if header[ti].strip().lower() == "timestamp_ms" else 1.0
        duration = float(data[:, 2].max() - data[:, 2].min()) / scale
    return counts[:, 0].astype(np.int64), counts[:, 1].astype(np.int64), duration


_FAST_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens|input_length)"\s*:\s*(\d+)\s*[,}]')
_FAST_OUTPUT = re.compile(rb'"(?:output_tokens|max_tokens|output_length)"\s*:\s*(\d+)\s*[,}]')
_FAST_TIME = re.compile(rb'"timestamp(?:_ms)?"\s*:\s*(-?[0-9][0-9.eE+-]*)\s*[,}]')


def _fast_jsonl(path: Path) -> tuple[np.ndarray, np.ndarray, float | None] | None:
    """Whole-file scans (in C) when every line is one object with plain integer counts; None
    sends the file to the exact per-line reader."""
    import numpy as np

    data = path.read_bytes()
    if not data.startswith(b"{") or b"\n\n" in data or b"arrival_time" in data:
        return None
    n = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if data.count(b"\n{") + 1 != n:  # every line starts an object
        return None
    if data.count(b"}\n") + (0 if data.endswith(b"\n") else int(data.rstrip().endswith(b"}"))) != n:
        return None  # and ends it: a truncated line goes to the exact reader
    prompts, outputs = _FAST_PROMPT.findall(data), _FAST_OUTPUT.findall(data)
    if len(prompts) != n or len(outputs) != n:
        return None
    stamps = _FAST_TIME.findall(data)
    duration = None
    if stamps:
        if len(stamps) != n:
            return None
        try:
            values = np.array(stamps).astype(np.float64)
        except ValueError:
            return None
        # Mooncake traces (input_length/output_length) and `timestamp_ms` count milliseconds.
        ms = b'"timestamp_ms"' in data[:4096] or b'"input_length"' in data[:4096]
        duration = float(values.max() - values.min()) / (1000.0 if ms else 1.0)
    return np.array(prompts).astype(np.int64), np.array(outputs).astype(np.int64), duration


def load_traffic(path: str | Path, rps: float | None = None) -> Traffic:
    """Load a JSONL or CSV request file. `rps` overrides the rate the timestamps give."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InputError(f"traffic file {p} does not exist")
    with p.open("rb") as fh:
        first = fh.read(1)
    is_jsonl = first == b"{" or p.suffix.lower() in (".jsonl", ".json")
    fast = _fast_jsonl(p) if is_jsonl else _fast_csv(p)
    if fast is not None:
        prompt, output, duration = fast
    else:
        prompts, outputs, duration = (_load_jsonl if is_jsonl else _load_csv)(p)
        prompt = np.frombuffer(prompts, dtype=np.int64)
        output = np.frombuffer(outputs, dtype=np.int64)
    n = int(prompt.shape[0])
    if n == 0:
        raise InputError(f"{p}: no requests")
    if rps is not None and not rps > 0:
        raise InputError(f"--rps must be positive, got {rps}")
    rate = rps
    if rate is None:
        if duration is None or duration <= 0:
            raise InputError(f"{p}: no timestamps to derive the arrival rate from; pass --rps")
        rate = n / duration
    if int(np.min(prompt + output)) <= 0:
        bad = int(np.argmin(prompt + output))
        raise InputError(f"{p}: request {bad + 1} has no tokens (prompt + output is 0)")
    return Traffic(prompt, output, float(rate), str(p), None, duration)
