"""Scores of one answer to one eval prompt, in [0, 1]. Pure.

With a reference the answer is scored against it; without one against the baseline pool's
answer to the same prompt (so the baseline scores 1 and a candidate scores how often it says
the same thing).

- exact: normalised texts are equal (case, surrounding whitespace, quotes and end punctuation
  ignored: "Paris." equals "paris").
- multi_turn: the normalised reference appears in the answer as whole words.
- citation: citing the required sources and only those: |required ∩ cited| / |required ∪ cited|,
  where cited = the bracketed ids in the answer ("[S2]", "[D1]") plus the required ids it names as
  whole words ("S2" is named by "S2:" but not by "S21"). "Rome [S2]." for S2 scores 1, "[A] [B]
  [C]" for B scores 1/3, "Rome [S1]." for S2 scores 0.
- tool_call: 1 when the first call found in the answer (a native tool call, or a JSON object in
  the text with `name` and `arguments`) has the reference's name and equal arguments, 0.5 for the
  right name with other arguments, else 0.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kvplan.quality.prompts import EvalPrompt, Task, ToolCall

_EDGE = " \t\r\n\"'`.,;:!?"


def normalise(text: str) -> str:
    return " ".join(text.split()).strip(_EDGE).casefold()


def _contains_words(haystack: str, needle: str) -> bool:
    if not needle:
        return True
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack) is not None


_BRACKETED_ID = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9_-]{0,15})\]")


def cited_share(answer: str, sources: tuple[str, ...]) -> float:
    text = answer.casefold()
    required = {s.casefold() for s in sources}
    cited = {m.casefold() for m in _BRACKETED_ID.findall(answer)}
    cited |= {s for s in required if _contains_words(text, s)}
    if not required and not cited:
        return 1.0
    return len(required & cited) / len(required | cited)


def _as_call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    return ToolCall(name, args)


def find_call(answer: str) -> ToolCall | None:
    """The first JSON object in the text that reads as a call."""
    decoder = json.JSONDecoder()
    for at in (m.start() for m in re.finditer(r"\{", answer)):
        try:
            obj, _ = decoder.raw_decode(answer, at)
        except ValueError:
            continue
        call = _as_call(obj)
        if call is not None:
            return call
    return None


def call_score(got: ToolCall | None, want: ToolCall) -> float:
    if got is None or got.name != want.name:
        return 0.0
    return 1.0 if got.arguments == want.arguments else 0.5


def score(prompt: EvalPrompt, answer: str, baseline_answer: str) -> float:
    ref = prompt.reference
    if prompt.task is Task.CITATION:
        return cited_share(answer, prompt.sources)
    if prompt.task is Task.TOOL_CALL:
        want = ref if isinstance(ref, ToolCall) else find_call(baseline_answer)
        if want is None:  # the baseline made no call either: the same text or not
            return 1.0 if normalise(answer) == normalise(baseline_answer) else 0.0
        return call_score(find_call(answer), want)
    target = normalise(ref if isinstance(ref, str) else baseline_answer)
    if prompt.task is Task.MULTI_TURN and isinstance(ref, str):
        return 1.0 if _contains_words(normalise(answer), target) else 0.0
    return 1.0 if normalise(answer) == target else 0.0
