"""Triton kernels: quantize-on-write into pages, and paged decode attention with fused dequant.

Both kernels address a head page by bytes: page (block, kv head) starts at
(block * Hkv + head) * page_nbytes, and the regions' offsets come from `kvplan.formats`. The same
uint8 cache is passed under several dtype views (u8, the 16-bit code dtype, fp16, fp32) so each
region is read with its own element type; offsets are 16-byte aligned, so the divisions are exact.

Every side (K or V) is handled in two halves of head_dim: int4 packs channel j with channel
j + d/2 in one byte, so a page row unpacks into the two halves with one mask and one shift, and
the other formats simply load the halves (two dots of depth d/2 instead of one of depth d).

Scales are folded, never applied per element:
  int8   s = scale_t * (q . c_t)                       o = sum_t (p_t scale_t) c_t
  int4   s = scale_t * (q . c'_t) + zero'_t * sum(q)   o = sum_t (p_t scale_t) (c_t - 8) + sum_t p_t zero''_t
  fp8    the static per-head scale goes into the softmax scale and the final output.
int4 key codes become bf16/fp16 by OR-ing the nibble into the mantissa of 128.0 (bf16, MAGIC
0x4300) or 1024.0 (fp16, 0x6400): c' = c + MAGIC_OFF exactly, with no int->float conversion; the
offset is folded into the zero point (zero' = zero - MAGIC_OFF * scale). Value codes are centred,
c - 8 (exact, one more instruction per two codes), and zero''_t = zero_t + 8 scale_t is summed
with the same rounded probabilities the dot used: the P.V accumulator then stays near the
output's size, which the tensor cores' truncating fp32 accumulation needs at long context.

With I8K (int8/int4 keys), q is split once into two int8 operands with row scales,
q = s1 * a + s2 * b, and q . c_t is two int8 MMAs on the codes (int4: the nibbles, no offset), so
the keys are never converted: s = scale_t * (s1 (a . c_t) + s2 (b . c_t)) [+ zero_t * sum(q)].
"""

# mypy: disable-error-code="no-untyped-def, untyped-decorator"
from __future__ import annotations

import triton
import triton.language as tl

# side kinds (constexpr): how one of K or V is stored
PLAIN = tl.constexpr(0)
FP8 = tl.constexpr(1)
INT8 = tl.constexpr(2)
INT4 = tl.constexpr(3)


# ----------------------------------------------------------------------------------------------
# cache write


