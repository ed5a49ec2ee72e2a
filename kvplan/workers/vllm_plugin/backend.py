"""kvplan's attention backend for vLLM 0.32-0.33 (imported only inside a vLLM process).

The page of one (layer, KV head, block) is kvplan's head page (`kvplan.formats`): K codes, V
codes and their scales in separate 16-byte-aligned regions. vLLM sizes and allocates pages from
the spec that `customize_spec` returns (`state_content_bytes` = head page bytes / block tokens),
so its memory planning, its logged capacity and its `num_gpu_blocks` all follow the format.
vLLM hands each layer a strided `[blocks, heads, tokens, C]` view of that memory in the model
dtype; a head page is `tokens x C` contiguous bytes, which the kernels address as one record.

Compute: CUDA tensors go to kvplan's Triton kernels (`kvplan.kernels.api`); CPU tensors to the
torch reference (`kvplan.kernels.reference`), over only the pages the batch reads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionLayer,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheLayout

from kvplan.formats import KVFormat
from kvplan.vllm_command import FORMAT_ENV
from kvplan.workers.vllm_plugin import configured_format_name
from kvplan.workers.vllm_plugin.support import SUPPORTED_BLOCK_SIZES, SUPPORTED_HEAD_DIMS, plugin_format


def current_format() -> KVFormat:
    name = configured_format_name()
    if name is None:
        raise RuntimeError(f"kvplan backend loaded without {FORMAT_ENV} set")
    return plugin_format(name)


class KvplanAttentionBackend(AttentionBackend):  # type: ignore[misc]
    forward_includes_kv_cache_update: bool = False  # vLLM calls do_kv_cache_update first
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    # The format is kvplan's (from FORMAT_ENV); vLLM itself must not quantize anything.
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto"]  # type: ignore[assignment]

    @staticmethod
    def get_name() -> str:
        # vLLM looks the name up in its backend enum: it must be the member this class overrides.
        from kvplan.workers.vllm_plugin import backend_member_name

        return backend_member_name()

    @staticmethod
    def get_impl_cls() -> type[KvplanAttentionImpl]:
        return KvplanAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[KvplanMetadataBuilder]:
        return KvplanMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: object = None) -> list[int | MultipleOf]:
        return [MultipleOf(16)]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_DIMS)

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        # Head-major block interiors: one head page is contiguous.
        return (KVCacheLayout.LBHNC,)

    @classmethod
    def customize_spec(cls, spec: AttentionSpec) -> AttentionSpec:
        """Page bytes from kvplan's head-page layout; e.g. int8 at head 64, block 128: 136 B/token."""
        if spec.state_content_bytes is not None:
            return spec
        if spec.head_size_v != spec.head_size:
            raise ValueError("kvplan formats need equal K and V head sizes")
        layout = current_format().head_page(spec.head_size, spec.block_size)
        content = layout.content_bytes_per_token
        elem = torch.empty((), dtype=spec.dtype).element_size()
        if content % elem:
            raise ValueError(f"page content {content} B is not a whole number of {spec.dtype} elements")
        return replace(spec, state_content_bytes=content)


@dataclass
class KvplanMetadata:
    num_actual_tokens: int
    num_reqs: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor  # [B+1]
    seq_lens: torch.Tensor  # [B] tokens in the cache after this step's writes
    block_table: torch.Tensor  # [B, max_blocks]
    slot_mapping: torch.Tensor  # [T]


class KvplanMetadataBuilder(AttentionMetadataBuilder[KvplanMetadata]):  # type: ignore[misc,type-var]
    def __init__(
        self,
        kv_cache_spec: AttentionSpec,
        layer_names: list[str],
        vllm_config: object,
        device: torch.device,
    ) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)  # type: ignore[arg-type]

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> KvplanMetadata:
        m = common_attn_metadata
        if not isinstance(m.causal, bool) or not m.causal:
            raise NotImplementedError("kvplan attention is causal-only")
        b = m.num_reqs
        return KvplanMetadata(
            num_actual_tokens=m.num_actual_tokens,
            num_reqs=b,
            max_query_len=m.max_query_len,
            max_seq_len=m.max_seq_len,
            query_start_loc=m.query_start_loc[: b + 1],
            seq_lens=m.seq_lens[:b],
            block_table=m.block_table_tensor[:b],
            slot_mapping=m.slot_mapping,
        )


