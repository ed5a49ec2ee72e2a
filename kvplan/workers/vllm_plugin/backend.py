"""kvplan's attention backend for vLLM 0.32-0.33 (imported only inside a vLLM process).

The page of one (layer, KV head, block) is kvplan's head page (`kvplan.formats`): K codes, V
codes and their scales in separate 16-byte-aligned regions. vLLM sizes and allocates pages from
the spec that `customize_spec` returns (`state_content_bytes` = head page bytes / block tokens),
so its memory planning, its logged capacity and its `num_gpu_blocks` all follow the format.
vLLM hands each layer a strided `[blocks, heads, tokens, C]` view of that memory in the model
dtype; a head page is `tokens x C` contiguous bytes, which the kernels address as one record.

Compute goes through `kvplan.kernels.api`: Triton kernels for CUDA tensors, the torch reference
for CPU tensors (vLLM's CPU build, in the tests), so the glue below is the same on both.

A batch is split in two calls: decode rows (one query token each; the builder asks vLLM to put
them first) and the rest (prefill chunks, prefix-cache hits with a tail). The paged kernel
handles any query length, but launches its grid for the longest query of the call, so a decode
row riding with a 16K-token prefill chunk would cost a thousand idle programs. The prefill call
reads the quantized cache it has just written, exactly as decode does, so prefill and decode see
the same keys and values (and chunked prefill or a prefix-cache hit reads what an earlier step
stored).

CUDA graphs: the builder declares single-token-decode support. A captured launch keeps the grid
and context split it was captured with, so when vLLM captures full decode graphs every decode
call sizes its split for `max_model_len` (the most any replayed step can hold) instead of the
step's own longest sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionLayer,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.attention.backends.utils import split_decodes_and_prefills
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheLayout

from kvplan.formats import Granularity, KVFormat
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
    num_decodes: int  # the first rows: one query token each (vLLM reorders them to the front)
    num_decode_tokens: int
    max_query_len: int
    max_seq_len: int
    decode_max_seq_len: int  # what decode calls size their split for (max_model_len under graphs)
    query_start_loc: torch.Tensor  # [B+1]
    seq_lens: torch.Tensor  # [B] tokens in the cache after this step's writes
    block_table: torch.Tensor  # [B, max_blocks]
    slot_mapping: torch.Tensor  # [T]
    prefill_query_start_loc: torch.Tensor | None  # [B - num_decodes + 1], from 0


class KvplanMetadataBuilder(AttentionMetadataBuilder[KvplanMetadata]):  # type: ignore[misc,type-var]
    # Full CUDA graphs for pure single-token decode batches (vLLM runs mixed batches eagerly).
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    reorder_batch_threshold: int | None = 1  # decode rows first, so one split separates them

    def __init__(
        self,
        kv_cache_spec: AttentionSpec,
        layer_names: list[str],
        vllm_config: object,
        device: torch.device,
    ) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)  # type: ignore[arg-type]
        self.graph_decode_len: int | None = None
        try:
            from vllm.config import CUDAGraphMode

            mode = vllm_config.compilation_config.cudagraph_mode  # type: ignore[attr-defined]
            if mode is not None and mode.decode_mode() == CUDAGraphMode.FULL:
                self.graph_decode_len = int(vllm_config.model_config.max_model_len)  # type: ignore[attr-defined]
        except AttributeError:  # a config without compilation settings (unit tests): no graphs
            pass

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
        num_decodes, _, num_decode_tokens, _ = split_decodes_and_prefills(m, decode_threshold=1)
        qsl = m.query_start_loc[: b + 1]
        prefill_qsl = None
        if num_decodes < b:  # never under a captured decode graph: those batches are decode-only
            prefill_qsl = qsl[num_decodes:] - num_decode_tokens
        return KvplanMetadata(
            num_actual_tokens=m.num_actual_tokens,
            num_reqs=b,
            num_decodes=num_decodes,
            num_decode_tokens=num_decode_tokens,
            max_query_len=m.max_query_len,
            max_seq_len=m.max_seq_len,
            decode_max_seq_len=self.graph_decode_len or m.max_seq_len,
            query_start_loc=qsl,
            seq_lens=m.seq_lens[:b],
            block_table=m.block_table_tensor[:b],
            slot_mapping=m.slot_mapping,
            prefill_query_start_loc=prefill_qsl,
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
        # fp8's static per-tensor scales live in the layer (`_k_scale`, `_v_scale`): 1.0 unless a
        # checkpoint calibrated them, as for vLLM's own fp8. Other formats take none.
        self.static_scales = Granularity.PER_TENSOR in (self.fmt.k.granularity, self.fmt.v.granularity)

    def process_weights_after_loading(self, act_dtype: torch.dtype) -> None:
        """On CUDA, run both kernels once on a one-block scratch cache: they compile, and the
        constant tensors they keep (Hadamard blocks, unit scales) are made now, not first inside
        vLLM's CUDA-graph capture, where a host-to-device copy is not allowed."""
        if not torch.cuda.is_available():
            return
        from kvplan.kernels import api

        dev = torch.device("cuda", torch.cuda.current_device())
        page, hkv, d = SUPPORTED_BLOCK_SIZES[0], self.num_kv_heads, self.head_size
        cache = torch.zeros(2, hkv, self.fmt.head_page(d, page).nbytes, dtype=torch.uint8, device=dev)
        kv = torch.zeros(1, hkv, d, dtype=act_dtype, device=dev)
        one = torch.ones((), dtype=torch.float32, device=dev)
        k_scale, v_scale = (one, one) if self.static_scales else (None, None)
        api.write_kv(kv, kv, cache, torch.tensor([page], device=dev), self.fmt, page, k_scale, v_scale)
        q = torch.zeros(1, self.num_heads, d, dtype=act_dtype, device=dev)
        table, lens, qsl = (torch.tensor(x, dtype=torch.int32, device=dev) for x in ([[1]], [1], [0, 1]))
        api.paged_attention(
            q, cache, table, lens, qsl, self.fmt, page, self.scale, k_scale, v_scale,
            max_query_len=1, max_seq_len=1,
        )  # fmt: skip

    def _pages(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The layer's cache as uint8 [blocks, kv_heads, head_page_bytes] (a view) and block size."""
        tokens = kv_cache.shape[2]
        if tokens not in SUPPORTED_BLOCK_SIZES:
            raise NotImplementedError(f"kvplan attention: block size {tokens} not in {SUPPORTED_BLOCK_SIZES}")
        return kv_cache.view(torch.uint8).flatten(2), tokens

    def _scales(self, layer: object) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.static_scales:
            return None, None
        return layer._k_scale, layer._v_scale  # type: ignore[attr-defined]

    def do_kv_cache_update(
        self,
        layer: torch.nn.Module,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        from kvplan.kernels import api

        pages, block_size = self._pages(kv_cache)
        n = min(key.shape[0], slot_mapping.shape[0])  # padded tokens carry slot -1 or lie past n
        if n == 0:
            return
        k_scale, v_scale = self._scales(layer)
        api.write_kv(key[:n], value[:n], pages, slot_mapping[:n], self.fmt, block_size, k_scale, v_scale)

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
        from kvplan.kernels import api

        md = attn_metadata
        n = md.num_actual_tokens
        pages, block_size = self._pages(kv_cache)
        q = query[:n].view(n, self.num_heads, self.head_size)
        out = output[:n].view(n, self.num_heads, self.head_size)
        k_scale, v_scale = self._scales(layer)
        nd, ndt = md.num_decodes, md.num_decode_tokens

        def attend(rows: slice, tokens: slice, qsl: torch.Tensor, max_q: int, max_seq_len: int) -> None:
            api.paged_attention(
                q[tokens], pages, md.block_table[rows], md.seq_lens[rows], qsl, self.fmt, block_size,
                self.scale, k_scale, v_scale, max_query_len=max_q, max_seq_len=max_seq_len,
                out=out[tokens],
            )  # fmt: skip

        if nd:
            attend(slice(0, nd), slice(0, ndt), md.query_start_loc[: nd + 1], 1, md.decode_max_seq_len)
        if md.prefill_query_start_loc is not None:
            attend(slice(nd, md.num_reqs), slice(ndt, n), md.prefill_query_start_loc, md.max_query_len,
                   md.max_seq_len)  # fmt: skip
        return output
