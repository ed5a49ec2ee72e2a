"""KV-cache storage formats, defined once.

Every number about how a format stores the cache comes from here: the planner's bytes per token,
the kernels' page layout, the vLLM plugin's page size and the router's X-KV-Regime header.
This module is torch-free so that `kvplan size` stays light.

A *head page* is the storage of one KV head of one layer for `page_tokens` consecutive tokens
(vLLM's block). Inside it, K codes, V codes and their scales/zero points live in separate,
16-byte-aligned regions (never interleaved per token: 136-byte records defeat wide loads).
Worked example, int4 at head_dim 128, page 16: K codes 16 x 64 B = 1024, V codes 1024,
K meta 16 x 4 B = 64, V meta 64 -> 2176 B per head page = 136 B per token-head.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

from kvplan.errors import NotFound, closest

ALIGN = 16  # bytes; every region starts on a 16-byte boundary so kernels can use 16-byte loads


class Element(enum.Enum):
    """Storage element of K or V codes."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"
    FP8_E4M3 = "fp8_e4m3"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bits(self) -> int:
        return _ELEMENT_BITS[self]

    @property
    def is_integer(self) -> bool:
        return self in (Element.INT8, Element.INT4)


_ELEMENT_BITS = {
    Element.BF16: 16,
    Element.FP16: 16,
    Element.FP32: 32,
    Element.FP8_E4M3: 8,
    Element.INT8: 8,
    Element.INT4: 4,
}


class Granularity(enum.Enum):
    """Which elements share one scale (and zero point)."""

    NONE = "none"  # unscaled (bf16/fp16)
    PER_TENSOR = "per_tensor"  # one static scale per layer, kept in a layer buffer
    PER_HEAD = "per_head"  # one static scale per layer and KV head, kept in a layer buffer
    PER_TOKEN_HEAD = "per_token_head"  # one scale per token and head (groups along head_dim)
    PER_CHANNEL = "per_channel"  # one scale per channel per head page (KIVI-style keys)

    @property
    def in_page(self) -> bool:
        """Whether the scales are stored inside the page (dynamic) rather than in a layer buffer."""
        return self in (Granularity.PER_TOKEN_HEAD, Granularity.PER_CHANNEL)


class Rotation(enum.Enum):
    """A transform applied to the codes before quantizing (undone when reading)."""

    NONE = "none"
    # codes hold x @ H/sqrt(d) (orthonormal); attention rotates q the same way, so q.k is
    # unchanged while outlier channels spread over all of d. Costs no bytes.
    HADAMARD = "hadamard"


@dataclass(frozen=True)
class TensorQuant:
    """How one of K or V is stored: element type and scaling."""

    element: Element
    granularity: Granularity = Granularity.NONE
    group_size: int | None = None  # elements per scale group along head_dim (None: whole head)
    symmetric: bool = True  # False: an additional zero point per group
    scale_bytes: int = 4  # fp32 scale when symmetric; asymmetric uses fp16 scale + fp16 zero
    rotation: Rotation = Rotation.NONE

    def __post_init__(self) -> None:
        if self.element.is_integer and not self.granularity.in_page:
            raise ValueError(f"{self.element.value} needs in-page scales, not {self.granularity.value}")
        if self.group_size is not None and self.granularity is not Granularity.PER_TOKEN_HEAD:
            raise ValueError("group_size applies to per_token_head scaling only")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError("group_size must be positive")

    @property
    def meta_bytes_per_group(self) -> int:
        """Bytes of scale (+ zero point) per scale group stored in the page."""
        if not self.granularity.in_page:
            return 0
        return self.scale_bytes if self.symmetric else 4  # fp16 scale + fp16 zero

    def groups_per_token(self, head_dim: int) -> int:
        """Scale groups per token-head along head_dim (per_token_head only)."""
        group = self.group_size or head_dim
        if head_dim % group:
            raise ValueError(f"head_dim {head_dim} is not a multiple of group size {group}")
        return head_dim // group

    def code_bytes(self, tokens: int, head_dim: int) -> int:
        bits = tokens * head_dim * self.element.bits
        return bits // 8

    def meta_bytes(self, tokens: int, head_dim: int) -> int:
        """Scale/zero bytes for `tokens` tokens of one head stored together in one page."""
        if self.granularity is Granularity.PER_TOKEN_HEAD:
            return tokens * self.groups_per_token(head_dim) * self.meta_bytes_per_group
        if self.granularity is Granularity.PER_CHANNEL:
            return head_dim * self.meta_bytes_per_group
        return 0

    @property
    def label(self) -> str:
        parts = [self.element.value]
        if self.granularity is not Granularity.NONE:
            parts.append(self.granularity.value)
        if self.group_size:
            parts.append(f"g{self.group_size}")
        if self.element.is_integer:
            parts.append("sym" if self.symmetric else "asym")
        if self.rotation is not Rotation.NONE:
            parts.append(self.rotation.value)
        return "/".join(parts)


