"""Run a Gluon kernel's own Python source on the CPU: numpy stand-ins for the Gluon ops that
kvplan/kernels/gluon_decode.py uses, and an interpreter for the PTX in its inline assembly.

Gluon has no interpreter (TRITON_INTERPRET covers plain Triton only). This executes the kernel
function body program by program with the same logical semantics Gluon defines: tensors are
logical arrays (layouts only decide which thread holds what, so they are ignored), reshape /
permute / split / join are numpy's, mma_v2 is an exact matmul with an fp32 (int32) accumulator,
and `inline_asm_elementwise` packs consecutive elements into 32-bit registers as Triton does
(element i of a pack in bits 8i.. for bytes, 16i.. for halves) and runs the PTX on them.

What it checks: the kernel's arithmetic, indexing, masking, relabellings and PTX bit tricks.
What it cannot: the compiler (layouts, vectorisation, codegen) and the hardware; those are
covered by `bench/kernels_decode.py --sections check` on the GPU.
"""

from __future__ import annotations

import re
import types
from typing import Any

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# dtypes


class DType:
    def __init__(self, name: str, np_dtype: Any, bits: int, kind: str):
        self.name, self.np, self.bits, self.kind = name, np.dtype(np_dtype), bits, kind

    def __repr__(self) -> str:
        return self.name

    @property
    def element_ty(self) -> DType:
        return self


I1 = DType("i1", np.bool_, 1, "b")
I8 = DType("int8", np.int8, 8, "i")
U8 = DType("uint8", np.uint8, 8, "u")
I16 = DType("int16", np.int16, 16, "i")
U16 = DType("uint16", np.uint16, 16, "u")
I32 = DType("int32", np.int32, 32, "i")
U32 = DType("uint32", np.uint32, 32, "u")
I64 = DType("int64", np.int64, 64, "i")
F16 = DType("float16", np.float16, 16, "f")
BF16 = DType("bfloat16", np.float32, 16, "f")  # held as float32 values rounded to bf16
F32 = DType("float32", np.float32, 32, "f")
F64 = DType("float64", np.float64, 64, "f")


def _bf16_round(x: np.ndarray) -> np.ndarray:
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(np.float32)


