"""Paged decode attention for the 8-/4-bit formats in Gluon (Triton 3.6): codes feed the tensor
cores from registers.

Written against Triton 3.6's `triton.experimental.gluon` (the GPU machine's version; Gluon's API
moves between minors) and used only there: `api` falls back to the Triton kernel
(`triton_kernels.attention_kernel`) on any other version, for fp32 queries, for prefill chunks
(more than 8 query tokens a sequence) and where `api.TUNING_GLUON["gluon"]` is off. Gluon has no
interpreter: CI runs this kernel's source under a numpy emulation (tests/kernels/gluon_emu.py)
and its PTX through the emulator's PTX interpreter; `bench/kernels_decode.py --sections check`
runs the compiled kernel on the GPU.

Why: the Triton kernel moves every dequantized 8-/4-bit tile register -> shared memory -> MMA
operand, 2-4x the bytes of the codes, and that round trip, not the HBM bytes, set its time. Here
nothing goes through shared memory in the loop. One warp per program (sequence, KV head, split);
per tile of BLOCK_N tokens (one page or part of one):

- S = Q K^T on `mma.sync`: Q (the G query heads of the KV group, padded to 16 rows) is the A
  operand, held in registers all along; K is the B operand. Each lane loads its part of a key row
  with one 16-byte load, and that IS its B fragment once the head_dim channels are relabelled
  (the dot does not care in which order channels are summed; q is relabelled the same way in the
  prologue). int8/int4 keys: two int8 MMAs on the codes (q = s1 a + s2 b as two int8 operands,
  as in the Triton kernel), no conversion; fp8 keys: e4m3x2 -> f16x2 in hardware, f16 MMAs.
- O^T = V^T P^T: V^T is the A operand (channels x tokens), P^T the B operand. The accumulator
  layout of S is, relabelled, exactly P^T's B fragment, so P never moves. Each lane loads its
  channels of two adjacent token rows and a byte permute pairs them into f16x2 (int8: magic
  number 1024 + u, fp8: hardware e4m3x2, int4: 1024 + n, centred to n - 8). V^T's channel order
  is a relabelling too; the output store applies it.
- P in fp16 (10 bits; the Triton kernel rounds P to bf16), with per-token value scales folded
  into P and a per-program power-of-two factor keeping p * scale in fp16's normal range.
- SWAP (S^T = K Q^T): the same key loads relabelled into the A operand [BLOCK_N, head_dim/2]
  and the query group as the B operand (8 columns, not 16 rows of which 4 are real: half the
  integer MMAs, fewer registers); S^T's accumulator reaches P^T's B fragment by one layout change
  (two warp shuffles and a few byte permutes a tile). PREFETCH issues the next UNROLL tiles' loads
  before this group's math. JOINT takes one row max (one warp reduction, one lazy-rescale check)
  for a group of UNROLL tiles: their scores first, then each one's P.V. EARLY issues the first
  group's loads before the query prologue's math. PAGE_AHEAD reads each group's pages from the
  block table an iteration before its loads (bench/results/kernels_h200.md: an L2 prefetch of
  later groups, tried first, was slower at every shape); PDL lets
  the split-K merge, a programmatic dependent launch, be scheduled while this grid runs. Which
  launch runs where: api.TUNING_GLUON_REGIME / _BY_FORMAT.

Relabellings are logical reshapes/permutes of the loaded tiles; Gluon infers the layouts and the
final `convert_layout` to the MMA operand moves no data (asserted where it must be exactly trivial).
"""

# mypy: disable-error-code="no-untyped-def, untyped-decorator, valid-type, attr-defined, name-defined"
# mypy: disable-error-code="no-redef"
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

# side kinds: the same numbers as triton_kernels (PLAIN 0, FP8 1, INT8 2, INT4 3)
FP8: gl.constexpr = gl.constexpr(1)
INT8: gl.constexpr = gl.constexpr(2)
INT4: gl.constexpr = gl.constexpr(3)

# ----------------------------------------------------------------------------------------------
# code conversions (inline PTX on 32-bit words). Codes are loaded as int32 words (a carried word
# stays one register; a carried byte tensor is repacked at every use) and each word is broadcast
# 4 times along a new last axis, so that with `pack=4` one call takes a word in 4 operands (it
# reads the first) and returns 4 consecutive int8/f16 elements: the word's bytes in order.

# int8 codes as they are
_PTX_MOV = gl.constexpr("mov.b32 $0, $1;")
# int4 bytes -> (low nibbles, high nibbles) as int8, four a word
_PTX_NIBBLES = gl.constexpr(
    "{ .reg .b32 t; and.b32 $0, $2, 0x0F0F0F0F; shr.b32 t, $2, 4; and.b32 $1, t, 0x0F0F0F0F; }"
)
# four e4m3 -> two f16x2 (byte order kept)
_PTX_E4M3 = gl.constexpr(
    "{ .reg .b16 l, h; mov.b32 {l, h}, $2; cvt.rn.f16x2.e4m3x2 $0, l; cvt.rn.f16x2.e4m3x2 $1, h; }"
)
# value pairs: $N = even token row's word, $N+4 = odd row's; each output f16x2 is (even, odd) of
# one channel. int8: prmt puts byte k of the two words in the low bytes of the two 16-bit lanes;
# the byte with its sign bit flipped, under 0x64, is 1024 + u, and minus 1152 gives the code
# (lop3 0x6A: (a ^ c) & b | c & ~b, i.e. flip bit 7 and put 0x64 in the high byte).
_PTX_V_S8 = gl.constexpr(
    "{ .reg .b32 t, c; mov.b32 c, 0x64806480;"
    " prmt.b32 t, $4, $8, 0x4400; lop3.b32 $0, t, 0x00FF00FF, c, 0x6A; sub.f16x2 $0, $0, c;"
    " prmt.b32 t, $4, $8, 0x5511; lop3.b32 $1, t, 0x00FF00FF, c, 0x6A; sub.f16x2 $1, $1, c;"
    " prmt.b32 t, $4, $8, 0x6622; lop3.b32 $2, t, 0x00FF00FF, c, 0x6A; sub.f16x2 $2, $2, c;"
    " prmt.b32 t, $4, $8, 0x7733; lop3.b32 $3, t, 0x00FF00FF, c, 0x6A; sub.f16x2 $3, $3, c; }"
)
# the grid's dependent launches may start (griddepcontrol, sm_90; the output register is a dummy)
_PTX_LAUNCH_DEPENDENTS = gl.constexpr("griddepcontrol.launch_dependents; mov.b32 $0, 0;")
# one 128-byte line into L2, nothing back (the output register is a dummy)
_PTX_V_E4M3 = gl.constexpr(
    "{ .reg .b32 t; .reg .b16 l, h;"
    " prmt.b32 t, $4, $8, 0x5140; mov.b32 {l, h}, t; cvt.rn.f16x2.e4m3x2 $0, l; cvt.rn.f16x2.e4m3x2 $1, h;"
    " prmt.b32 t, $4, $8, 0x7362; mov.b32 {l, h}, t; cvt.rn.f16x2.e4m3x2 $2, l; cvt.rn.f16x2.e4m3x2 $3, h; }"
)


