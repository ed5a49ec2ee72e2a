"""The kernels' inline PTX conversions, executed by the emulator's PTX interpreter on every byte
value. The Triton interpreter never runs inline PTX (TRITON_INTERPRET takes the integer
fallbacks), so a wrong bit trick passed every interpreted test once: the Triton kernel's INT4
value codes 9..15 came out doubled on the H200 (its high nibble's top bit is bf16's lowest
exponent bit). On the GPU, bench/kernels_decode.py's check section runs the compiled PTX."""

from __future__ import annotations

import numpy as np
import torch

from kvplan.kernels import gluon_decode as gd
from kvplan.kernels import triton_kernels as tk
from tests.kernels.gluon_emu import run_ptx

# two 32-bit words per call: every byte value at every byte position of both words, then random
_SEQ = np.arange(256 * 4, dtype=np.uint32).reshape(256, 4) % 256
_ALL = (_SEQ[:, 0] | _SEQ[:, 1] << 8 | _SEQ[:, 2] << 16 | _SEQ[:, 3] << 24).astype(np.uint32)
_RNG = np.random.default_rng(0).integers(0, 2**32, size=(2, 512), dtype=np.uint64).astype(np.uint32)
W1 = np.concatenate([_ALL, np.roll(_ALL, 7), _RNG[0]])
W2 = np.concatenate([np.roll(_ALL, 3), _ALL, _RNG[1]])


def _run(asm: str, n_in: int, n_out: int, every: int = 1) -> list[np.ndarray]:
    """Inputs W1, W2 in the registers after the outputs, `every` registers apart (Gluon: each
    word comes 4 times, see gluon_decode's code conversions)."""
    env = run_ptx(asm, {f"${n_out + every * i}": w for i, w in enumerate((W1, W2)[:n_in])})
    return [env[f"${i}"] for i in range(n_out)]


def _byte(w: np.ndarray, k: int) -> np.ndarray:
    return ((w >> (8 * k)) & 0xFF).astype(np.int64)


def _half(r: np.ndarray, hi: bool, bf16: bool) -> np.ndarray:
    bits = ((r >> 16) if hi else r) & 0xFFFF
    if bf16:
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return bits.astype(np.uint16).view(np.float16).astype(np.float64)


def _s8(b: np.ndarray) -> np.ndarray:
    return np.where(b > 127, b - 256, b).astype(np.float64)


def _e4m3(b: np.ndarray) -> np.ndarray:
    return torch.from_numpy(b.astype(np.uint8)).view(torch.float8_e4m3fn).double().numpy()


def _check_pairs(out: list[np.ndarray], want: list, bf16: bool, e4m3: bool = False) -> None:
    """out[j] holds byte k of word 1 (low half) and of word 2 (high half); want[j] = (k, f)."""
    for j, (k, f) in enumerate(want):
        for hi, w in ((False, W1), (True, W2)):
            b = _byte(w, k)
            # e4m3's NaN codes (0x7F, 0xFF) are never written (the writes saturate)
            ok = (b & 0x7F) != 0x7F if e4m3 else np.ones_like(b, dtype=bool)
            got, exp = _half(out[j], hi, bf16), f(b)
            bad = np.flatnonzero(ok & (got != exp))
            assert bad.size == 0, (j, k, hi, b[bad[:4]], got[bad[:4]], exp[bad[:4]])


def test_triton_int8_codes() -> None:
    _check_pairs(_run(tk._PTX_S8_BF16.value, 2, 4), [(k, _s8) for k in range(4)], bf16=True)


def test_triton_int4_key_codes_are_128_plus_nibble() -> None:
    want = [(k, lambda b: 128.0 + (b & 15)) for k in range(4)] + [
        (k, lambda b: 128.0 + (b >> 4)) for k in range(4)
    ]
    _check_pairs(_run(tk._PTX_NIB_BF16.value, 2, 8), want, bf16=True)


def test_triton_int4_value_codes_are_centred() -> None:
    want = [(k, lambda b: (b & 15) - 8.0) for k in range(4)] + [
        (k, lambda b: (b >> 4) - 8.0) for k in range(4)
    ]
    _check_pairs(_run(tk._PTX_NIB_BF16_CENTRED.value, 2, 8), want, bf16=True)
    _check_pairs(_run(tk._PTX_NIB_F16_CENTRED.value, 2, 8), want, bf16=False)  # bf16 queries' values


def test_triton_e4m3_to_bf16_is_exact() -> None:
    _check_pairs(_run(tk._PTX_E4M3_BF16.value, 2, 4), [(k, _e4m3) for k in range(4)], bf16=True, e4m3=True)


def test_gluon_value_pairs() -> None:
    """Gluon's value conversions: output j is an f16x2 of (even row's, odd row's) byte."""
    _check_pairs(_run(gd._PTX_V_S8.value, 2, 4, 4), [(k, _s8) for k in range(4)], bf16=False)
    want = [(k, lambda b: (b & 15) - 8.0) for k in range(4)] + [
        (k, lambda b: (b >> 4) - 8.0) for k in range(4)
    ]
    _check_pairs(_run(gd._PTX_V_S4.value, 2, 8, 4), want, bf16=False)
    _check_pairs(_run(gd._PTX_V_E4M3.value, 2, 4, 4), [(k, _e4m3) for k in range(4)], bf16=False, e4m3=True)


def test_gluon_key_conversions() -> None:
    """Keys: one word's four int4 bytes to low and high nibbles as bytes; four e4m3 to f16 in order;
    int8 codes unchanged."""
    assert np.array_equal(run_ptx(gd._PTX_MOV.value, {"$1": W1})["$0"], W1)
    lo, hi = (run_ptx(gd._PTX_NIBBLES.value, {"$2": W1})[r] for r in ("$0", "$1"))
    for k in range(4):
        assert np.array_equal(_byte(lo, k), _byte(W1, k) & 15)
        assert np.array_equal(_byte(hi, k), _byte(W1, k) >> 4)
    env = run_ptx(gd._PTX_E4M3.value, {"$2": W1})
    for k in range(4):
        got, want = _half(env["$0" if k < 2 else "$1"], k % 2 == 1, False), _e4m3(_byte(W1, k))
        ok = (_byte(W1, k) & 0x7F) != 0x7F
        assert np.array_equal(got[ok], want[ok]), k


def test_the_old_centred_int4_trick_is_caught() -> None:
    """The conversion the H200 check failed (high nibble kept in place as 128 + 16 n): codes 9..15
    doubled. The same check as above must reject it."""
    old = (
        "{ .reg .b32 t, c, s, m; mov.b32 c, 0x43084308; mov.b32 s, 0x3D803D80; mov.b32 m, 0xC180C180;"
        " prmt.b32 t, $8, $9, 0x4400; lop3.b32 $4, t, 0x00F000F0, 0x43004300, 0xEA;"
        " fma.rn.bf16x2 $4, $4, s, m; }"
    )
    env = run_ptx(old, {"$8": W1, "$9": W2})
    got, exp = _half(env["$4"], False, True), (_byte(W1, 0) >> 4) - 8.0
    assert np.array_equal(got[exp < 1], exp[exp < 1]) and not np.array_equal(got, exp)
