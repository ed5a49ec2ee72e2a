"""What each decoder layer keeps, and vLLM v1's KV cache arithmetic over a model's layers.

A model is a tuple of layer specs read from its config.json (`architectures.py`); each says what
the layer stores:

- `Attention`: K and V for every token (full attention), for the last `window` tokens (sliding
  window) or for the current `chunk` (chunked local attention, Llama-4);
- `LatentAttention`: one MLA latent per token (DeepSeek-V2/V3, Kimi-K2), shared by all heads;
- `RecurrentState`: a constant state per sequence (Mamba1, Mamba2, Gated DeltaNet, linear
  attention, short convolution): conv window + SSM/recurrent state;
- `SharedKV`: nothing of its own (it reads an earlier layer's cache: Gemma-3n's last layers);
- `NoCache`: nothing (an MLP/MoE-only block in a hybrid pattern such as Nemotron-H's "-").

On one rank vLLM turns those into per-layer cache specs (`CacheSpec`, its `KVCacheSpec`), aligns
block sizes for hybrid attention/Mamba models, unifies page sizes, groups the layers and sizes one
block as one page of every layer of the largest group. `plan_cache` reproduces that from vLLM's
source (functions named where used; 0.32/0.33 unless `CacheRules` says otherwise):

    vllm/platforms/interface.py      Platform._align_hybrid_block_size
    vllm/v1/core/kv_cache_utils.py   get_kv_cache_groups, unify_kv_cache_spec_page_size,
                                     _get_kv_cache_groups_uniform_page_size,
                                     _get_kv_cache_bytes_per_block, get_max_concurrency_for_kv_cache_config
    vllm/v1/kv_cache_interface.py    *Spec.max_memory_usage_bytes / max_admission_blocks_per_request

Worked example (Qwen3-Next-80B, TP 1, bf16): a Gated DeltaNet layer holds a 8192 x 3 conv window and
32 x 128 x 128 recurrent state, 1,097,728 B; an attention token is 2 KV heads x 256 x 2 x 2 B =
2,048 B, so vLLM enlarges attention blocks to 16 x ceil(1,097,728 / (16 x 2,048)) = 544 tokens and
pads the state page to 544 x 2,048 B. Pure functions, torch-free.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass, replace

from kvplan.errors import InputError, Unsupported
from kvplan.formats import KVFormat


class LayerKind(enum.Enum):
    FULL = "full_attention"
    SLIDING = "sliding_window"
    CHUNKED = "chunked_local_attention"
    MLA = "mla"
    STATE = "recurrent_state"  # vLLM's MambaSpec: Mamba, GDN, linear attention, short conv
    SHARED = "kv_shared"
    NONE = "no_cache"

    @property
    def is_attention(self) -> bool:
        return self in (LayerKind.FULL, LayerKind.SLIDING, LayerKind.CHUNKED, LayerKind.MLA)


def _per_rank(n: int, tp: int, what: str) -> int:
    """vLLM's `divide`: a TP-sharded dimension must split evenly."""
    if n % tp:
        raise InputError(f"tensor parallel {tp} does not divide {what} ({n})")
    return n // tp


