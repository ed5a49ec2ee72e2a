"""The Gluon decode kernel (kvplan/kernels/gluon_decode.py) on the CPU, through `api`.

Gluon has no interpreter: `gluon_emu` runs the kernel's own Python source with numpy stand-ins
for the Gluon ops and an interpreter for its inline PTX (see there for what that can and cannot
check). The api's launch code, split-K partials and the (Triton, interpreted) combine kernel
run as they do on the GPU; outputs are poisoned with NaN and compared with an fp64 reference on
the dequantized cache the write kernel produced (relative error <= 5e-3). bf16 queries run here
too (the Triton interpreter cannot run bf16 dots; this emulation can).
"""

from __future__ import annotations

import gluon_emu
import pytest
import torch
import triton
from synthetic import keys_values, paged, rel

from kvplan.formats import get_format
from kvplan.kernels import api, gluon_decode
from kvplan.kernels import reference as R

GLUON_FORMATS = ["fp8_e4m3", "int8", "int8_hadamard", "k8v4", "int4", "int4_hadamard"]


@pytest.fixture
def emulated(monkeypatch) -> gluon_emu.EmulatedKernel:
    kernel = gluon_emu.EmulatedKernel(gluon_decode, "attention_kernel")
    monkeypatch.setattr(gluon_decode, "attention_kernel", kernel)
    monkeypatch.setattr(api, "GLUON_VERSION", triton.__version__)  # CI's Triton is not 3.6
    monkeypatch.setitem(api.TUNING_GLUON, "gluon", True)
    monkeypatch.setattr(api, "_RESIDENT", {})  # occupancy asked of this kernel, not an earlier one
    return kernel


def _write(k, v, cache, slot, fmt, page, ks, vs, stage=None):
    api.write_kv(k, v, cache, slot, fmt, page, ks, vs, backend="triton")


def _run(
    kernel,
    name,
    d,
    page,
    q_lens,
    lens,
    dtype=torch.bfloat16,
    splits=None,
    g=3,
    outliers=True,
    kq=None,
    ks=None,
) -> float:
    """kq: (keys, queries) to use instead of random ones (values stay random); ks: fp8's static
    scale (one a KV head by default)."""
    fmt, hkv = get_format(name), 2
    k, v = keys_values(sum(lens), hkv, d, outliers=outliers, dtype=torch.float16)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(int(qsl[-1]), hkv * g, d).to(dtype)
    if kq is not None:
        k, q = kq[0].to(k.dtype), kq[1].to(dtype)
    if ks is None and "fp8" in name:
        ks = torch.tensor([0.05, 0.08])
    cache, table, _ = paged(fmt, lens, hkv, d, page, k, v, ks, ks, write=_write)
    sl = torch.tensor(lens, dtype=torch.int32)
    want = R.paged_attention(
        q.double(), cache, table, sl, qsl, fmt, page, d**-0.5, ks, ks, compute_dtype=torch.float64
    )
    out = torch.full_like(q, float("nan"))
    launches = kernel.launches
    api._attention_triton(
        q,
        cache,
        table,
        sl,
        qsl,
        fmt,
        page,
        d**-0.5,
        ks,
        ks,
        max(q_lens),
        max(lens),
        splits,
        out,
        cuda=True,
        sms=4,
    )
    assert kernel.launches == launches + 1, "the Gluon kernel did not run"
    assert torch.isfinite(out).all()
    return rel(out, want)


@pytest.mark.parametrize("name", GLUON_FORMATS)
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("swap", [False, True])
def test_every_format_matches_the_fp64_reference(
    emulated, monkeypatch, name: str, splits: int, swap: bool
) -> None:
    # a partial last page (poisoned rows after it), a one-token sequence, bf16 queries; both
    # orientations of the score MMA (api.TUNING_GLUON["swap"])
    monkeypatch.setitem(api.TUNING_GLUON, "swap", swap)
    assert _run(emulated, name, 64, 16, [1, 1, 1], [37, 1, 70], splits=splits) <= 5e-3


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize(
    ("name", "d", "page", "q_lens", "lens", "g"),
    [
        ("int4", 128, 32, [8, 8], [96, 40], 6),  # 2-8 query tokens: 48 rows of one KV group
        ("k8v4", 64, 128, [8, 2, 5], [300, 129, 8], 3),
        ("int8", 256, 16, [1, 1], [150, 33], 1),  # one query head per KV head (MHA)
        ("fp8_e4m3", 256, 64, [4], [130], 8),
        ("int4_hadamard", 128, 64, [4, 1, 0], [200, 20, 0], 4),  # an empty sequence
    ],
)
def test_head_dims_pages_and_query_tokens(
    emulated, monkeypatch, name, d, page, q_lens, lens, g, swap
) -> None:
    monkeypatch.setitem(api.TUNING_GLUON, "swap", swap)
    assert _run(emulated, name, d, page, q_lens, lens, dtype=torch.float16, splits=2, g=g) <= 5e-3


