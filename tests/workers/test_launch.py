"""Plan -> vLLM command lines, and the plans vLLM cannot serve refused before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kvplan import vllm_command
from kvplan.errors import PlanError
from kvplan.formats import FORMATS
from kvplan.plan import parse_plan
from kvplan.vllm_command import FORMAT_ENV, Device, LaunchOptions
from kvplan.workers import launch
from kvplan.workers.cli import parse_bytes
from kvplan.workers.vllm_plugin import check_vllm_version

KVPLAN = str(Path(sys.executable).with_name("kvplan"))
GPU = LaunchOptions(device=Device.CUDA, python="py")
CPU = LaunchOptions(device=Device.CPU, python="py", kv_memory_bytes=1 << 28)


def plan_text(**overrides: object) -> str:
    def pool(name: str, fmt: str) -> dict[str, object]:
        return {"name": name, "model": "llama-3.1-8b", "kv_format": fmt, "max_model_len": 8192,
                "replicas": 2, **overrides}  # fmt: skip

    bucket = {"name": "b8k", "max_tokens": 8192, "baseline": pool("base", "bf16"),
              "candidates": [pool("fp8", "fp8_e4m3"), pool("q8", "int8")]}  # fmt: skip
    return yaml.safe_dump({"buckets": [bucket]})


def args_of(argv: tuple[str, ...]) -> dict[str, str | None]:
    """--flag value pairs (None for a bare flag)."""
    out: dict[str, str | None] = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[a] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_render_one_command_per_replica_with_native_and_plugin_formats() -> None:
    plan = parse_plan(plan_text())
    launches = launch.render(plan, GPU)
    assert [lc.name for lc in launches] == ["base-0", "base-1", "fp8-0", "fp8-1", "q8-0", "q8-1"]
    assert [lc.port for lc in launches] == list(range(8100, 8106))
    by = {lc.name: lc for lc in launches}
    base, fp8, q8 = args_of(by["base-0"].argv), args_of(by["fp8-0"].argv), args_of(by["q8-1"].argv)
    assert by["base-0"].argv[:3] == ("py", "-m", "vllm.entrypoints.openai.api_server")
    assert base["--model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert base["--served-model-name"] == "llama-3.1-8b"
    assert base["--max-model-len"] == "8192" and base["--gpu-memory-utilization"] == "0.92"
    assert base["--kv-cache-dtype"] == "auto" and by["base-0"].env == {}
    assert fp8["--kv-cache-dtype"] == "fp8_e4m3" and by["fp8-0"].env == {}
    # kvplan formats go through the plugin: vLLM keeps `auto`, the backend reads the env var
    assert q8["--kv-cache-dtype"] == "auto" and q8["--attention-backend"] == "CUSTOM"
    assert by["q8-1"].env == {FORMAT_ENV: "int8"}
    assert "--dtype" not in base and "--kv-cache-memory-bytes" not in base


def test_render_cpu_runs_float32_eager_with_fixed_kv_memory(tmp_path: Path) -> None:
    plan = parse_plan(plan_text(replicas=1))
    opts = LaunchOptions(device=Device.CPU, python="py", kv_memory_bytes=123, base_port=0, log_dir=tmp_path,
                         cpu_cores=(4, 7))  # fmt: skip
    launches = launch.render(plan, opts)
    ports = [lc.port for lc in launches]
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)
    for lc in launches:
        a = args_of(lc.argv)
        assert a["--dtype"] == "float32" and "--enforce-eager" in a
        assert a["--kv-cache-memory-bytes"] == "123"
        assert "--gpu-memory-utilization" not in a and "--attention-backend" not in a
        assert lc.log_path == tmp_path / f"{lc.name}.log"
    # servers spread over the given cores, one each in turn
    assert [lc.env["VLLM_CPU_OMP_THREADS_BIND"] for lc in launches] == ["4", "7", "4"]
    assert launches[2].env == {"KVPLAN_KV_FORMAT": "int8", "VLLM_CPU_OMP_THREADS_BIND": "4"}
    assert vllm_command.effective_format(plan.pool("base"), Device.CPU).name == "fp32"
    assert vllm_command.effective_format(plan.pool("base"), Device.CUDA).name == "bf16"


def test_shell_line_is_copy_pasteable() -> None:
    (lc, *_) = launch.render(parse_plan(plan_text()), GPU)
    assert lc.shell().endswith("> .kvplan/workers/logs/base-0.log 2>&1")
    q8 = next(x for x in launch.render(parse_plan(plan_text()), GPU) if x.pool == "q8")
    assert q8.shell().startswith(f"{FORMAT_ENV}=int8 py -m ")


def test_runtime_plan_carries_endpoints_and_stays_valid() -> None:
    plan = parse_plan(plan_text())
    runtime = launch.with_endpoints(plan, {"q8": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]})
    again = parse_plan(yaml.safe_dump(json.loads(runtime.model_dump_json())))
    assert again.pool("q8").endpoints == ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
    assert again.pool("base").endpoints == ()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"tensor_parallel": 3, "gpus_per_replica": 3},
            "tensor_parallel 3 does not divide 32 attention heads",
        ),
        ({"model": "llama-3.1-70b", "gpu": "l4"}, "does not fit"),
        ({"model": "llama-3.1-8b", "max_model_len": 1_000_000}, "greater than llama-3.1-8b's context length"),
        ({"model": "llama-3.1-8b", "max_model_len": 131_072, "gpu": "l4"}, "does not fit"),
        ({"gpu": "tpu-v5"}, "unknown GPU"),
        ({"model": "no-such-model"}, "unknown model"),
    ],
)
def test_unservable_pools_are_refused_with_the_reason(overrides: dict[str, object], reason: str) -> None:
    plan = parse_plan(plan_text(**overrides).replace("max_tokens: 8192", "max_tokens: 1024"))
    with pytest.raises(PlanError, match=reason):
        launch.check_plan(plan, GPU)


def test_head_dim_and_format_limits(tmp_path: Path) -> None:
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 384, "num_attention_heads": 8,
           "num_key_value_heads": 2, "head_dim": 48, "vocab_size": 1000,
           "intermediate_size": 512}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    text = plan_text(model=str(tmp_path), max_model_len=1024).replace("max_tokens: 8192", "max_tokens: 1024")
    with pytest.raises(PlanError, match="head_dim 48 is not supported"):
        launch.check_plan(parse_plan(text), GPU)
    assert launch.check_pool(parse_plan(plan_text()).pool("q8"), GPU) == []
    kivi = parse_plan(plan_text(kv_format="int4_kivi"))
    assert any("per channel" in r for r in launch.check_pool(kivi.pool("q8"), GPU))


def test_cpu_limits_follow_the_machine() -> None:
    plan = parse_plan(plan_text(model="smollm2-135m", max_model_len=2048).replace("8192", "2048"))
    fp8 = launch.check_pool(plan.pool("fp8"), CPU)
    has_fp8_isa = bool(launch.cpu_flags() & {"avx512f", "amx_tile"})
    assert any("AVX-512" in r for r in fp8) == (not has_fp8_isa)
    assert launch.check_pool(plan.pool("q8"), CPU) == []
    no_memory = launch.check_pool(plan.pool("q8"), LaunchOptions(device=Device.CPU))
    assert any("--kv-memory" in r for r in no_memory)


def test_plugin_version_pin() -> None:
    check_vllm_version("0.32.0")
    check_vllm_version("0.33.1")
    for bad in ("0.31.2", "0.34.0", "1.0.0", "dev"):
        with pytest.raises(RuntimeError, match=r"0\.32|parse"):
            check_vllm_version(bad)


def test_every_plugin_format_page_divides_into_model_dtype_elements() -> None:
    """vLLM views each page in the model dtype: content bytes per token must be whole elements."""
    from kvplan.workers.vllm_plugin.support import (
        SUPPORTED_BLOCK_SIZES,
        SUPPORTED_HEAD_DIMS,
        unsupported_reason,
    )

    for fmt in FORMATS.values():
        if vllm_command.serve_path(fmt) is vllm_command.ServePath.NATIVE or unsupported_reason(fmt):
            continue
        for d in SUPPORTED_HEAD_DIMS:
            for page in SUPPORTED_BLOCK_SIZES:
                assert fmt.head_page(d, page).content_bytes_per_token % 4 == 0, (fmt.name, d, page)


def test_parse_bytes() -> None:
    assert parse_bytes("268435456") == 1 << 28
    assert parse_bytes("256MiB") == parse_bytes("0.25GiB") == 1 << 28
    assert parse_bytes("1GB") == 10**9
    for bad in ("", "12 parsecs", "-1", "0"):
        with pytest.raises(Exception, match="--kv-memory"):
            parse_bytes(bad)


def test_cli_refuses_before_starting_anything(tmp_path: Path) -> None:
    plan = tmp_path / "pools.yaml"
    plan.write_text(plan_text(tensor_parallel=3, gpus_per_replica=3))
    run = subprocess.run([KVPLAN, "workers", "up", "--plan", str(plan), "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith("error: vLLM cannot serve this plan: pool 'base': tensor_parallel 3")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
    bad_format = plan_text().replace("kv_format: int8", "kv_format: int7")
    plan.write_text(bad_format)
    run = subprocess.run([KVPLAN, "workers", "render", "--plan", str(plan)], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown KV format 'int7'" in run.stderr


def test_plugin_is_inert_without_a_configured_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """One vLLM environment serves plain pools too: without KVPLAN_KV_FORMAT nothing is registered
    (and vLLM is not even imported; it is not installed in this environment)."""
    from kvplan.workers import vllm_plugin

    monkeypatch.delenv(FORMAT_ENV, raising=False)
    vllm_plugin.register()
    assert "vllm" not in sys.modules
    monkeypatch.setenv(FORMAT_ENV, "int8")
    with pytest.raises(ModuleNotFoundError, match="vllm"):
        vllm_plugin.register()  # configured: it must reach vLLM (and would fail loudly without it)


def test_plugin_format_refusals() -> None:
    from kvplan.formats import Element, Granularity, KVFormat, TensorQuant
    from kvplan.workers.vllm_plugin.support import plugin_format, unsupported_reason

    assert plugin_format("int4").name == "int4"
    # fp8's static per-tensor scale is the attention layer's own _k_scale/_v_scale
    assert plugin_format("fp8_e4m3").name == "fp8_e4m3"
    with pytest.raises(ValueError, match="unknown KV format 'int3'"):
        plugin_format("int3")
    with pytest.raises(ValueError, match="keys per channel"):
        plugin_format("int4_kivi")
    per_head = TensorQuant(Element.FP8_E4M3, Granularity.PER_HEAD)
    reason = unsupported_reason(KVFormat("fp8_per_head", per_head, per_head))
    assert reason is not None and "static per-head scales" in reason