@dataclass(frozen=True)
class Region:
    name: str
    offset: int
    nbytes: int


def _align(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class HeadPageLayout:
    """Byte layout of one head page: K codes, V codes, K meta, V meta, each 16-byte aligned.

    `nbytes` is padded to a multiple of `page_tokens` so that it equals
    `page_tokens * content_bytes_per_token` exactly (vLLM's `state_content_bytes`).
    """

    page_tokens: int
    head_dim: int
    regions: tuple[Region, ...]
    nbytes: int

    @property
    def content_bytes_per_token(self) -> int:
        return self.nbytes // self.page_tokens

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)


@dataclass(frozen=True)
class KVFormat:
    """A KV-cache format: how K and how V are stored."""

    name: str
    k: TensorQuant
    v: TensorQuant
    description: str = ""
    # vLLM's own --kv-cache-dtype for this format, when vLLM has an equivalent natively.
    vllm_native_dtype: str | None = None

    @property
    def is_quantized(self) -> bool:
        return self.k.element.bits < 16 or self.v.element.bits < 16

    def head_page(self, head_dim: int, page_tokens: int) -> HeadPageLayout:
        """The layout of one (layer, KV head, page) in bytes."""
        return _head_page(self, head_dim, page_tokens)

    def _layout(self, head_dim: int, page_tokens: int) -> HeadPageLayout:
        if page_tokens <= 0 or head_dim <= 0:
            raise ValueError("head_dim and page_tokens must be positive")
        sizes = [
            ("k_codes", self.k.code_bytes(page_tokens, head_dim)),
            ("v_codes", self.v.code_bytes(page_tokens, head_dim)),
            ("k_meta", self.k.meta_bytes(page_tokens, head_dim)),
            ("v_meta", self.v.meta_bytes(page_tokens, head_dim)),
        ]
        regions, offset = [], 0
        for name, size in sizes:
            regions.append(Region(name, offset, size))
            offset = _align(offset + size)
        total = _align(offset, _lcm(ALIGN, page_tokens))
        return HeadPageLayout(page_tokens, head_dim, tuple(regions), total)

    def bytes_per_token_head(self, head_dim: int, page_tokens: int = 16) -> float:
        """Bytes per token per KV head per layer, K and V together, scales included.

        For per-token-head formats this does not depend on page_tokens (aligned regions tile
        exactly); for per-channel keys the per-page scales amortise over the page.
        """
        return self.head_page(head_dim, page_tokens).nbytes / page_tokens

    def latent_bytes_per_token(self, latent_dim: int, page_tokens: int = 16) -> float:
        """Bytes per token per layer of an MLA latent cache (one shared 'head', no separate V)."""
        data = self.k.code_bytes(page_tokens, latent_dim) + self.k.meta_bytes(page_tokens, latent_dim)
        return _align(data, _lcm(ALIGN, page_tokens)) / page_tokens

    @property
    def regime(self) -> str:
        """The X-KV-Regime value: format name, scale granularity and group size of K and V."""
        if self.k == self.v:
            return f"{self.name}; kv={self.k.label}"
        return f"{self.name}; k={self.k.label}; v={self.v.label}"


@lru_cache(maxsize=1024)
def _head_page(fmt: KVFormat, head_dim: int, page_tokens: int) -> HeadPageLayout:
    """KVFormat.head_page, computed once a (format, head_dim, page): the kernels' launch path asks
    for it on every call (4-5 us a time on the host before)."""
    return fmt._layout(head_dim, page_tokens)


def _lcm(a: int, b: int) -> int:
    from math import gcd

    return a * b // gcd(a, b)