@dataclass(frozen=True)
class Attention:
    """K and V per token; `window` (sliding) or `chunk` (chunked local) bound what is kept."""

    kv_heads: int
    head_dim: int
    window: int | None = None
    chunk: int | None = None
    sink_tokens: int = 0  # learned sink logits (gpt-oss) cost no KV; kept for the record

    @property
    def kind(self) -> LayerKind:
        if self.window is not None:
            return LayerKind.SLIDING
        if self.chunk is not None:
            return LayerKind.CHUNKED
        return LayerKind.FULL

    def kv_heads_per_rank(self, tp: int) -> int:
        """KV heads on one TP rank: split when they divide, else replicated (one per rank)."""
        if self.kv_heads % tp and tp % self.kv_heads:
            raise InputError(
                f"tensor parallel {tp} and {self.kv_heads} KV heads: vLLM needs one to divide the other"
            )
        return max(1, self.kv_heads // tp)

    def page_bytes(self, fmt: KVFormat, block_size: int, tp: int) -> int:
        return self.kv_heads_per_rank(tp) * fmt.head_page(self.head_dim, block_size).nbytes

    def bytes_per_token(self, fmt: KVFormat, tp: int = 1, block_size: int = 16) -> float:
        return self.page_bytes(fmt, block_size, tp) / block_size


@dataclass(frozen=True)
class LatentAttention:
    """MLA: one latent of `latent_dim` elements per token (kv_lora_rank + qk_rope_head_dim),
    replicated on every TP rank."""

    latent_dim: int

    kind = LayerKind.MLA

    def page_bytes(self, fmt: KVFormat, block_size: int, tp: int) -> int:
        del tp
        return round(fmt.latent_bytes_per_token(self.latent_dim, block_size) * block_size)

    def bytes_per_token(self, fmt: KVFormat, tp: int = 1, block_size: int = 16) -> float:
        return self.page_bytes(fmt, block_size, tp) / block_size


class Mixer(enum.Enum):
    """Recurrent token mixers, each with vLLM's state shapes (`MambaStateShapeCalculator`)."""

    MAMBA1 = "mamba1"
    MAMBA2 = "mamba2"
    GATED_DELTA_NET = "gated_delta_net"
    LINEAR_ATTENTION = "linear_attention"
    SHORT_CONV = "short_conv"


@dataclass(frozen=True)
class StateDtypes:
    """Element bytes of the conv state and of the SSM/recurrent state (vLLM's mamba_cache_dtype and
    mamba_ssm_cache_dtype; "auto" is the model dtype, Nemotron-H defaults its SSM state to fp32)."""

    conv: int = 2
    ssm: int = 2


BF16_STATES = StateDtypes()


@dataclass(frozen=True)
class RecurrentState:
    """A constant per-sequence state. Fields follow vLLM's shape calculator for the mixer:
    Mamba1 (d_inner, state_size, conv_kernel); Mamba2 (d_inner, n_groups, num_heads, head_dim,
    state_size, conv_kernel); GDN (num_heads = value heads, head_dim = value head dim, k_heads,
    k_head_dim, conv_kernel); linear attention (num_heads, head_dim); short conv (d_inner, conv_kernel).
    """

    mixer: Mixer
    d_inner: int = 0
    n_groups: int = 1
    num_heads: int = 0
    head_dim: int = 0
    state_size: int = 0
    conv_kernel: int = 4
    k_heads: int = 0
    k_head_dim: int = 0

    kind = LayerKind.STATE

    def shapes(self, tp: int, spec_tokens: int = 0) -> tuple[tuple[tuple[int, ...], str], ...]:
        """(shape, "conv" | "ssm") per state tensor on one rank (mamba_utils.py)."""
        conv_len = self.conv_kernel - 1 + spec_tokens
        if self.mixer is Mixer.MAMBA1:  # mamba1_state_shape (no spec tokens)
            d = _per_rank(self.d_inner, tp, "Mamba d_inner")
            return ((d, self.conv_kernel - 1), "conv"), ((d, self.state_size), "ssm")
        if self.mixer is Mixer.MAMBA2:  # mamba2_state_shape: groups grow to follow head shards
            groups = self.n_groups if self.n_groups % tp == 0 else tp
            conv_dim = self.d_inner + 2 * groups * self.state_size
            heads = _per_rank(self.num_heads, tp, "Mamba heads")
            conv = _per_rank(conv_dim, tp, "Mamba conv dim")
            return ((conv, conv_len), "conv"), ((heads, self.head_dim, self.state_size), "ssm")
        if self.mixer is Mixer.GATED_DELTA_NET:  # gated_delta_net_state_shape
            conv_dim = 2 * self.k_heads * self.k_head_dim + self.num_heads * self.head_dim
            conv = _per_rank(conv_dim, tp, "linear-attention conv dim")
            heads = _per_rank(self.num_heads, tp, "linear value heads")
            return ((conv, conv_len), "conv"), ((heads, self.head_dim, self.k_head_dim), "ssm")
        if self.mixer is Mixer.LINEAR_ATTENTION:  # linear_attention_state_shape
            heads = _per_rank(self.num_heads, tp, "linear-attention heads")
            return (((heads, self.head_dim, self.head_dim), "conv"),)
        d = _per_rank(self.d_inner, tp, "short-conv channels")  # short_conv_state_shape
        return (((d, conv_len), "conv"),)

    def state_bytes(self, tp: int = 1, dtypes: StateDtypes = BF16_STATES, spec_tokens: int = 0) -> int:
        """Bytes of one sequence's state on one rank (vLLM's MambaSpec.page_size_bytes, unpadded)."""
        return sum(
            math.prod(shape) * (dtypes.conv if role == "conv" else dtypes.ssm)
            for shape, role in self.shapes(tp, spec_tokens)
        )


@dataclass(frozen=True)
class SharedKV:
    """Reads the cache of layer `source` (Gemma-3n's KV-shared layers): no cache of its own."""

    source: int

    kind = LayerKind.SHARED


@dataclass(frozen=True)
class NoCache:
    """A block without a token mixer that caches (Nemotron-H's MLP/MoE blocks)."""

    what: str = "mlp"

    kind = LayerKind.NONE


Layer = Attention | LatentAttention | RecurrentState | SharedKV | NoCache


@dataclass(frozen=True)
class CacheRules:
    """The parts of vLLM's KV cache arithmetic that differ by version and configuration."""

    hybrid_allocator: bool = True  # the hybrid KV cache manager (off: windows cached in full)
    in_flight_tokens: int = 0  # scheduled-but-unsettled tokens windowed layers also hold
    state_blocks: int = 2  # blocks per request of a recurrent layer (2 in prefix-caching "align")
    needed_from_groups: bool = True  # the start-up check counts padded groups (0.32+) or layers
    # 0.32+: Mamba2 mixers export a prefill checkpoint in "align" mode, one more block per request
    # (mamba_mixer2.py MambaMixer2.get_kv_cache_spec: num_prefill_checkpoint_blocks=1).
    mamba2_checkpoint_block: bool = False
    # 0.33+ with FlashInfer's GDN prefill in "align" mode (qwen_gdn_linear_attn.py): attention
    # blocks are a multiple of the checkpoint alignment (64), GDN layers hold one checkpoint block
    checkpoint_alignment: int = 1
    gdn_checkpoint_block: bool = False


DEFAULT_RULES = CacheRules()


@dataclass(frozen=True)
class CacheSpec:
    """One layer's cache on one rank, as vLLM's KVCacheSpec: `page_bytes` per block of `block_size`
    tokens; `span` is the sliding window or attention chunk."""

    kind: LayerKind
    block_size: int
    page_bytes: int
    span: int | None = None
    extra_blocks: int = 0  # recurrent state: checkpoint blocks beyond the rules' state blocks

    def blocks_per_request(self, max_model_len: int, rules: CacheRules) -> int:
        """Blocks one request of max_model_len tokens holds at most (`max_memory_usage_bytes`)."""
        bs = self.block_size
        if self.kind is LayerKind.STATE:
            return rules.state_blocks + self.extra_blocks
        if self.kind is LayerKind.SLIDING:
            assert self.span is not None
            # SlidingWindowSpec: the last window-1 tokens plus in-flight ones, +1 block because
            # the window need not start on a block boundary.
            tokens = min(self.span - 1 + rules.in_flight_tokens, max_model_len)
            return math.ceil(tokens / bs) + 1
        if self.kind is LayerKind.CHUNKED:
            assert self.span is not None
            tokens = min(self.span + rules.in_flight_tokens, max_model_len)
            return math.ceil(tokens / bs)
        return math.ceil(max_model_len / bs)


@dataclass(frozen=True)
class CacheGroup:
    """Layers sharing one block table: same kind and span; `pages` per member layer."""

    spec: CacheSpec
    layers: tuple[int, ...]
    pages: tuple[int, ...]

    def blocks_per_request(self, max_model_len: int, rules: CacheRules) -> int:
        return self.spec.blocks_per_request(max_model_len, rules)


@dataclass(frozen=True)
class CachePlan:
    """How vLLM lays out the KV cache of one rank: groups, block size and bytes per block."""

    block_size: int  # attention tokens per block (after hybrid alignment)
    groups: tuple[CacheGroup, ...]
    bytes_per_block: int  # one page of every layer of the largest group
    layer_pages: tuple[tuple[int, int], ...]  # (layer, page bytes) for the layers on this rank
    state_page_padding: int = 0  # bytes a recurrent state page was padded by (alignment)

    def blocks_per_request(self, max_model_len: int, rules: CacheRules) -> int:
        return sum(g.blocks_per_request(max_model_len, rules) for g in self.groups)

    def bytes_needed(self, max_model_len: int, rules: CacheRules) -> int:
        """KV one max_model_len request needs: blocks x bytes per block (0.32
        `_max_memory_usage_bytes_from_groups`, padding included), or per layer before that."""
        if rules.needed_from_groups:
            return self.bytes_per_block * self.blocks_per_request(max_model_len, rules)
        per_layer = {layer: g for g in self.groups for layer in g.layers}
        return sum(per_layer[i].blocks_per_request(max_model_len, rules) * p for i, p in self.layer_pages)


def attention_page_per_token(layers: tuple[Layer, ...], fmt: KVFormat, tp: int) -> int:
    """Bytes one token takes in one attention layer on one rank (16-token page / 16)."""
    for layer in layers:
        if isinstance(layer, Attention | LatentAttention):
            return layer.page_bytes(fmt, 16, tp) // 16
    return 0


def align_hybrid_block_size(
    layers: tuple[Layer, ...],
    fmt: KVFormat,
    tp: int,
    block_size: int,
    dtypes: StateDtypes,
    *,
    kernel_block: int = 16,
    checkpoint_alignment: int = 1,
) -> tuple[int, int | None]:
    """(attention block size, padded state page) for a model mixing attention and recurrent
    layers (`Platform._align_hybrid_block_size`): attention blocks grow in steps of the kernel
    block until one attention page holds a state page, then state pages are padded to it."""
    states = [x.state_bytes(tp, dtypes) for x in layers if isinstance(x, RecurrentState)]
    per_token = attention_page_per_token(layers, fmt, tp)
    if not states or not per_token:
        return block_size, None
    state = max(states)
    align = max(kernel_block, block_size)
    if any(isinstance(x, LatentAttention) for x in layers):
        align = max(align, 128)  # MLA decode kernels want 128-token manager blocks
    align = math.lcm(align, checkpoint_alignment)  # prefill checkpoints land on block boundaries
    aligned = align * math.ceil(state / (align * per_token))
    block = max(block_size, aligned)
    return block, block * per_token


def cache_specs(
    layers: tuple[Layer, ...],
    fmt: KVFormat,
    tp: int,
    block_size: int,
    dtypes: StateDtypes,
    state_page: int | None = None,
    rules: CacheRules = DEFAULT_RULES,
) -> dict[int, CacheSpec]:
    """Per-layer cache specs on one rank (layers without a cache of their own are absent)."""
    specs: dict[int, CacheSpec] = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, Attention):
            span = layer.window if layer.window is not None else layer.chunk
            specs[i] = CacheSpec(layer.kind, block_size, layer.page_bytes(fmt, block_size, tp), span)
        elif isinstance(layer, LatentAttention):
            specs[i] = CacheSpec(LayerKind.MLA, block_size, layer.page_bytes(fmt, block_size, tp))
        elif isinstance(layer, RecurrentState):
            page = layer.state_bytes(tp, dtypes)
            aligned = rules.state_blocks > 1  # prefix caching's "align" mode
            extra = int(
                aligned
                and (
                    (rules.mamba2_checkpoint_block and layer.mixer is Mixer.MAMBA2)
                    or (rules.gdn_checkpoint_block and layer.mixer is Mixer.GATED_DELTA_NET)
                )
            )
            specs[i] = CacheSpec(LayerKind.STATE, block_size, max(page, state_page or 0), extra_blocks=extra)
    return specs


