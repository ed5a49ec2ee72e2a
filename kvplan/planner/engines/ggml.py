"""ggml's tensor types: elements per block and bytes per block (`type_traits` in ggml/src/ggml.c,
the block structs in ggml/src/ggml-common.h). A row of n elements of a quantized type takes
`n / block * type_size` bytes (`ggml_row_size`); n must be a multiple of the block.

Worked example: q4_0 packs 32 values as 16 bytes of nibbles + one fp16 scale = 18 bytes, so a
K row of 8 KV heads x 128 takes 1024 / 32 x 18 = 576 bytes (vs 2048 in f16).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvplan.errors import InputError
from kvplan.formats import ENGINE_KV_DTYPES


@dataclass(frozen=True)
class GgmlType:
    name: str  # ggml_type_name, as llama.cpp prints it and --cache-type-k takes it
    type_id: int  # enum ggml_type (GGUF tensor infos store this)
    block: int  # elements per block (blck_size)
    type_size: int  # bytes per block

    def row_bytes(self, elements: int) -> int:
        """ggml_row_size: bytes of `elements` consecutive values (a whole number of blocks)."""
        if elements % self.block:
            raise InputError(
                f"ggml type {self.name} stores blocks of {self.block} values; a row of {elements} "
                "is not a whole number of blocks"
            )
        return elements // self.block * self.type_size

    @property
    def bits_per_value(self) -> float:
        return 8 * self.type_size / self.block


# (name, id, block, bytes). Quantized block layouts (ggml-common.h): q4_0 = fp16 d + 16 B nibbles;
# q4_1 = fp16 d, m + 16 B; q5_0 = fp16 d + 4 B high bits + 16 B; q5_1 = d, m + 4 + 16;
# q8_0 = fp16 d + 32 B; iq4_nl = fp16 d + 16 B (non-linear 4-bit grid); the K-quants use
# super-blocks of 256.
_TYPES = (
    ("f32", 0, 1, 4),
    ("f16", 1, 1, 2),
    ("q4_0", 2, 32, 18),
    ("q4_1", 3, 32, 20),
    ("q5_0", 6, 32, 22),
    ("q5_1", 7, 32, 24),
    ("q8_0", 8, 32, 34),
    ("q8_1", 9, 32, 40),
    ("q2_K", 10, 256, 84),
    ("q3_K", 11, 256, 110),
    ("q4_K", 12, 256, 144),
    ("q5_K", 13, 256, 176),
    ("q6_K", 14, 256, 210),
    ("q8_K", 15, 256, 292),
    ("iq2_xxs", 16, 256, 66),
    ("iq2_xs", 17, 256, 74),
    ("iq3_xxs", 18, 256, 98),
    ("iq1_s", 19, 256, 50),
    ("iq4_nl", 20, 32, 18),
    ("iq3_s", 21, 256, 110),
    ("iq2_s", 22, 256, 82),
    ("iq4_xs", 23, 256, 136),
    ("i8", 24, 1, 1),
    ("i16", 25, 1, 2),
    ("i32", 26, 1, 4),
    ("i64", 27, 1, 8),
    ("f64", 28, 1, 8),
    ("iq1_m", 29, 256, 56),
    ("bf16", 30, 1, 2),
    ("tq1_0", 34, 256, 54),
    ("tq2_0", 35, 256, 66),
    ("mxfp4", 39, 32, 17),
    ("nvfp4", 40, 64, 36),
    ("q1_0", 41, 128, 18),
)

GGML_TYPES: dict[str, GgmlType] = {t[0]: GgmlType(*t) for t in _TYPES}
_BY_ID: dict[int, GgmlType] = {t.type_id: t for t in GGML_TYPES.values()}

# What --cache-type-k / --cache-type-v accept (`kv_cache_types` in llama.cpp's common/arg.cpp).
CACHE_TYPES = ENGINE_KV_DTYPES["llamacpp"]


def ggml_type(name: str) -> GgmlType:
    try:
        return GGML_TYPES[name]
    except KeyError:
        raise InputError(f"unknown ggml type {name!r}") from None


def ggml_type_by_id(type_id: int) -> GgmlType:
    try:
        return _BY_ID[type_id]
    except KeyError:
        raise InputError(
            f"GGUF tensor type {type_id} is not a ggml type kvplan knows "
            f"(known ids: {', '.join(str(i) for i in sorted(_BY_ID))})"
        ) from None
