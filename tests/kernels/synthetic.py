"""Synthetic K/V and paged-cache builders shared by the kernel tests."""

from __future__ import annotations

import math

import torch

from kvplan.formats import KVFormat
from kvplan.kernels import reference


def keys_values(t: int, hkv: int, d: int, outliers: bool, dtype: torch.dtype = torch.float32):
    """Keys N(0,1) (with `outliers`: 4 channels scaled x20 and shifted, as real keys have) and
    values N(0,1), [t, hkv, d]."""
    k = torch.randn(t, hkv, d)
    if outliers:
        ch = torch.randperm(d)[:4]
        k[:, :, ch] = k[:, :, ch] * 20 + 10
    return k.to(dtype), torch.randn(t, hkv, d).to(dtype)


def paged(
    fmt: KVFormat,
    lens: list[int],
    hkv: int,
    d: int,
    page: int,
    k: torch.Tensor,
    v: torch.Tensor,
    k_scale=None,
    v_scale=None,
    write=reference.write_kv,
    stage=None,
):
    """Write the tokens of sequences of `lens` into randomly scattered pages.

    Returns (cache, block_table [B, max_blocks] int32, slots [sum(lens)])."""
    nblk = [math.ceil(n / page) for n in lens]
    total = sum(nblk) + 2  # spare blocks stay poisoned
    cache = reference.new_cache(fmt, total, hkv, d, page)
    perm = torch.randperm(total)
    table = torch.zeros(len(lens), max(max(nblk), 1), dtype=torch.int32)
    slots, at = [], 0
    for i, (n, nb) in enumerate(zip(lens, nblk, strict=True)):
        table[i, :nb] = perm[at : at + nb].int()
        at += nb
        pos = torch.arange(n)
        slots.append(table[i, pos // page].long() * page + pos % page)
    slot = torch.cat(slots) if slots else torch.zeros(0, dtype=torch.long)
    write(k, v, cache, slot, fmt, page, k_scale, v_scale, stage)
    return cache, table, slot


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())
