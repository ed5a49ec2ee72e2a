"""Which endpoint of a pool holds which prompt prefixes, as far as the router has sent them.

vLLM keeps a request's full prompt blocks in its prefix cache after the request, until it needs
the space (least recently used first, a prompt's tail before its head). The table assumes every
prefix key sent to an endpoint is cached there, and forgets it in the same order once that
endpoint's share of the table is full or its keys cover more tokens than its cache holds.
Memory is bounded by `capacity` (key, endpoint) pairs in all.

    _holders: key -> bit mask of the endpoints holding it (one dict for lookups)
    _blocks:  endpoint -> its keys with the tokens each covers, least recently sent first
    _tokens:  endpoint -> tokens its keys cover in all
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

E = TypeVar("E", bound=Hashable)


class PrefixTable(Generic[E]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a prefix table needs room for at least one block")
        self.capacity = capacity
        self._holders: dict[int, int] = {}
        self._blocks: dict[E, OrderedDict[int, int]] = {}
        self._tokens: dict[E, int] = {}
        self._bit: dict[E, int] = {}

    def __len__(self) -> int:
        """(block, endpoint) pairs held: the table's size."""
        return sum(len(b) for b in self._blocks.values())

    def bit(self, endpoint: E) -> int:
        """The endpoint's bit in the holder masks (assigned at first sight)."""
        bit = self._bit.get(endpoint)
        if bit is None:
            used = 0
            for b in self._bit.values():
                used |= b
            bit = (used + 1) & ~used  # the lowest free bit: a mask stays small while the pool does
            self._bit[endpoint] = bit
            self._blocks[endpoint] = OrderedDict()
            self._tokens[endpoint] = 0
            share = self.capacity // len(self._blocks)
            for other in self._blocks:  # a smaller share each: the total stays bounded
                self._evict(other, share, self._tokens[other])
        return bit

    def depths(self, keys: Sequence[int], endpoints: Sequence[E]) -> list[int]:
        """For each endpoint, how many leading blocks of `keys` it holds.

        Walks the chain from its first block until none of `endpoints` holds the next one:
        O(longest match) dict lookups, whatever the number of endpoints."""
        bits = [self.bit(e) for e in endpoints]
        alive = 0
        for b in bits:
            alive |= b
        holders = self._holders
        steps: list[tuple[int, int]] = []  # (depth, endpoints still matching beyond it) at each drop
        for depth, key in enumerate(keys):
            held = holders.get(key, 0) & alive
            if held != alive:
                steps.append((depth, held))
                if not held:
                    break
                alive = held
        else:
            steps.append((len(keys), 0))
        out = []
        for b in bits:
            d = 0
            for at, still in steps:
                d = at
                if not b & still:
                    break
            out.append(d)
        return out

    def record(self, endpoint: E, keys: Sequence[int], limit: int, spans: Sequence[int] = ()) -> None:
        """`endpoint` now holds `keys`, key i covering `spans[i]` tokens (1 each without spans);
        it keeps keys covering at most `limit` tokens (and its share of the capacity)."""
        bit = self.bit(endpoint)
        blocks = self._blocks[endpoint]
        holders = self._holders
        added = 0
        # Deepest key first, so that the head of the prompt is the most recently used and is
        # forgotten last, as vLLM evicts a prompt's tail before its head.
        for i in range(len(keys) - 1, -1, -1):
            key = keys[i]
            if key in blocks:
                blocks.move_to_end(key)
                continue
            span = spans[i] if spans else 1
            holders[key] = holders.get(key, 0) | bit
            blocks[key] = span
            added += span
        self._tokens[endpoint] += added
        self._evict(endpoint, self.capacity // len(self._blocks), limit)

    def _evict(self, endpoint: E, entries: int, tokens: int) -> None:
        """Forget `endpoint`'s least recently sent keys until it has at most `entries` of them
        covering at most `tokens`."""
        blocks, bit = self._blocks[endpoint], self._bit[endpoint]
        total = self._tokens[endpoint]
        while blocks and (len(blocks) > entries or total > tokens):
            key, span = blocks.popitem(last=False)
            total -= span
            self._drop(key, bit)
        self._tokens[endpoint] = total

    def retain(self, endpoints: Iterable[E]) -> None:
        """Forget every endpoint not in `endpoints` (removed from the pool), freeing its bit."""
        keep = set(endpoints)
        for endpoint in [e for e in self._bit if e not in keep]:
            bit = self._bit.pop(endpoint)
            del self._tokens[endpoint]
            for key in self._blocks.pop(endpoint):
                self._drop(key, bit)

    def _drop(self, key: int, bit: int) -> None:
        held = self._holders[key] & ~bit
        if held:
            self._holders[key] = held
        else:
            del self._holders[key]