def _v_nib(t: str, lo: str, hi: str) -> str:
    """Both nibbles of byte 0 of each 16-bit lane of t, as centred f16x2 (n - 8): the low one as
    1024 + n minus 1032, the high one as 1024 + 16 n (no shift) times 1/16 minus 72."""
    return (
        f" lop3.b32 {lo}, {t}, 0x000F000F, 0x64006400, 0xEA; sub.f16x2 {lo}, {lo}, c;"
        f" lop3.b32 {hi}, {t}, 0x00F000F0, 0x64006400, 0xEA; fma.rn.f16x2 {hi}, {hi}, s, m;"
    )


# outputs: $0 $1 low nibbles of bytes 0, 1; $2 $3 of bytes 2, 3; $4-$7 the high nibbles alike
_PTX_V_S4 = gl.constexpr(
    "{ .reg .b32 t, u, c, s, m; mov.b32 c, 0x64086408; mov.b32 s, 0x2C002C00; mov.b32 m, 0xD480D480;"
    " prmt.b32 t, $8, $12, 0x5410;"
    + _v_nib("t", "$0", "$4")
    + " shr.b32 u, t, 8;"
    + _v_nib("u", "$1", "$5")
    + " prmt.b32 t, $8, $12, 0x7632;"
    + _v_nib("t", "$2", "$6")
    + " shr.b32 u, t, 8;"
    + _v_nib("u", "$3", "$7")
    + " }"
)

# ----------------------------------------------------------------------------------------------
# operand construction


