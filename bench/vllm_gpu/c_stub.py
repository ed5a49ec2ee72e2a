"""Stand-in for vLLM's compiled op library on a machine whose torch does not match vLLM's wheel.

setup_device.sh installs this file as `vllm/_C_stable_libtorch.py`, so `import
vllm._C_stable_libtorch` succeeds without the .so. It wraps the `torch.ops` namespaces vLLM's
compiled code would fill: an op that exists is returned as is; a capability query ("...support...")
answers False, so vLLM takes its torch-native or Triton path; an activation op that layers bind in
their constructor (and never call once `custom_ops` is `none`) is a function that raises if called;
a few compiled ops have a torch stand-in with the same results (activations, MoE routing and
sorting, `weak_ref_tensor`); any other op is absent (AttributeError), as `hasattr` checks expect.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

NAMESPACES = ("_C", "_C_cache_ops", "_C_custom_ar", "_moe_C", "_C_utils")
# layers keep a handle to these at construction time; forward_native never calls it
_BOUND_AT_INIT = re.compile(r"silu|gelu|relu|swiglu|_mul$")
# vLLM's compile passes name these as `torch.ops._C.<op>.default` when imported (Gemma-3n's model
# imports them); with enforce_eager no pass runs, so they are never called
_NAMED_BY_COMPILE_PASSES = frozenset(
    {
        "rotary_embedding",
        "static_scaled_fp8_quant",
        "dynamic_scaled_fp8_quant",
        "dynamic_per_token_scaled_fp8_quant",
        "fused_add_rms_norm",
        "fused_add_rms_norm_static_fp8_quant",
        "fused_qk_norm_rope",
        "rms_norm",
        "rms_norm_dynamic_per_token_quant",
        "rms_norm_static_fp8_quant",
        "silu_and_mul_quant",
        "silu_and_mul_per_block_quant",
    }
)


class _Op:
    """A function standing where an op packet was: callable, and `.default` is itself."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        self.default = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)


def _answer_false(*_: Any, **__: Any) -> bool:
    return False


def _strong_ref(t: torch.Tensor) -> torch.Tensor:
    """`weak_ref_tensor` (vLLM's CUDA-graph wrapper keeps its graphs' outputs through it): the
    compiled op returns a view that does not own the storage; here the tensor itself, which keeps
    the graph pool's output alive a little longer (more memory, same values). The H200 run of
    2026-12-03 stopped at this op; with this stand-in capture has not run yet."""
    return t


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


def _silu_and_mul(out: torch.Tensor, x: torch.Tensor) -> None:
    gate, up = _halves(x)
    out.copy_(F.silu(gate) * up)


def _gelu_and_mul(out: torch.Tensor, x: torch.Tensor) -> None:
    gate, up = _halves(x)
    out.copy_(F.gelu(gate) * up)


def _gelu_tanh_and_mul(out: torch.Tensor, x: torch.Tensor) -> None:
    gate, up = _halves(x)
    out.copy_(F.gelu(gate, approximate="tanh") * up)


