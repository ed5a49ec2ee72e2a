"""bench/prefix_replay.py's prompt builder: requests that share leading trace blocks (hash_ids)
share exactly those leading tokens, for the simulated worker's tokenizer and for the router."""

from __future__ import annotations

from itertools import pairwise

from bench.prefix_replay import TRACE, TRACE_BLOCK, PromptBuilder, load_trace, skewed
from kvplan.router.endpoint_policy.prefix_cache import KEY_TOKENS
from kvplan.router.tokens import EstimateCounter, completion_prompt
from kvplan.workers.sim.engine import prompt_block_hashes
from kvplan.workers.sim.text import PieceTokenizer

SIM_BLOCK = 16


def test_shared_hash_ids_are_shared_tokens_and_nothing_more() -> None:
    build, tok = PromptBuilder(), PieceTokenizer()
    a = tok.encode(build.prompt([0, 1, 2, 7], 4 * TRACE_BLOCK))
    b = tok.encode(build.prompt([0, 1, 2, 9], 3 * TRACE_BLOCK + 100))
    c = tok.encode(build.prompt([5, 1, 2], 3 * TRACE_BLOCK))
    assert (len(a), len(b), len(c)) == (4 * TRACE_BLOCK, 3 * TRACE_BLOCK + 100, 3 * TRACE_BLOCK)
    shared = 3 * TRACE_BLOCK
    assert a[:shared] == b[:shared]
    assert sum(x == y for x, y in zip(a[shared:], b[shared:], strict=False)) < 10  # chance only
    # the worker's prefix cache sees the same: 96 equal block hashes, then none
    ha, hb = prompt_block_hashes(a, SIM_BLOCK), prompt_block_hashes(b, SIM_BLOCK)
    assert ha[: shared // SIM_BLOCK] == hb[: shared // SIM_BLOCK]
    assert ha[shared // SIM_BLOCK] != hb[shared // SIM_BLOCK]
    # another first block: another prefix from the first token, although blocks 1 and 2 match
    hc = prompt_block_hashes(c, SIM_BLOCK)
    assert ha[0] != hc[0] and all(x != y for x, y in zip(ha, hc, strict=False))


def test_the_router_sees_the_same_shared_prefix() -> None:
    build, est = PromptBuilder(), EstimateCounter()
    a = completion_prompt(est, build.prompt([3, 4, 5], 3 * TRACE_BLOCK))
    b = completion_prompt(est, build.prompt([3, 4, 6], 3 * TRACE_BLOCK))
    assert a.count == b.count == 3 * TRACE_BLOCK + 1  # the estimate counts the words exactly (+ BOS)
    ka, kb = a.block_keys(KEY_TOKENS), b.block_keys(KEY_TOKENS)
    shared = (2 * TRACE_BLOCK) // KEY_TOKENS  # the keys inside the two common blocks
    assert ka[:shared] == kb[:shared]
    assert all(x != y for x, y in zip(ka[shared:], kb[shared:], strict=True))


def test_the_trace_sample_and_the_skewed_variant() -> None:
    reqs = load_trace(TRACE, 40, 50, 32768, 48)
    assert len(reqs) == 50 and reqs[0].at == 0 and all(x.at <= y.at for x, y in pairwise(reqs))
    assert all(r.input_length + 48 < 32768 for r in reqs)
    assert all(len(r.hash_ids) == -(-r.input_length // TRACE_BLOCK) for r in reqs)
    hot = skewed(reqs, 0.3)
    heads = [r.hash_ids[0] for r in hot]
    share = sum(h >= 10**9 for h in heads) / len(heads)
    assert 0.15 < share < 0.45
    assert [r.input_length for r in hot] == [r.input_length for r in reqs]
