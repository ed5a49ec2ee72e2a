"""The Triton kernels under TRITON_INTERPRET=1 (conftest) against the torch reference.

Attention is compared with an fp64 reference computed on the dequantized cache the kernel itself
wrote (so quantization error is not counted; relative error <= 5e-3); outputs are poisoned with NaN
so an unwritten element fails; inputs are fresh random draws each run.
"""

from __future__ import annotations

import pytest
import torch
from synthetic import keys_values, paged, rel, truncating_mma

from kvplan.formats import get_format
from kvplan.kernels import api
from kvplan.kernels import reference as R

TRITON_FORMATS = ["bf16", "fp16", "fp8_e4m3", "int8", "int8_hadamard", "k8v4", "int4", "int4_hadamard"]


def triton_write(k, v, cache, slot, fmt, page, ks, vs, stage=None):
    api.write_kv(k, v, cache, slot, fmt, page, ks, vs, backend="triton")


def _run(
    name: str, d: int, page: int, q_lens: list[int], lens: list[int], dtype, splits, q_mag=1.0, outliers=True
) -> float:
    fmt = get_format(name)
    hkv, g = 2, 3
    k, v = keys_values(sum(lens), hkv, d, outliers=outliers, dtype=torch.float16)
    ks = torch.tensor([0.05, 0.08]) if "fp8" in name else None
    cache, table, _ = paged(fmt, lens, hkv, d, page, k, v, ks, ks, write=triton_write)
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    q = (torch.randn(int(qsl[-1]), hkv * g, d) * q_mag).to(dtype)
    sl = torch.tensor(lens, dtype=torch.int32)
    sc = d**-0.5 / q_mag
    want = R.paged_attention(
        q.double(), cache, table, sl, qsl, fmt, page, sc, ks, ks, compute_dtype=torch.float64
    )
    out = torch.full_like(q, float("nan"))
    api.paged_attention(
        q, cache, table, sl, qsl, fmt, page, sc, ks, ks, backend="triton", num_splits=splits, out=out
    )
    assert torch.isfinite(out).all()
    return rel(out, want)


@pytest.mark.parametrize("name", TRITON_FORMATS)
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_matches_fp64_reference_on_the_dequantized_cache(name: str, splits: int) -> None:
    assert _run(name, 64, 16, [1, 1, 1], [37, 1, 70], torch.float16, splits) <= 5e-3


@pytest.mark.parametrize("d", [64, 128])
def test_more_splits_than_the_merge_takes_a_step(d: int, monkeypatch) -> None:
    """~50 splits of 96 tokens: the split-K merge loops over BLOCK_S (32) splits a step and
    BLOCK_D (32) of the columns a program."""
    monkeypatch.setitem(api.TUNING_COMBINE, "block_d", 32)
    monkeypatch.setitem(api.TUNING_COMBINE, "block_s", 32)
    assert _run("int8", d, 16, [1, 1], [5000, 90], torch.float16, 64) <= 5e-3


@pytest.mark.parametrize("name", ["int4", "int4_hadamard", "k8v4"])
def test_a_long_split_stays_accurate_under_truncating_tensor_core_accumulation(
    name: str, monkeypatch
) -> None:
    """One split of 1024 tokens, as the grid-filling launch gives every split of a 32 x 32K batch
    thousands of tokens, with the tensor cores' truncating fp32 accumulation emulated. The 4-bit
    values once entered the P.V dot as 1024 + code (128 + code in bf16): with attention spread over
    the whole split (keys without outliers) the accumulator grew ~50 sqrt(tokens) times past the
    output and lost 1e-1 relative at 32 x 32K on the GPU; centred codes fixed it."""
    truncating_mma(monkeypatch)
    assert _run(name, 64, 128, [1], [1024], torch.float16, 1, outliers=False) <= 5e-3


@pytest.mark.parametrize(("d", "page"), [(128, 16), (256, 16), (64, 32), (64, 64), (64, 128)])
@pytest.mark.parametrize("name", ["int8", "int4_hadamard", "fp8_e4m3"])
def test_every_head_dim_and_page_size(name: str, d: int, page: int) -> None:
    assert _run(name, d, page, [1, 2], [150, 9], torch.float16, None) <= 5e-3


@pytest.mark.parametrize("name", ["fp16", "int8", "k8v4", "int4"])
def test_multi_token_decode_two_to_eight_queries(name: str) -> None:
    assert _run(name, 64, 16, [2, 8, 5], [20, 45, 5], torch.float16, 2) <= 5e-3


@pytest.mark.parametrize("name", ["fp16", "int4_hadamard", "int8"])
def test_fp32_queries(name: str) -> None:
    assert _run(name, 64, 16, [1, 3], [33, 17], torch.float32, 2) <= 5e-3


