"""Prefix-cache affinity within a load bound.

A request goes where the longest leading part of its prompt is already cached, unless that
endpoint is too busy. Each candidate costs its load minus the share of the prompt it holds,
scaled by the bound:

    cost = load - load_bound * cached_blocks / prompt_blocks

so an endpoint holding the whole prompt may carry up to `load_bound` more load than the least
loaded one and still win, one holding a tenth of it only a tenth of that, and no endpoint is
ever chosen beyond the bound (load = Endpoint.score: in-flight + 2 x scraped waiting, + 8 at
KV saturation). Example, bound 8: A holds 75% of the prompt with load 10, B nothing with load 5:
A costs 10 - 6 = 4 < 5, A wins; at load 12 A costs 6 > 5, B serves and now holds it too.

A prompt nobody holds goes by rendezvous hashing of its first block over the endpoints within
the bound, so a new prefix lands on the same endpoint from any router replica or after a router
restart, and removing or adding an endpoint moves only the prefixes that hashed to it.
Prompts shorter than one key have no identity: power of two choices.

Keys are chained hashes of the prompt cut at multiples of the pool's block size: every
KEY_TOKENS tokens (at least one block) for the first 8 keys, then twice as far apart every 8 keys
(`kvplan.router.tokens.key_ends`). vLLM caches whole blocks, so a key held means those blocks
were sent there; a 2,000-token prompt is 12 keys and a 12,000-token one 28 (not 125 and 750
blocks), which keeps the per-request cost near power of two's, and the cached share of a prompt
is known to within an eighth of it. The table weighs each key by the tokens it covers, so an
endpoint's entries stay within the tokens its prefix cache holds.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from functools import cache

from kvplan.router.endpoint_policy.base import Choice, Pick
from kvplan.router.endpoint_policy.power_of_two import two_choices
from kvplan.router.endpoint_policy.prefix_table import PrefixTable
from kvplan.router.endpoints import Endpoint, eligible
from kvplan.router.tokens import key_ends

DEFAULT_BLOCK_SIZE = 16  # vLLM's --block-size on GPUs, until the endpoints report theirs
KEY_TOKENS = 128  # tokens per prefix key at least (a whole number of the pool's blocks)
UNKNOWN_CACHE_TOKENS = 1 << 62  # an endpoint that has not reported its cache: only the table's bound


_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: every input bit moves every output bit (crc32 alone is linear,
    and ranks endpoints in step with the key's bits)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def rendezvous(candidates: Sequence[Endpoint], key: int) -> Endpoint:
    """The candidate with the highest hash of (key, endpoint address): adding or removing an
    endpoint only moves the keys it wins or held. Same answer in every router process."""
    return max(candidates, key=lambda e: _mix(key ^ zlib.crc32(e.host_header) << 16))


def pool_block_size(endpoints: Sequence[Endpoint]) -> int:
    return next((e.block_size for e in endpoints if e.block_size), DEFAULT_BLOCK_SIZE)


@cache
def key_spans(first: int) -> tuple[int, ...]:
    """Tokens each prefix key covers (its end minus the previous key's)."""
    ends = key_ends(first)
    return tuple(e - s for s, e in zip((0, *ends), ends, strict=False))


def key_blocks(block_size: int) -> int:
    """Pool blocks per prefix key: KEY_TOKENS tokens or one block, whichever is more."""
    return max(1, KEY_TOKENS // block_size)


class PrefixCachePolicy:
    name = "prefix-cache"

    def __init__(self, load_bound: float, table_blocks: int, rng: random.Random | None = None) -> None:
        self.load_bound = load_bound
        self.table: PrefixTable[Endpoint] = PrefixTable(table_blocks)
        self.rng = rng or random.Random()

    def select(
        self, endpoints: Sequence[Endpoint], pick: Pick, exclude: Sequence[Endpoint] = ()
    ) -> Choice | None:
        candidates = eligible(endpoints, exclude)
        if not candidates:
            return None
        now, sat = pick.now, pick.sat
        block_size = pool_block_size(endpoints)
        first = block_size * key_blocks(block_size)
        keys = pick.tokens.prefix_keys(first)
        if not keys:
            return Choice(two_choices(candidates, now, sat, self.rng), "load")
        loads = [e.score(now, sat) for e in candidates]
        depths = self.table.depths(keys, candidates)
        deepest = max(depths)
        if deepest == 0:
            bound = min(loads) + self.load_bound
            within = [e for e, load in zip(candidates, loads, strict=True) if load <= bound]
            chosen, reason = rendezvous(within, keys[0]), "new_prefix"
        else:
            ends = key_ends(first)  # tokens covered by the first d keys: ends[d - 1]
            scale = self.load_bound / ends[len(keys) - 1]
            costs = [load - scale * ends[d - 1] if d else load for load, d in zip(loads, depths, strict=True)]
            best = min(costs)
            tied = [e for e, c in zip(candidates, costs, strict=True) if c == best]
            # among equals, a hash of the first block nobody holds: distinct prompts that share
            # a common head (a system prompt) spread instead of piling on one endpoint
            chosen = tied[0] if len(tied) == 1 else rendezvous(tied, keys[min(deepest, len(keys) - 1)])
            reason = "prefix" if depths[candidates.index(chosen)] else "over_bound"
        limit = UNKNOWN_CACHE_TOKENS  # its prefix cache's size in tokens, once scraped
        if chosen.cache_blocks:
            limit = chosen.cache_blocks * (chosen.block_size or block_size)
        self.table.record(chosen, keys, limit, key_spans(first))
        return Choice(chosen, reason)

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        self.table.retain(endpoints)

    def table_size(self) -> int:
        return len(self.table)