def _convert(a: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    if dst is BF16:
        return _bf16_round(a.astype(np.float32))
    if dst.kind in "iu" and src.kind == "f":
        return np.trunc(a).astype(dst.np)
    return a.astype(dst.np)


def _result_type(a: DType, b: DType) -> DType:
    """Triton's promotion for two tensors: the wider float (f16 with bf16: f32), else the wider
    integer (unsigned on a tie)."""
    if a is b:
        return a
    fs = [t for t in (a, b) if t.kind == "f"]
    if len(fs) == 1:
        return fs[0]
    if fs:
        return F64 if F64 in fs else F32
    ints = [t for t in (a, b) if t.kind != "b"]
    if not ints:
        return I1
    return max(ints, key=lambda t: (t.bits, t.kind == "u"))


def _idiv(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "f":
        return np.trunc(x / y)
    q = np.abs(x) // np.abs(y)
    return np.where((x < 0) ^ (y < 0), -q, q).astype(x.dtype)


class T:
    """A tensor (or 0-d scalar) with a Gluon dtype."""

    __array_priority__ = 100

    def __init__(self, a: Any, dt: DType):
        self.a = np.asarray(a, dtype=dt.np)
        self.dt = dt

    @property
    def shape(self) -> tuple[int, ...]:
        return self.a.shape

    @property
    def dtype(self) -> DType:
        return self.dt

    @property
    def type(self) -> Any:
        return types.SimpleNamespace(layout=_Layout(), element_ty=self.dt)

    def __index__(self) -> int:
        return int(self.a)

    def __int__(self) -> int:
        return int(self.a)

    def __bool__(self) -> bool:
        return bool(self.a)

    def __getitem__(self, idx: Any) -> T:
        return T(self.a[idx], self.dt)

    def broadcast_to(self, *shape: int) -> T:
        return T(np.broadcast_to(self.a, shape).copy(), self.dt)

    def to(self, dt: DType, bitcast: bool = False) -> T:
        if bitcast:
            assert self.dt.bits == dt.bits and BF16 not in (self.dt, dt)
            return T(self.a.view(dt.np), dt)
        return T(_convert(self.a, self.dt, dt), dt)

    def _bin(self, other: Any, op: Any, cmp: bool = False, reverse: bool = False) -> T:
        if isinstance(other, T):
            rt = _result_type(self.dt, other.dt)
            y = _convert(other.a, other.dt, rt)
        elif isinstance(other, (bool, int)):  # weak: takes the tensor's type
            rt = self.dt if self.dt.kind != "b" else I32
            y = np.asarray(other).astype(rt.np)
        elif isinstance(other, float):
            rt = self.dt if self.dt.kind == "f" else F32
            y = np.asarray(other, np.float64)
        else:
            raise TypeError(type(other))
        x = _convert(self.a, self.dt, rt)
        if rt.kind == "f":  # half types compute in f32, as the GPU does, then round
            x, y = (
                x.astype(np.float64 if rt is F64 else np.float32),
                np.asarray(y).astype(np.float64 if rt is F64 else np.float32),
            )
        if reverse:
            x, y = y, x
        with np.errstate(all="ignore"):
            r = op(x, y)
        if cmp:
            return T(r, I1)
        return T(_convert(np.asarray(r), F32 if rt.kind == "f" else rt, rt), rt)

    def __add__(self, o: Any) -> T:
        return self._bin(o, np.add)

    def __radd__(self, o: Any) -> T:
        return self._bin(o, np.add, reverse=True)

    def __sub__(self, o: Any) -> T:
        return self._bin(o, np.subtract)

    def __rsub__(self, o: Any) -> T:
        return self._bin(o, np.subtract, reverse=True)

    def __mul__(self, o: Any) -> T:
        return self._bin(o, np.multiply)

    def __rmul__(self, o: Any) -> T:
        return self._bin(o, np.multiply, reverse=True)

    def __truediv__(self, o: Any) -> T:
        return (self if self.dt.kind == "f" else self.to(F32))._bin(o, np.true_divide)

    def __rtruediv__(self, o: Any) -> T:
        return (self if self.dt.kind == "f" else self.to(F32))._bin(o, np.true_divide, reverse=True)

    def __floordiv__(self, o: Any) -> T:
        return self._bin(o, _idiv)

    def __rfloordiv__(self, o: Any) -> T:
        return self._bin(o, _idiv, reverse=True)

    def __mod__(self, o: Any) -> T:
        return self._bin(o, np.fmod)

    def __rmod__(self, o: Any) -> T:
        return self._bin(o, np.fmod, reverse=True)

    def __and__(self, o: Any) -> T:
        return self._bin(o, np.bitwise_and)

    __rand__ = __and__

    def __or__(self, o: Any) -> T:
        return self._bin(o, np.bitwise_or)

    __ror__ = __or__

    def __xor__(self, o: Any) -> T:
        return self._bin(o, np.bitwise_xor)

    def __rshift__(self, o: Any) -> T:
        return self._bin(o, np.right_shift)

    def __lshift__(self, o: Any) -> T:
        return self._bin(o, np.left_shift)

    def __neg__(self) -> T:
        return T(-self.a, self.dt)

    def __lt__(self, o: Any) -> T:
        return self._bin(o, np.less, cmp=True)

    def __le__(self, o: Any) -> T:
        return self._bin(o, np.less_equal, cmp=True)

    def __gt__(self, o: Any) -> T:
        return self._bin(o, np.greater, cmp=True)

    def __ge__(self, o: Any) -> T:
        return self._bin(o, np.greater_equal, cmp=True)

    def __eq__(self, o: Any) -> T:  # type: ignore[override]
        return self._bin(o, np.equal, cmp=True)

    def __ne__(self, o: Any) -> T:  # type: ignore[override]
        return self._bin(o, np.not_equal, cmp=True)

    __hash__ = None  # type: ignore[assignment]


def _t(x: Any) -> T:
    if isinstance(x, T):
        return x
    if isinstance(x, bool):
        return T(x, I1)
    if isinstance(x, int):
        return T(x, I32)
    return T(x, F32)


class Ptr:
    """A pointer (tensor): a typed flat buffer and element offsets."""

    def __init__(self, buf: np.ndarray, dt: DType, off: Any = 0):
        self.buf, self.dt, self.off = buf, dt, np.asarray(off.a if isinstance(off, T) else off, np.int64)

    @property
    def dtype(self) -> DType:
        return self.dt

    def __add__(self, o: Any) -> Ptr:
        return Ptr(self.buf, self.dt, self.off + np.asarray(o.a if isinstance(o, T) else o, np.int64))

    __radd__ = __add__

    def __getitem__(self, idx: Any) -> Ptr:
        return Ptr(self.buf, self.dt, self.off[idx])

    @property
    def shape(self) -> tuple[int, ...]:
        return self.off.shape


def pointer(t: torch.Tensor) -> Ptr:
    assert t.is_contiguous(), "the emulation takes contiguous tensors"
    flat = t.reshape(-1)
    if t.dtype == torch.bfloat16:
        return Ptr(flat.view(torch.int16).numpy().view(np.uint16), BF16)
    dts = {
        torch.uint8: U8,
        torch.int8: I8,
        torch.int32: I32,
        torch.int64: I64,
        torch.float16: F16,
        torch.float32: F32,
    }
    return Ptr(flat.numpy(), dts[t.dtype])


# ---------------------------------------------------------------------------------------------
# the gl namespace


class _Layout:
    def __init__(self, *args: Any, **kwargs: Any):
        pass


def _unwrap(x: Any) -> Any:
    return x.a if isinstance(x, T) else x


class _Context:
    pid = (0, 0, 0)


_CTX = _Context()


def _program_id(axis: int) -> T:
    return T(_CTX.pid[axis], I32)


def _arange(start: int, end: int, layout: Any = None) -> T:
    return T(np.arange(start, end), I32)


def _full(shape: Any, value: Any, dtype: DType, layout: Any = None) -> T:
    return T(np.full(tuple(shape), value), dtype)


def _zeros(shape: Any, dtype: DType, layout: Any = None) -> T:
    return _full(shape, 0, dtype)


def _load(ptr: Ptr, mask: Any = None, other: Any = None, **_: Any) -> T:
    off = ptr.off
    if mask is None:
        v = ptr.buf[off]
    else:
        m = np.broadcast_to(_unwrap(mask), np.broadcast_shapes(np.shape(_unwrap(mask)), off.shape))
        off_b = np.broadcast_to(off, m.shape)
        v = np.zeros(m.shape, ptr.buf.dtype)
        v[m] = ptr.buf[off_b[m]]
        if other is not None and other != 0:
            v[~m] = other
    if ptr.dt is BF16:
        return T((v.astype(np.uint32) << 16).view(np.float32), BF16)
    return T(v, ptr.dt)


def _store(ptr: Ptr, value: Any, mask: Any = None, **_: Any) -> None:
    val = _t(value)
    vals = val.a
    if ptr.dt is BF16:
        vals = (_bf16_round(vals.astype(np.float32)).view(np.uint32) >> 16).astype(np.uint16)
    else:
        vals = _convert(vals, val.dt, ptr.dt)
    shape = np.broadcast_shapes(
        ptr.off.shape, np.shape(vals), np.shape(_unwrap(mask)) if mask is not None else ()
    )
    off = np.broadcast_to(ptr.off, shape)
    vals = np.broadcast_to(vals, shape)
    m = np.ones(shape, bool) if mask is None else np.broadcast_to(_unwrap(mask), shape)
    ptr.buf[off[m]] = vals[m]


def _where(c: Any, a: Any, b: Any) -> T:
    c = _t(c)
    ta, tb = _t(a), _t(b)
    if not isinstance(a, T) and isinstance(b, T):
        ta = T(_unwrap(a), tb.dt)
    if not isinstance(b, T) and isinstance(a, T):
        tb = T(_unwrap(b), ta.dt)
    rt = _result_type(ta.dt, tb.dt)
    return T(np.where(c.a, _convert(ta.a, ta.dt, rt), _convert(tb.a, tb.dt, rt)), rt)


def _minmax(fn: Any) -> Any:
    def f(a: Any, b: Any, **_: Any) -> T:
        ta, tb = _t(a), _t(b)
        if not isinstance(a, T):
            ta = T(_unwrap(a), tb.dt)
        if not isinstance(b, T):
            tb = T(_unwrap(b), ta.dt)
        rt = _result_type(ta.dt, tb.dt)
        return T(fn(_convert(ta.a, ta.dt, rt), _convert(tb.a, tb.dt, rt)), rt)

    return f


def _reduce(fn: Any) -> Any:
    def f(x: T, axis: int, **_: Any) -> T:
        if fn is np.sum and x.dt.kind == "f":
            return T(np.sum(x.a.astype(np.float64), axis=axis).astype(np.float32), x.dt)
        return T(fn(x.a, axis=axis), x.dt)

    return f


def _unary(fn: Any) -> Any:
    def f(x: Any) -> T:
        t = _t(x)
        with np.errstate(all="ignore"):
            return T(fn(t.a.astype(np.float32)).astype(t.dt.np), t.dt)

    return f


def _reshape(x: T, shape: Any, *rest: Any, **_: Any) -> T:
    shp = tuple(shape) if not rest else (shape, *rest)
    return T(x.a.reshape(shp), x.dt)


def _permute(x: T, dims: Any, *rest: Any) -> T:
    d = tuple(dims) if not rest else (dims, *rest)
    return T(np.transpose(x.a, d), x.dt)


def _split(x: T) -> tuple[T, T]:
    assert x.shape[-1] == 2
    return T(x.a[..., 0], x.dt), T(x.a[..., 1], x.dt)


def _expand_dims(x: T, axis: int) -> T:
    return T(np.expand_dims(x.a, axis), x.dt)


def _join(a: T, b: T) -> T:
    return T(np.stack([a.a, b.a], axis=-1), a.dt)


class Options:
    # float MMAs add each 16-deep slice to the fp32 accumulator rounding toward zero, as the
    # tensor cores do (see synthetic.truncating_mma); False: round to nearest
    truncate = False


def _mma_v2(a: T, b: T, acc: T, input_precision: Any = None) -> T:
    if a.dt.kind in "iu":
        r = a.a.astype(np.int64) @ b.a.astype(np.int64) + acc.a
        return T(r.astype(np.int32), I32)
    a64, b64 = a.a.astype(np.float64), b.a.astype(np.float64)
    if not Options.truncate:
        return T((a64 @ b64 + acc.a.astype(np.float64)).astype(np.float32), F32)
    r = acc.a.astype(np.float32)
    for k0 in range(0, a64.shape[-1], 16):
        exact = a64[..., k0 : k0 + 16] @ b64[k0 : k0 + 16] + r.astype(np.float64)
        near = exact.astype(np.float32)
        r = np.where(np.abs(near.astype(np.float64)) > np.abs(exact), np.nextafter(near, np.float32(0)), near)
    return T(r.astype(np.float32), F32)


# ---------------------------------------------------------------------------------------------
# PTX for inline asm: the few 32-bit instructions the kernels use, vectorised over calls


def _f16x2(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = (r & 0xFFFF).astype(np.uint16).view(np.float16)
    hi = (r >> 16).astype(np.uint16).view(np.float16)
    return lo, hi


def _pack_f16x2(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo.astype(np.float16).view(np.uint16).astype(np.uint32) | (
        hi.astype(np.float16).view(np.uint16).astype(np.uint32) << 16
    )


def _bf16x2(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(r, np.uint32)
    return ((r & 0xFFFF) << 16).view(np.float32), (r & 0xFFFF0000).view(np.float32)


def _pack_bf16x2(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """float64 results rounded once to bf16 (nearest even), packed."""
    lo32, hi32 = (_bf16_round(np.asarray(x, np.float64).astype(np.float32)).view(np.uint32) for x in (lo, hi))
    return (lo32 >> 16) | (hi32 & 0xFFFF0000)


def _e4m3(b: np.ndarray) -> np.ndarray:
    return torch.from_numpy(b.astype(np.uint8)).view(torch.float8_e4m3fn).float().numpy().astype(np.float16)


def run_ptx(asm: str, regs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute `asm` (one brace block) on uint32 register arrays; returns every register."""
    body = asm.strip().strip("{}")
    env = dict(regs)

    def val(op: str) -> np.ndarray:
        op = op.strip()
        if op.startswith("0x") or op.lstrip("-").isdigit():
            return np.uint32(int(op, 0) & 0xFFFFFFFF)
        return env[op]

    for stmt in [x.strip() for x in body.split(";") if x.strip()]:
        if stmt.startswith(".reg"):
            continue
        m = re.match(r"([\w.]+)\s+(.*)", stmt)
        assert m, stmt
        opc, rest = m.group(1), m.group(2)
        if opc == "mov.b32" and rest.startswith("{"):
            mv = re.match(r"\{\s*(\w+)\s*,\s*(\w+)\s*\}\s*,\s*(\$?\w+)", rest)
            assert mv, stmt
            v = np.asarray(val(mv.group(3)), np.uint32)
            env[mv.group(1)] = v & 0xFFFF
            env[mv.group(2)] = v >> 16
            continue
        ops = [o.strip() for o in rest.split(",")]
        d = ops[0]
        if opc == "mov.b32":
            env[d] = np.asarray(val(ops[1]), np.uint32)
        elif opc == "and.b32":
            env[d] = val(ops[1]) & val(ops[2])
        elif opc == "shr.b32":  # .b32: logical
            env[d] = val(ops[1]) >> val(ops[2])
        elif opc == "prmt.b32":
            a, b, sel = val(ops[1]), val(ops[2]), int(ops[3], 0)
            a, b = np.broadcast_arrays(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
            src = a | (b << 32)
            out = np.zeros(a.shape, np.uint64)
            for k in range(4):
                s = (sel >> (4 * k)) & 7  # no sign replication used (bit 3 clear)
                out |= ((src >> (8 * s)) & 0xFF) << (8 * k)
            env[d] = out.astype(np.uint32)
        elif opc == "lop3.b32":
            a, b, c, lut = val(ops[1]), val(ops[2]), val(ops[3]), int(ops[4], 0)
            a, b, c = (np.asarray(x, np.uint32) for x in (a, b, c))
            out = np.zeros(np.broadcast_shapes(a.shape, b.shape, c.shape), np.uint32)
            for i in range(8):  # LUT index = (a << 2) | (b << 1) | c, per bit
                if (lut >> i) & 1:
                    ta = a if i & 4 else ~a
                    tb = b if i & 2 else ~b
                    tc = c if i & 1 else ~c
                    out |= ta & tb & tc
            env[d] = out
        elif opc == "sub.f16x2":
            (al, ah), (bl, bh) = _f16x2(val(ops[1])), _f16x2(np.asarray(val(ops[2]), np.uint32))
            env[d] = _pack_f16x2(al - bl, ah - bh)
        elif opc == "fma.rn.f16x2":
            (al, ah), (bl, bh), (cl, ch) = (_f16x2(np.asarray(val(o), np.uint32)) for o in ops[1:4])
            f = lambda x, y, z: (x.astype(np.float64) * y + z).astype(np.float16)  # noqa: E731 (one rounding)
            env[d] = _pack_f16x2(f(al, bl, cl), f(ah, bh, ch))
        elif opc in ("sub.bf16x2", "mul.rn.bf16x2", "fma.rn.bf16x2"):  # the Triton kernel's (sm_90)
            args = [tuple(x.astype(np.float64) for x in _bf16x2(val(o))) for o in ops[1:]]
            f = {"sub.bf16x2": lambda x, y: x - y, "mul.rn.bf16x2": lambda x, y: x * y}.get(
                opc, lambda x, y, z: x * y + z
            )
            env[d] = _pack_bf16x2(f(*(a[0] for a in args)), f(*(a[1] for a in args)))
        elif opc == "cvt.rn.f16x2.e4m3x2":
            h = val(ops[1])
            env[d] = _pack_f16x2(_e4m3(h & 0xFF), _e4m3((h >> 8) & 0xFF))
        else:
            raise NotImplementedError(opc)
    return env


def _inline_asm(asm: str, constraints: str, args: list[Any], dtype: Any, is_pure: bool, pack: int) -> Any:
    if asm.startswith("griddepcontrol.launch_dependents;"):  # no dependent grids here
        assert not is_pure
        return T(np.zeros(np.shape(_unwrap(args[0])), np.int32), I32)
    outs = dtype if isinstance(dtype, tuple) else (dtype,)
    cons = [c.strip() for c in constraints.split(",")]
    n_out = sum(c.startswith("=") for c in cons)
    shape = args[0].shape
    regs: dict[str, np.ndarray] = {}
    slot = n_out
    for x in args:  # inputs: pack consecutive elements into 32-bit registers
        flat = x.a.reshape(-1, pack)
        bits = x.dt.bits
        per_reg = max(1, 32 // bits)
        raw = flat.view(np.dtype(f"uint{bits}")) if bits < 32 else flat.view(np.uint32)
        for r in range(max(1, pack * bits // 32)):
            w = np.zeros(flat.shape[0], np.uint32)
            for e in range(per_reg):
                w |= raw[:, r * per_reg + e].astype(np.uint32) << (bits * e)
            regs[f"${slot}"] = w
            slot += 1
    env = run_ptx(asm, regs)
    res, slot = [], 0
    for dt in outs:  # outputs: unpack the same way
        nregs = max(1, pack * dt.bits // 32)
        per_reg = max(1, 32 // dt.bits)
        vals = np.zeros((env["$0"].shape[0], pack), np.dtype(f"uint{dt.bits}"))
        for r in range(nregs):
            w = env[f"${slot}"]
            for e in range(per_reg):
                vals[:, r * per_reg + e] = (w >> (dt.bits * e)) & ((1 << dt.bits) - 1)
            slot += 1
        res.append(T(vals.view(dt.np).reshape(shape), dt))
    assert slot == n_out
    return tuple(res) if isinstance(dtype, tuple) else res[0]


gl = types.SimpleNamespace(
    constexpr=lambda v: v,
    int1=I1, int8=I8, uint8=U8, int16=I16, uint16=U16, int32=I32, uint32=U32, int64=I64,
    float16=F16, bfloat16=BF16, float32=F32, float64=F64,
    NVMMADistributedLayout=_Layout, DotOperandLayout=_Layout, BlockedLayout=_Layout,
    SliceLayout=_Layout, DistributedLinearLayout=_Layout,
    program_id=_program_id, arange=_arange, full=_full, zeros=_zeros, load=_load, store=_store,
    where=_where, maximum=_minmax(np.maximum), minimum=_minmax(np.minimum),
    max=_reduce(np.max), sum=_reduce(np.sum), exp2=_unary(np.exp2), log2=_unary(np.log2),
    floor=_unary(np.floor), sqrt=_unary(np.sqrt), abs=lambda x: T(np.abs(x.a), x.dt),
    reshape=_reshape, permute=_permute, split=_split, join=_join, expand_dims=_expand_dims,
    convert_layout=lambda x, layout, assert_trivial=False: x,
    inline_asm_elementwise=_inline_asm, static_range=range,
    static_print=lambda *a, **k: None, static_assert=lambda *a, **k: None,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# launching


def _emulated(module: Any) -> dict[str, Any]:
    """The module's namespace with the Gluon objects swapped for the emulation's."""
    from triton.experimental.gluon._runtime import GluonJITFunction
    from triton.language.core import constexpr

    ns: dict[str, Any] = {}
    ns.update(vars(module))
    ns["gl"] = gl
    ns["mma_v2"] = _mma_v2
    for k, v in list(ns.items()):
        if isinstance(v, constexpr):
            ns[k] = v.value
    for k, v in list(ns.items()):
        if isinstance(v, GluonJITFunction):
            ns[k] = types.FunctionType(v.fn.__code__, ns, k, v.fn.__defaults__, v.fn.__closure__)
    return ns


class EmulatedKernel:
    """Stands in for a @gluon.jit kernel: kernel[grid](*args, **constexprs) runs every program."""

    def __init__(self, module: Any, name: str, n_regs: int = 168):
        self.fn = _emulated(module)[name]
        self.launches = 0
        self.grids: list[tuple[int, ...]] = []
        self.constexprs: list[dict[str, Any]] = []  # each launch's keyword arguments
        self.n_regs = n_regs  # what warmup reports: the H200's compile of the 4-bit full-grid launch

    def warmup(self, *args: Any, grid: tuple[int, ...], num_warps: int = 1, **kwargs: Any) -> Any:
        """The compiled kernel's stand-in api asks for occupancy (registers, warps, shared memory)."""
        meta = types.SimpleNamespace(num_warps=num_warps, shared=1024)
        return types.SimpleNamespace(n_regs=self.n_regs, metadata=meta, _init_handles=lambda: None)

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def launch(*args: Any, num_warps: int = 1, **kwargs: Any) -> None:
            self.launches += 1
            self.grids.append(tuple(grid))
            self.constexprs.append(dict(kwargs))
            kwargs.pop("maxnreg", None)  # a compile option, not the kernel's
            wrapped = [pointer(a) if isinstance(a, torch.Tensor) else a for a in args]
            wrapped = [
                T(a, F32)
                if isinstance(a, float)
                else T(a, I32)
                if isinstance(a, int) and not isinstance(a, bool)
                else a
                for a in wrapped
            ]
            g = tuple(grid) + (1,) * (3 - len(grid))
            for z in range(g[2]):
                for y in range(g[1]):
                    for x in range(g[0]):
                        _CTX.pid = (x, y, z)
                        self.fn(*wrapped, **kwargs)

        return launch