_PLAIN_BF16 = TensorQuant(Element.BF16)
_PLAIN_FP16 = TensorQuant(Element.FP16)
_FP8 = TensorQuant(Element.FP8_E4M3, Granularity.PER_TENSOR)
_INT8 = TensorQuant(Element.INT8, Granularity.PER_TOKEN_HEAD)
_INT4 = TensorQuant(Element.INT4, Granularity.PER_TOKEN_HEAD, symmetric=False)
_INT4_G32 = TensorQuant(Element.INT4, Granularity.PER_TOKEN_HEAD, group_size=32, symmetric=False)
_INT4_KEYS_PER_CHANNEL = TensorQuant(Element.INT4, Granularity.PER_CHANNEL, symmetric=False)
_INT8_ROTATED = TensorQuant(Element.INT8, Granularity.PER_TOKEN_HEAD, rotation=Rotation.HADAMARD)
_INT4_ROTATED = TensorQuant(
    Element.INT4, Granularity.PER_TOKEN_HEAD, symmetric=False, rotation=Rotation.HADAMARD
)

FORMATS: dict[str, KVFormat] = {
    f.name: f
    for f in (
        KVFormat("bf16", _PLAIN_BF16, _PLAIN_BF16, "BF16 baseline", vllm_native_dtype="auto"),
        KVFormat("fp16", _PLAIN_FP16, _PLAIN_FP16, "FP16", vllm_native_dtype="float16"),
        KVFormat("fp8_e4m3", _FP8, _FP8, "FP8 E4M3, static per-tensor scale", vllm_native_dtype="fp8_e4m3"),
        KVFormat("int8", _INT8, _INT8, "INT8, symmetric fp32 scale per token-head"),
        KVFormat("int4", _INT4, _INT4, "INT4, asymmetric fp16 scale+zero per token-head"),
        KVFormat("int4_g32", _INT4_G32, _INT4_G32, "INT4, groups of 32 along head_dim"),
        KVFormat(
            "int4_kivi",
            _INT4_KEYS_PER_CHANNEL,
            _INT4,
            "INT4 KIVI-style: keys per channel per page, values per token-head",
        ),
        KVFormat("k8v4", _INT8, _INT4, "mixed: K int8, V int4 per token-head"),
        KVFormat(
            "int8_hadamard",
            _INT8_ROTATED,
            _INT8,
            "INT8 per token-head, keys Hadamard-rotated (outlier channels spread), same bytes as int8",
        ),
        KVFormat(
            "int4_hadamard",
            _INT4_ROTATED,
            _INT4,
            "INT4 per token-head, keys Hadamard-rotated (outlier channels spread), same bytes as int4",
        ),
    )
}

DEFAULT_FORMAT = "bf16"


class UnknownFormat(NotFound, ValueError):
    """A KV format name kvplan does not define. A ValueError too, so that a pydantic validator
    reports it as the field's error."""

    def __init__(self, name: str) -> None:
        known = list(FORMATS)
        super().__init__(f"unknown KV format {name!r}{closest(name, known)} (known: {', '.join(known)})")


def get_format(name: str) -> KVFormat:
    """The format of this name: the one place a format name becomes a `KVFormat`."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UnknownFormat(name) from None


def parse_formats(names: str) -> tuple[KVFormat, ...]:
    """A comma-separated list of format names, e.g. `bf16,int8` (blanks ignored)."""
    return tuple(get_format(n.strip()) for n in names.split(",") if n.strip())


# vLLM's own --kv-cache-dtype values and the kvplan format that stores the same bytes per token
# ("auto" is the model's dtype: bf16 for the models kvplan sizes; vLLM 0.33's triton_attn.py keeps
# one fp16 scale per token-head for int8/int4_per_token_head, as kvplan's int8 and int4 do).
VLLM_KV_DTYPE_FORMAT: dict[str, str] = {
    "auto": "bf16",
    "bfloat16": "bf16",
    "float16": "fp16",
    "fp8": "fp8_e4m3",
    "fp8_e4m3": "fp8_e4m3",
    "int8_per_token_head": "int8",
    "int4_per_token_head": "int4",
}


# KV cache dtypes other serving engines offer, in their own names: a pool planned on one of them
# stores one of these (`kvplan.planner.engines.<engine>` holds each one's bytes per element).
# SGLang's --kv-cache-dtype choices (0.5.23); TensorRT-LLM's kv_cache_config.dtype and INT8 of its
# TensorRT-engine backend; llama.cpp's --cache-type-k/-v (`kv_cache_types` in common/arg.cpp).
ENGINE_KV_DTYPES: dict[str, tuple[str, ...]] = {
    "sglang": ("auto", "bf16", "bfloat16", "fp8_e4m3", "fp8_e5m2", "mxfp8", "nvfp4", "fp4_mx_block16"),
    "trtllm": ("auto", "fp16", "bf16", "fp8", "int8", "nvfp4"),
    "llamacpp": ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"),
}
ENGINES = ("vllm", *ENGINE_KV_DTYPES)