def _promote_windows(specs: dict[int, CacheSpec]) -> dict[int, CacheSpec]:
    """Hybrid manager off (`unify_hybrid_kv_cache_specs`): next to full attention, sliding and
    chunked layers are cached for every token, like full attention."""
    kinds = {s.kind for s in specs.values()}
    if LayerKind.FULL not in kinds and LayerKind.MLA not in kinds:
        return specs
    if not kinds & {LayerKind.SLIDING, LayerKind.CHUNKED}:
        return specs
    if LayerKind.STATE in kinds:
        raise Unsupported(
            "vLLM's hybrid KV cache manager is off, and recurrent-state (Mamba/linear attention) "
            "layers need it: vLLM refuses to start; drop --disable-hybrid-kv-cache-manager"
        )
    full = LayerKind.MLA if LayerKind.MLA in kinds else LayerKind.FULL
    return {
        i: replace(s, kind=full, span=None) if s.kind in (LayerKind.SLIDING, LayerKind.CHUNKED) else s
        for i, s in specs.items()
    }


def _unify_pages(specs: dict[int, CacheSpec]) -> dict[int, CacheSpec]:
    """`unify_kv_cache_spec_page_size`: smaller pages grow their block size by the integer ratio
    to the largest page; recurrent and non-dividing attention pages are padded instead."""
    largest = max(s.page_bytes for s in specs.values())
    out: dict[int, CacheSpec] = {}
    for i, s in specs.items():
        if s.page_bytes == largest or s.kind is LayerKind.STATE:
            out[i] = replace(s, page_bytes=largest)
        elif largest % s.page_bytes == 0:
            ratio = largest // s.page_bytes
            out[i] = replace(s, block_size=s.block_size * ratio, page_bytes=largest)
        elif s.kind is not LayerKind.MLA:
            out[i] = replace(s, page_bytes=largest)
        else:
            raise Unsupported(
                f"layer {i}: an MLA page of {s.page_bytes} B does not divide the largest page "
                f"({largest} B); vLLM cannot unify them"
            )
    return out


