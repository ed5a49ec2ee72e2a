"""The simulated engine: vLLM v1's scheduler reduced to token and block counts.

A pure state machine. `step()` schedules one batch the way vLLM's v1 scheduler does and returns
what it produced and how long the GPU would have taken; it never reads a clock or sleeps, so tests
and the capacity benchmark drive it on a simulated clock and the HTTP server on a real one.

Scheduling, as in `vllm/v1/core/sched/scheduler.py` (chunked prefill and prefix caching on):
- one token budget per step (`max_num_batched_tokens`) shared by decodes and prefill chunks;
- running requests first, in order: each needs KV blocks for the tokens it computes this step
  (its prompt at admission, then one block every `block_size` decoded tokens); when the pool is
  out of blocks the newest running request is preempted (recompute: its blocks are freed and it
  goes back to the head of the waiting queue, to prefill prompt + output so far again);
- then, if nothing was preempted in this step, waiting requests in arrival order while the budget,
  `max_num_seqs` and free blocks allow (a request is admitted only when its whole prompt fits in
  the free blocks, though only its first chunk is allocated: `scheduler_reserve_full_isl`);
- a request whose computed tokens reach its known tokens samples one new token in that step;
- prefix caching: a (re)admitted request reuses the cached blocks its prompt starts with (by hash
  chain, never the block of its last token) and computes only the rest; a computed full prompt
  block is cached, and once no request holds it, it stays cached until its space is needed
  (evicted least recently freed first, a prompt's tail before its head).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class StepCost(Protocol):
    """GPU time of one step's work (the planner's roofline, see `profile.py`)."""

    def prefill_seconds(self, prompt_tokens: int) -> float:
        """Time to prefill a prompt of this many tokens from an empty cache."""
        ...

    def decode_seconds(self, batch: int, context_tokens: int) -> float:
        """One decode step of `batch` sequences of `context_tokens` tokens each."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    num_gpu_blocks: int  # as vLLM reports it; block 0 is the reserved null block
    block_size: int
    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    # vLLM's `scheduler_reserve_full_isl` (default on in 0.32): admit a waiting request only if
    # all its known tokens fit in the free blocks, though only the first chunk is allocated.
    reserve_full_prompt: bool = True
    # vLLM's automatic prefix caching (on by default): full prompt blocks are kept, keyed by a hash
    # chain over their tokens, and a request whose prompt starts with cached blocks skips them.
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.max_model_len <= 0:
            raise ValueError("block_size and max_model_len must be positive")
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if self.usable_blocks < self.blocks_for(self.max_model_len):
            # vLLM refuses to start in this case ("To serve at least one request ...").
            raise ValueError(
                f"{self.num_gpu_blocks} KV blocks of {self.block_size} tokens cannot hold one "
                f"request of max_model_len {self.max_model_len}"
            )

    @property
    def usable_blocks(self) -> int:
        return self.num_gpu_blocks - 1

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    """One request inside the engine."""

    request_id: str
    prompt_tokens: int
    max_output_tokens: int
    output_tokens: int = 0
    num_computed: int = 0  # tokens whose KV is in the cache
    num_blocks: int = 0  # blocks in its block table (shared cached ones included)
    block_hashes: tuple[int, ...] = ()  # of the prompt's full blocks (prefix caching)
    cached: list[int] = field(default_factory=list)  # hashes of the cached blocks it holds
    num_preemptions: int = 0
    status: Status = Status.WAITING

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True)
class TokenEvent:
    """Request `request_id` produced its output token number `index` (0-based)."""

    request_id: str
    index: int
    finished: bool


@dataclass(frozen=True)
class StepResult:
    duration: float  # GPU seconds the step takes
    tokens: tuple[TokenEvent, ...]
    preempted: tuple[str, ...]
    admitted: tuple[str, ...]  # requests moved from waiting to running in this step
    prefill_tokens: int  # prompt (or recomputed) tokens processed in this step
    decode_batch: int  # sequences that decoded one token in this step
    prefix_queried_tokens: int = 0  # prompt tokens looked up in the prefix cache at admission
    prefix_hit_tokens: int = 0  # of those, tokens found (not computed again)