@pytest.mark.parametrize("name", ["int4", "k8v4"])
def test_a_long_split_with_truncating_tensor_cores(emulated, monkeypatch, name: str) -> None:
    """As test_triton's: 1024 tokens in one split, attention spread over all of them, the MMA's
    truncating fp32 accumulation emulated; centred int4 values keep the error small."""
    monkeypatch.setattr(gluon_emu.Options, "truncate", True)
    assert _run(emulated, name, 64, 128, [1], [1024], dtype=torch.float16, splits=1, outliers=False) <= 5e-3


def test_which_kernel_runs(monkeypatch) -> None:
    fp8, i4, bf16 = get_format("fp8_e4m3"), get_format("int4_hadamard"), get_format("bf16")
    monkeypatch.setitem(api.TUNING_GLUON, "gluon", True)
    on_36 = triton.__version__.startswith(api.GLUON_VERSION)
    assert api.gluon_applies(i4, torch.bfloat16, 4, 1) == on_36  # Triton 3.6 only
    assert api.gluon_applies(fp8, torch.float16, 8, 8) == on_36
    monkeypatch.setattr(api, "GLUON_VERSION", triton.__version__)
    assert api.gluon_applies(i4, torch.bfloat16, 4, 1)
    assert not api.gluon_applies(i4, torch.float32, 4, 1)  # fp32 queries: the Triton kernel
    assert not api.gluon_applies(bf16, torch.bfloat16, 4, 1)  # bf16 pages: the Triton kernel
    assert not api.gluon_applies(i4, torch.bfloat16, 16, 8)  # more than 64 rows in a group
    assert not api.gluon_applies(i4, torch.bfloat16, 2, 16)  # prefill chunks: the Triton kernel
    monkeypatch.setitem(api.TUNING_GLUON, "gluon", False)
    assert not api.gluon_applies(i4, torch.bfloat16, 4, 1)


@pytest.mark.parametrize(
    ("name", "unroll", "lazy", "prefetch", "swap", "joint"),
    [
        ("int4", 1, True, False, False, False),
        ("k8v4", 4, True, False, False, False),
        ("fp8_e4m3", 2, False, False, False, False),
        ("int4_hadamard", 1, True, True, False, False),
        ("int8", 2, True, True, False, False),
        ("k8v4", 4, False, True, False, False),
        ("int4", 2, True, True, True, False),
        ("fp8_e4m3", 1, False, True, True, False),
        # one row max a group of tiles: lazy and eager rescaling, both products
        ("k8v4", 4, True, False, False, True),
        ("fp8_e4m3", 2, False, True, False, True),
        ("int8", 2, True, True, True, True),
        ("int4_hadamard", 4, False, True, True, True),
    ],
)
def test_launch_variants_the_benchmark_sweeps(
    emulated, monkeypatch, name: str, unroll: int, lazy: bool, prefetch: bool, swap: bool, joint: bool
) -> None:
    # 300 tokens in 2 splits of 160 and 140: full groups, a prefetch past the last one (block 0,
    # unused), and a masked rest
    monkeypatch.setitem(api.TUNING_GLUON, "unroll", unroll)
    monkeypatch.setitem(api.TUNING_GLUON, "lazy", lazy)
    monkeypatch.setitem(api.TUNING_GLUON, "prefetch", prefetch)
    monkeypatch.setitem(api.TUNING_GLUON, "swap", swap)
    monkeypatch.setitem(api.TUNING_GLUON, "joint", joint)
    assert _run(emulated, name, 128, 16, [1, 2], [300, 37], splits=2) <= 5e-3


@pytest.mark.parametrize(
    ("name", "unroll", "swap", "early", "page"),
    [
        ("int4", 2, False, True, 16),
        ("fp8_e4m3", 1, True, False, 16),
        ("k8v4", 4, False, True, 64),
        ("int4_hadamard", 2, True, True, 32),
        ("int8", 1, False, True, 128),
    ],
)
def test_pages_read_a_group_ahead(emulated, monkeypatch, name, unroll, swap, early, page) -> None:
    """page_ahead: each group's pages come from the block table an iteration before its loads (the
    first group's with it, the second's before the loop, the rest carried), up to two groups past
    the last full one (block 0, unused); tiles of 16 tokens in pages of 16-128."""
    settings = {"page_ahead": True, "prefetch": True, "unroll": unroll, "swap": swap, "early": early}
    for key, value in settings.items():
        monkeypatch.setitem(api.TUNING_GLUON, key, value)
    assert _run(emulated, name, 128, page, [1, 2], [300, 37], splits=2) <= 5e-3
    assert emulated.constexprs[-1]["PAGE_AHEAD"]


