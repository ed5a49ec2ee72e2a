"""The simulated engine on a simulated clock: admission, blocks, preemption, batching."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvplan.workers.sim.engine import Engine, EngineConfig, prompt_block_hashes
from kvplan.workers.sim.simulation import Simulation


@dataclass(frozen=True)
class LinearCost:
    """A GPU whose prefill costs 0.1 ms per token and whose decode step costs 10 ms plus 1 µs per
    cached token: enough shape to tell batching from serial execution."""

    def prefill_seconds(self, prompt_tokens: int) -> float:
        return 1e-4 * prompt_tokens

    def decode_seconds(self, batch: int, context_tokens: int) -> float:
        return 0.010 + 1e-6 * batch * context_tokens


def make(
    num_gpu_blocks: int = 1001, block_size: int = 16, max_model_len: int = 4096, **kw: int
) -> Simulation:
    config = EngineConfig(num_gpu_blocks, block_size, max_model_len, **kw)
    return Simulation(Engine(config, LinearCost()))


def test_admission_takes_the_prompt_blocks_then_one_block_per_block_size_tokens() -> None:
    sim = make()
    sim.submit("a", prompt_tokens=40, max_output_tokens=30)  # 40 tokens -> 3 blocks of 16
    sim.step()  # prefill + first token
    assert sim.engine.used_blocks == 3
    blocks_seen = [sim.engine.used_blocks]
    while sim.engine.has_work:
        sim.step()
        blocks_seen.append(sim.engine.used_blocks)
    # decode step k caches 40 + k tokens: a 4th block from k = 9 (49 > 48), a 5th from k = 25
    assert blocks_seen[:9] == [3] * 9
    assert blocks_seen[9] == 4
    assert blocks_seen[24:26] == [4, 5]
    assert max(blocks_seen) == 5
    assert blocks_seen[-1] == 0  # finished: everything freed
    assert len(sim.timelines["a"].token_times) == 30


def test_waiting_queue_holds_what_the_blocks_cannot() -> None:
    # 101 blocks = 100 usable (the null block is vLLM's); 150 prompt tokens take 10 blocks.
    sim = make(num_gpu_blocks=101, max_model_len=320, max_num_batched_tokens=100_000)
    for i in range(12):
        sim.submit(f"r{i}", prompt_tokens=150, max_output_tokens=2)
    result = sim.step()
    assert len(result.admitted) == 10
    assert sim.engine.kv_cache_usage == 1.0
    assert [s.request_id for s in sim.engine.waiting] == ["r10", "r11"]
    result = sim.step()  # the ten decode their last token (151 tokens still fit 10 blocks)
    assert len(result.tokens) == 10 and all(e.finished for e in result.tokens)
    assert result.admitted == ()  # blocks are freed only after the step
    assert sim.step().admitted == ("r10", "r11")


def test_out_of_blocks_preempts_the_newest_running_request_and_recomputes_it() -> None:
    # 21 usable blocks; three requests of 96 prompt tokens (6 blocks) growing by 64 tokens each.
    sim = make(num_gpu_blocks=22, max_model_len=320, max_num_batched_tokens=100_000)
    for name in ("old", "mid", "new"):
        sim.submit(name, prompt_tokens=96, max_output_tokens=64)
    preempted: list[str] = []
    while sim.engine.has_work:
        preempted += sim.step().preempted
        assert 0 <= sim.engine.used_blocks <= sim.engine.config.usable_blocks
    assert preempted and preempted[0] == "new"
    assert sim.engine.num_preemptions == len(preempted)
    for name in ("old", "mid", "new"):
        assert len(sim.timelines[name].token_times) == 64  # nobody lost or duplicated tokens
    assert sim.timelines["new"].preemptions >= 1
    assert sim.timelines["old"].preemptions == 0
    assert sim.timelines["new"].finished > sim.timelines["old"].finished  # type: ignore[operator]


def test_continuous_batching_beats_one_at_a_time() -> None:
    batched = make()
    for i in range(8):
        batched.submit(f"r{i}", 500, 100)
    batched.run_until_idle()

    serial = make()
    for i in range(8):
        serial.submit(f"r{i}", 500, 100)
        serial.run_until_idle()

    assert batched.now < serial.now / 4
    assert batched.steps < serial.steps / 4


def test_a_late_request_joins_the_running_batch_at_the_next_step() -> None:
    sim = make()
    sim.submit("early", 200, 200)
    for _ in range(20):
        sim.step()
    sim.submit("late", 200, 10)
    result = sim.step()
    assert result.admitted == ("late",)
    assert {e.request_id for e in result.tokens} == {"early", "late"}  # one batch
    sim.run_until_idle()
    assert sim.timelines["late"].finished < sim.timelines["early"].finished  # type: ignore[operator]


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget() -> None:
    sim = make(max_model_len=32768, num_gpu_blocks=5000, max_num_batched_tokens=8192)
    sim.submit("long", 20_000, 4)
    results = [sim.step() for _ in range(3)]
    assert [r.prefill_tokens for r in results] == [8192, 8192, 3616]
    assert [len(r.tokens) for r in results] == [0, 0, 1]
    # chunked or not, the prefill costs what the whole prompt costs
    assert sum(r.duration for r in results) == pytest.approx(LinearCost().prefill_seconds(20_000))


def test_max_num_seqs_caps_the_running_batch() -> None:
    sim = make(max_num_seqs=4)
    for i in range(10):
        sim.submit(f"r{i}", 20, 50)
    sim.step()
    assert len(sim.engine.running) == 4
    assert len(sim.engine.waiting) == 6


def test_abort_frees_blocks_and_forgets_the_request() -> None:
    sim = make()
    sim.submit("a", 320, 100)
    sim.step()
    assert sim.engine.used_blocks == 20
    sim.engine.abort("a")
    assert sim.engine.used_blocks == 0
    assert not sim.engine.has_work
    sim.engine.abort("a")  # twice is harmless


def test_a_pool_too_small_for_one_max_model_len_request_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold one request"):
        EngineConfig(num_gpu_blocks=100, block_size=16, max_model_len=4096)


def test_requests_beyond_max_model_len_are_refused() -> None:
    sim = make(max_model_len=1000)
    with pytest.raises(ValueError, match="exceed max_model_len"):
        sim.submit("x", 900, 200)


def _run(ops: list[tuple[int, int, int]]) -> list[tuple[float, ...]]:
    sim = make(num_gpu_blocks=60, max_model_len=512, max_num_batched_tokens=256)
    for i, (prompt, out, gap) in enumerate(ops):
        sim.submit(f"r{i}", prompt, out)
        for _ in range(gap):
            if sim.engine.has_work:
                sim.step()
                assert 0 <= sim.engine.used_blocks <= sim.engine.config.usable_blocks
    sim.run_until_idle()
    for i, (_, out, _) in enumerate(ops):
        assert len(sim.timelines[f"r{i}"].token_times) == out
    assert sim.engine.used_blocks == 0
    return [tuple(t.token_times) for t in sim.timelines.values()]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 300), st.integers(1, 200), st.integers(0, 5)), min_size=1, max_size=25)
)
def test_any_workload_finishes_every_token_within_the_blocks_and_deterministically(
    ops: list[tuple[int, int, int]],
) -> None:
    ops = [(p, min(o, 512 - p), g) for p, o, g in ops if p < 512]
    if not ops:
        return
    assert _run(ops) == _run(ops)


# -- against the planner ----------------------------------------------------------------------------


def test_a_replica_admits_exactly_the_planners_guaranteed_count_of_full_length_requests() -> None:
    from kvplan.workers.sim.profile import build_profile

    profile = build_profile("llama-3.1-8b", "h100", "bf16", max_model_len=32768)
    assert profile.engine.num_gpu_blocks == profile.capacity.num_blocks
    # one step may admit everything that fits: a token budget larger than all prompts together
    config = dataclasses.replace(profile.engine, max_num_batched_tokens=10**9)
    sim = Simulation(Engine(config, profile.cost))
    expected = profile.capacity.guaranteed_concurrency
    for i in range(expected + 1):
        sim.submit(f"r{i}", 32766, 2)  # 2048 blocks each, held after the first step
    result = sim.step()
    assert len(result.admitted) == expected
    assert len(sim.engine.waiting) == 1
    assert sim.engine.used_blocks == expected * profile.capacity.blocks_per_request


def test_step_times_are_the_planners_roofline() -> None:
    from kvplan.formats import get_format
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.models import get_model
    from kvplan.planner.roofline import decode_step_seconds, prefill_seconds
    from kvplan.workers.sim.profile import build_profile

    profile = build_profile("llama-3.1-8b", "h100", "int4", max_model_len=8192)
    model, gpu, fmt = get_model("llama-3.1-8b"), get_gpu("h100")[0], get_format("int4")
    sim = Simulation(Engine(profile.engine, profile.cost))
    for i in range(4):
        sim.submit(f"r{i}", 1000, 5)
    first = sim.step()
    assert first.duration == pytest.approx(4 * prefill_seconds(model, gpu, prompt_tokens=1000))
    second = sim.step()
    assert second.decode_batch == 4
    assert second.duration == pytest.approx(
        decode_step_seconds(model, gpu, fmt, batch=4, context_tokens=1001)
    )


def test_admission_waits_until_the_whole_prompt_fits_though_it_allocates_one_chunk() -> None:
    # 200 usable blocks, 1024-token chunks; a 2400-token prompt needs 150 blocks in all.
    sim = make(num_gpu_blocks=201, max_model_len=3000, max_num_batched_tokens=1024)
    sim.submit("a", 2400, 50)
    sim.step()
    assert sim.engine.used_blocks == 64  # the first chunk only
    sim.submit("b", 2400, 50)
    while len(sim.timelines["a"].token_times) < 50:
        result = sim.step()
        assert "b" not in result.admitted  # 136 free blocks never hold b's 150
    assert sim.step().admitted == ("b",)

    loose = Simulation(
        Engine(dataclasses.replace(sim.engine.config, reserve_full_prompt=False), LinearCost())
    )
    loose.submit("a", 2400, 50)
    loose.step()
    loose.submit("b", 2400, 50)
    assert loose.step().admitted == ()  # a's second chunk takes the whole token budget
    results = [loose.step() for _ in range(2)]
    assert any("b" in r.admitted for r in results)  # without the gate b gets in early...
    loose.run_until_idle()
    assert loose.engine.num_preemptions > 0  # ...and one of them is preempted for it


# -- prefix caching ---------------------------------------------------------------------------------


def _check_blocks(engine: Engine) -> None:
    """The physical accounting agrees with the block tables, whatever happened before."""
    seqs = [*engine.running, *engine.waiting]
    private = sum(s.num_blocks - len(s.cached) for s in seqs)
    assert engine.used_blocks == private + len(engine._refs)
    refs: dict[int, int] = {}
    for s in seqs:
        for h in s.cached:
            refs[h] = refs.get(h, 0) + 1
    assert refs == engine._refs
    assert not set(engine._evictable) & set(engine._refs)
    assert len(engine._evictable) <= engine.free_blocks
    assert 0 <= engine.used_blocks <= engine.config.usable_blocks


def test_a_repeated_prompt_reuses_the_cached_blocks_and_skips_their_prefill() -> None:
    sim = make()
    ids = list(range(1000, 1100))  # 100 tokens: 6 full blocks
    hashes = prompt_block_hashes(ids, 16)
    assert len(hashes) == 6
    sim.submit("a", 100, 5, hashes)
    first = sim.step()
    assert first.prefix_queried_tokens == 100 and first.prefix_hit_tokens == 0
    sim.submit("b", 100, 5, hashes)
    second = sim.step()
    assert second.prefix_hit_tokens == 96  # six blocks found, the last 4 tokens computed
    assert second.prefill_tokens == 4
    assert sim.engine.used_blocks == 7 + 1  # a's 7 blocks, b shares 6 and adds 1
    _check_blocks(sim.engine)
    sim.run_until_idle()
    assert sim.engine.used_blocks == 0 and len(sim.engine._evictable) == 6  # kept, evictable
    sim.submit("c", 100, 5, hashes)
    assert sim.step().prefix_hit_tokens == 96
    _check_blocks(sim.engine)


def test_prefix_cache_queries_count_each_request_once_as_vllm_does() -> None:
    """vLLM records a preempted request's re-admission apart (PrefixCacheStats.preempted_*), so
    vllm:prefix_cache_queries sums each request's prompt once, however often it is preempted."""
    sim = make(num_gpu_blocks=22, max_model_len=320, max_num_batched_tokens=100_000)
    for i, name in enumerate(("old", "mid", "new")):
        sim.submit(name, 96, 64, prompt_block_hashes(range(i * 1000, i * 1000 + 96), 16))
    queried = preempted = 0
    while sim.engine.has_work:
        step = sim.step()
        queried += step.prefix_queried_tokens
        preempted += len(step.preempted)
    assert preempted > 0 and queried == 3 * 96