@dataclass
class Engine:
    config: EngineConfig
    cost: StepCost
    running: list[Sequence] = field(default_factory=list)
    waiting: deque[Sequence] = field(default_factory=deque)
    used_blocks: int = 0  # physical blocks referenced by requests (a shared block counts once)
    num_preemptions: int = 0
    _by_id: dict[str, Sequence] = field(default_factory=dict)
    # Cached blocks: referenced ones with their reference counts, and unreferenced ones in LRU
    # order. Unreferenced cached blocks count as free; allocating evicts the oldest of them.
    _refs: dict[int, int] = field(default_factory=dict)
    _evictable: OrderedDict[int, None] = field(default_factory=OrderedDict)

    # -- requests -------------------------------------------------------------------------------

    def add(
        self, request_id: str, prompt_tokens: int, max_output_tokens: int, block_hashes: tuple[int, ...] = ()
    ) -> None:
        """Queue a request; `block_hashes` (see `prompt_block_hashes`) enable prefix-cache hits."""
        if request_id in self._by_id:
            raise ValueError(f"request {request_id!r} is already in the engine")
        if prompt_tokens <= 0 or max_output_tokens <= 0:
            raise ValueError("a request needs at least one prompt token and one output token")
        if prompt_tokens + max_output_tokens > self.config.max_model_len:
            raise ValueError(
                f"{prompt_tokens} prompt + {max_output_tokens} output tokens exceed "
                f"max_model_len {self.config.max_model_len}"
            )
        seq = Sequence(request_id, prompt_tokens, max_output_tokens, block_hashes=block_hashes)
        self._by_id[request_id] = seq
        self.waiting.append(seq)

    def abort(self, request_id: str) -> None:
        """Drop a request (client went away); unknown or finished ids are ignored."""
        seq = self._by_id.pop(request_id, None)
        if seq is None:
            return
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self._free(seq)
        else:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    # -- state ----------------------------------------------------------------------------------

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def free_blocks(self) -> int:
        return self.config.usable_blocks - self.used_blocks

    @property
    def kv_cache_usage(self) -> float:
        """vLLM's `kv_cache_usage_perc`: 1 - free / usable blocks, 0-1."""
        return self.used_blocks / self.config.usable_blocks

    # -- one step -------------------------------------------------------------------------------

    def step(self) -> StepResult:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        preempted: list[str] = []
        admitted: list[str] = []
        queried = hit_tokens = 0

        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            new = min(seq.num_tokens - seq.num_computed, budget)
            while not self._allocate(seq, seq.num_computed + new):
                victim = self.running.pop()  # the newest running request
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                break
            scheduled.append((seq, new))
            budget -= new
            index += 1

        while not preempted and self.waiting and budget > 0:
            if len(self.running) >= self.config.max_num_seqs:
                break
            seq = self.waiting[0]
            hits = self._prefix_hits(seq)
            # blocks it needs: new ones, plus cached ones that are free (unreferenced) right now
            reuse = sum(1 for h in hits if h in self._evictable)
            computed = len(hits) * self.config.block_size
            new = min(seq.num_tokens - computed, budget)
            whole = self.config.blocks_for(seq.num_tokens) - len(hits) + reuse
            first = self.config.blocks_for(computed + new) - len(hits) + reuse
            if self.config.reserve_full_prompt and whole > self.free_blocks:
                break
            if first > self.free_blocks:
                break
            self._take_cached(seq, hits)
            if not seq.num_preemptions:  # vLLM counts a preempted request's re-admission apart
                queried += seq.prompt_tokens
                hit_tokens += computed
            allocated = self._allocate(seq, computed + new)
            assert allocated, "checked above"
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            admitted.append(seq.request_id)
            scheduled.append((seq, new))
            budget -= new

        result = self._execute(scheduled)
        return dataclasses.replace(
            result,
            preempted=tuple(preempted),
            admitted=tuple(admitted),
            prefix_queried_tokens=queried,
            prefix_hit_tokens=hit_tokens,
        )

    def _execute(self, scheduled: list[tuple[Sequence, int]]) -> StepResult:
        prefill_seconds = 0.0
        prefill_tokens = 0
        decode_contexts: list[int] = []
        events: list[TokenEvent] = []
        for seq, new in scheduled:
            if new == 1 and seq.output_tokens > 0 and seq.num_computed == seq.num_tokens - 1:
                decode_contexts.append(seq.num_computed + 1)
            else:
                # A chunk of [computed, computed + new) costs the difference of the cumulative
                # prefill times, so attention over the earlier chunks is counted once.
                prefill_seconds += self.cost.prefill_seconds(
                    seq.num_computed + new
                ) - self.cost.prefill_seconds(seq.num_computed)
                prefill_tokens += new
            seq.num_computed += new
            self._register_full_blocks(seq)
            if seq.num_computed == seq.num_tokens:
                seq.output_tokens += 1
                done = seq.output_tokens >= seq.max_output_tokens
                events.append(TokenEvent(seq.request_id, seq.output_tokens - 1, done))
                if done:
                    self._finish(seq)
        decode_seconds = 0.0
        if decode_contexts:
            mean_context = round(sum(decode_contexts) / len(decode_contexts))
            decode_seconds = self.cost.decode_seconds(len(decode_contexts), mean_context)
        return StepResult(
            duration=prefill_seconds + decode_seconds,
            tokens=tuple(events),
            preempted=(),
            admitted=(),
            prefill_tokens=prefill_tokens,
            decode_batch=len(decode_contexts),
        )

    # -- blocks ---------------------------------------------------------------------------------

    def _allocate(self, seq: Sequence, tokens: int) -> bool:
        need = self.config.blocks_for(tokens) - seq.num_blocks
        if need > self.free_blocks:
            return False
        if need > 0:
            seq.num_blocks += need
            self._reference(need)
        return True

    def _reference(self, blocks: int) -> None:
        """Take `blocks` physical blocks; evict the oldest unreferenced cached blocks to make room."""
        self.used_blocks += blocks
        while len(self._evictable) > self.free_blocks:
            self._evictable.popitem(last=False)

    def _free(self, seq: Sequence) -> None:
        released = seq.num_blocks - len(seq.cached)  # its private blocks
        # Tail first, as vLLM frees: a prompt's last blocks are evicted before its first ones.
        for h in reversed(seq.cached):
            self._refs[h] -= 1
            if self._refs[h] == 0:  # still cached, now free to evict (most recently used last)
                del self._refs[h]
                self._evictable[h] = None
                released += 1
        self.used_blocks -= released
        seq.num_blocks = 0
        seq.cached = []

    # -- prefix cache ---------------------------------------------------------------------------

    def _prefix_hits(self, seq: Sequence) -> list[int]:
        """Cached leading blocks of a request about to be (re)admitted."""
        if seq.num_computed:
            return []
        return self.cached_prefix(seq.block_hashes, seq.num_tokens)

    def cached_prefix(self, block_hashes: tuple[int, ...], num_tokens: int) -> list[int]:
        """The leading blocks of a prompt found in the cache right now. As in vLLM, the last
        prompt token is always computed, so a fully cached prompt hits one block less."""
        if not self.config.enable_prefix_caching:
            return []
        limit = (num_tokens - 1) // self.config.block_size
        hits: list[int] = []
        for h in block_hashes[:limit]:
            if h not in self._refs and h not in self._evictable:
                break
            hits.append(h)
        return hits

    def _take_cached(self, seq: Sequence, hits: list[int]) -> None:
        for h in hits:
            if h in self._evictable:
                del self._evictable[h]
                self._refs[h] = 1
                self.used_blocks += 1
            else:
                self._refs[h] += 1
        seq.cached = list(hits)
        seq.num_blocks = len(hits)
        seq.num_computed = len(hits) * self.config.block_size

    def _register_full_blocks(self, seq: Sequence) -> None:
        """Blocks of the prompt this request just computed become cached (if not already)."""
        if not self.config.enable_prefix_caching:
            return
        full = min(seq.num_computed // self.config.block_size, len(seq.block_hashes))
        for i in range(len(seq.cached), full):
            h = seq.block_hashes[i]
            if h in self._refs or h in self._evictable:
                return  # another request computed the same block: keep ours private
            self._refs[h] = 1
            seq.cached.append(h)

    def _preempt(self, seq: Sequence) -> None:
        self._free(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._free(seq)
        seq.status = Status.FINISHED
        del self._by_id[seq.request_id]


def prompt_block_hashes(token_ids: Iterable[int], block_size: int) -> tuple[int, ...]:
    """Hash chain over the full blocks of a prompt: block i's hash covers blocks 0..i, so equal
    hashes mean equal prefixes (vLLM keys its prefix cache the same way)."""
    ids = list(token_ids)
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(ids) - block_size + 1, block_size):
        parent = hash((parent, *ids[start : start + block_size]))
        hashes.append(parent)
    return tuple(hashes)