@pytest.mark.parametrize(
    ("name", "early", "swap", "prefetch"),
    [
        ("int4_hadamard", False, True, True),
        ("int8_hadamard", True, False, True),
        ("fp8_e4m3", True, True, True),
        ("int4", True, False, False),  # no prefetch: only the first scale word early
        ("int8", False, True, True),
    ],
)
def test_the_rotation_and_the_early_first_loads_at_every_head_dim(
    emulated, monkeypatch, name: str, early: bool, swap: bool, prefetch: bool
) -> None:
    """The query rotation (its matrix read in rows, moved into the MMA's layout) at every
    head_dim it takes, and the first group's loads issued before the query prologue or after."""
    for key, value in (("early", early), ("swap", swap), ("prefetch", prefetch)):
        monkeypatch.setitem(api.TUNING_GLUON, key, value)
    for d in (64, 128, 256):
        assert _run(emulated, name, d, 16, [1, 2], [300, 37], splits=2) <= 5e-3


@pytest.mark.parametrize(("maxnreg", "early"), [(0, True), (168, False)])
def test_a_register_cap_launches_without_the_early_loads(emulated, monkeypatch, maxnreg, early) -> None:
    """ "early" holds only where registers are not capped (under a cap its loads spill)."""
    monkeypatch.setitem(api.TUNING_GLUON, "early", True)
    monkeypatch.setitem(api.TUNING_GLUON, "maxnreg", maxnreg)
    assert _run(emulated, "int4", 64, 16, [1], [100], splits=2) <= 5e-3
    assert emulated.constexprs[-1]["EARLY"] is early


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("name", ["fp8_e4m3", "int4"])
def test_a_score_jumping_by_2_to_the_40_inside_a_group_of_tiles(emulated, monkeypatch, name, joint) -> None:
    """One key (token 20: the second tile of the first group of two) scores ~2^40 over the rest:
    each tile's P must be taken against a max that includes it (a group's max must cover all its
    tiles), or its p saturates fp16 while the row sum does not."""
    monkeypatch.setitem(api.TUNING_GLUON, "unroll", 2)
    monkeypatch.setitem(api.TUNING_GLUON, "joint", joint)
    hkv, g, d, t = 2, 3, 64, 64
    qvec = torch.randn(hkv, 1, d)
    q = qvec.expand(hkv, g, d).reshape(1, hkv * g, d)
    k = 0.5 * torch.randn(t, hkv, d)
    k[20] = 28.0 * qvec[:, 0] / qvec[:, 0].norm(dim=-1, keepdim=True)
    assert _run(emulated, name, d, 16, [1], [t], splits=1, g=g, kq=(k, q)) <= 5e-3


@pytest.mark.parametrize(("n_regs", "splits"), [(168, 6), (255, 4)])
def test_splits_fill_whole_waves_of_what_an_sm_holds(emulated, monkeypatch, n_regs: int, splits: int) -> None:
    """168 registers: 12 one-warp programs an SM, 255: 8; one wave of one SM over 2 (sequence,
    KV head) programs is 6 or 4 splits of the 1,024 tokens, asked of the kernel once."""
    emulated.n_regs = n_regs
    monkeypatch.setattr(api, "TUNING_GLUON_REGIME", {"short": {"waves": 1}})
    monkeypatch.setattr(api, "TUNING_GLUON_BY_FORMAT", {})
    fmt, hkv, d, page = get_format("int4"), 2, 64, 16
    k, v = keys_values(1024, hkv, d, outliers=True, dtype=torch.float16)
    cache, table, _ = paged(fmt, [1024], hkv, d, page, k, v, None, None, write=_write)
    q = torch.randn(1, hkv * 3, d).to(torch.bfloat16)
    sl, qsl = torch.tensor([1024], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32)
    want = R.paged_attention(
        q.double(), cache, table, sl, qsl, fmt, page, d**-0.5, compute_dtype=torch.float64
    )
    for _ in range(2):
        out = api._attention_triton(
            q, cache, table, sl, qsl, fmt, page, d**-0.5, None, None, 1, 1024, None, None, cuda=True, sms=1
        )
        assert rel(out, want) <= 5e-3
    assert [g[2] for g in emulated.grids] == [splits, splits]
    assert len(api._RESIDENT) == 1  # compiled and asked once


