"""Agreement between a baseline's and a candidate's answer to the same greedy request. Pure.

Four measures, each in [0, 1] (1 = the candidate said what the baseline said):

- exact: the two texts are identical.
- prefix: tokens in the common leading run / tokens of the longer answer. Greedy decoding
  continues from its own tokens, so one flipped token usually changes everything after it; this
  is how far the two stayed together.
- tokens: difflib's matching-blocks ratio over token ids, 2 * matched / (len a + len b). It
  forgives a one-token detour that rejoins ("Paris is" vs "Paris, is" still shares most tokens),
  so it reads as "how much of the answer survived" rather than "where it first moved".
- length: shorter / longer answer in tokens (an answer cut short or run on).

Worked example: baseline [5, 6, 7, 8], candidate [5, 6, 9, 8]: exact 0, prefix 2/4 = 0.5,
tokens 2 * 3 / 8 = 0.75, length 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from kvplan.metric_names import AgreementMeasure

MEASURES = tuple(m.value for m in AgreementMeasure)


@dataclass(frozen=True)
class Agreement:
    exact: float
    prefix: float
    tokens: float
    length: float

    def as_dict(self) -> dict[str, float]:
        return {m: getattr(self, m) for m in MEASURES}


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common leading run of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def prefix_share(a: Sequence[int], b: Sequence[int]) -> float:
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else common_prefix(a, b) / longest


def token_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    if not a and not b:
        return 1.0
    return SequenceMatcher(None, list(a), list(b), autojunk=False).ratio()


def length_ratio(a: Sequence[int], b: Sequence[int]) -> float:
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else min(len(a), len(b)) / longest


def agreement(base_text: str, cand_text: str, base_ids: Sequence[int], cand_ids: Sequence[int]) -> Agreement:
    return Agreement(
        exact=1.0 if base_text == cand_text else 0.0,
        prefix=prefix_share(base_ids, cand_ids),
        tokens=token_agreement(base_ids, cand_ids),
        length=length_ratio(base_ids, cand_ids),
    )
