"""Endpoint policies without any I/O: power of two, round robin, prefix-cache and its table."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvplan.errors import PlanError
from kvplan.plan import EndpointChoice, EndpointPolicyName, parse_plan
from kvplan.router.endpoint_policy import ENDPOINT_POLICIES, Pick, endpoint_policy
from kvplan.router.endpoint_policy.power_of_two import PowerOfTwoPolicy
from kvplan.router.endpoint_policy.prefix_cache import PrefixCachePolicy, key_blocks, rendezvous
from kvplan.router.endpoint_policy.prefix_table import PrefixTable
from kvplan.router.endpoint_policy.round_robin import RoundRobinPolicy
from kvplan.router.endpoints import Endpoint, Saturation
from kvplan.router.inputs import CHAT, parse
from kvplan.router.routes import RouteTable
from kvplan.router.tokens import EstimateCounter, PromptTokens, chat_prompt, completion_prompt, key_ends

SAT = Saturation()
NOW = 1000.0
BLOCK = 16
EST = EstimateCounter()


def _endpoints(n: int, max_in_flight: int = 64) -> list[Endpoint]:
    eps = [Endpoint("p", f"http://127.0.0.1:{9000 + i}", max_in_flight) for i in range(n)]
    for ep in eps:
        ep.scraped_at = NOW
        ep.block_size = BLOCK
    return eps


def _prompt(*parts: str) -> PromptTokens:
    """A completions prompt made of parts of 30 blocks each (16 estimated tokens = 48 bytes a block)."""
    return completion_prompt(EST, "".join((p * 1440)[:1440] for p in parts))


def _pick(tokens: PromptTokens) -> Pick:
    return Pick(tokens, NOW, SAT)


def test_every_plan_policy_name_has_an_implementation_with_that_name() -> None:
    assert set(ENDPOINT_POLICIES) == set(EndpointPolicyName)
    for name in EndpointPolicyName:
        choice = EndpointChoice.model_validate({"policy": name})
        assert endpoint_policy(choice).name == name


def test_power_of_two_prefers_less_loaded_and_skips_full_or_unhealthy() -> None:
    eps = _endpoints(2, max_in_flight=4)
    eps[0].in_flight, eps[1].in_flight = 3, 0
    policy = PowerOfTwoPolicy(random.Random(0))
    pick = _pick(_prompt("a"))

    def chosen(exclude: list[Endpoint] | None = None) -> Endpoint | None:
        c = policy.select(eps, pick, exclude or [])
        return c.endpoint if c else None

    assert all(chosen() is eps[1] for _ in range(20))
    eps[1].waiting = 5  # its vLLM queue outweighs the router's own in-flight difference
    assert chosen() is eps[0]
    eps[0].in_flight = 4
    assert chosen() is eps[1]  # eps[0] is full
    eps[1].healthy = False
    assert chosen() is None
    assert chosen(exclude=[eps[1]]) is None


def test_round_robin_cycles_over_the_endpoints_that_can_take_one() -> None:
    eps = _endpoints(3)
    policy = RoundRobinPolicy()
    pick = _pick(_prompt("a"))
    first = [policy.select(eps, pick).endpoint for _ in range(6)]  # type: ignore[union-attr]
    assert sorted(first, key=eps.index) == [eps[0], eps[0], eps[1], eps[1], eps[2], eps[2]]
    eps[1].healthy = False
    assert {policy.select(eps, pick).endpoint for _ in range(6)} == {eps[0], eps[2]}  # type: ignore[union-attr]


def test_prompts_sharing_leading_blocks_go_to_the_endpoint_that_holds_them() -> None:
    eps = _endpoints(4)
    policy = PrefixCachePolicy(load_bound=8, table_blocks=100_000)
    first = policy.select(eps, _pick(_prompt("a", "b")))
    assert first is not None and first.reason == "new_prefix"
    # the next turn of the conversation: the same head and more
    again = policy.select(eps, _pick(_prompt("a", "b", "c")))
    assert again is not None and (again.endpoint, again.reason) == (first.endpoint, "prefix")
    first.endpoint.in_flight = 5  # busier, but the cached prefix is worth it (cost 5 - 8 x 2/3 < 0)
    again = policy.select(eps, _pick(_prompt("a", "b", "d")))
    assert again is not None and (again.endpoint, again.reason) == (first.endpoint, "prefix")


def test_beyond_the_load_bound_the_least_loaded_serves_and_then_holds_the_prefix_too() -> None:
    eps = _endpoints(3)
    policy = PrefixCachePolicy(load_bound=4, table_blocks=100_000)
    hot = _prompt("hot", "x")
    holder = policy.select(eps, _pick(hot)).endpoint  # type: ignore[union-attr]
    holder.in_flight = 5  # more than the bound above the idle others
    spill = policy.select(eps, _pick(hot))
    assert spill is not None and spill.endpoint is not holder and spill.reason == "over_bound"
    spill.endpoint.in_flight = 1
    # both hold it now: the less loaded of the two holders, never the third
    again = policy.select(eps, _pick(hot))
    assert again is not None and (again.endpoint, again.reason) == (spill.endpoint, "prefix")


@settings(max_examples=200, deadline=None)
@given(
    loads=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 6)), min_size=1, max_size=6),
    conversations=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=30),
    bound=st.floats(0, 20),
)
def test_the_chosen_endpoint_is_never_beyond_the_bound(
    loads: list[tuple[int, int]], conversations: list[tuple[int, int]], bound: float
) -> None:
    eps = _endpoints(len(loads))
    for ep, (in_flight, waiting) in zip(eps, loads, strict=True):
        ep.in_flight, ep.waiting = in_flight, waiting
    policy = PrefixCachePolicy(load_bound=bound, table_blocks=2_000)
    for conv, turns in conversations:
        tokens = _prompt(*(f"c{conv}t{t}" for t in range(turns)))
        choice = policy.select(eps, _pick(tokens))
        assert choice is not None
        least = min(e.score(NOW, SAT) for e in eps)
        assert choice.endpoint.score(NOW, SAT) <= least + bound
        choice.endpoint.in_flight += 1  # the request is now in flight there


def test_a_holder_at_kv_cache_saturation_counts_as_beyond_the_bound() -> None:
    eps = _endpoints(3)
    policy = PrefixCachePolicy(load_bound=4, table_blocks=100_000)
    conv = _prompt("a", "b")
    holder = policy.select(eps, _pick(conv)).endpoint  # type: ignore[union-attr]
    holder.kv_usage = 0.5  # scraped vllm:kv_cache_usage_perc below saturation: no extra load
    again = policy.select(eps, _pick(conv))
    assert again is not None and (again.endpoint, again.reason) == (holder, "prefix")
    holder.kv_usage = 0.97  # saturated: +8 of load, beyond the bound of 4 over the idle others
    spill = policy.select(eps, _pick(conv))
    assert spill is not None and spill.endpoint is not holder and spill.reason == "over_bound"
    holder.kv_usage, holder.waiting = 0.5, 3  # its scraped queue (2 x 3 = 6) is beyond it too
    spill = policy.select(eps, _pick(_prompt("a", "b", "c")))
    assert spill is not None and spill.endpoint is not holder


def test_an_added_endpoint_keeps_held_prefixes_in_place_and_takes_only_new_ones() -> None:
    eps = _endpoints(5)
    four, policy = eps[:4], PrefixCachePolicy(load_bound=8, table_blocks=100_000)
    first = [policy.select(four, _pick(_prompt(f"conv {i}"))) for i in range(200)]
    holders = [c.endpoint for c in first if c is not None]
    policy.endpoints_changed(eps)  # scaled out: a fifth replica
    later = [policy.select(eps, _pick(_prompt(f"conv {i}", "next turn"))) for i in range(200)]
    assert [(c.endpoint, c.reason) for c in later if c] == [(h, "prefix") for h in holders]
    # conversations the table has not seen: those that move all move to the new replica
    before = [PrefixCachePolicy(8, 100_000).select(four, _pick(_prompt(f"new {i}"))) for i in range(400)]
    after = [PrefixCachePolicy(8, 100_000).select(eps, _pick(_prompt(f"new {i}"))) for i in range(400)]
    moved = [
        a.endpoint for b, a in zip(before, after, strict=True) if a and b and a.endpoint is not b.endpoint
    ]
    assert set(moved) == {eps[4]} and 40 < len(moved) < 130  # about a fifth


def test_prefix_keys_cover_whole_pool_blocks_of_at_least_128_tokens() -> None:
    assert [key_blocks(b) for b in (1, 16, 32, 128, 256)] == [128, 8, 4, 1, 1]
    eps = _endpoints(2)
    policy = PrefixCachePolicy(load_bound=8, table_blocks=100_000)
    policy.select(eps, _pick(_prompt("a", "b")))  # 1 + 960 estimated tokens: 7 keys of 128
    assert policy.table_size() == 7
    eps[0].block_size = eps[1].block_size = 256  # a pool of 256-token blocks: one block a key
    policy.select(eps, _pick(_prompt("c", "d")))
    assert policy.table_size() == 7 + 3


def test_a_prompt_shorter_than_a_block_is_balanced_by_load() -> None:
    eps = _endpoints(2)
    eps[0].in_flight = 9
    choice = PrefixCachePolicy(8, 1000).select(eps, _pick(completion_prompt(EST, "hi")))
    assert choice is not None and (choice.endpoint, choice.reason) == (eps[1], "load")


def test_new_prefixes_move_only_off_a_removed_endpoint() -> None:
    eps = _endpoints(5)
    keys = [_prompt(f"conversation {i}").block_keys(BLOCK)[0] for i in range(2000)]
    before = [rendezvous(eps, k) for k in keys]
    assert min(before.count(e) for e in eps) > 300  # spread: about 400 each
    after = [rendezvous(eps[1:], k) for k in keys]
    moved = [b is not a for b, a in zip(before, after, strict=True)]
    assert moved == [b is eps[0] for b in before]  # exactly those that lived on the removed one


def test_ejected_holder_is_skipped_and_regains_its_prefixes_when_back() -> None:
    eps = _endpoints(3)
    policy = PrefixCachePolicy(8, 100_000)
    conv = _prompt("a", "b")
    holder = policy.select(eps, _pick(conv)).endpoint  # type: ignore[union-attr]
    holder.healthy = False
    during = policy.select(eps, _pick(conv))
    assert during is not None and during.endpoint is not holder
    holder.healthy = True
    back = policy.select(eps, _pick(conv))
    assert back is not None and back.reason == "prefix" and back.endpoint in (holder, during.endpoint)


def test_block_keys_chain_the_prefix() -> None:
    a, b = _prompt("same", "left"), _prompt("same", "right")
    ka, kb = a.block_keys(BLOCK), b.block_keys(BLOCK)
    assert len(ka) == len(kb) == (1 + 2880 // 3) // BLOCK  # BOS + 960 estimated tokens
    shared = next(i for i, (x, y) in enumerate(zip(ka, kb, strict=True)) if x != y)
    assert 28 <= shared <= 30  # the blocks of the common first part, then different forever
    assert all(x != y for x, y in zip(ka[shared:], kb[shared:], strict=True))
    # chat: the same conversation head, a later turn: same leading keys, whatever follows
    head = [{"role": "system", "content": "rules " * 100}, {"role": "user", "content": "q1 " * 60}]
    turn = [*head, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    k1, k2 = chat_prompt(EST, head).block_keys(BLOCK), chat_prompt(EST, turn).block_keys(BLOCK)
    assert k2[: len(k1)] == k1
    # another role for the same text is another prompt
    other = [{"role": "user", "content": "rules " * 100}]
    assert chat_prompt(EST, other).block_keys(BLOCK)[0] != k1[0]


def test_the_table_is_bounded_and_forgets_tails_before_heads() -> None:
    table: PrefixTable[str] = PrefixTable(capacity=100)
    for i in range(50):
        table.record("a", [i * 1000 + j for j in range(30)], limit=10**9)
        table.record("b", [i * 1000 + j for j in range(7)], limit=10**9)
        assert len(table) <= 100
    assert len(table) == 100
    last = [49 * 1000 + j for j in range(30)]
    # a's share (50) holds its last prompt, the head of the one before, nothing of older ones
    assert table.depths(last, ["a"]) == [30]
    before = [48 * 1000 + j for j in range(30)]
    assert table.depths(before, ["a"]) == [20]
    assert table.depths([47 * 1000], ["a"]) == [0]
    table.record("a", [1, 2, 3], limit=2)  # its replica's cache holds only two blocks
    assert table.depths([1, 2, 3], ["a"]) == [2]


def test_keys_end_at_fixed_positions_that_spread_out_along_the_prompt() -> None:
    ends = key_ends(128)
    assert ends[:10] == (128, 256, 384, 512, 640, 768, 896, 1024, 1280, 1536)
    assert ends[15:18] == (3072, 3584, 4096)  # 8 keys at each spacing, then twice as far apart
    assert all(e % 128 == 0 for e in ends)  # whole pool blocks
    # the count key_ends' docstring gives: about 8 x log2(T / (8 x first) + 1)
    assert sum(e <= 1024 for e in ends) == 8 and sum(e <= 32768 for e in ends) == 40
    long = completion_prompt(EST, "x" * 3 * 12_000)  # 12,001 estimated tokens
    keys = long.prefix_keys(128)
    assert len(keys) == sum(e <= 12_001 for e in ends) == 28
    short = completion_prompt(EST, "x" * 3 * 5_000)
    assert short.prefix_keys(128) == keys[: len(short.prefix_keys(128))]  # same head, same keys


def test_the_table_weighs_keys_by_the_tokens_they_cover() -> None:
    table: PrefixTable[str] = PrefixTable(capacity=1000)
    spans = (100, 100, 200, 400)
    table.record("a", [1, 2, 3, 4], limit=10**9, spans=spans)
    assert table.depths([1, 2, 3, 4], ["a"]) == [4]
    table.record("a", [9, 8], limit=700, spans=spans)  # its cache holds 700 tokens: the oldest go
    assert table.depths([9, 8], ["a"]) == [2]
    assert table.depths([1, 2, 3, 4], ["a"]) == [3]  # the tail (400 tokens) went first
    table.record("a", [9, 8], limit=250, spans=spans)
    assert len(table) == 2 and table.depths([1], ["a"]) == [0]


def test_the_table_keeps_each_endpoint_to_its_share_when_one_joins() -> None:
    table: PrefixTable[str] = PrefixTable(capacity=90)
    table.record("a", list(range(90)), limit=10**9)
    assert len(table) == 90
    table.record("b", [1000], limit=10**9)
    table.record("c", [2000], limit=10**9)
    assert len(table) <= 90
    table.retain(["b", "c"])  # "a" left the pool
    assert len(table) == 2 and table.depths([0, 1], ["b"]) == [0]


def test_the_table_stays_bounded_over_many_distinct_prompts() -> None:
    eps = _endpoints(4)
    policy = PrefixCachePolicy(8, table_blocks=5_000)
    rng = random.Random(1)
    for i in range(3000):
        head = f"s{rng.randrange(50)}"  # 50 conversations, recurring
        choice = policy.select(eps, _pick(_prompt(head, f"turn {i}")))
        assert choice is not None
        assert policy.table_size() <= 5_000
    assert policy.table_size() > 4_000  # it does remember up to its bound


def test_reload_keeps_the_prefix_table_unless_its_settings_change() -> None:
    text = """