def test_programs_an_sm_holds_follow_registers_warps_and_shared_memory() -> None:
    assert api.resident_programs(168, 1, 1024) == 12
    assert api.resident_programs(128, 1, 1024) == 16
    assert api.resident_programs(226, 1, 1024) == 8
    assert api.resident_programs(255, 1, 0) == 8
    assert api.resident_programs(32, 1, 0) == 32  # at most 32 programs an SM
    assert api.resident_programs(64, 4, 0) == 8  # 64K registers / (2,048 a warp x 4 warps)
    assert api.resident_programs(32, 1, 100 * 1024) == 2  # 228 KB of shared memory
    assert api.resident_programs(64, 4, 0, max_warps=48) == 8  # registers bind first
    assert api.resident_programs(32, 4, 0, max_warps=48) == 12  # an sm_86 SM: 48 warps
    assert api.resident_programs(32, 1, 40 * 1024, sm_shared=100 * 1024) == 2


@pytest.mark.parametrize("interpreted", [False, True])
def test_the_merge_as_a_programmatic_dependent_launch(emulated, monkeypatch, interpreted) -> None:
    """TUNING_COMBINE["pdl"]: the split-K merge launched with launch_pdl and waiting on the GPU
    (PDL), the attention kernel letting it be scheduled; never under the interpreter."""
    from kvplan.kernels import triton_kernels as tk

    merges: list[dict] = []

    class Merge:
        def __getitem__(self, grid):
            return lambda *args, **kw: merges.append(kw)

    monkeypatch.setattr(tk, "combine_kernel", Merge())
    monkeypatch.setitem(api.TUNING_COMBINE, "pdl", 1)
    if interpreted:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fmt, page, d = get_format("int4"), 16, 64
    k, v = keys_values(100, 2, d, outliers=False, dtype=torch.float16)
    cache, table, _ = paged(fmt, [100], 2, d, page, k, v)
    q = torch.randn(1, 6, d).to(torch.bfloat16)
    qsl, sl = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([100], dtype=torch.int32)
    api._attention_triton(
        q, cache, table, sl, qsl, fmt, page, d**-0.5, None, None, 1, 100, 3, None, cuda=True, sms=4
    )
    assert emulated.constexprs[-1]["PDL"] is not interpreted
    assert merges[-1]["PDL"] is not interpreted
    assert merges[-1].get("launch_pdl", False) is not interpreted


@pytest.mark.parametrize(
    ("max_seq_len", "sms", "want"),
    [(100, 16, False), (20000, 16, True), (20000, 6, False), (20000, 2, False)],
)
def test_the_merge_is_a_dependent_launch_on_small_grids_only(
    emulated, monkeypatch, max_seq_len, sms, want
) -> None:
    """By default (TUNING_COMBINE_REGIME) PDL in the "small" regime only: a long context on a grid
    under a quarter of the SMs; not short contexts, partial (6 SMs) or full (2) grids."""
    from kvplan.kernels import triton_kernels as tk

    merges: list[dict] = []

    class Merge:
        def __getitem__(self, grid):
            return lambda *args, **kw: merges.append(kw)

    monkeypatch.setattr(tk, "combine_kernel", Merge())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fmt, page, d = get_format("int4"), 16, 64
    k, v = keys_values(100, 2, d, outliers=False, dtype=torch.float16)
    cache, table, _ = paged(fmt, [100], 2, d, page, k, v)
    q = torch.randn(1, 6, d).to(torch.bfloat16)
    qsl, sl = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([100], dtype=torch.int32)
    api._attention_triton(
        q, cache, table, sl, qsl, fmt, page, d**-0.5, None, None, 1, max_seq_len, 3, None, cuda=True, sms=sms
    )
    assert emulated.constexprs[-1]["PDL"] is want
    assert merges[-1]["PDL"] is want
    assert merges[-1].get("launch_pdl", False) is want


@pytest.mark.parametrize("swap", [False, True])
def test_one_static_scale_for_every_kv_head(emulated, monkeypatch, swap) -> None:
    """fp8 with vLLM's one-element per-layer scale, read with a step of 0 over KV heads."""
    monkeypatch.setitem(api.TUNING_GLUON, "swap", swap)
    assert (
        _run(
            emulated, "fp8_e4m3", 64, 16, [1, 1], [37, 70], splits=2, outliers=False, ks=torch.tensor([0.07])
        )
        <= 5e-3
    )
    assert emulated.constexprs  # (the Gluon kernel ran)