class KvplanAttentionImpl(AttentionImpl[KvplanMetadata]):  # type: ignore[misc,type-var]
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
        **_: object,
    ) -> None:
        unsupported = {
            "ALiBi": alibi_slopes is not None,
            "sliding window": sliding_window is not None,
            "logits soft cap": bool(logits_soft_cap),
            "attention sinks": sinks is not None,
            f"attention type {attn_type}": attn_type != AttentionType.DECODER,
            "KV sharing": kv_sharing_target_layer_name is not None,
            f"kv_cache_dtype {kv_cache_dtype} (kvplan pools run with auto)": kv_cache_dtype != "auto",
        }
        missing = [what for what, bad in unsupported.items() if bad]
        if missing:
            raise NotImplementedError(f"kvplan attention does not support: {', '.join(missing)}")
        if head_size not in SUPPORTED_HEAD_DIMS:
            raise NotImplementedError(f"kvplan attention: head_size {head_size} not in {SUPPORTED_HEAD_DIMS}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.attn_type = attn_type
        self.fmt = current_format()

    def _pages(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The layer's cache as uint8 [blocks, kv_heads, head_page_bytes] (a view) and block size."""
        tokens = kv_cache.shape[2]
        if tokens not in SUPPORTED_BLOCK_SIZES:
            raise NotImplementedError(f"kvplan attention: block size {tokens} not in {SUPPORTED_BLOCK_SIZES}")
        return kv_cache.view(torch.uint8).flatten(2), tokens

    def do_kv_cache_update(
        self,
        layer: torch.nn.Module,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        pages, block_size = self._pages(kv_cache)
        n = min(key.shape[0], slot_mapping.shape[0])  # padded tokens carry slot -1 or lie past n
        if n == 0:
            return
        key, value, slots = key[:n], value[:n], slot_mapping[:n]
        if key.is_cuda:
            from kvplan.kernels import api

            api.write_kv(key, value, pages, slots, self.fmt, block_size)
        else:
            from kvplan.kernels import reference

            reference.write_kv(key, value, pages, slots, self.fmt, block_size)

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: KvplanMetadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("kvplan attention does not fuse output quantization")
        if attn_metadata is None:  # profiling run: nothing cached, nothing to attend
            return output
        md = attn_metadata
        n = md.num_actual_tokens
        pages, block_size = self._pages(kv_cache)
        q = query[:n].view(n, self.num_heads, self.head_size)
        out = output[:n].view(n, self.num_heads, self.head_size)
        if query.is_cuda:
            from kvplan.kernels import api

            api.paged_attention(
                q, pages, md.block_table, md.seq_lens, md.query_start_loc, self.fmt, block_size,
                self.scale, max_query_len=md.max_query_len, max_seq_len=md.max_seq_len, out=out,
            )  # fmt: skip
            return output
        out.copy_(_reference_attention(q, pages, md, self.fmt, block_size, self.scale))
        return output


def _reference_attention(
    q: torch.Tensor, pages: torch.Tensor, md: KvplanMetadata, fmt: KVFormat, block_size: int, scale: float
) -> torch.Tensor:
    """Reference attention over a compact copy of just the pages this batch reads: the reference
    dequantizes every page it is given, and the cache holds thousands."""
    from kvplan.kernels import reference

    need = (md.seq_lens + block_size - 1) // block_size  # [B] pages per sequence
    cols = torch.arange(md.block_table.shape[1], device=q.device)
    used_mask = cols[None, :] < need[:, None]
    used = torch.unique(md.block_table[used_mask].long())  # sorted
    compact = pages[used]
    table = torch.searchsorted(used, md.block_table.long().clamp(min=0)).clamp(max=max(len(used) - 1, 0))
    return reference.paged_attention(
        q, compact, table, md.seq_lens, md.query_start_loc, fmt, block_size, scale
    )