def test_a_different_prefix_misses_and_cached_blocks_are_evicted_under_pressure() -> None:
    sim = make(num_gpu_blocks=41, max_model_len=320, max_num_batched_tokens=10_000)
    a = prompt_block_hashes(range(320), 16)
    b = prompt_block_hashes(range(1, 321), 16)
    sim.submit("a", 300, 2, a[:18])
    sim.run_until_idle()
    assert len(sim.engine._evictable) == 18
    sim.submit("b", 300, 2, b[:18])
    result = sim.step()
    assert result.prefix_hit_tokens == 0
    # b needs 19 of the 40 blocks: 21 are free of cache, so nothing is evicted yet...
    assert len(sim.engine._evictable) == 18
    sim.submit("c", 300, 2, prompt_block_hashes(range(2, 322), 16)[:18])
    sim.step()
    # ...c needs 19 more: 16 of a's cached blocks (the oldest) make room; b finished in the same
    # step, so its 18 blocks join the cache as the most recent
    assert [h in sim.engine._evictable for h in a[:18]] == [True] * 2 + [False] * 16  # tail first
    assert all(h in sim.engine._evictable for h in b[:18])
    _check_blocks(sim.engine)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 300), st.integers(1, 60), st.integers(0, 4)),
        min_size=1,
        max_size=25,
    )
)
def test_shared_prefixes_keep_the_block_accounting_exact(ops: list[tuple[int, int, int, int]]) -> None:
    sim = make(num_gpu_blocks=60, max_model_len=512, max_num_batched_tokens=128)
    for i, (family, prompt, out, gap) in enumerate(ops):
        ids = [family * 10_000 + t for t in range(prompt)]  # same family: same prefix
        sim.submit(f"r{i}", prompt, out, prompt_block_hashes(ids, 16))
        for _ in range(gap):
            if sim.engine.has_work:
                sim.step()
                _check_blocks(sim.engine)
    while sim.engine.has_work:
        sim.step()
        _check_blocks(sim.engine)
    for i, (_, _, out, _) in enumerate(ops):
        assert len(sim.timelines[f"r{i}"].token_times) == out


