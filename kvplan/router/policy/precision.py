"""Length-bucket rollout, except that risky requests stay off the candidate (per-request fallback).

A request the rollout weight sends to the candidate goes to the bucket's safe pool instead (the
baseline, or the plan's `precision.to`, e.g. an INT8 pool beside an INT4 candidate) when:

- precision_header: the client sent `X-KV-Precision: high` (and the plan honours the header);
- precision_rule: the plan's rule for the bucket marks it (`structured`: tools or JSON output);
- precision_prompt: the heuristic, a long retrieval prompt citing many sources — at least
  `min_sources` distinct source markers in a prompt of at least `min_prompt_tokens` tokens. Why
  this one: KV quantization nudges attention a little everywhere, and the answers that depend on
  attending precisely to one of many similar passages (which source said it) are the first to
  drift; a short chat does not.

The safe pool, when it is a candidate that cannot take the request now, falls back to the
baseline (with the same reason: the request was still kept off the lossy pool).
"""

from __future__ import annotations

import re

from kvplan.metric_names import DecisionReason
from kvplan.plan import Bucket, Precision
from kvplan.router.endpoints import Availability
from kvplan.router.policy.base import Decision, PolicyInput, RequestSignals
from kvplan.router.policy.length_bucket import LengthBucketPolicy

# [1], [12], [S3], [doc-4], [source 2], [Ref#7]; and <document ...>/<doc ...>/<source ...> tags.
_BRACKETED = re.compile(r"\[(?:(?:source|src|doc|document|ref|s|d)[\s:_#-]?)?\d{1,4}\]", re.IGNORECASE)
_TAGGED = re.compile(r"<(?:document|doc|source)\b[^>]*>", re.IGNORECASE)


def cited_sources(text: str) -> int:
    """Distinct bracketed source markers plus document tags in a prompt."""
    marks = {m.group(0).casefold().replace(" ", "") for m in _BRACKETED.finditer(text)}
    return len(marks) + len(_TAGGED.findall(text))


def risk(rule: Precision, signals: RequestSignals) -> DecisionReason | None:
    """Why a request must not be served lossily (a decision reason), or None."""
    if rule.header and signals.precision_high:
        return DecisionReason.PRECISION_HEADER
    if rule.structured and signals.structured:
        return DecisionReason.PRECISION_RULE
    if (
        rule.min_sources is not None
        and signals.prompt_tokens >= rule.min_prompt_tokens
        and cited_sources(signals.text()) >= rule.min_sources
    ):
        return DecisionReason.PRECISION_PROMPT
    return None


class PrecisionPolicy:
    name = "precision"

    def __init__(self, bucket: Bucket | None = None) -> None:
        self.rule = bucket.precision if bucket is not None else Precision()
        self.safe = self.rule.to if bucket is None or self.rule.to else bucket.baseline.name
        self._weighted = LengthBucketPolicy()

    def select(self, inp: PolicyInput) -> Decision:
        chosen = self._weighted.select(inp)
        if chosen.pool != inp.flags.candidate:
            return chosen
        why = risk(self.rule, inp.request)
        if why is None:
            return chosen
        safe = self.safe or inp.flags.baseline
        if safe != inp.flags.baseline and inp.availability(safe) is not Availability.AVAILABLE:
            safe = inp.flags.baseline
        return Decision(safe, why)