@triton.jit
def _quant_store(
    x_lo, x_hi, c_u8, c_p16, c_f16, c_f32, base, o, t_mask, static_inv,
    KIND: tl.constexpr, CODE_OFF: tl.constexpr, META_OFF: tl.constexpr,
    D: tl.constexpr, HALF: tl.constexpr,
):  # fmt: skip
    d2 = tl.arange(0, HALF)
    m2 = t_mask[:, None]
    if KIND == PLAIN:
        ptr = c_p16 + ((base + CODE_OFF) // 2 + o * D)[:, None] + d2[None, :]
        tl.store(ptr, x_lo.to(c_p16.dtype.element_ty), mask=m2)
        tl.store(ptr + HALF, x_hi.to(c_p16.dtype.element_ty), mask=m2)
    elif KIND == FP8:
        ptr = c_u8 + (base + CODE_OFF + o * D)[:, None] + d2[None, :]
        lo = tl.minimum(tl.maximum(x_lo * static_inv, -448.0), 448.0)
        hi = tl.minimum(tl.maximum(x_hi * static_inv, -448.0), 448.0)
        tl.store(ptr, lo.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=m2)
        tl.store(ptr + HALF, hi.to(tl.float8e4nv).to(tl.uint8, bitcast=True), mask=m2)
    elif KIND == INT8:
        amax = tl.maximum(tl.max(tl.abs(x_lo), axis=1), tl.max(tl.abs(x_hi), axis=1))
        sc = tl.where(amax > 0, amax / 127.0, 1.0)
        inv = (1.0 / sc)[:, None]
        # round(x / sc) as one FMA and a truncating conversion: |x / sc| <= 127, so x / sc + 128.5
        # is positive and truncation is the floor
        lo = tl.minimum(tl.maximum((x_lo * inv + 128.5).to(tl.int32) - 128, -127), 127)
        hi = tl.minimum(tl.maximum((x_hi * inv + 128.5).to(tl.int32) - 128, -127), 127)
        ptr = c_u8 + (base + CODE_OFF + o * D)[:, None] + d2[None, :]
        tl.store(ptr, lo.to(tl.int8).to(tl.uint8, bitcast=True), mask=m2)
        tl.store(ptr + HALF, hi.to(tl.int8).to(tl.uint8, bitcast=True), mask=m2)
        tl.store(c_f32 + (base + META_OFF) // 4 + o, sc, mask=t_mask)
    else:  # INT4, asymmetric, fp16 scale and zero
        lo_v = tl.minimum(tl.min(x_lo, axis=1), tl.min(x_hi, axis=1))
        hi_v = tl.maximum(tl.max(x_lo, axis=1), tl.max(x_hi, axis=1))
        rng = hi_v - lo_v
        sc = tl.minimum(tl.where(rng > 0, rng / 15.0, 1.0), 65504.0).to(tl.float16)
        sc = tl.where(sc > 0, sc, 1.0).to(tl.float16)
        zr = tl.minimum(tl.maximum(lo_v, -65504.0), 65504.0).to(tl.float16)
        inv = 1.0 / sc.to(tl.float32)[:, None]
        off = 0.5 - zr.to(tl.float32)[:, None] * inv
        # floor((x - zero) / sc + 0.5) clamped to [0, 15] as one FMA, a truncating conversion and an
        # integer clamp (clamped at 0, truncation and floor agree)
        ql = tl.minimum(tl.maximum((x_lo * inv + off).to(tl.int32), 0), 15)
        qh = tl.minimum(tl.maximum((x_hi * inv + off).to(tl.int32), 0), 15)
        byte = (ql | (qh << 4)).to(tl.uint8)
        tl.store(c_u8 + (base + CODE_OFF + o * HALF)[:, None] + d2[None, :], byte, mask=m2)
        mptr = c_f16 + (base + META_OFF) // 2 + o * 2
        tl.store(mptr, sc, mask=t_mask)
        tl.store(mptr + 1, zr, mask=t_mask)


@triton.jit
def _rotate_halves(lo, hi, pm1_ptr, HALF: tl.constexpr, PREC: tl.constexpr, FROM_INDEX: tl.constexpr = False):
    """[lo, hi] @ H_d / sqrt(d) in fp32, from the halves in their own dtype.

    Sylvester: H_d = [[H', H'], [H', -H']], so with a = lo @ H' and b = hi @ H' the result is
    [(a + b), (a - b)] / sqrt(d). H' is +-1 in the inputs' dtype (exact), so the tensor-core dots
    round nothing but the fp32 sums. H' is loaded from pm1_ptr, or (FROM_INDEX) computed in
    registers: H'[i, j] = (-1)^popcount(i & j), the same matrix.
    """
    d2 = tl.arange(0, HALF)
    if FROM_INDEX:
        x = d2[:, None] & d2[None, :]
        x = x ^ (x >> 4)
        x = x ^ (x >> 2)
        x = x ^ (x >> 1)
        hs = (1 - 2 * (x & 1)).to(lo.dtype)
    else:
        hs = tl.load(pm1_ptr + d2[:, None] * HALF + d2[None, :])
    a = tl.dot(lo, hs, input_precision=PREC)
    b = tl.dot(hi, hs, input_precision=PREC)
    inv = 1.0 / tl.sqrt(2.0 * HALF)
    return (a + b) * inv, (a - b) * inv


@triton.jit
def write_kernel(
    k_ptr, v_ptr, slot_ptr, c_u8, c_p16, c_f16, c_f32, rot_ptr, ks_ptr, vs_ptr, ks_step, vs_step,
    T, stride_kt, stride_kh, stride_vt, stride_vh,
    HKV: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, PAGE_NBYTES: tl.constexpr,
    K_KIND: tl.constexpr, V_KIND: tl.constexpr, K_ROT: tl.constexpr,
    K_CODE: tl.constexpr, V_CODE: tl.constexpr, K_META: tl.constexpr, V_META: tl.constexpr,
    BLOCK_T: tl.constexpr, DOT_PREC: tl.constexpr, ROT_FROM_INDEX: tl.constexpr,
):  # fmt: skip
    """Grid (cdiv(T, BLOCK_T), HKV): BLOCK_T tokens of one KV head. Both sides' rows are loaded
    before either is stored: a store may alias them, so the value loads would wait for the keys'
    stores (5-10 points of copy bandwidth on the H200). ks_step/vs_step: 1 for a static scale a
    KV head, 0 for one scale of every head (so the caller's one-element tensor is passed as it is)."""
    h = tl.program_id(1)
    HALF: tl.constexpr = D // 2
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    slot = tl.load(slot_ptr + t, mask=t < T, other=-1).to(tl.int64)
    t_mask = slot >= 0
    blk = tl.where(t_mask, slot // PAGE, 0)
    o = tl.where(t_mask, slot % PAGE, 0)
    base = (blk * HKV + h) * PAGE_NBYTES
    k_lo, k_hi = _write_load(k_ptr, stride_kt, stride_kh, t, T, h, HALF)
    v_lo, v_hi = _write_load(v_ptr, stride_vt, stride_vh, t, T, h, HALF)
    _write_store(k_lo, k_hi, ks_ptr + h * ks_step, rot_ptr, c_u8, c_p16, c_f16, c_f32, h, base, o, t_mask,
                 K_KIND, K_CODE, K_META, K_ROT, D, HALF, DOT_PREC, ROT_FROM_INDEX)  # fmt: skip
    _write_store(v_lo, v_hi, vs_ptr + h * vs_step, rot_ptr, c_u8, c_p16, c_f16, c_f32, h, base, o, t_mask,
                 V_KIND, V_CODE, V_META, False, D, HALF, DOT_PREC, ROT_FROM_INDEX)  # fmt: skip


@triton.jit
def _write_load(x_ptr, stride_t, stride_h, t, T, h, HALF: tl.constexpr):
    """The two halves of BLOCK_T rows of keys or values. Rows are loaded for every token of the
    chunk (not masked by its slot), so these loads do not wait for the slot mapping's; skipped
    tokens' rows are simply not stored."""
    d2 = tl.arange(0, HALF)
    row = x_ptr + t.to(tl.int64)[:, None] * stride_t + h * stride_h + d2[None, :]
    m2 = (t < T)[:, None]
    return tl.load(row, mask=m2, other=0.0), tl.load(row + HALF, mask=m2, other=0.0)


@triton.jit
def _write_store(
    x_lo, x_hi, static_ptr, rot_ptr, c_u8, c_p16, c_f16, c_f32, h, base, o, t_mask,
    KIND: tl.constexpr, CODE_OFF: tl.constexpr, META_OFF: tl.constexpr, ROT: tl.constexpr,
    D: tl.constexpr, HALF: tl.constexpr, DOT_PREC: tl.constexpr, ROT_FROM_INDEX: tl.constexpr,
):  # fmt: skip
    """[Rotate,] quantize and store one side's rows."""
    if ROT:
        x_lo, x_hi = _rotate_halves(x_lo, x_hi, rot_ptr, HALF, DOT_PREC, ROT_FROM_INDEX)
    inv = 1.0 / tl.load(static_ptr)
    _quant_store(
        x_lo.to(tl.float32), x_hi.to(tl.float32), c_u8, c_p16, c_f16, c_f32, base, o, t_mask, inv,
        KIND, CODE_OFF, META_OFF, D, HALF,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# paged attention


# Code -> bf16 conversions as inline PTX on int32 words of codes (about 1-2 instructions a code;
# Triton's own conversion of a uint8 tile moves and masks byte by byte, about 7 a code in the
# SASS, and converts after the MMA-operand layout change, with byte-wide shared-memory loads).
# Not available under TRITON_INTERPRET or for fp16 queries: ASM=False runs the same word
# unpacking with integer ops.


# The inline PTX, one block per conversion: the same few instructions for each byte position k,
# with the prmt selector `sel` gathering byte k of the two packed words (see the functions below).
_BYTE_SELECTORS = ("0x4400", "0x5511", "0x6622", "0x7733")


def _per_byte_ptx(regs: str, body: str, head: str = "", selectors: tuple[str, ...] = _BYTE_SELECTORS) -> str:
    lines = [body.format(sel=sel, k=k, k4=k + 4) for k, sel in enumerate(selectors)]
    return "{ " + regs + " " + head + " " + " ".join(lines) + " }"


_PTX_S8_BF16 = tl.constexpr(
    _per_byte_ptx(
        ".reg .b32 t, a, b;",
        "prmt.b32 t, $4, $5, {sel}; lop3.b32 a, t, 0x007F007F, 0x43004300, 0xEA;"
        " lop3.b32 b, t, 0x00800080, 0x43004300, 0xEA; sub.bf16x2 ${k}, a, b;",
    )
)
_PTX_NIB_BF16 = tl.constexpr(
    _per_byte_ptx(
        ".reg .b32 t, u;",
        "prmt.b32 t, $8, $9, {sel}; shr.b32 u, t, 4; lop3.b32 ${k}, t, 0x000F000F, 0x43004300, 0xEA;"
        " lop3.b32 ${k4}, u, 0x000F000F, 0x43004300, 0xEA;",
    )
)
# values: the nibble n becomes n - 8 exactly (centred codes, see _nib_words): each nibble in
# bf16's low mantissa bits as 128 + n, minus 136. (The high nibble cannot stay in place as
# 128 + 16 n: its top bit is the exponent's lowest, so codes 9..15 doubled; the GPU check caught
# it, tests/kernels/test_ptx.py now runs every conversion's PTX on all byte values.)
_PTX_NIB_BF16_CENTRED = tl.constexpr(
    _per_byte_ptx(
        ".reg .b32 t, u, c;",
        "prmt.b32 t, $8, $9, {sel}; shr.b32 u, t, 4; lop3.b32 ${k}, t, 0x000F000F, 0x43004300, 0xEA;"
        " sub.bf16x2 ${k}, ${k}, c; lop3.b32 ${k4}, u, 0x000F000F, 0x43004300, 0xEA;"
        " sub.bf16x2 ${k4}, ${k4}, c;",
        head="mov.b32 c, 0x43084308;",
    )
)
# the same in fp16 (1024 + n minus 1032): the values' dtype under bf16 queries, so that P can be
# fp16 too (see attention_kernel)
_PTX_NIB_F16_CENTRED = tl.constexpr(
    _per_byte_ptx(
        ".reg .b32 t, u, c;",
        "prmt.b32 t, $8, $9, {sel}; shr.b32 u, t, 4; lop3.b32 ${k}, t, 0x000F000F, 0x64006400, 0xEA;"
        " sub.f16x2 ${k}, ${k}, c; lop3.b32 ${k4}, u, 0x000F000F, 0x64006400, 0xEA;"
        " sub.f16x2 ${k4}, ${k4}, c;",
        head="mov.b32 c, 0x64086408;",
    )
)
_PTX_E4M3_F16 = tl.constexpr(
    _per_byte_ptx(
        ".reg .b32 t; .reg .b16 h, x;",
        "prmt.b32 t, $4, $5, {sel}; mov.b32 {{h, x}}, t; cvt.rn.f16x2.e4m3x2 ${k}, h;",
        selectors=("0x0040", "0x0051", "0x0062", "0x0073"),  # byte k of both words in 16 bits
    )
)
_PTX_E4M3_BF16 = tl.constexpr(
    _per_byte_ptx(
        ".reg .b32 t, u, m;",
        "prmt.b32 t, $4, $5, {sel}; shr.b32 u, t, 4; and.b32 u, u, 0x07F007F0;"
        " lop3.b32 u, u, t, 0x80008000, 0xF8; mul.rn.bf16x2 ${k}, u, m;",
        head="mov.b32 m, 0x7B807B80;",
    )
)


@triton.jit
def _s8_words(w, ASM: tl.constexpr, DT: tl.constexpr):
    """int8 codes loaded as int32 words [BN, W] -> DT [BN, 4W] in register order, exactly.

    prmt selector 0x(4+k)(4+k)kk puts byte k of the first word in the low half and byte k of the
    second word in the high half; lop3 0xEA is (a & b) | c.

    The asm (bf16) takes two words (pack=2) and returns, for each byte position k, a bf16x2 holding
    byte k of both; joining the four outputs back puts code 4i + k at column 4i + k. The layout
    change to the MMA operand then moves 16-bit values. Without ASM: the same with integer ops.
    """
    if not ASM:
        e0 = (((w & 255) ^ 128) - 128).to(DT)
        e1 = ((((w >> 8) & 255) ^ 128) - 128).to(DT)
        e2 = ((((w >> 16) & 255) ^ 128) - 128).to(DT)
        e3 = ((((w >> 24) & 255) ^ 128) - 128).to(DT)
        return _interleave4(e0, e1, e2, e3)
    e0, e1, e2, e3 = tl.inline_asm_elementwise(
        asm=_PTX_S8_BF16,
        constraints="=r,=r,=r,=r,r,r", args=[w],
        dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16), is_pure=True, pack=2,
    )  # fmt: skip
    return _interleave4(e0, e1, e2, e3)


@triton.jit
def _nib_words(w, ASM: tl.constexpr, DT: tl.constexpr, OFF: tl.constexpr, CENTRED: tl.constexpr = False):
    """int4 bytes loaded as int32 words [BN, W] -> (lo, hi) DT [BN, 4W] = OFF + nibble, or with
    CENTRED (values) nibble - 8, exactly. OFF is the magic number's offset (keys: folded into the
    zero point); OFF is ignored when CENTRED."""
    if not ASM:
        add = -8.0 if CENTRED else OFF
        l0 = ((w & 15).to(tl.float32) + add).to(DT)
        l1 = (((w >> 8) & 15).to(tl.float32) + add).to(DT)
        l2 = (((w >> 16) & 15).to(tl.float32) + add).to(DT)
        l3 = (((w >> 24) & 15).to(tl.float32) + add).to(DT)
        h0 = (((w >> 4) & 15).to(tl.float32) + add).to(DT)
        h1 = (((w >> 12) & 15).to(tl.float32) + add).to(DT)
        h2 = (((w >> 20) & 15).to(tl.float32) + add).to(DT)
        h3 = (((w >> 28) & 15).to(tl.float32) + add).to(DT)
        return _interleave4(l0, l1, l2, l3), _interleave4(h0, h1, h2, h3)
    if CENTRED and (tl.float16 == DT):
        l0, l1, l2, l3, h0, h1, h2, h3 = tl.inline_asm_elementwise(
            asm=_PTX_NIB_F16_CENTRED,
            constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r", args=[w],
            dtype=(tl.float16,) * 8, is_pure=True, pack=2,
        )  # fmt: skip
    elif CENTRED:
        l0, l1, l2, l3, h0, h1, h2, h3 = tl.inline_asm_elementwise(
            asm=_PTX_NIB_BF16_CENTRED,
            constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r", args=[w],
            dtype=(tl.bfloat16,) * 8, is_pure=True, pack=2,
        )  # fmt: skip
    else:
        l0, l1, l2, l3, h0, h1, h2, h3 = tl.inline_asm_elementwise(
            asm=_PTX_NIB_BF16,
            constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r", args=[w],
            dtype=(tl.bfloat16,) * 8, is_pure=True, pack=2,
        )  # fmt: skip
    return _interleave4(l0, l1, l2, l3), _interleave4(h0, h1, h2, h3)


@triton.jit
def _e4m3_words(w, ASM: tl.constexpr, DT: tl.constexpr):
    """fp8 e4m3 codes loaded as int32 words [BN, W] -> DT [BN, 4W], exactly.

    Byte k of both words goes to the high byte of a bf16 lane (selectors as in _s8_words); its 7
    exponent+mantissa bits shifted right by 4 land in bf16's with the exponent 120 short (fp8
    bias 7, bf16 127; fp8 subnormals become bf16 subnormals): one multiply by 2^120 is exact.
    """
    if not ASM:
        e0 = (w & 255).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(DT)
        e1 = ((w >> 8) & 255).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(DT)
        e2 = ((w >> 16) & 255).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(DT)
        e3 = ((w >> 24) & 255).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(DT)
        return _interleave4(e0, e1, e2, e3)
    if tl.float16 == DT:  # the hardware conversion of two e4m3 in 16 bits to f16x2 (sm_89+)
        e0, e1, e2, e3 = tl.inline_asm_elementwise(
            asm=_PTX_E4M3_F16,
            constraints="=r,=r,=r,=r,r,r", args=[w],
            dtype=(tl.float16, tl.float16, tl.float16, tl.float16), is_pure=True, pack=2,
        )  # fmt: skip
    else:
        e0, e1, e2, e3 = tl.inline_asm_elementwise(
            asm=_PTX_E4M3_BF16,
            constraints="=r,=r,=r,=r,r,r", args=[w],
            dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16), is_pure=True, pack=2,
        )  # fmt: skip
    return _interleave4(e0, e1, e2, e3)


@triton.jit
def _interleave4(e0, e1, e2, e3):
    """[BN, W] x4 with e_k[:, i] = x[:, 4i + k] -> x [BN, 4W]."""
    x = tl.join(tl.join(e0, e2), tl.join(e1, e3))  # [BN, W, j, m] = e_{2j + m}
    return tl.reshape(x, [x.shape[0], x.shape[1] * 4])


@triton.jit
def _nibbles_i8(c, ASM: tl.constexpr):
    """uint8 bytes -> (low nibble, high nibble) as int8; with ASM four bytes a 32-bit op."""
    if not ASM:
        return (c & 15).to(tl.int8, bitcast=True), (c >> 4).to(tl.int8, bitcast=True)
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t;
        and.b32 $0, $2, 0x0F0F0F0F;
        shr.b32 t, $2, 4;
        and.b32 $1, t, 0x0F0F0F0F;
        }""",
        constraints="=r,=r,r", args=[c], dtype=(tl.int8, tl.int8), is_pure=True, pack=4,
    )  # fmt: skip


@triton.jit
def _split_i8(x_lo, x_hi):
    """fp32 rows [M, HALF] x2 -> int8 (a, b) per half and row scales (s1, s2) with
    x = s1 * a + s2 * b to within s2 / 2 = max|x| / 64516 (two int8 MMAs give ~16-bit operands)."""
    amax = tl.maximum(tl.max(tl.abs(x_lo), axis=1), tl.max(tl.abs(x_hi), axis=1))
    s1 = tl.where(amax > 0, amax / 127.0, 1.0)
    s2 = s1 / 254.0
    a_lo = tl.floor(x_lo / s1[:, None] + 0.5)
    a_hi = tl.floor(x_hi / s1[:, None] + 0.5)
    b_lo = tl.floor((x_lo - a_lo * s1[:, None]) / s2[:, None] + 0.5)
    b_hi = tl.floor((x_hi - a_hi * s1[:, None]) / s2[:, None] + 0.5)
    b_lo = tl.minimum(tl.maximum(b_lo, -127.0), 127.0)
    b_hi = tl.minimum(tl.maximum(b_hi, -127.0), 127.0)
    return a_lo.to(tl.int8), a_hi.to(tl.int8), b_lo.to(tl.int8), b_hi.to(tl.int8), s1, s2


@triton.jit
def _load_side(
    c_u8, c_p16, c_f16, c_f32, base, o, n_mask,
    KIND: tl.constexpr, CODE_OFF: tl.constexpr, META_OFF: tl.constexpr,
    D: tl.constexpr, HALF: tl.constexpr, DT: tl.constexpr, MAGIC: tl.constexpr,
    ASM: tl.constexpr, WORDS: tl.constexpr, MAGIC_OFF: tl.constexpr, I8: tl.constexpr = False,
    CENTRED: tl.constexpr = False,
):  # fmt: skip
    """A tile of one side: (lo, hi) [BN, HALF] in DT, and the per-token (scale, zero') in fp32.

    I8 (INT8/INT4 only): the codes themselves as int8 (int4: the nibbles 0..15) for an int8 MMA,
    and zero' = zero (no magic-number offset). CENTRED (INT4 values): the codes as nibble - 8.
    """
    d2 = tl.arange(0, HALF)
    m2 = n_mask[:, None]
    sc = tl.full(o.shape, 1.0, tl.float32)
    zr = tl.zeros(o.shape, tl.float32)
    # rows start 16-byte aligned (formats.ALIGN); saying so lets Triton emit 16-byte loads
    if I8 and (KIND == INT8):
        ptr = c_u8 + tl.multiple_of(base + CODE_OFF + o * D, 16)[:, None] + d2[None, :]
        lo = tl.load(ptr, mask=m2, other=0).to(tl.int8, bitcast=True)
        hi = tl.load(ptr + HALF, mask=m2, other=0).to(tl.int8, bitcast=True)
        sc = tl.load(c_f32 + (base + META_OFF) // 4 + o, mask=n_mask, other=0.0)
    elif I8:  # INT4
        row = tl.multiple_of(base + CODE_OFF + o * HALF, 16)
        lo, hi = _nibbles_i8(tl.load(c_u8 + row[:, None] + d2[None, :], mask=m2, other=0), ASM)
        mptr = c_f16 + (base + META_OFF) // 2 + o * 2
        sc = tl.load(mptr, mask=n_mask, other=0.0).to(tl.float32)
        zr = tl.load(mptr + 1, mask=n_mask, other=0.0).to(tl.float32)
    elif KIND == PLAIN:
        row = tl.multiple_of((base + CODE_OFF) // 2 + o * D, 8)
        ptr = c_p16 + row[:, None] + d2[None, :]
        lo = tl.load(ptr, mask=m2, other=0.0).to(DT)
        hi = tl.load(ptr + HALF, mask=m2, other=0.0).to(DT)
    elif KIND == FP8:
        if WORDS:
            wp = c_f32.to(tl.pointer_type(tl.int32)) + ((base + CODE_OFF + o * D) // 4)[:, None]
            w4 = tl.arange(0, HALF // 4)
            wa = ASM and ((MAGIC == 0x4300) or (MAGIC == 0x6400))
            lo = _e4m3_words(tl.load(wp + w4[None, :], mask=m2, other=0), wa, DT)
            hi = _e4m3_words(tl.load(wp + HALF // 4 + w4[None, :], mask=m2, other=0), wa, DT)
        else:
            ptr = c_u8 + tl.multiple_of(base + CODE_OFF + o * D, 16)[:, None] + d2[None, :]
            lo = tl.load(ptr, mask=m2, other=0).to(tl.float8e4nv, bitcast=True).to(DT)
            hi = tl.load(ptr + HALF, mask=m2, other=0).to(tl.float8e4nv, bitcast=True).to(DT)
    elif KIND == INT8:
        if WORDS:
            wp = c_f32.to(tl.pointer_type(tl.int32)) + ((base + CODE_OFF + o * D) // 4)[:, None]
            w4 = tl.arange(0, HALF // 4)
            wa = ASM and (MAGIC == 0x4300)
            lo = _s8_words(tl.load(wp + w4[None, :], mask=m2, other=0), wa, DT)
            hi = _s8_words(tl.load(wp + HALF // 4 + w4[None, :], mask=m2, other=0), wa, DT)
        else:
            ptr = c_u8 + tl.multiple_of(base + CODE_OFF + o * D, 16)[:, None] + d2[None, :]
            lo = tl.load(ptr, mask=m2, other=0).to(tl.int8, bitcast=True).to(DT)
            hi = tl.load(ptr + HALF, mask=m2, other=0).to(tl.int8, bitcast=True).to(DT)
        sc = tl.load(c_f32 + (base + META_OFF) // 4 + o, mask=n_mask, other=0.0)
    else:  # INT4
        row = tl.multiple_of(base + CODE_OFF + o * HALF, 16)
        c = tl.load(c_u8 + row[:, None] + d2[None, :], mask=m2, other=0)
        if WORDS:
            wp = c_f32.to(tl.pointer_type(tl.int32)) + ((base + CODE_OFF + o * HALF) // 4)[:, None]
            w4 = tl.arange(0, HALF // 4)
            wa = ASM and ((MAGIC == 0x4300) or (CENTRED and (tl.float16 == DT)))
            lo, hi = _nib_words(tl.load(wp + w4[None, :], mask=m2, other=0), wa, DT, MAGIC_OFF, CENTRED)
        elif MAGIC == 0:
            lo = (c & 15).to(DT)
            hi = (c >> 4).to(DT)
            if CENTRED:
                lo = lo - 8.0
                hi = hi - 8.0
        else:
            lo = ((c & 15).to(tl.uint16) | MAGIC).to(DT, bitcast=True)
            hi = ((c >> 4).to(tl.uint16) | MAGIC).to(DT, bitcast=True)
            if CENTRED:  # exact: MAGIC_OFF + n - (MAGIC_OFF + 8) = n - 8
                lo = (lo - (MAGIC_OFF + 8.0)).to(DT)
                hi = (hi - (MAGIC_OFF + 8.0)).to(DT)
        mptr = c_f16 + (base + META_OFF) // 2 + o * 2
        sc = tl.load(mptr, mask=n_mask, other=0.0).to(tl.float32)
        zr = tl.load(mptr + 1, mask=n_mask, other=0.0).to(tl.float32)
    return lo, hi, sc, zr


@triton.jit
def attention_kernel(
    q_ptr, out_ptr, o_part, m_part, l_part,
    c_u8, c_p16, c_f16, c_f32, bt_ptr, seq_lens_ptr, qsl_ptr, ks_ptr, vs_ptr, ks_step, vs_step,
    rot_ptr, qk_scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, Tq, HQ,
    HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
    PAGE_NBYTES: tl.constexpr,
    K_KIND: tl.constexpr, V_KIND: tl.constexpr, K_ROT: tl.constexpr,
    K_CODE: tl.constexpr, V_CODE: tl.constexpr, K_META: tl.constexpr, V_META: tl.constexpr,
    num_qb, tokens_per_split,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DIRECT: tl.constexpr, DT: tl.constexpr, DOT_PREC: tl.constexpr, ROT_PREC: tl.constexpr,
    MAGIC: tl.constexpr, MAGIC_OFF: tl.constexpr, SWAP_QK: tl.constexpr,
    ASM: tl.constexpr, WORDS: tl.constexpr, I8K: tl.constexpr,
    V_DT: tl.constexpr, V_MAGIC: tl.constexpr, V_MAGIC_OFF: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Grid (B * num_qb, HKV, splits): BLOCK_Q queries x G heads of one KV group, one context split.

    The query rows of the tile are (query i, head g) pairs, so GQA's G heads share every K/V load.
    qk_scale = softmax scale * log2(e); the softmax runs in base 2. V_DT (with its magic number):
    the dtype of the P.V dot, fp16 for INT4 values under bf16 queries (see below). PDL: the
    split-K merge (combine_kernel, a programmatic dependent launch) may be scheduled from here on.
    """
    pid = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    b = pid // num_qb
    qb = pid % num_qb
    HALF: tl.constexpr = D // 2
    seq_len = tl.load(seq_lens_ptr + b)
    q0 = tl.load(qsl_ptr + b)
    q_len = tl.load(qsl_ptr + b + 1) - q0

    m_idx = tl.arange(0, BLOCK_M)
    qi = qb * BLOCK_Q + m_idx // G  # query index inside the sequence
    head = h * G + m_idx % G
    row_ok = (m_idx < BLOCK_Q * G) & (qi < q_len)
    d2 = tl.arange(0, HALF)
    q_rows = q_ptr + (q0 + qi).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh
    q_lo = tl.load(q_rows + d2[None, :], mask=row_ok[:, None], other=0.0)
    q_hi = tl.load(q_rows + HALF + d2[None, :], mask=row_ok[:, None], other=0.0)
    if K_ROT:  # keys are stored rotated by H/sqrt(d): rotate q alike
        q_lo, q_hi = _rotate_halves(q_lo, q_hi, rot_ptr, HALF, ROT_PREC)
    if I8K:  # int8 keys meet q as two int8 MMAs (q ~ s1 * a + s2 * b): no key conversion at all
        qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2 = _split_i8(q_lo.to(tl.float32), q_hi.to(tl.float32))
    q_mul = tl.full([BLOCK_M], 1.0, tl.float32)
    if (tl.float16 == DT) and (q_ptr.dtype.element_ty == tl.bfloat16):  # fp8 pages, fp16 dots
        q_amax = tl.maximum(
            tl.max(tl.abs(q_lo.to(tl.float32)), axis=1), tl.max(tl.abs(q_hi.to(tl.float32)), axis=1)
        )
        q_mul = tl.where(q_amax > 16384.0, q_amax / 16384.0, 1.0)  # keep q inside fp16's range
        q_lo = q_lo.to(tl.float32) / q_mul[:, None]
        q_hi = q_hi.to(tl.float32) / q_mul[:, None]
    q_lo = q_lo.to(DT)
    q_hi = q_hi.to(DT)
    # the int4 zero-point term needs the q of the dot: the rounded one when codes carry MAGIC_OFF
    q_sum = tl.sum(q_lo.to(tl.float32), axis=1) + tl.sum(q_hi.to(tl.float32), axis=1)
    if I8K:
        q_sum = qs1 * (tl.sum(qa_lo.to(tl.float32), axis=1) + tl.sum(qa_hi.to(tl.float32), axis=1))
        q_sum += qs2 * (tl.sum(qb_lo.to(tl.float32), axis=1) + tl.sum(qb_hi.to(tl.float32), axis=1))
    k_static = tl.load(ks_ptr + h * ks_step)  # (step 0: one scale for every KV head)
    v_static = tl.load(vs_ptr + h * vs_step)
    if K_KIND == FP8:
        qk_scale = qk_scale * k_static

    # positions this tile may see: query i sees < seq_len - q_len + i + 1
    limit = seq_len - q_len + qi + 1
    last_q = tl.minimum(q_len, (qb + 1) * BLOCK_Q)
    start = split * tokens_per_split
    end = tl.minimum(tl.minimum(start + tokens_per_split, seq_len), seq_len - q_len + last_q)
    # INT4 values: P in fp16, not bf16. bf16's 8-bit P put ~2e-3 relative noise on every term of
    # an output that, over a long context, is a small difference of large sums (bench check:
    # 5-7e-3 at 32K tokens, 2e-3 with fp16). v_mul, a power of two (2^-floor(log2) of the split's
    # first scale), keeps p * scale in fp16's normal range; P saturates at 65504 rather than overflow.
    v_mul = 1.0
    if V_KIND == INT4:
        has = start < end
        blk0 = tl.load(bt_ptr + b * stride_bt + start // PAGE, mask=has, other=0).to(tl.int64)
        sc0 = tl.load(
            c_f16 + ((blk0 * HKV + h) * PAGE_NBYTES + V_META) // 2 + (start % PAGE) * 2, mask=has, other=1.0
        ).to(tl.float32)
        sc0 = tl.where(sc0 > 0, sc0, 1.0)
        v_mul = tl.exp2(-tl.floor(tl.log2(sc0)))
    v_over = 1.0 / v_mul

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    z_acc = tl.zeros([BLOCK_M], tl.float32)
    acc_lo = tl.zeros([BLOCK_M, HALF], tl.float32)
    acc_hi = tl.zeros([BLOCK_M, HALF], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        tok = n0 + tl.arange(0, BLOCK_N)
        n_mask = tok < end
        blk = tl.load(bt_ptr + b * stride_bt + tok // PAGE, mask=n_mask, other=0).to(tl.int64)
        base = (blk * HKV + h) * PAGE_NBYTES
        o = tok % PAGE
        k_lo, k_hi, k_sc, k_zr = _load_side(
            c_u8, c_p16, c_f16, c_f32, base, o, n_mask, K_KIND, K_CODE, K_META, D, HALF, DT,
            MAGIC, ASM, WORDS, MAGIC_OFF, I8K,
        )  # fmt: skip
        if I8K:
            sa = tl.dot(qa_lo, tl.trans(k_lo), out_dtype=tl.int32)
            sa = tl.dot(qa_hi, tl.trans(k_hi), sa, out_dtype=tl.int32)
            sb = tl.dot(qb_lo, tl.trans(k_lo), out_dtype=tl.int32)
            sb = tl.dot(qb_hi, tl.trans(k_hi), sb, out_dtype=tl.int32)
            s = sa.to(tl.float32) * qs1[:, None] + sb.to(tl.float32) * qs2[:, None]
        elif SWAP_QK:  # keys as the A operand: [BLOCK_N, d/2] codes convert in registers
            st = tl.dot(k_lo, tl.trans(q_lo), input_precision=DOT_PREC)
            st = tl.dot(k_hi, tl.trans(q_hi), st, input_precision=DOT_PREC)
            s = tl.trans(st)
        else:
            s = tl.dot(q_lo, tl.trans(k_lo), input_precision=DOT_PREC)
            s = tl.dot(q_hi, tl.trans(k_hi), s, input_precision=DOT_PREC)
        if K_KIND == INT8:
            s = s * k_sc[None, :]
        if K_KIND == INT4:
            if not I8K:
                k_zr = k_zr - MAGIC_OFF * k_sc
            s = s * k_sc[None, :] + q_sum[:, None] * k_zr[None, :]
        if (tl.float16 == DT) and (q_ptr.dtype.element_ty == tl.bfloat16):
            s = s * (qk_scale * q_mul)[:, None]  # q was divided by q_mul to fit fp16
        else:
            s = s * qk_scale
        ok = n_mask[None, :] & (tok[None, :] < limit[:, None])
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc_lo = acc_lo * alpha[:, None]
        acc_hi = acc_hi * alpha[:, None]
        v_lo, v_hi, v_sc, v_zr = _load_side(
            c_u8, c_p16, c_f16, c_f32, base, o, n_mask, V_KIND, V_CODE, V_META, D, HALF, V_DT,
            V_MAGIC, ASM, WORDS, V_MAGIC_OFF, False, True,
        )  # fmt: skip
        if V_KIND == INT4:
            z_acc = z_acc * alpha + tl.sum(p * v_zr[None, :], axis=1)
        if V_KIND == INT8:
            p = p * v_sc[None, :]
        if V_KIND == INT4:
            pd = tl.minimum(p * (v_sc * v_mul)[None, :], 65504.0).to(V_DT)
            # the dot sums pd * (code - 8): add the 8 back with the same rounded pd. Centred codes
            # keep the tensor-core accumulator near the output's size: with codes 0..15 plus the
            # magic offset it grew ~50 sqrt(tokens) times larger, and the MMA's truncating fp32
            # accumulation lost ~1e-1 relative at 32K tokens a split (bench check, grid shapes)
            z_acc = z_acc + (8.0 * v_over) * tl.sum(pd.to(tl.float32), axis=1)
        else:
            pd = p.to(V_DT)
        acc_lo = tl.dot(pd, v_lo, acc_lo, input_precision=DOT_PREC)
        acc_hi = tl.dot(pd, v_hi, acc_hi, input_precision=DOT_PREC)
        m_i = m_new

    if V_KIND == FP8:
        acc_lo = acc_lo * v_static
        acc_hi = acc_hi * v_static
    if V_KIND == INT4:
        acc_lo = acc_lo * v_over
        acc_hi = acc_hi * v_over
    acc_lo = acc_lo + z_acc[:, None]
    acc_hi = acc_hi + z_acc[:, None]
    qt = (q0 + qi).to(tl.int64)
    if DIRECT:  # one split: normalise and write the output here
        inv = tl.where(l_i > 0, 1.0 / l_i, 0.0)
        optr = out_ptr + qt[:, None] * stride_ot + head[:, None] * stride_oh + d2[None, :]
        tl.store(optr, (acc_lo * inv[:, None]).to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
        tl.store(optr + HALF, (acc_hi * inv[:, None]).to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        row = (split * Tq + qt) * HQ + head  # partials [SPLITS, Tq, HQ, (D)]
        pptr = o_part + row[:, None] * D + d2[None, :]
        tl.store(pptr, acc_lo, mask=row_ok[:, None])
        tl.store(pptr + HALF, acc_hi, mask=row_ok[:, None])
        tl.store(m_part + row, m_i, mask=row_ok)
        tl.store(l_part + row, l_i, mask=row_ok)


@triton.jit
def combine_kernel(
    out_ptr, o_part, m_part, l_part, Tq, HQ, stride_ot, stride_oh,
    D: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Grid (Tq, HQ, D // BLOCK_D): merge the splits' (acc, max, sum) of one query row's BLOCK_D
    output columns (flash-decoding), BLOCK_S splits' partials a step. (One [SPLITS, D] tile per
    row, as before, left 32 programs holding 128-512 KB each at batch 1: they spilled.)
    PDL: launched as a programmatic dependent of the attention kernel (CUDA, sm_90): its programs
    start while that kernel's last ones run and wait here, before the first load of a partial,
    until it has finished and its stores are visible (griddepcontrol.wait)."""
    t = tl.program_id(0)
    hq = tl.program_id(1)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    s_all = tl.arange(0, SPLITS_P2)
    all_ok = s_all < SPLITS
    all_rows = (s_all * Tq + t) * HQ + hq
    if PDL:
        tl.extra.cuda.gdc_wait()
    m_all = tl.load(m_part + all_rows, mask=all_ok, other=float("-inf"))
    if BLOCK_S >= SPLITS_P2:  # one pass: every load issued before any depends on the row max
        l_all = tl.load(l_part + all_rows, mask=all_ok, other=0.0)
        part = tl.load(o_part + all_rows[:, None] * D + d[None, :], mask=all_ok[:, None], other=0.0)
        m_max = tl.max(m_all, axis=0)
        m_use = tl.where(m_max == float("-inf"), 0.0, m_max)
        w = tl.where(all_ok & (l_all > 0), tl.exp2(m_all - m_use), 0.0)
        total = tl.sum(w * l_all, axis=0)
        acc = tl.sum(part * w[:, None], axis=0)
    else:
        m_max = tl.max(m_all, axis=0)
        m_use = tl.where(m_max == float("-inf"), 0.0, m_max)
        total = 0.0
        acc = tl.zeros([BLOCK_D], tl.float32)
        for s0 in range(0, SPLITS, BLOCK_S):
            s_idx = s0 + tl.arange(0, BLOCK_S)
            s_ok = s_idx < SPLITS
            row = (s_idx * Tq + t) * HQ + hq
            m = tl.load(m_part + row, mask=s_ok, other=float("-inf"))
            lsum = tl.load(l_part + row, mask=s_ok, other=0.0)
            w = tl.where(s_ok & (lsum > 0), tl.exp2(m - m_use), 0.0)
            total += tl.sum(w * lsum, axis=0)
            part = tl.load(o_part + row[:, None] * D + d[None, :], mask=s_ok[:, None], other=0.0)
            acc += tl.sum(part * w[:, None], axis=0)
    o = tl.where(total > 0, acc / tl.where(total > 0, total, 1.0), 0.0)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + hq * stride_oh + d, o.to(out_ptr.dtype.element_ty))