def test_vllm_kernels_make_quantized_decode_slower_and_leave_bf16_alone() -> None:
    from kvplan.errors import InputError
    from kvplan.workers.sim.profile import build_profile

    def step(fmt: str, kernels: str) -> float:
        cost = build_profile("llama-3.1-8b", "h100", fmt, kernels=kernels).cost
        return cost.decode_seconds(32, 32_000)

    assert step("bf16", "vllm") == step("bf16", "kvplan")
    assert step("int4", "kvplan") < step("bf16", "kvplan")  # reads 136 of 512 bytes
    assert step("int4", "vllm") > step("bf16", "vllm")  # docs/facts.md §4: vLLM's int4 path is slower
    with pytest.raises(InputError, match="kernels must be one of"):
        build_profile("llama-3.1-8b", "h100", "int4", kernels="cuda")


def test_measured_kernels_time_the_workers_gpu_and_refuse_an_unmeasured_one() -> None:
    from kvplan.errors import Unsupported
    from kvplan.workers.sim.profile import build_profile

    def step(gpu: str, fmt: str, kernels: str = "measured") -> float:
        return build_profile("llama-3.1-8b", gpu, fmt, kernels=kernels).cost.decode_seconds(32, 32_000)

    # INT4 kernels measured at 3.32x over BF16 on the H200 (of a 3.76x byte ratio), 1.81x on the H100
    assert step("h200", "int4", "kvplan") < step("h200", "int4")
    assert step("h200", "int4") / step("h200", "bf16") < step("h100", "int4") / step("h100", "bf16")
    with pytest.raises(Unsupported, match="no measured figures on b200"):
        build_profile("llama-3.1-8b", "b200", "int4", kernels="measured")
