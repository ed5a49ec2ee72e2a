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


def truncating_mma(monkeypatch) -> None:
    """Make the interpreter's float dots accumulate like the GPU's tensor cores: the products of
    each 16-deep slice are summed exactly and added to the fp32 accumulator rounding toward zero
    (Fasi et al., "Numerical behavior of NVIDIA tensor cores", PeerJ CS 2021: truncation, not
    round-to-nearest; Hopper's HMMA is no finer). numpy's round-to-nearest matmul hides an error
    that grows with the accumulator's size over a long split; this emulation shows it on the CPU."""
    import numpy as np
    from triton.runtime import interpreter

    orig = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # type: ignore[no-untyped-def]
        plain = (np.float16, np.float32)
        if d.data.dtype != np.float32 or a.data.dtype not in plain or b.data.dtype not in plain:
            return orig(self, a, b, d, input_precision, max_num_imprecise_acc)
        a64 = np.asarray(a.data, dtype=np.float64)
        b64 = np.asarray(b.data, dtype=np.float64)
        acc = d.data.astype(np.float32)
        for k0 in range(0, a64.shape[-1], 16):
            exact = np.matmul(a64[..., k0 : k0 + 16], b64[..., k0 : k0 + 16, :]) + acc.astype(np.float64)
            r = exact.astype(np.float32)
            away = np.abs(r.astype(np.float64)) > np.abs(exact)
            acc = np.where(away, np.nextafter(r, np.float32(0)), r).astype(np.float32)
        return interpreter.TensorHandle(acc, d.dtype.scalar)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