buckets:
  - name: short
    max_tokens: 4096
    endpoint_choice: {policy: prefix-cache, load_bound: 4}
    baseline: {name: short-bf16, model: m, max_model_len: 4096, endpoints: ["http://127.0.0.1:9"]}
"""
    table = RouteTable(parse_plan(text))
    pool = table.pools["short-bf16"]
    assert isinstance(pool.chooser, PrefixCachePolicy) and pool.chooser.load_bound == 4
    body = b'{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % (b"hello " * 200)
    pool.chooser.select(pool.endpoints, _pick(table.tokens(parse(CHAT, body))))
    kept = RouteTable(parse_plan(text), None, table.endpoints, 256, table.pools)
    assert kept.pools["short-bf16"].chooser is pool.chooser and pool.chooser.table_size() > 0
    changed = RouteTable(
        parse_plan(text.replace("load_bound: 4", "load_bound: 6")), None, None, 256, kept.pools
    )
    assert changed.pools["short-bf16"].chooser is not pool.chooser


@pytest.mark.parametrize(
    ("choice", "field"),
    [
        ("{policy: prefix-cach}", r"buckets\.0\.endpoint_choice\.policy: Input should be 'power-of-two'"),
        (
            "{policy: prefix-cache, load_bound: -1}",
            r"buckets\.0\.endpoint_choice\.load_bound: .*greater than or equal to 0",
        ),
        ("{policy: prefix-cache, load_bound: .nan}", r"buckets\.0\.endpoint_choice\.load_bound: .*finite"),
        ("{policy: prefix-cache, table_blocks: 0}", r"buckets\.0\.endpoint_choice\.table_blocks: "),
        ("{policy: round-robin, load_bound: 2}", r"buckets\.0\.endpoint_choice: load_bound: only policy"),
    ],
)
def test_a_bad_endpoint_choice_names_the_field_and_line(choice: str, field: str) -> None:
    text = f"""buckets:
  - name: short
    max_tokens: 4096
    baseline: {{name: short-bf16, model: m, max_model_len: 4096}}
    endpoint_choice: {choice}
"""
    with pytest.raises(PlanError, match=r"<plan>:5: " + field):
        parse_plan(text)