@pytest.mark.parametrize("q_mag", [1.0, 1e5])
def test_fp8_pages_with_bf16_queries_run_fp16_dots(q_mag: float) -> None:
    """fp8 pages meet bf16 queries in fp16 dots; rows of q beyond fp16's range are scaled in.
    (The only bf16-query path CI runs: the interpreter's dots on bf16 operands come out wrong,
    relative error ~1e9 even for the bf16 format, so bf16 dots are checked on the GPU by
    bench/kernels_decode.py --sections check.)"""
    assert _run("fp8_e4m3", 64, 16, [1, 2], [33, 17], torch.bfloat16, 2, q_mag=q_mag) <= 5e-3


@pytest.mark.parametrize("name", TRITON_FORMATS)
def test_write_kernel_stores_what_the_reference_stores(name: str) -> None:
    fmt, d, page, hkv = get_format(name), 64, 16, 2
    k, v = keys_values(40, hkv, d, outliers=True, dtype=torch.float16)
    ks = torch.tensor([0.05, 0.08]) if "fp8" in name else None
    slot = torch.randperm(6 * page)[:40]
    slot[[3, 17]] = -1  # skipped tokens
    ref = R.new_cache(fmt, 6, hkv, d, page)
    got = R.new_cache(fmt, 6, hkv, d, page)
    R.write_kv(k, v, ref, slot, fmt, page, ks, ks)
    api.write_kv(k, v, got, slot, fmt, page, ks, ks, backend="triton")
    kr, vr = R.dequantize_pages(ref, fmt, d, page, ks, ks)
    kg, vg = R.dequantize_pages(got, fmt, d, page, ks, ks)
    s = slot[slot >= 0]
    b, o = s // page, s % page
    # the interpreter rounds bf16/fp8 stores differently from torch: allow one step of those
    tol = {"bf16": 8e-3, "fp8_e4m3": 0.13, "int4": 0.03, "int4_hadamard": 0.03, "k8v4": 0.03}.get(name, 3e-3)
    assert rel(kg[b, :, o], kr[b, :, o]) <= tol
    assert rel(vg[b, :, o], vr[b, :, o]) <= tol
    untouched = torch.ones(6 * page, dtype=torch.bool)
    untouched[s] = False
    views = R.page_views(got, fmt, d, page)
    u = untouched.nonzero().flatten()  # skipped and never-mapped slots keep their 0xFF poison
    for codes in (views.k_codes, views.v_codes):
        assert (codes[u // page, :, u % page].contiguous().view(torch.uint8) == 0xFF).all()


def test_constant_rows_saturation_empty_and_single_token_stay_finite() -> None:
    for name in ("int8", "int4", "int4_hadamard", "fp8_e4m3"):
        fmt, d, page = get_format(name), 64, 16
        k = torch.full((17, 1, d), 2.5, dtype=torch.float16)  # zero range in every row
        v = torch.full((17, 1, d), -1.0, dtype=torch.float16)
        if "fp8" in name:
            k = k * 1000  # far past 448 * scale: saturates
        ks = torch.tensor([0.01]) if "fp8" in name else None
        cache, table, _ = paged(fmt, [16, 0, 1], 1, d, page, k, v, ks, ks, write=triton_write)
        q = torch.randn(2, 2, d, dtype=torch.float16)
        qsl = torch.tensor([0, 1, 1, 2], dtype=torch.int32)  # the empty sequence has no query
        out = torch.full_like(q, float("nan"))
        api.paged_attention(
            q,
            cache,
            table,
            torch.tensor([16, 0, 1], dtype=torch.int32),
            qsl,
            fmt,
            page,
            0.125,
            ks,
            ks,
            backend="triton",
            out=out,
        )
        assert torch.isfinite(out).all(), name
        # every value is -1 (fp8 stores -1/0.01 = -100 as -96 or -104)
        assert torch.allclose(out.float(), torch.full_like(out, -1.0).float(), atol=0.05), name


def test_unsupported_inputs_raise_before_launch() -> None:
    fmt = get_format("int8")
    q = torch.zeros(1, 4, 96, dtype=torch.float16)
    cache = torch.zeros(2, 2, fmt.head_page(64, 16).nbytes, dtype=torch.uint8)
    args = (torch.zeros(1, 1, dtype=torch.int32), torch.tensor([1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="head_dim 96"):
        api.paged_attention(q, cache, *args, fmt, 16, 0.1, backend="triton")
    with pytest.raises(ValueError, match="no Triton kernel for int4_g32"):
        g32 = get_format("int4_g32")
        api.paged_attention(
            q[..., :64],
            torch.zeros(2, 2, g32.head_page(64, 16).nbytes, dtype=torch.uint8),
            *args,
            g32,
            16,
            0.1,
            backend="triton",
        )
    with pytest.raises(ValueError, match="in the pages"):
        api.paged_attention(q[..., :64], cache, *args, fmt, 16, 0.1, k_scale=0.5, backend="triton")
    with pytest.raises(ValueError, match="page size 24"):
        kv = torch.zeros(1, 2, 64, dtype=torch.float16)
        api.write_kv(kv, kv, cache, torch.tensor([0]), fmt, 24, backend="triton")


def test_auto_backend_uses_the_reference_on_cpu_tensors() -> None:
    fmt = get_format("int4_kivi")  # no Triton kernel: auto must still work on CPU
    k, v = keys_values(20, 1, 64, outliers=False)
    stage = R.KiviStage.empty(2, 1, 16, 64)
    cache, table, _ = paged(fmt, [20], 1, 64, 16, k, v, stage=stage)
    q = torch.randn(1, 2, 64)
    a = api.paged_attention(
        q, cache, table, torch.tensor([20]), torch.tensor([0, 1]), fmt, 16, 0.125, kivi_stage=stage
    )
    b = R.paged_attention(
        q, cache, table, torch.tensor([20]), torch.tensor([0, 1]), fmt, 16, 0.125, kivi_stage=stage
    )
    assert torch.equal(a, b)


def test_gluon_launch_regimes_follow_context_length_and_how_much_of_the_gpu_the_grid_covers() -> None:
    assert api.gluon_regime(4096, 132, api.GLUON_LONG - 1) == "short"
    assert api.gluon_regime(132, 132, api.GLUON_LONG) == "full"
    assert api.gluon_regime(131, 132, 131072) == "partial"
    assert api.gluon_regime(33, 132, 32768) == "partial"
    assert api.gluon_regime(32, 132, 32768) == "small"
    assert set(api.TUNING_GLUON_REGIME) == {"short", "full", "partial", "small"}
    for fmt, regimes in api.TUNING_GLUON_BY_FORMAT.items():
        get_format(fmt)  # a real format
        assert set(regimes) <= set(api.TUNING_GLUON_REGIME), fmt
        for over in [*regimes.values(), *api.TUNING_GLUON_REGIME.values()]:
            assert set(over) <= set(api.TUNING_GLUON), fmt  # no misspelt setting


def test_write_settings_per_format_name_real_formats_and_settings() -> None:
    for fmt, over in api.TUNING_WRITE_BY_FORMAT.items():
        get_format(fmt)
        assert set(over) <= set(api.TUNING_WRITE), fmt


def test_gluon_launch_takes_the_format_over_the_regime_over_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        api, "TUNING_GLUON", {**api.TUNING_GLUON, "unroll": 1, "programs_per_sm": 8, "maxnreg": 0}
    )
    monkeypatch.setattr(api, "TUNING_GLUON_REGIME", {"full": {"programs_per_sm": 32, "unroll": 2}})
    monkeypatch.setattr(api, "TUNING_GLUON_BY_FORMAT", {"int4": {"full": {"unroll": 4, "maxnreg": 168}}})
    int4, int8 = get_format("int4"), get_format("int8")
    pick = ("programs_per_sm", "unroll", "maxnreg")
    assert [api._gluon_tuning(int4, 256, 132, 32768)[k] for k in pick] == [32, 4, 168]
    assert [api._gluon_tuning(int8, 256, 132, 32768)[k] for k in pick] == [32, 2, 0]
    assert [api._gluon_tuning(int4, 256, 132, 4096)[k] for k in pick] == [8, 1, 0]  # "short": no entry


def test_one_static_scale_for_every_kv_head_is_read_where_it_is() -> None:
    """A one-element fp8 scale (vLLM's per-layer _k_scale) is passed to the kernels as it is,
    with a step of 0 over KV heads (expanding it to [HKV] copied it, a kernel launch every call
    on the GPU), and written and read as the reference does."""
    ks, vs = torch.tensor([0.07]), torch.tensor([0.04])
    got, step = api._static(ks, 2, ks.device)
    assert got.data_ptr() == ks.data_ptr() and step == 0
    per_head, step = api._static(torch.tensor([0.05, 0.08]), 2, ks.device)
    assert step == 1 and per_head.tolist() == pytest.approx([0.05, 0.08])
    fmt, d, page, hkv, lens = get_format("fp8_e4m3"), 64, 16, 2, [37, 70]
    k, v = keys_values(sum(lens), hkv, d, outliers=False, dtype=torch.float16)  # within e4m3 x 0.07
    cache, table, _ = paged(fmt, lens, hkv, d, page, k, v, ks, vs, write=triton_write)
    qsl, sl = torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor(lens, dtype=torch.int32)
    q = torch.randn(2, hkv * 3, d).to(torch.float16)
    want = R.paged_attention(
        q.double(), cache, table, sl, qsl, fmt, page, d**-0.5, ks, vs, compute_dtype=torch.float64
    )
    out = api.paged_attention(
        q, cache, table, sl, qsl, fmt, page, d**-0.5, ks, vs, backend="triton", num_splits=2
    )
    assert rel(out, want) <= 5e-3  # (the reference dequantizes the pages the write kernel wrote)
    kd, _ = R.dequantize_pages(cache, fmt, d, page, ks, vs)
    pos = torch.arange(lens[0])
    # within what test_write_kernel_stores_what_the_reference_stores allows fp8 (the interpreter rounds)
    assert rel(kd[table[0, pos // page].long(), :, pos % page], k[: lens[0]].float()) <= 0.13