def _same_type(specs: dict[int, CacheSpec]) -> bool:
    """`UniformTypeKVCacheSpecs.is_uniform_type`: one kind, span and block size throughout."""
    first = next(iter(specs.values()))
    return all(
        (s.kind, s.span, s.block_size) == (first.kind, first.span, first.block_size) for s in specs.values()
    )


def group_layers(specs: dict[int, CacheSpec], rules: CacheRules) -> tuple[CacheGroup, ...]:
    """vLLM's `get_kv_cache_groups` for the layers of the whole model (before PP projection)."""
    if not specs:
        return ()
    if not rules.hybrid_allocator:
        specs = _promote_windows(specs)
    if len(set(specs.values())) == 1 or _same_type(specs):
        # One spec, or one type with different pages (UniformTypeKVCacheSpecs): a single group whose
        # block holds one page of each layer.
        spec = max(specs.values(), key=lambda s: s.blocks_per_request(1 << 30, rules))
        return (CacheGroup(spec, tuple(specs), tuple(s.page_bytes for s in specs.values())),)
    specs = _unify_pages(specs)
    buckets: dict[CacheSpec, list[int]] = {}
    for i, s in specs.items():
        buckets.setdefault(s, []).append(i)
    counts = [len(v) for v in buckets.values()]
    # `_get_kv_cache_groups_uniform_page_size`: groups of the smallest kind's layer count, or of the
    # largest when it is under 1.5x the smallest (less padding); layers[i::n] keep PP stages even.
    size = max(counts) if max(counts) < min(counts) * 1.5 else min(counts)
    groups: list[CacheGroup] = []
    for spec, members in buckets.items():
        n = math.ceil(len(members) / size)
        for k in range(n):
            part = tuple(members[k::n])
            groups.append(CacheGroup(spec, part, tuple(spec.page_bytes for _ in part)))
    return tuple(groups)


