"""A GGUF header reader: metadata and tensor infos, never tensor data (llama.cpp's gguf.cpp format,
versions 2 and 3, little-endian).

    magic "GGUF" | u32 version | u64 tensor count | u64 metadata count
    metadata: string key, u32 value type, value   (arrays: u32 item type, u64 count, items)
    tensor info: string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset

Large arrays (the tokenizer's 49K-150K token strings) are skipped and kept as their length only.
What a tensor weighs is `ggml_row_size(type, dims[0]) x dims[1] x ...` (ggml_nbytes).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kvplan.errors import InputError
from kvplan.planner.engines.ggml import GgmlType, ggml_type_by_id

MAGIC = b"GGUF"
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
KEEP_ARRAY_ITEMS = 4096  # longer arrays keep only their length (ArrayLength)


@dataclass(frozen=True)
class ArrayLength:
    """A metadata array too long to keep (tokenizer vocabularies): its item count."""

    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # ne[0] first (the contiguous dimension)
    ggml: GgmlType

    @property
    def nbytes(self) -> int:
        return self.ggml.row_bytes(self.dims[0]) * math.prod(self.dims[1:])


@dataclass(frozen=True)
class GgufFile:
    path: str
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_field(self, key: str, default: Any = None) -> Any:
        """`{arch}.{key}`, e.g. `llama.block_count`."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Reader:
    def __init__(self, fh: BinaryIO, source: str) -> None:
        self.fh, self.source = fh, source

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise InputError(f"{self.source}: truncated GGUF header")
        return data

    def scalar(self, kind: int) -> Any:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        (n,) = struct.unpack("<Q", self.take(8))
        if n > 1 << 30:
            raise InputError(f"{self.source}: GGUF string of {n} bytes (corrupt header?)")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(kind)
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = struct.unpack("<IQ", self.take(12))
            if count > KEEP_ARRAY_ITEMS:
                self.skip_items(item, count)
                return ArrayLength(count)
            return [self.value(item) for _ in range(count)]
        raise InputError(f"{self.source}: unknown GGUF value type {kind}")

    def skip_items(self, kind: int, count: int) -> None:
        if kind in _SCALARS:
            self.fh.seek(struct.calcsize(_SCALARS[kind]) * count, 1)
        elif kind == _STRING:
            for _ in range(count):
                (n,) = struct.unpack("<Q", self.take(8))
                self.fh.seek(n, 1)
        else:
            for _ in range(count):
                self.value(kind)


def read_gguf(path: str | Path) -> GgufFile:
    """Metadata and tensor infos of a GGUF file; a clear error for anything else."""
    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror}") from exc
    with fh:
        r = _Reader(fh, str(p))
        head = fh.read(4)
        if head != MAGIC:
            raise InputError(f"{p}: not a GGUF file (magic {head!r}, expected {MAGIC!r})")
        version, n_tensors, n_kv = struct.unpack("<IQQ", r.take(20))
        if version not in (2, 3):
            raise InputError(f"{p}: GGUF version {version}; kvplan reads versions 2 and 3")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            (kind,) = struct.unpack("<I", r.take(4))
            metadata[key] = r.value(kind)
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            (n_dims,) = struct.unpack("<I", r.take(4))
            if not 0 < n_dims <= 4:
                raise InputError(f"{p}: tensor {name!r} has {n_dims} dimensions (corrupt header?)")
            dims = struct.unpack(f"<{n_dims}Q", r.take(8 * n_dims))
            type_id, _offset = struct.unpack("<IQ", r.take(12))
            tensors.append(TensorInfo(name, tuple(int(d) for d in dims), ggml_type_by_id(type_id)))
    return GgufFile(str(p), version, metadata, tuple(tensors))
