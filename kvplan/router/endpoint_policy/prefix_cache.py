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

Keys are chained hashes of the prompt cut at multiples of the pool's block size, one key per
`key_blocks(block_size)` blocks (at least KEY_TOKENS tokens): vLLM caches whole blocks, so a key
held means those blocks were sent there, and a 2,000-token prompt costs 16 keys, not 125 (the
per-request cost stays within a few microseconds of power of two; the depth is known to 128
tokens, a rounding that moves no routing decision of prompts that share thousands of tokens).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

from kvplan.router.endpoint_policy.base import Choice, Pick
from kvplan.router.endpoint_policy.power_of_two import two_choices
from kvplan.router.endpoint_policy.prefix_table import PrefixTable
from kvplan.router.endpoints import Endpoint, eligible

DEFAULT_BLOCK_SIZE = 16  # vLLM's --block-size on GPUs, until the endpoints report theirs
KEY_TOKENS = 128  # tokens per prefix key at least (a whole number of the pool's blocks)


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
        key_tokens = pool_block_size(endpoints) * key_blocks(pool_block_size(endpoints))
        keys = pick.tokens.block_keys(key_tokens)
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
            scale = self.load_bound / len(keys)
            costs = [load - scale * d for load, d in zip(loads, depths, strict=True)]
            best = min(costs)
            tied = [e for e, c in zip(candidates, costs, strict=True) if c == best]
            # among equals, a hash of the first block nobody holds: distinct prompts that share
            # a common head (a system prompt) spread instead of piling on one endpoint
            chosen = tied[0] if len(tied) == 1 else rendezvous(tied, keys[min(deepest, len(keys) - 1)])
            reason = "prefix" if depths[candidates.index(chosen)] else "over_bound"
        limit = self.table.capacity
        if chosen.cache_blocks:  # its prefix cache holds this many keys' worth of tokens
            limit = chosen.cache_blocks * (chosen.block_size or key_tokens) // key_tokens
        self.table.record(chosen, keys, limit)
        return Choice(chosen, reason)

    def endpoints_changed(self, endpoints: Sequence[Endpoint]) -> None:
        self.table.retain(endpoints)

    def table_size(self) -> int:
        return len(self.table)
