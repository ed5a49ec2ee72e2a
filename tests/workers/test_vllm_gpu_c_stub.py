"""The GPU harness's stand-ins for vLLM's compiled ops give vLLM's results (CPU, plain torch)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F

STUB = Path(__file__).resolve().parents[2] / "bench" / "vllm_gpu" / "c_stub.py"


@pytest.fixture()
def stub() -> Iterator[ModuleType]:
    """c_stub wraps torch.ops' vLLM namespaces when imported; put them back afterwards."""
    saved = {
        ns: getattr(torch.ops, ns) for ns in ("_C", "_C_cache_ops", "_C_custom_ar", "_moe_C", "_C_utils")
    }
    spec = importlib.util.spec_from_file_location("kvplan_test_c_stub", STUB)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    for ns, real in saved.items():
        setattr(torch.ops, ns, real)


def test_ops_resolve_to_stand_ins_or_are_absent(stub: ModuleType) -> None:
    assert torch.ops._moe_C.topk_softmax._fn is stub._topk_softmax
    assert torch.ops._C.silu_and_mul.default._fn is stub._silu_and_mul
    with pytest.raises(NotImplementedError):  # named by compile passes at import, never called
        torch.ops._C.rotary_embedding.default(None)
    assert torch.ops._moe_C.moe_permute_unpermute_supported() is False
    with pytest.raises(AttributeError, match="compiled vLLM code"):
        _ = torch.ops._moe_C.moe_permute
    with pytest.raises(NotImplementedError):
        torch.ops._C.fatrelu_and_mul(None, None)


def test_topk_softmax_and_sigmoid_route_like_the_kernels(stub: ModuleType) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 8, generator=g).to(torch.bfloat16)
    bias = torch.randn(8, generator=g)
    w = torch.empty(5, 2)
    ids = torch.empty(5, 2, dtype=torch.int32)
    tei = torch.empty(5, 2, dtype=torch.int32)
    stub._topk_softmax(w, ids, tei, logits, True)
    ref = torch.softmax(logits.float(), -1).topk(2, -1)
    assert torch.equal(ids.long(), ref.indices)
    assert torch.allclose(w, ref.values / ref.values.sum(-1, keepdim=True))
    assert tei.tolist() == [[t, 5 + t] for t in range(5)]
    stub._topk_sigmoid(w, ids, tei, logits, False, bias, 2.5)
    scores = logits.float().sigmoid()
    chosen = (scores + bias).topk(2, -1).indices
    assert torch.equal(ids.long(), chosen)
    assert torch.allclose(w, 2.5 * scores.gather(-1, chosen))  # weights from the unbiased scores


@pytest.mark.parametrize("expert_map", [None, torch.tensor([0, -1, 1, -1, 2])])
def test_moe_align_block_size_groups_and_pads(stub: ModuleType, expert_map: Any) -> None:
    topk_ids = torch.tensor([[2, 3], [1, 2], [4, 3], [0, 2], [2, 4]], dtype=torch.int32)
    num_experts, block = 5, 4
    size = topk_ids.numel() + num_experts * (block - 1)
    sorted_ids = torch.empty(size, dtype=torch.int32)
    expert_ids = torch.empty(-(-size // block), dtype=torch.int32)
    post = torch.empty(1, dtype=torch.int32)
    scatter = torch.empty(topk_ids.numel(), 1, dtype=torch.int32)
    stub._moe_align_block_size(
        topk_ids, num_experts, block, sorted_ids, expert_ids, post, expert_map, scatter
    )
    flat = topk_ids.flatten().long()
    local = flat if expert_map is None else expert_map[flat]
    total = int(post)
    assert total % block == 0
    seen = []
    for b in range(total // block):
        rows = [r for r in sorted_ids[b * block : (b + 1) * block].tolist() if r != topk_ids.numel()]
        assert rows and all(int(local[r]) == int(expert_ids[b]) for r in rows)
        seen += rows
    assert sorted(seen) == [r for r in range(flat.numel()) if local[r] >= 0]
    assert expert_ids[: total // block].tolist() == sorted(expert_ids[: total // block].tolist())
    assert scatter.flatten().tolist() == [r if local[r] >= 0 else -1 for r in range(flat.numel())]


def test_moe_sum_and_activations_match_torch(stub: ModuleType) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 6, generator=g)
    out = torch.empty(3, 6)
    stub._moe_sum(x, out)
    assert torch.allclose(out, x.sum(1))
    stub._moe_sum(x, out, torch.tensor([[0, 1]] * 3), torch.tensor([0, -1]))
    assert torch.allclose(out, x[:, 0])
    h = torch.randn(4, 8, generator=g)
    o = torch.empty(4, 4)
    stub._silu_and_mul(o, h)
    assert torch.allclose(o, F.silu(h[:, :4]) * h[:, 4:])
    stub._gelu_tanh_and_mul(o, h)
    assert torch.allclose(o, F.gelu(h[:, :4], approximate="tanh") * h[:, 4:])
    stub._swigluoai_and_mul(o, h * 10)
    gate, up = (h * 10)[:, ::2].clamp(max=7.0), (h * 10)[:, 1::2].clamp(-7.0, 7.0)
    assert torch.allclose(o, (up + 1) * gate * torch.sigmoid(1.702 * gate))
    stub._silu_and_mul_with_clamp(o, h * 10, 7.0)
    assert torch.allclose(o, F.silu((h * 10)[:, :4].clamp(max=7.0)) * (h * 10)[:, 4:].clamp(-7.0, 7.0))


def test_concat_and_cache_mla_writes_latent_and_rope_key_per_slot(stub: ModuleType) -> None:
    kv_c, k_pe = torch.randn(3, 6), torch.randn(3, 1, 2)
    cache = torch.zeros(2, 4, 8)  # 2 blocks of 4 slots, latent 6 + rope 2
    stub._concat_and_cache_mla(kv_c, k_pe, cache, torch.tensor([5, -1, 0]), "auto", torch.ones(1))
    flat = cache.view(-1, 8)
    assert torch.equal(flat[5], torch.cat([kv_c[0], k_pe[0, 0]]))
    assert torch.equal(flat[0], torch.cat([kv_c[2], k_pe[2, 0]]))
    assert int((flat.abs().sum(-1) > 0).sum()) == 2
    with pytest.raises(NotImplementedError, match="fp8"):
        stub._concat_and_cache_mla(kv_c, k_pe, cache, torch.tensor([0, 1, 2]), "fp8", torch.ones(1))