@gluon.jit
def _k_operand(
    x, BN: gl.constexpr, HALF: gl.constexpr, CB: gl.constexpr, KW: gl.constexpr, layout: gl.constexpr,
    SWAP: gl.constexpr,
):  # fmt: skip
    """A key half tile as loaded, [BN, 4 lanes, CB] (lane t's CB contiguous channels of each row),
    relabelled into the MMA's B operand [HALF (k), BN], or (SWAP) its A operand [BN, HALF (k)]
    (the same registers: lane (g, t) holds rows g and g + 8 and the same k in both roles).
    KW 4 (int8): k = 32j + 16h + 4t + e holds channel CB t + 8j + 4h + e; KW 2 (f16):
    k = 16j + 8h + 2t + e holds channel CB t + 4j + 2h + e."""
    x = gl.reshape(x, [BN, 4, CB // 8, 2, 4]) if KW == 4 else gl.reshape(x, [BN, 4, CB // 4, 2, 2])
    if SWAP:
        x = gl.reshape(gl.permute(x, [0, 2, 3, 1, 4]), [BN, HALF])
    else:
        x = gl.reshape(gl.permute(x, [2, 3, 1, 4, 0]), [HALF, BN])
    return gl.convert_layout(x, layout, assert_trivial=True)


@gluon.jit
def _q_operand(
    q, M: gl.constexpr, HALF: gl.constexpr, CB: gl.constexpr, KW: gl.constexpr, layout: gl.constexpr,
    SWAP: gl.constexpr,
):  # fmt: skip
    """Query half rows [M, HALF] in channel order, relabelled as _k_operand relabels keys, as the
    MMA's A operand [M, HALF], or (SWAP) its B operand [HALF, M] (once a program: the layout
    change may go through shared memory)."""
    q = gl.reshape(q, [M, 4, CB // 8, 2, 4]) if KW == 4 else gl.reshape(q, [M, 4, CB // 4, 2, 2])
    if SWAP:
        q = gl.reshape(gl.permute(q, [2, 3, 1, 4, 0]), [HALF, M])
    else:
        q = gl.reshape(gl.permute(q, [0, 2, 3, 1, 4]), [M, HALF])
    return gl.convert_layout(q, layout)


@gluon.jit
def _per_q(x, SWAP: gl.constexpr):
    """A per-query vector broadcast along a score tile's token axis ([M, BN], SWAP [BN, M])."""
    return x[None, :] if SWAP else x[:, None]


@gluon.jit
def _per_tok(x, SWAP: gl.constexpr):
    """A per-token vector broadcast along a score tile's query axis."""
    return x[:, None] if SWAP else x[None, :]


@gluon.jit
def _by4(w):
    """int32 words [A, B, C] (layout SliceLayout(3, P)) -> [A, B, C, 4] in P, each word 4 times
    in registers of its own lane (see the code conversions above)."""
    return gl.expand_dims(w, 3).broadcast_to(w.shape[0], w.shape[1], w.shape[2], 4)


@gluon.jit
def _k_codes(kw_lo, kw_hi, KIND: gl.constexpr, BN: gl.constexpr, CB: gl.constexpr):
    """A tile's key words [BN, 4 lanes, CB / 4] (int4: kw_lo holds both halves) -> the two halves'
    codes [BN, 4, CB] as MMA inputs: int8 codes (int4: nibbles), or f16 (fp8)."""
    if KIND == INT4:
        lo, hi = gl.inline_asm_elementwise(
            asm=_PTX_NIBBLES, constraints="=r,=r,r,r,r,r", args=[_by4(kw_lo)],
            dtype=(gl.int8, gl.int8), is_pure=True, pack=4,
        )  # fmt: skip
    elif KIND == FP8:
        lo = gl.inline_asm_elementwise(
            asm=_PTX_E4M3, constraints="=r,=r,r,r,r,r", args=[_by4(kw_lo)], dtype=gl.float16,
            is_pure=True, pack=4,
        )  # fmt: skip
        hi = gl.inline_asm_elementwise(
            asm=_PTX_E4M3, constraints="=r,=r,r,r,r,r", args=[_by4(kw_hi)], dtype=gl.float16,
            is_pure=True, pack=4,
        )  # fmt: skip
    else:
        lo = gl.inline_asm_elementwise(
            asm=_PTX_MOV, constraints="=r,r,r,r,r", args=[_by4(kw_lo)], dtype=gl.int8, is_pure=True, pack=4
        )
        hi = gl.inline_asm_elementwise(
            asm=_PTX_MOV, constraints="=r,r,r,r,r", args=[_by4(kw_hi)], dtype=gl.int8, is_pure=True, pack=4
        )
    return gl.reshape(lo, [BN, 4, CB]), gl.reshape(hi, [BN, 4, CB])


@gluon.jit
def _v_operand(
    w, KIND: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, VB: gl.constexpr, layout: gl.constexpr
):
    """A value tile's words as loaded, [BN, 8 lanes, VB / 4] (lane g's VB contiguous bytes of each
    token row; rows 2i and 2i+1 in one lane), -> the MMA's A operand V^T [D (m), BN] f16 with
    int8/fp8: m = 32q + 16u + 8o + g holds channel VB g + 4q + 2o + u,
    int4:     m = 64q + 32u + 16o + 8l + g holds channel VB g + 4q + 2o + u + l D/2 (l: nibble),
    which `_v_channel` inverts for the output."""
    x = gl.permute(gl.reshape(_by4(w), [BN // 2, 2, 8, VB // 4, 4]), [0, 2, 3, 4, 1])
    ev, od = gl.split(x)  # token rows 2i and 2i + 1, [BN/2, 8, VB/4, 4]
    if KIND == INT4:
        lo1, lo2, hi1, hi2 = gl.inline_asm_elementwise(
            asm=_PTX_V_S4, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r,r", args=[ev, od],
            dtype=(gl.float16, gl.float16, gl.float16, gl.float16), is_pure=True, pack=4,
        )  # fmt: skip
        lo1 = gl.reshape(lo1, [BN // 2, 8, VB])
        lo2 = gl.reshape(lo2, [BN // 2, 8, VB])
        hi1 = gl.reshape(hi1, [BN // 2, 8, VB])
        hi2 = gl.reshape(hi2, [BN // 2, 8, VB])
        j = gl.join(gl.join(lo1, lo2), gl.join(hi1, hi2))  # [BN/2, 8, VB, o, l]
        j = gl.reshape(j, [BN // 2, 8, VB // 4, 2, 2, 2, 2])  # [i, g, q, u, e, o, l]
        j = gl.permute(j, [2, 3, 5, 6, 1, 0, 4])  # [q, u, o, l, g, i, e]
    else:
        if KIND == INT8:
            o1, o2 = gl.inline_asm_elementwise(
                asm=_PTX_V_S8, constraints="=r,=r,=r,=r,r,r,r,r,r,r,r,r", args=[ev, od],
                dtype=(gl.float16, gl.float16), is_pure=True, pack=4,
            )  # fmt: skip
        else:
            o1, o2 = gl.inline_asm_elementwise(
                asm=_PTX_V_E4M3, constraints="=r,=r,=r,=r,r,r,r,r,r,r,r,r", args=[ev, od],
                dtype=(gl.float16, gl.float16), is_pure=True, pack=4,
            )  # fmt: skip
        o1 = gl.reshape(o1, [BN // 2, 8, VB])
        o2 = gl.reshape(o2, [BN // 2, 8, VB])
        j = gl.join(o1, o2)  # [BN/2, 8, VB, o]: element 4q + 2u + e of o holds byte 4q + 2o + u of row 2i + e
        j = gl.reshape(j, [BN // 2, 8, VB // 4, 2, 2, 2])  # [i, g, q, u, e, o]
        j = gl.permute(j, [2, 3, 5, 1, 0, 4])  # [q, u, o, g, i, e]
    return gl.convert_layout(gl.reshape(j, [D, BN]), layout)


@gluon.jit
def _v_channel(m, KIND: gl.constexpr, D: gl.constexpr, VB: gl.constexpr):
    """The channel that V^T row m (see _v_operand) holds."""
    g = m % 8
    if KIND == INT4:
        return VB * g + 4 * (m // 64) + 2 * ((m // 16) % 2) + (m // 32) % 2 + (D // 2) * ((m // 8) % 2)
    return VB * g + 4 * (m // 32) + 2 * ((m // 8) % 2) + (m // 16) % 2


@gluon.jit
def _rows8(x, axis: gl.constexpr):
    """The first 8 rows of a 16-row MMA tile (the padding rows 8-15 sit in registers of their
    own, so this moves nothing): x [16, N] -> [8, N] (axis 0) or x [16] -> [8]."""
    if axis == 0:
        x = gl.permute(gl.reshape(x, [2, 8, x.shape[1]]), [1, 2, 0])
    else:
        x = gl.permute(gl.reshape(x, [2, 8]), [1, 0])
    a, _ = gl.split(x)
    return a


# ----------------------------------------------------------------------------------------------
# the kernel


@gluon.jit
def _scores(
    n0, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, kw_lo, kw_hi, k_meta,
    K_KIND: gl.constexpr, MASKED: gl.constexpr, BN: gl.constexpr, M: gl.constexpr,
    MM: gl.constexpr, HALF: gl.constexpr, CB: gl.constexpr, SWAP: gl.constexpr,
    mma: gl.constexpr, kb: gl.constexpr,
):  # fmt: skip
    """A tile's scores (base 2, the softmax scale in qs1/qs2/q_sum): S = Q K^T [M, BN] (rows:
    query heads, cols: tokens), or (SWAP) S^T = K Q^T [BN, M]. kw_*/k_meta are the tile's loaded
    key words and per-token metadata (fp32 scale, or fp16 (scale, zero) in one int32)."""
    TOK: gl.constexpr = 0 if SWAP else 1  # the score tile's token axis
    kc_lo, kc_hi = _k_codes(kw_lo, kw_hi, K_KIND, BN, CB)
    if K_KIND == FP8:
        k_lo = _k_operand(kc_lo, BN, HALF, CB, 2, kb, SWAP)
        k_hi = _k_operand(kc_hi, BN, HALF, CB, 2, kb, SWAP)
        if SWAP:
            s = gl.zeros([BN, M], gl.float32, layout=mma)
            s = mma_v2(k_hi, qa_hi, mma_v2(k_lo, qa_lo, s))
        else:
            s = gl.zeros([MM, BN], gl.float32, layout=mma)
            s = mma_v2(qa_hi, k_hi, mma_v2(qa_lo, k_lo, s))
            if MM != M:
                s = _rows8(s, 0)
        s = s * _per_q(qs1, SWAP)
    else:
        k_lo = _k_operand(kc_lo, BN, HALF, CB, 4, kb, SWAP)
        k_hi = _k_operand(kc_hi, BN, HALF, CB, 4, kb, SWAP)
        if SWAP:
            sa = gl.zeros([BN, M], gl.int32, layout=mma)
            sa = mma_v2(k_hi, qa_hi, mma_v2(k_lo, qa_lo, sa))
            sb = gl.zeros([BN, M], gl.int32, layout=mma)
            sb = mma_v2(k_hi, qb_hi, mma_v2(k_lo, qb_lo, sb))
        else:
            sa = gl.zeros([MM, BN], gl.int32, layout=mma)
            sa = mma_v2(qa_hi, k_hi, mma_v2(qa_lo, k_lo, sa))
            sb = gl.zeros([MM, BN], gl.int32, layout=mma)
            sb = mma_v2(qb_hi, k_hi, mma_v2(qb_lo, k_lo, sb))
            if MM != M:
                sa = _rows8(sa, 0)
                sb = _rows8(sb, 0)
        s = sa.to(gl.float32) * _per_q(qs1, SWAP) + sb.to(gl.float32) * _per_q(qs2, SWAP)
        if K_KIND == INT8:
            s = s * _per_tok(k_meta.to(gl.float32, bitcast=True), SWAP)
        else:  # int4: fp16 (scale, zero) per token
            k_sc = (k_meta & 0xFFFF).to(gl.uint16).to(gl.float16, bitcast=True).to(gl.float32)
            k_zr = (k_meta >> 16).to(gl.uint16).to(gl.float16, bitcast=True).to(gl.float32)
            s = s * _per_tok(k_sc, SWAP) + _per_q(q_sum, SWAP) * _per_tok(k_zr, SWAP)
    if MASKED:
        tok = _per_tok(n0 + gl.arange(0, BN, layout=gl.SliceLayout(1 - TOK, s.type.layout)), SWAP)
        s = gl.where((tok < end) & (tok < _per_q(limit, SWAP)), s, float("-inf"))
    return s


@gluon.jit
def _rescale(m_i, m_tile, l_el, z_el, acc, LAZY: gl.constexpr, SWAP: gl.constexpr, mma: gl.constexpr):
    """Online softmax before tokens whose row max is m_tile: the running max, the one to
    exponentiate against, and the sums and accumulator rescaled to it. LAZY: only when a row's
    max grew by more than 2^8 (p then stays <= 256), else every time."""
    if LAZY:
        if gl.max((m_tile > m_i + 8.0).to(gl.int32), axis=0) > 0:
            m_new = gl.maximum(m_i, m_tile)
            alpha = gl.exp2(m_i - gl.where(m_new == float("-inf"), 0.0, m_new))
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(0, mma))[None, :]
            l_el = l_el * _per_q(alpha, SWAP)
            z_el = z_el * _per_q(alpha, SWAP)
            m_i = m_new
        m_use = gl.where(m_i == float("-inf"), 0.0, m_i)
    else:
        m_new = gl.maximum(m_i, m_tile)
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m_i - m_use)
        l_el = l_el * _per_q(alpha, SWAP)
        z_el = z_el * _per_q(alpha, SWAP)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(0, mma))[None, :]
        m_i = m_new
    return m_i, m_use, l_el, z_el, acc


@gluon.jit
def _accumulate(
    s, m_use, vw, v_meta, l_el, z_el, acc, v_mul, v_over, V_KIND: gl.constexpr, BN: gl.constexpr,
    D: gl.constexpr, VB: gl.constexpr, SWAP: gl.constexpr, va: gl.constexpr, pb: gl.constexpr,
):  # fmt: skip
    """A tile's probabilities against m_use into the sums and O^T [D, M] += V^T P^T (vw/v_meta:
    its loaded value words and metadata)."""
    p = gl.exp2(s - _per_q(m_use, SWAP))
    l_el = l_el + p
    if V_KIND == FP8:
        pv = p.to(gl.float16)
    else:
        if V_KIND == INT8:
            v_sc = v_meta.to(gl.float32, bitcast=True)
        else:
            v_sc = (v_meta & 0xFFFF).to(gl.uint16).to(gl.float16, bitcast=True).to(gl.float32)
        # p * scale * v_mul in fp16's normal range (v_mul: a power of two per program)
        pv = gl.minimum(p * _per_tok(v_sc * v_mul, SWAP), 65504.0).to(gl.float16)
        if V_KIND == INT4:
            v_zr = (v_meta >> 16).to(gl.uint16).to(gl.float16, bitcast=True).to(gl.float32)
            # the dot sums pv (code - 8): the 8 back with the same rounded pv, and the zero point
            z_el = z_el + p * _per_tok(v_zr, SWAP) + pv.to(gl.float32) * (8.0 * v_over)
    # Unswapped, P^T is a relabelling of the score tile (no data moves); SWAP: the score tile is
    # P^T, its lanes' roles transposed (warp shuffles)
    p_t = gl.convert_layout(pv if SWAP else gl.permute(pv, [1, 0]), pb)
    acc = mma_v2(_v_operand(vw, V_KIND, BN, D, VB, va), p_t, acc)
    return l_el, z_el, acc


@gluon.jit
def _tile(
    n0, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, kw_lo, kw_hi, vw, k_meta, v_meta,
    m_i, l_el, z_el, acc, v_mul, v_over,
    K_KIND: gl.constexpr, V_KIND: gl.constexpr, MASKED: gl.constexpr, LAZY: gl.constexpr,
    BN: gl.constexpr, M: gl.constexpr, MM: gl.constexpr, D: gl.constexpr, HALF: gl.constexpr,
    CB: gl.constexpr, VB: gl.constexpr, SWAP: gl.constexpr,
    mma: gl.constexpr, kb: gl.constexpr, va: gl.constexpr, pb: gl.constexpr,
):  # fmt: skip
    """One tile: scores, online softmax, P.V."""
    s = _scores(
        n0, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, kw_lo, kw_hi, k_meta, K_KIND,
        MASKED, BN, M, MM, HALF, CB, SWAP, mma, kb,
    )  # fmt: skip
    m_i, m_use, l_el, z_el, acc = _rescale(
        m_i, gl.max(s, axis=0 if SWAP else 1), l_el, z_el, acc, LAZY, SWAP, mma
    )
    l_el, z_el, acc = _accumulate(
        s, m_use, vw, v_meta, l_el, z_el, acc, v_mul, v_over, V_KIND, BN, D, VB, SWAP, va, pb
    )
    return m_i, l_el, z_el, acc


@gluon.jit
def _group(
    n0, grp, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, m_i, l_el, z_el, acc, v_mul,
    v_over, K_KIND: gl.constexpr, V_KIND: gl.constexpr, LAZY: gl.constexpr, BN: gl.constexpr,
    M: gl.constexpr, MM: gl.constexpr, D: gl.constexpr, HALF: gl.constexpr, CB: gl.constexpr,
    VB: gl.constexpr, UNROLL: gl.constexpr, SWAP: gl.constexpr, JOINT: gl.constexpr,
    mma: gl.constexpr, kb: gl.constexpr, va: gl.constexpr, pb: gl.constexpr,
):  # fmt: skip
    """The math of a group of UNROLL full tiles from token n0 (grp: their loads, from _fetch).
    JOINT: every tile's scores first, then one row max and one rescale for the group (one
    reduction and one check a group instead of a tile), then each tile's P.V."""
    if JOINT:
        ss = ()
        for i in gl.static_range(UNROLL):
            t = grp[i]
            s = _scores(
                n0 + i * BN, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, t[0], t[1],
                t[3], K_KIND, False, BN, M, MM, HALF, CB, SWAP, mma, kb,
            )  # fmt: skip
            ss = ss + (s,)  # type: ignore[assignment]  # noqa: RUF005
        s_max = ss[0]  # type: ignore[misc]  # (the JIT frontend's tuple, built above)
        for i in gl.static_range(1, UNROLL):
            s_max = gl.maximum(s_max, ss[i])
        m_i, m_use, l_el, z_el, acc = _rescale(
            m_i, gl.max(s_max, axis=0 if SWAP else 1), l_el, z_el, acc, LAZY, SWAP, mma
        )
        for i in gl.static_range(UNROLL):
            t = grp[i]
            l_el, z_el, acc = _accumulate(
                ss[i], m_use, t[2], t[4], l_el, z_el, acc, v_mul, v_over, V_KIND, BN, D, VB, SWAP, va, pb
            )
    else:
        for i in gl.static_range(UNROLL):
            t = grp[i]
            m_i, l_el, z_el, acc = _tile(
                n0 + i * BN, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, t[0], t[1],
                t[2], t[3], t[4], m_i, l_el, z_el, acc, v_mul, v_over, K_KIND, V_KIND, False, LAZY,
                BN, M, MM, D, HALF, CB, VB, SWAP, mma, kb, va, pb,
            )  # fmt: skip
    return m_i, l_el, z_el, acc


@gluon.jit
def _load(
    c_i32, page, r0, nvalid, kn, vn, k_off, v_off, m_off,
    K_KIND: gl.constexpr, V_KIND: gl.constexpr, K_CODE: gl.constexpr, V_CODE: gl.constexpr,
    K_META: gl.constexpr, V_META: gl.constexpr, HALF: gl.constexpr, KROW: gl.constexpr,
    VROW: gl.constexpr, MASKED: gl.constexpr,
):  # fmt: skip
    """The code words and per-token metadata of BN tokens from row r0 of the head page at byte
    `page` (int4 keys: both halves in kw_lo). MASKED: only the first `nvalid` tokens are read; the
    others come back 0 (no NaN codes or scales from unwritten rows)."""
    kp = (c_i32 + (page + K_CODE + r0 * KROW) // 4) + k_off
    vp = (c_i32 + (page + V_CODE + r0 * VROW) // 4) + v_off
    mp = (c_i32 + (page // 4 + r0)) + m_off
    ok_k = (kn < nvalid)[:, None, None]
    ok_v = (vn < nvalid)[:, None, None]
    ok_m = m_off < nvalid
    kw_lo = gl.load(kp, mask=ok_k, other=0) if MASKED else gl.load(kp)
    kw_hi = m_off * 0  # int4: unused
    if K_KIND != INT4:
        kw_hi = gl.load(kp + HALF // 4, mask=ok_k, other=0) if MASKED else gl.load(kp + HALF // 4)
    vw = gl.load(vp, mask=ok_v, other=0) if MASKED else gl.load(vp)
    k_meta = m_off * 0
    v_meta = m_off * 0
    if K_KIND != FP8:
        k_meta = gl.load(mp + K_META // 4, mask=ok_m, other=0) if MASKED else gl.load(mp + K_META // 4)
    if V_KIND != FP8:
        v_meta = gl.load(mp + V_META // 4, mask=ok_m, other=0) if MASKED else gl.load(mp + V_META // 4)
    return kw_lo, kw_hi, vw, k_meta, v_meta


@gluon.jit
def _page_of(bt_row, n, n_end, h, HKV: gl.constexpr, PAGE: gl.constexpr, PAGE_NBYTES: gl.constexpr):
    """The byte offset of the head page holding token n (block 0's at or past n_end)."""
    blk = gl.load(bt_row + n // PAGE, mask=n < n_end, other=0)
    return (blk.to(gl.int64) * HKV + h) * PAGE_NBYTES


@gluon.jit
def _pages(
    bt_row, n0, n_end, h, HKV: gl.constexpr, PAGE: gl.constexpr, PAGE_NBYTES: gl.constexpr,
    BN: gl.constexpr, UNROLL: gl.constexpr,
):  # fmt: skip
    """The head pages of the UNROLL tiles from token n0, a tuple (see _page_of)."""
    pages = ()
    for i in gl.static_range(UNROLL):
        pages = pages + (_page_of(bt_row, n0 + i * BN, n_end, h, HKV, PAGE, PAGE_NBYTES),)  # type: ignore[assignment]  # noqa: RUF005
    return pages


@gluon.jit
def _fetch(
    bt_row, n0, n_end, c_i32, h, kn, vn, k_off, v_off, m_off, HKV: gl.constexpr, PAGE: gl.constexpr,
    PAGE_NBYTES: gl.constexpr, K_KIND: gl.constexpr, V_KIND: gl.constexpr, K_CODE: gl.constexpr,
    V_CODE: gl.constexpr, K_META: gl.constexpr, V_META: gl.constexpr, HALF: gl.constexpr,
    KROW: gl.constexpr, VROW: gl.constexpr, BN: gl.constexpr, UNROLL: gl.constexpr,
):  # fmt: skip
    """The loads of UNROLL full tiles from token n0, a tuple of _load's: their pages from the block
    table, then _load. Tiles at or past n_end (a prefetch past the last group) read block 0, which
    every cache has: the loads land, nothing uses them."""
    grp = ()
    for i in gl.static_range(UNROLL):
        n = n0 + i * BN
        t = _load(
            c_i32, _page_of(bt_row, n, n_end, h, HKV, PAGE, PAGE_NBYTES), n % PAGE, BN, kn, vn,
            k_off, v_off, m_off, K_KIND, V_KIND, K_CODE, V_CODE, K_META, V_META, HALF, KROW, VROW,
            False,
        )  # fmt: skip
        # (the JIT frontend concatenates tuples; it does not unpack them)
        grp = grp + (t,)  # type: ignore[assignment]  # noqa: RUF005
    return grp


@gluon.jit
def _fetch_at(
    pages, n0, c_i32, kn, vn, k_off, v_off, m_off, PAGE: gl.constexpr, K_KIND: gl.constexpr,
    V_KIND: gl.constexpr, K_CODE: gl.constexpr, V_CODE: gl.constexpr, K_META: gl.constexpr,
    V_META: gl.constexpr, HALF: gl.constexpr, KROW: gl.constexpr, VROW: gl.constexpr,
    BN: gl.constexpr, UNROLL: gl.constexpr,
):  # fmt: skip
    """_fetch with the UNROLL tiles' pages already loaded (`pages`, from _pages)."""
    grp = ()
    for i in gl.static_range(UNROLL):
        t = _load(
            c_i32, pages[i], (n0 + i * BN) % PAGE, BN, kn, vn, k_off, v_off, m_off, K_KIND, V_KIND,
            K_CODE, V_CODE, K_META, V_META, HALF, KROW, VROW, False,
        )  # fmt: skip
        grp = grp + (t,)  # type: ignore[assignment]  # noqa: RUF005
    return grp


@gluon.jit
def _rotate(q_lo, q_hi, rot_ptr, MM: gl.constexpr, HALF: gl.constexpr, layout: gl.constexpr):
    """[q_lo, q_hi] @ H_d / sqrt(d) as in triton_kernels._rotate_halves: H_d = [[H', H'], [H', -H']]
    with H' the +-1 block at rot_ptr (in q's dtype, exact), as MMAs with fp32 accumulation. H' is
    read in 16-byte rows and moved into the MMA operand's layout through shared memory (read in
    that layout directly it took 128 two-byte loads a lane at head_dim 128: 1x32K int4_hadamard
    1.65x over BF16 against 1.76x, bench/results/kernels_h200_s8_call5.json)."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(0, mma, 2)
    b_l: gl.constexpr = gl.DotOperandLayout(1, mma, 2)
    TC: gl.constexpr = HALF // 8  # lanes along a row of H', 8 elements (16 bytes) each
    lh: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TC, TC], [1, 1], [1, 0])
    r = gl.arange(0, HALF, layout=gl.SliceLayout(1, lh))
    c = gl.arange(0, HALF, layout=gl.SliceLayout(0, lh))
    hs = gl.convert_layout(gl.load(rot_ptr + r[:, None] * HALF + c[None, :]), b_l)
    zero = gl.zeros([MM, HALF], gl.float32, layout=mma)
    a = mma_v2(gl.convert_layout(q_lo.to(hs.dtype), a_l), hs, zero)
    b = mma_v2(gl.convert_layout(q_hi.to(hs.dtype), a_l), hs, zero)
    inv = 1.0 / gl.sqrt(2.0 * HALF)
    return gl.convert_layout((a + b) * inv, layout), gl.convert_layout((a - b) * inv, layout)


@gluon.jit
def _first_scale_word(
    bt_row, start, end, c_i32, h, HKV: gl.constexpr, PAGE: gl.constexpr, PAGE_NBYTES: gl.constexpr,
    V_META: gl.constexpr,
):  # fmt: skip
    """The value metadata word of this program's first token (0 for an empty split)."""
    blk0 = gl.load(bt_row + start // PAGE, mask=start < end, other=0).to(gl.int64)
    return gl.load(
        c_i32 + ((blk0 * HKV + h) * PAGE_NBYTES + V_META) // 4 + start % PAGE, mask=start < end, other=0
    )


@gluon.jit
def _query_rows(
    q_ptr, q0, q_len, qb, h, stride_qt, stride_qh, BLOCK_Q: gl.constexpr, G: gl.constexpr,
    MM: gl.constexpr, HALF: gl.constexpr, lq: gl.constexpr,
):  # fmt: skip
    """The program's MM query rows (BLOCK_Q tokens x G heads, padding rows 0), both halves."""
    m_idx = gl.arange(0, MM, layout=gl.SliceLayout(1, lq))
    qi = qb * BLOCK_Q + m_idx // G
    row_ok = (m_idx < BLOCK_Q * G) & (qi < q_len)
    d2 = gl.arange(0, HALF, layout=gl.SliceLayout(0, lq))
    q_rows = q_ptr + (q0 + qi).to(gl.int64)[:, None] * stride_qt + (h * G + m_idx % G)[:, None] * stride_qh
    q_lo = gl.load(q_rows + d2[None, :], mask=row_ok[:, None], other=0.0)
    q_hi = gl.load(q_rows + HALF + d2[None, :], mask=row_ok[:, None], other=0.0)
    return q_lo, q_hi


@gluon.jit
def _row_vec(x, MM: gl.constexpr, M: gl.constexpr, layout: gl.constexpr):
    """A per-query-row vector [MM] of the prologue -> [M] rows of the score tiles."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    x = gl.convert_layout(x, gl.SliceLayout(1, mma))
    if MM != M:
        x = _rows8(x, 1)
    return gl.convert_layout(x, layout)


@gluon.jit
def attention_kernel(
    q_ptr, out_ptr, o_part, m_part, l_part, c_i32, bt_ptr, seq_lens_ptr, qsl_ptr,
    ks_ptr, vs_ptr, ks_step, vs_step, rot_ptr, qk_scale, stride_qt, stride_qh, stride_ot, stride_oh,
    stride_bt, Tq, HQ, num_qb, tokens_per_split,
    HKV: gl.constexpr, G: gl.constexpr, D: gl.constexpr, PAGE: gl.constexpr,
    PAGE_NBYTES: gl.constexpr, K_KIND: gl.constexpr, V_KIND: gl.constexpr, K_ROT: gl.constexpr,
    K_CODE: gl.constexpr, V_CODE: gl.constexpr, K_META: gl.constexpr, V_META: gl.constexpr,
    BLOCK_Q: gl.constexpr, M: gl.constexpr, BN: gl.constexpr, UNROLL: gl.constexpr,
    LAZY: gl.constexpr, DIRECT: gl.constexpr, PREFETCH: gl.constexpr, SWAP: gl.constexpr,
    JOINT: gl.constexpr, EARLY: gl.constexpr, PDL: gl.constexpr,
    PAGE_AHEAD: gl.constexpr,
):  # fmt: skip
    """Grid (B * num_qb, HKV, splits), one warp: the M = BLOCK_Q x G query rows of one KV group
    (padded to 8 or a multiple of 16) over one context split, BN tokens (dividing PAGE) a tile.
    Same arguments and outputs as triton_kernels.attention_kernel (partials in channel order)."""
    pid = gl.program_id(0)
    h = gl.program_id(1)
    split = gl.program_id(2)
    if PDL:  # the split-K merge (a programmatic dependent launch) may be scheduled from here on
        gl.inline_asm_elementwise(
            asm=_PTX_LAUNCH_DEPENDENTS, constraints="=r,r", args=[split], dtype=gl.int32,
            is_pure=False, pack=1,
        )  # fmt: skip
    b = pid // num_qb
    qb = pid % num_qb
    HALF: gl.constexpr = D // 2
    CB: gl.constexpr = D // 8  # key bytes a lane reads per row and half (int4: both halves)
    VB: gl.constexpr = D // 16 if V_KIND == INT4 else D // 8  # value bytes a lane reads per row
    KROW: gl.constexpr = HALF if K_KIND == INT4 else D
    VROW: gl.constexpr = HALF if V_KIND == INT4 else D
    # query rows of the QK MMA: its M side padded to 16 rows, or (SWAP, keys the A operand) its
    # N side, 8 columns a step
    MM: gl.constexpr = M if SWAP else 16 if M < 16 else M
    KW: gl.constexpr = 2 if K_KIND == FP8 else 4
    TOK: gl.constexpr = 0 if SWAP else 1  # the score tiles' token axis

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    qa_l: gl.constexpr = gl.DotOperandLayout(1 if SWAP else 0, mma, KW)
    kb_l: gl.constexpr = gl.DotOperandLayout(0 if SWAP else 1, mma, KW)
    va_l: gl.constexpr = gl.DotOperandLayout(0, mma, 2)
    pb_l: gl.constexpr = gl.DotOperandLayout(1, mma, 2)
    # loads: lane (g, t) = lane // 4, lane % 4. Keys: row g (+8), CB bytes at CB t; values:
    # rows 2t, 2t + 1 (+8), VB bytes at VB g; both 16-byte loads at head_dim 128
    # (int32 words, sliced from the 4-wide layouts _by4 broadcasts them into)
    CW: gl.constexpr = CB // 4
    VW: gl.constexpr = VB // 4
    lk4: gl.constexpr = gl.BlockedLayout([1, 1, CW, 4], [8, 4, 1, 1], [1, 1, 1, 1], [3, 2, 1, 0])
    lv4: gl.constexpr = gl.BlockedLayout([2, 1, VW, 4], [4, 8, 1, 1], [1, 1, 1, 1], [3, 2, 0, 1])
    lk: gl.constexpr = gl.SliceLayout(3, lk4)
    lv: gl.constexpr = gl.SliceLayout(3, lv4)
    lq: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [1, 1], [1, 0])
    # the score tile's layout (the MMA's, less its padding rows when M is 8)
    if MM != M:
        ls: gl.constexpr = _rows8(gl.zeros([MM, BN], gl.float32, layout=mma), 0).type.layout
    else:
        ls: gl.constexpr = mma
    row_l: gl.constexpr = gl.SliceLayout(TOK, ls)  # per query row
    tok_l: gl.constexpr = gl.SliceLayout(1 - TOK, ls)  # per token

    seq_len = gl.load(seq_lens_ptr + b)
    q0 = gl.load(qsl_ptr + b)
    q_len = gl.load(qsl_ptr + b + 1) - q0

    # ---- this program's tokens: [start, end); tiles below `full` need no mask
    r_idx = gl.arange(0, M, layout=row_l)
    limit = seq_len - q_len + qb * BLOCK_Q + r_idx // G + 1  # row r sees positions < limit
    last_q = gl.minimum(q_len, (qb + 1) * BLOCK_Q)
    start = split * tokens_per_split
    end = gl.minimum(gl.minimum(start + tokens_per_split, seq_len), seq_len - q_len + last_q)
    all_see = gl.minimum(end, seq_len - q_len + qb * BLOCK_Q + 1)
    full = start + gl.maximum(all_see - start, 0) // BN * BN

    # per-lane offsets inside a tile, in int32 words
    kn = gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, lk)))
    kt = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, lk)))
    kword = gl.arange(0, CW, layout=gl.SliceLayout(0, gl.SliceLayout(1, lk)))
    k_off = kn[:, None, None] * (KROW // 4) + kt[None, :, None] * CW + kword[None, None, :]
    vn = gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, lv)))
    vg = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(2, lv)))
    vword = gl.arange(0, VW, layout=gl.SliceLayout(0, gl.SliceLayout(1, lv)))
    v_off = vn[:, None, None] * (VROW // 4) + vg[None, :, None] * VW + vword[None, None, :]
    m_off = gl.arange(0, BN, layout=tok_l)
    bt_row = bt_ptr + b.to(gl.int64) * stride_bt

    # EARLY: the first group's loads (and the first value scale's) issued before the prologue's
    # math, so they land while it runs
    full_u = start + (full - start) // (UNROLL * BN) * (UNROLL * BN)
    GROUP: gl.constexpr = UNROLL * BN
    w0 = start * 0  # (fp8: no value scales)
    if EARLY:
        if V_KIND != FP8:
            w0 = _first_scale_word(bt_row, start, end, c_i32, h, HKV, PAGE, PAGE_NBYTES, V_META)
        if PREFETCH:
            nxt = _fetch(
                bt_row, start, full_u, c_i32, h, kn, vn, k_off, v_off, m_off, HKV, PAGE, PAGE_NBYTES,
                K_KIND, V_KIND, K_CODE, V_CODE, K_META, V_META, HALF, KROW, VROW, BN, UNROLL,
            )  # fmt: skip
    # PAGE_AHEAD (with PREFETCH): the pages of the group after the next one are read from the block
    # table one iteration early and carried, so a group's loads never wait on a block-table load
    # issued just before them; group 1's here
    if PAGE_AHEAD:
        pg = _pages(bt_row, start + GROUP, full_u, h, HKV, PAGE, PAGE_NBYTES, BN, UNROLL)
    # ---- prologue: the query rows, relabelled into MMA operands
    q_lo, q_hi = _query_rows(q_ptr, q0, q_len, qb, h, stride_qt, stride_qh, BLOCK_Q, G, MM, HALF, lq)
    if K_ROT:
        q_lo, q_hi = _rotate(q_lo, q_hi, rot_ptr, MM, HALF, lq)
    q_lo = q_lo.to(gl.float32)
    q_hi = q_hi.to(gl.float32)
    amax = gl.maximum(gl.max(gl.abs(q_lo), axis=1), gl.max(gl.abs(q_hi), axis=1))
    if K_KIND == FP8:  # fp16 dots: q scaled into fp16's range per row, the static key scale
        q_mul = gl.where(amax > 16384.0, amax / 16384.0, 1.0)
        qa_lo = _q_operand((q_lo / q_mul[:, None]).to(gl.float16), MM, HALF, CB, KW, qa_l, SWAP)
        qa_hi = _q_operand((q_hi / q_mul[:, None]).to(gl.float16), MM, HALF, CB, KW, qa_l, SWAP)
        qb_lo = qa_lo
        qb_hi = qa_hi
        qs1 = q_mul * (qk_scale * gl.load(ks_ptr + h * ks_step))
        qs2 = qs1
        q_sum = qs1
    else:  # two int8 operands, q = s1 a + s2 b (as triton_kernels._split_i8)
        s1 = gl.where(amax > 0, amax / 127.0, 1.0)
        s2 = s1 / 254.0
        a_lo = gl.floor(q_lo / s1[:, None] + 0.5)
        a_hi = gl.floor(q_hi / s1[:, None] + 0.5)
        b_lo = gl.minimum(
            gl.maximum(gl.floor((q_lo - a_lo * s1[:, None]) / s2[:, None] + 0.5), -127.0), 127.0
        )
        b_hi = gl.minimum(
            gl.maximum(gl.floor((q_hi - a_hi * s1[:, None]) / s2[:, None] + 0.5), -127.0), 127.0
        )
        q_sum = s1 * (gl.sum(a_lo, axis=1) + gl.sum(a_hi, axis=1)) + s2 * (
            gl.sum(b_lo, axis=1) + gl.sum(b_hi, axis=1)
        )
        qa_lo = _q_operand(a_lo.to(gl.int8), MM, HALF, CB, KW, qa_l, SWAP)
        qa_hi = _q_operand(a_hi.to(gl.int8), MM, HALF, CB, KW, qa_l, SWAP)
        qb_lo = _q_operand(b_lo.to(gl.int8), MM, HALF, CB, KW, qa_l, SWAP)
        qb_hi = _q_operand(b_hi.to(gl.int8), MM, HALF, CB, KW, qa_l, SWAP)
        qs1 = s1 * qk_scale
        qs2 = s2 * qk_scale
        q_sum = q_sum * qk_scale
    qs1 = _row_vec(qs1, MM, M, row_l)
    qs2 = _row_vec(qs2, MM, M, row_l)
    q_sum = _row_vec(q_sum, MM, M, row_l)

    # fp16 P: p * value scale * v_mul stays in fp16's normal range (v_mul: 2^-floor(log2) of the
    # first token's scale; scales of one head and split rarely differ by 2^15, and P saturates
    # at 65504 rather than overflow)
    v_mul = 1.0
    if V_KIND != FP8:
        if not EARLY:
            w0 = _first_scale_word(bt_row, start, end, c_i32, h, HKV, PAGE, PAGE_NBYTES, V_META)
        if V_KIND == INT8:
            sc0 = w0.to(gl.float32, bitcast=True)
        else:
            sc0 = (w0 & 0xFFFF).to(gl.uint16).to(gl.float16, bitcast=True).to(gl.float32)
        sc0 = gl.where(sc0 > 0, sc0, 1.0)
        v_mul = gl.exp2(-gl.floor(gl.log2(sc0)))
    v_over = 1.0 / v_mul

    m_i = gl.full([M], float("-inf"), gl.float32, layout=row_l)
    l_el = gl.zeros([BN, M] if SWAP else [M, BN], gl.float32, layout=ls)
    z_el = gl.zeros([BN, M] if SWAP else [M, BN], gl.float32, layout=ls)
    acc = gl.zeros([D, M], gl.float32, layout=mma)
    # full tiles, UNROLL (1, 2 or 4) at a time: all their loads first, then their math. PREFETCH:
    # the next group's loads are issued before this group's math, so the loads of one group
    # overlap the math of the one before (the carried words are int32 registers)
    if PREFETCH:
        if not EARLY:
            nxt = _fetch(
                bt_row, start, full_u, c_i32, h, kn, vn, k_off, v_off, m_off, HKV, PAGE, PAGE_NBYTES,
                K_KIND, V_KIND, K_CODE, V_CODE, K_META, V_META, HALF, KROW, VROW, BN, UNROLL,
            )  # fmt: skip
        for n0 in range(start, full_u, GROUP):
            grp = nxt
            if PAGE_AHEAD:
                nxt = _fetch_at(
                    pg, n0 + GROUP, c_i32, kn, vn, k_off, v_off, m_off, PAGE, K_KIND, V_KIND, K_CODE,
                    V_CODE, K_META, V_META, HALF, KROW, VROW, BN, UNROLL,
                )  # fmt: skip
                pg = _pages(bt_row, n0 + 2 * GROUP, full_u, h, HKV, PAGE, PAGE_NBYTES, BN, UNROLL)
            else:
                nxt = _fetch(
                    bt_row, n0 + GROUP, full_u, c_i32, h, kn, vn, k_off, v_off, m_off, HKV, PAGE,
                    PAGE_NBYTES, K_KIND, V_KIND, K_CODE, V_CODE, K_META, V_META, HALF, KROW, VROW, BN,
                    UNROLL,
                )  # fmt: skip
            m_i, l_el, z_el, acc = _group(
                n0, grp, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, m_i, l_el, z_el, acc,
                v_mul, v_over, K_KIND, V_KIND, LAZY, BN, M, MM, D, HALF, CB, VB, UNROLL, SWAP, JOINT, mma,
                kb_l, va_l, pb_l,
            )  # fmt: skip
    else:
        for n0 in range(start, full_u, GROUP):
            grp = _fetch(
                bt_row, n0, full_u, c_i32, h, kn, vn, k_off, v_off, m_off, HKV, PAGE, PAGE_NBYTES,
                K_KIND, V_KIND, K_CODE, V_CODE, K_META, V_META, HALF, KROW, VROW, BN, UNROLL,
            )  # fmt: skip
            m_i, l_el, z_el, acc = _group(
                n0, grp, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, m_i, l_el, z_el, acc,
                v_mul, v_over, K_KIND, V_KIND, LAZY, BN, M, MM, D, HALF, CB, VB, UNROLL, SWAP, JOINT, mma,
                kb_l, va_l, pb_l,
            )  # fmt: skip
    # the rest: full tiles short of an UNROLL group, a partial tile, tokens some rows must not
    # see (masked loads and scores)
    for n0 in range(full_u, end, BN):
        page = (gl.load(bt_row + n0 // PAGE).to(gl.int64) * HKV + h) * PAGE_NBYTES
        kw_lo, kw_hi, vw, k_meta, v_meta = _load(
            c_i32, page, n0 % PAGE, end - n0, kn, vn, k_off, v_off, m_off, K_KIND, V_KIND,
            K_CODE, V_CODE, K_META, V_META, HALF, KROW, VROW, True,
        )  # fmt: skip
        m_i, l_el, z_el, acc = _tile(
            n0, end, limit, qa_lo, qa_hi, qb_lo, qb_hi, qs1, qs2, q_sum, kw_lo, kw_hi, vw, k_meta,
            v_meta, m_i, l_el, z_el, acc, v_mul, v_over, K_KIND, V_KIND, True, LAZY, BN, M, MM, D,
            HALF, CB, VB, SWAP, mma, kb_l, va_l, pb_l,
        )  # fmt: skip

    # ---- epilogue: O^T [D, M] back to channel order
    l_i = gl.sum(l_el, axis=TOK)
    col_l: gl.constexpr = gl.SliceLayout(0, mma)
    acc = acc * gl.load(vs_ptr + h * vs_step) if V_KIND == FP8 else acc * v_over
    if V_KIND == INT4:
        acc = acc + gl.convert_layout(gl.sum(z_el, axis=TOK), col_l)[None, :]
    n = gl.arange(0, M, layout=col_l)
    n_qi = qb * BLOCK_Q + n // G
    n_head = h * G + n % G
    n_ok = (n < BLOCK_Q * G) & (n_qi < q_len)
    ch = _v_channel(gl.arange(0, D, layout=gl.SliceLayout(1, mma)), V_KIND, D, VB)
    qt = (q0 + n_qi).to(gl.int64)
    if DIRECT:
        inv = gl.convert_layout(gl.where(l_i > 0, 1.0 / l_i, 0.0), col_l)
        optr = out_ptr + (qt * stride_ot + n_head * stride_oh)[None, :] + ch[:, None]
        gl.store(optr, (acc * inv[None, :]).to(out_ptr.dtype.element_ty), mask=n_ok[None, :])
    else:
        row = (split * Tq + qt) * HQ + n_head  # partials [SPLITS, Tq, HQ, (D)]
        gl.store(o_part + (row * D)[None, :] + ch[:, None], acc, mask=n_ok[None, :])
        r_qi = qb * BLOCK_Q + r_idx // G
        r_ok = (r_idx < BLOCK_Q * G) & (r_qi < q_len)
        r_row = (split * Tq + q0 + r_qi).to(gl.int64) * HQ + h * G + r_idx % G
        gl.store(m_part + r_row, m_i, mask=r_ok)
        gl.store(l_part + r_row, l_i, mask=r_ok)
