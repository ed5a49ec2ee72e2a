"""KV formats: bytes per token, page layouts and their invariants."""

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvplan.errors import NotFound
from kvplan.formats import ALIGN, FORMATS, Rotation, UnknownFormat, get_format, parse_formats


@pytest.mark.parametrize(
    ("name", "per_token_head"),
    [
        ("bf16", 512),  # 2 x 128 x 2 B
        ("fp16", 512),
        ("fp8_e4m3", 256),  # static scale in a layer buffer, nothing in the page
        ("int8", 264),  # vLLM int8_per_token_head: (128 + 4) x 2
        ("int4", 136),  # vLLM int4_per_token_head: (64 + 4) x 2
        ("int4_g32", 160),  # (64 + 4 groups x 4) x 2
        ("k8v4", 200),  # 132 + 68
    ],
)
def test_bytes_per_token_head_at_head_dim_128(name: str, per_token_head: int) -> None:
    assert get_format(name).bytes_per_token_head(128, 16) == per_token_head


def test_llama3_8b_layer_bytes_match_the_byte_ratios() -> None:
    # 8 KV heads, d 128: BF16 4096 B/token/layer, FP8 2048, INT4 per token-head 1088
    per_layer = {n: 8 * get_format(n).bytes_per_token_head(128) for n in ("bf16", "fp8_e4m3", "int4")}
    assert per_layer == {"bf16": 4096, "fp8_e4m3": 2048, "int4": 1088}


def test_kivi_keys_amortise_per_channel_scales_over_the_page() -> None:
    f = get_format("int4_kivi")
    # K: 64 B codes + 128 channels x 4 B / page; V: 68
    assert f.bytes_per_token_head(128, 16) == 64 + 128 * 4 / 16 + 68
    assert f.bytes_per_token_head(128, 128) == 64 + 4 + 68


def test_mla_latent_bytes() -> None:
    # DeepSeek-V3: 576 latent elements per layer in bf16
    assert get_format("bf16").latent_bytes_per_token(576) == 1152


@given(
    name=st.sampled_from(sorted(FORMATS)),
    head_dim=st.sampled_from([32, 64, 96, 128, 256]),
    page=st.sampled_from([1, 8, 16, 32, 64, 128]),
)
def test_page_layout_tiles_exactly(name: str, head_dim: int, page: int) -> None:
    f = get_format(name)
    layout = f.head_page(head_dim, page)
    assert layout.nbytes == layout.content_bytes_per_token * page
    assert f.bytes_per_token_head(head_dim, page) == layout.nbytes / page
    end = 0
    for region in layout.regions:
        assert region.offset % ALIGN == 0
        assert region.offset >= end
        end = region.offset + region.nbytes
    assert end <= layout.nbytes


@given(head_dim=st.sampled_from([64, 128, 256]), page=st.sampled_from([16, 32, 64]))
def test_fewer_bits_never_cost_more_bytes(head_dim: int, page: int) -> None:
    order = ["bf16", "fp8_e4m3", "int8", "k8v4", "int4"]
    sizes = [get_format(n).bytes_per_token_head(head_dim, page) for n in order]
    assert sizes[0] >= sizes[1]
    assert sizes[2] >= sizes[3] >= sizes[4]


def test_regime_names_granularity_and_group() -> None:
    assert get_format("int4_g32").regime == "int4_g32; kv=int4/per_token_head/g32/asym"
    assert get_format("k8v4").regime.startswith("k8v4; k=int8/per_token_head/sym; v=int4")


def test_unknown_format_is_one_domain_error_listing_the_known_names() -> None:
    with pytest.raises(
        UnknownFormat, match=r"unknown KV format 'int3'; did you mean .*int4.*known: bf16"
    ) as e:
        get_format("int3")
    assert isinstance(e.value, NotFound) and isinstance(
        e.value, ValueError
    )  # CLI: exit 2; pydantic: field error
    assert [f.name for f in parse_formats(" bf16, int8 ,")] == ["bf16", "int8"]
    with pytest.raises(UnknownFormat):
        parse_formats("bf16,int7")


def test_rotation_is_an_enum_on_the_format() -> None:
    assert get_format("int4_hadamard").k.rotation is Rotation.HADAMARD
    assert get_format("int4_hadamard").v.rotation is Rotation.NONE
    assert get_format("int4_hadamard").k.label.endswith("/hadamard")


BAD_PLAN = """\
buckets:
  - name: b
    max_tokens: 4096
    baseline: {name: p, model: llama-3.1-8b, kv_format: int7, max_model_len: 4096}
"""


@pytest.mark.parametrize(
    "args",
    [
        ["size", "llama-3.1-8b", "-k", "bf16,int7"],
        ["plan", "llama-3.1-8b", "--context-mix", "8k:100", "--rps", "1", "--kv-format", "8k=int7"],
        ["worker", "sim", "--kv-format", "int7", "--port", "0"],
        ["kernels", "eval", "--formats", "int7"],
        ["workers", "render", "--plan", "{plan}"],
    ],
)
def test_every_command_refuses_an_unknown_format_with_the_same_line(args: list[str], tmp_path: Path) -> None:
    plan = tmp_path / "pools.yaml"
    plan.write_text(BAD_PLAN)
    argv = [a.format(plan=plan) for a in args]
    run = subprocess.run(
        [sys.executable, "-m", "kvplan.cli", *argv], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert str(UnknownFormat("int7")) in run.stderr


def test_each_vllm_kv_dtype_maps_to_the_kvplan_format_vllm_itself_serves_natively() -> None:
    from kvplan.formats import FORMATS, VLLM_KV_DTYPE_FORMAT

    for dtype, name in VLLM_KV_DTYPE_FORMAT.items():
        assert name in FORMATS, dtype
    for fmt in FORMATS.values():  # a format vLLM stores itself is named by the dtype it passes
        if fmt.vllm_native_dtype is not None:
            assert VLLM_KV_DTYPE_FORMAT[fmt.vllm_native_dtype] == fmt.name