def group_size(groups: tuple[CacheGroup, ...]) -> int:
    """Layers of the largest group (padding layers included: vLLM pads every group to it)."""
    return max((len(g.layers) for g in groups), default=0)


def plan_cache(
    layers: tuple[Layer, ...],
    fmt: KVFormat,
    *,
    tp: int = 1,
    block_size: int = 16,
    rules: CacheRules = DEFAULT_RULES,
    dtypes: StateDtypes = BF16_STATES,
    stage: range | None = None,
) -> CachePlan:
    """The KV cache layout of one rank holding the layers in `stage` (all layers when None)."""
    block, state_page = align_hybrid_block_size(
        layers, fmt, tp, block_size, dtypes, checkpoint_alignment=rules.checkpoint_alignment
    )
    specs = cache_specs(layers, fmt, tp, block, dtypes, state_page, rules)
    if not specs:
        raise Unsupported("the model has no layer that keeps a KV cache or state; nothing to size")
    groups = group_layers(specs, rules)
    on_rank = set(stage if stage is not None else range(len(layers)))
    local = tuple(
        CacheGroup(g.spec, tuple(i for i in g.layers if i in on_rank),
                   tuple(p for i, p in zip(g.layers, g.pages, strict=True) if i in on_rank))
        for g in groups
    )  # fmt: skip
    # `_get_kv_cache_bytes_per_block` (layer-outermost layouts): the largest group's pages.
    per_block = max(sum(g.pages) for g in local)
    pages = tuple((i, p) for g in local for i, p in zip(g.layers, g.pages, strict=True))
    raw = [x.state_bytes(tp, dtypes) for x in layers if isinstance(x, RecurrentState)]
    padding = (state_page - max(raw)) if state_page and raw else 0
    return CachePlan(block, local, per_block, tuple(sorted(pages)), padding)


def kinds_of(layers: tuple[Layer, ...]) -> Counter[LayerKind]:
    return Counter(layer.kind for layer in layers)