def _swigluoai_and_mul(out: torch.Tensor, x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> None:
    """gpt-oss's activation: gate and up interleaved, both clamped (vLLM's forward_native)."""
    gate = x[..., ::2].clamp(max=limit)
    up = x[..., 1::2].clamp(min=-limit, max=limit)
    out.copy_((up + 1) * gate * torch.sigmoid(gate * alpha))


def _silu_and_mul_with_clamp(
    out: torch.Tensor, x: torch.Tensor, limit: float, alpha: float = 1.0, beta: float = 0.0
) -> None:
    gate, up = _halves(x)
    if limit > 0:
        gate, up = gate.clamp(max=limit), up.clamp(min=-limit, max=limit)
    out.copy_(gate * torch.sigmoid(gate * alpha) * (up + beta))


def _route(
    scores: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    token_expert_indices: torch.Tensor,
    renormalize: bool,
    bias: torch.Tensor | None,
    scale: float,
) -> None:
    """The fused top-k routers: experts chosen on scores (+ correction bias), weighted by the
    unbiased scores, optionally renormalised and scaled; token_expert_indices[t, k] = k * T + t."""
    k = topk_ids.shape[-1]
    ids = torch.topk(scores if bias is None else scores + bias.float(), k, dim=-1).indices
    weights = scores.gather(-1, ids)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    topk_weights.copy_(weights * scale)
    topk_ids.copy_(ids)
    t = torch.arange(scores.shape[0], device=scores.device, dtype=torch.int32)
    ks = torch.arange(k, device=scores.device, dtype=torch.int32)
    token_expert_indices.copy_(ks[None, :] * scores.shape[0] + t[:, None])


def _topk_softmax(
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    token_expert_indices: torch.Tensor,
    gating_output: torch.Tensor,
    renormalize: bool = False,
    e_score_correction_bias: torch.Tensor | None = None,
    is_padding: torch.Tensor | None = None,
) -> None:
    scores = torch.softmax(gating_output.float(), dim=-1)
    _route(scores, topk_weights, topk_ids, token_expert_indices, renormalize, e_score_correction_bias, 1.0)


def _topk_sigmoid(
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    token_expert_indices: torch.Tensor,
    gating_output: torch.Tensor,
    renormalize: bool = False,
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float = 1.0,
    is_padding: torch.Tensor | None = None,
) -> None:
    scores = gating_output.float().sigmoid()
    _route(
        scores,
        topk_weights,
        topk_ids,
        token_expert_indices,
        renormalize,
        e_score_correction_bias,
        routed_scaling_factor,
    )


def _moe_align_block_size(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_size: int,
    sorted_token_ids: torch.Tensor,
    experts_ids: torch.Tensor,
    num_tokens_post_pad: torch.Tensor,
    expert_map: torch.Tensor | None = None,
    scatter_idx: torch.Tensor | None = None,
) -> None:
    """Routed rows grouped by expert (ascending), each expert's run padded to a multiple of
    block_size with the pad id topk_ids.numel(); one expert id per block; the padded total. With
    expert_map, routes to experts not on this rank are left out (ignore_invalid_experts)."""
    flat = topk_ids.flatten().long()
    rows = torch.arange(flat.numel(), device=flat.device)
    if expert_map is not None:
        flat = expert_map.long()[flat]
    valid = flat >= 0
    experts, rows = flat[valid], rows[valid]
    order = torch.argsort(experts, stable=True)
    experts, rows = experts[order], rows[order]
    counts = torch.bincount(experts, minlength=num_experts)
    padded = (counts + block_size - 1) // block_size * block_size
    starts = torch.cumsum(padded, 0) - padded
    first = torch.cumsum(counts, 0) - counts
    slot = starts[experts] + (torch.arange(experts.numel(), device=flat.device) - first[experts])
    sorted_token_ids.fill_(topk_ids.numel())
    sorted_token_ids[slot] = rows.to(sorted_token_ids.dtype)
    blocks = torch.repeat_interleave(torch.arange(num_experts, device=flat.device), padded // block_size)
    experts_ids.fill_(-1)
    experts_ids[: blocks.numel()] = blocks.to(experts_ids.dtype)
    num_tokens_post_pad.fill_(int(padded.sum()))
    if scatter_idx is not None:
        scatter_idx.fill_(-1)
        scatter_idx.view(-1)[rows] = rows.to(scatter_idx.dtype)


def _moe_sum(
    x: torch.Tensor,
    out: torch.Tensor,
    topk_ids: torch.Tensor | None = None,
    expert_map: torch.Tensor | None = None,
) -> None:
    """[tokens, k, hidden] summed over k; routes to experts not on this rank count zero."""
    if topk_ids is not None and expert_map is not None:
        x = x * (expert_map[topk_ids.long()] >= 0).unsqueeze(-1).to(x.dtype)
    out.copy_(x.sum(dim=1))


def _concat_and_cache_mla(
    kv_c: torch.Tensor,
    k_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_cache_dtype: str,
    scale: torch.Tensor,
    skip_scale: bool = False,
) -> None:
    """MLA's cache write, unquantized cache only: [latent | rope key] per token into its slot
    (slot -1: a padded token, not written)."""
    if kv_cache_dtype not in ("auto", "bfloat16", "float16"):
        raise NotImplementedError(f"concat_and_cache_mla stand-in: kv_cache_dtype {kv_cache_dtype!r}")
    rows = torch.cat([kv_c.reshape(kv_c.shape[0], -1), k_pe.reshape(k_pe.shape[0], -1)], dim=-1)
    flat = kv_cache.view(-1, rows.shape[-1])
    n = slot_mapping.shape[0]
    valid = slot_mapping >= 0
    flat[slot_mapping[valid].long()] = rows[:n][valid].to(flat.dtype)


# compiled ops with a torch-level stand-in (same results, vLLM's torch-native formulas); the MoE
# ones let a MoE model run vLLM's Triton fused-MoE path (its routing and sorting are compiled)
_STAND_INS: dict[str, Callable[..., Any]] = {
    "weak_ref_tensor": _strong_ref,
    "silu_and_mul": _silu_and_mul,
    "gelu_and_mul": _gelu_and_mul,
    "gelu_tanh_and_mul": _gelu_tanh_and_mul,
    "swigluoai_and_mul": _swigluoai_and_mul,
    "silu_and_mul_with_clamp": _silu_and_mul_with_clamp,
    "topk_softmax": _topk_softmax,
    "topk_sigmoid": _topk_sigmoid,
    "moe_align_block_size": _moe_align_block_size,
    "moe_sum": _moe_sum,
    "concat_and_cache_mla": _concat_and_cache_mla,
}


def _absent_op(namespace: str, op: str) -> Callable[..., Any]:
    def call(*_: Any, **__: Any) -> Any:
        raise NotImplementedError(f"torch.ops.{namespace}.{op} is compiled vLLM code, absent here")

    return call


class AbsentOps:
    """One `torch.ops` namespace: real ops first, then the stand-ins above."""

    def __init__(self, namespace: str, real: Any) -> None:
        self._namespace = namespace
        self._real = real

    def __getattr__(self, op: str) -> Any:
        try:
            return getattr(self._real, op)
        except (AttributeError, RuntimeError):
            pass
        if op in _STAND_INS:
            return _Op(_STAND_INS[op])
        if "support" in op:
            return _answer_false
        if _BOUND_AT_INIT.search(op) or op in _NAMED_BY_COMPILE_PASSES:
            return _Op(_absent_op(self._namespace, op))
        raise AttributeError(f"torch.ops.{self._namespace}.{op} is compiled vLLM code, absent here")


for _ns in NAMESPACES:
    if not isinstance(getattr(torch.ops, _ns), AbsentOps):  # idempotent: a second import changes nothing
        setattr(torch.ops, _ns, AbsentOps(_ns, getattr(torch.ops, _ns)))
