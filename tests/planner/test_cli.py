"""`kvplan size` and `kvplan plan` as a user runs them: the installed console script, exit codes,
one-line errors, the JSON schema, and the pool plan they write."""

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from kvplan.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
KVPLAN = ROOT / ".venv" / "bin" / "kvplan"
DATA = ROOT / "data" / "traces"  # the real traces, shipped in the repository with their licences
MOONCAKE = DATA / "mooncake-trace-2025" / "conversation.jsonl"
AZURE = DATA / "azure-llm-trace-2023" / "conv.csv"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KVPLAN), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def fails(*args: str) -> str:
    """Run, expect exit 2 with one `error:` line and no traceback; return that line."""
    r = run(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_size_json_has_vllms_two_figures() -> None:
    r = run("size", "llama-3.1-8b", "--max-model-len", "32k", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "kvplan.size/v1"
    assert [f["kv_format"] for f in doc["formats"]] == ["bf16", "fp8_e4m3", "int8", "int4"]
    bf16 = doc["formats"][0]
    assert bf16["bytes_per_token"] == 131072
    assert bf16["vllm_log"][1] == (
        f"GPU KV cache size: {bf16['kv_tokens']:,} tokens, Maximum concurrency for 32,768 tokens "
        f"per request: {bf16['max_concurrency']:.2f}x"
    )
    assert doc["formats"][3]["kv_tokens"] > 3 * bf16["kv_tokens"]


def test_size_given_logged_kv_memory_reproduces_the_log() -> None:
    # LMCache issue #1739 (Qwen3-14B): 6.51 GiB -> 42,656 tokens, 1.30x at 32,768.
    r = run("size", "qwen3-14b", "-k", "bf16", "--max-model-len", "32768", "--kv-cache-memory-gib", "6.51",
            "--json")  # fmt: skip
    row = json.loads(r.stdout)["formats"][0]
    assert (row["kv_tokens"], row["max_concurrency"]) == (42_656, 1.3)


def test_size_expected_concurrency_from_a_mix_and_a_trace() -> None:
    args = ("size", "llama-3.1-8b", "--max-model-len", "32k")
    mix = json.loads(run(*args, "--context-mix", "8k:60,16k:25,32k:15", "--json").stdout)
    row = mix["formats"][0]
    assert row["expected_concurrency"] > row["guaranteed_concurrency"]
    trace = json.loads(
        run("size", "llama-3.1-8b", "--max-model-len", "32k", "--traffic", str(AZURE), "--json").stdout
    )
    assert trace["formats"][0]["expected_concurrency"] > 10 * row["guaranteed_concurrency"]


def test_size_that_does_not_fit_says_what_would() -> None:
    r = run("size", "llama-3.1-70b", "--max-model-len", "128k", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and not doc["formats"][0]["fits"]
    fixes = {s["change"]: s["fits"] for s in doc["suggestions"]}
    assert fixes["--gpu h100:4 --tp 4"] is True
    text = run("size", "llama-3.1-70b", "--gpu", "h100:2", "--max-model-len", "128k").stdout
    assert "will not start" in text and "--max-model-len" in text and "--kv-format int4" in text


def test_size_markdown_and_node_shorthand() -> None:
    r = run("size", "qwen3-235b-a22b", "--gpu", "h100:8", "--max-model-len", "32k", "--markdown")
    assert r.returncode == 0, r.stderr
    assert "| format |" in r.stdout and "TP 8" in r.stdout


def test_size_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "capacity.png"
    r = run("size", "llama-3.1-8b", "--plot", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("size", "llama-3.1-8bb"), "did you mean llama-3.1-8b"),
        (("size", "llama-3.1-8b", "--gpu", "h1000"), "unknown GPU 'h1000'; did you mean h100"),
        (("size", "llama-3.1-8b", "--gpu", "h100:0"), "must be positive"),
        (("size", "llama-3.1-8b", "--gpu-memory-utilization", "1.5"), "(0, 1]"),
        (("size", "llama-3.1-8b", "--gpu-memory-utilization", "0"), "(0, 1]"),
        (("size", "llama-3.1-8b", "--max-model-len", "-5"), "positive"),
        (("size", "llama-3.1-8b", "--max-model-len", "lots"), "bad --max-model-len"),
        (("size", "llama-3.1-8b", "--gpu-memory-gib", "0"), "--gpu-memory-gib must be positive"),
        (("size", "llama-3.1-8b", "-k", "int3"), "unknown KV format 'int3'"),
        (("size", "llama-3.1-70b", "--tp", "3", "--gpu", "h100:4"), "tensor parallel 3"),
        (("size", "llama-3.1-70b", "--tp", "8"), "needs 8 GPUs"),
        (("plan", "llama-3.1-8b", "--context-mix", "8k:60,16k:30", "--rps", "4"), "add up to 90%"),
        (("plan", "llama-3.1-8b", "--context-mix", "8k:100"), "--rps"),
        (("plan", "llama-3.1-8b", "--context-mix", "8k:100", "--rps", "-1"), "--rps"),
        (("plan", "llama-3.1-8b"), "exactly one of --traffic"),
        (("plan", "llama-3.1-8b", "--traffic", "/nonexistent.csv"), "does not exist"),
        (("size", "llama-3.1-8b", "--flashinfer-sampler=yes"), "--flashinfer-sampler"),
        (("size", "llama-3.1-8b", "--text-only=maybe"), "--text-only"),
        (("size", "llama-3.1-8b", "--weight-dtype", "int3"), "unknown weight dtype 'int3'; known: auto"),
        (("size", "llama-3.1-8b", "--vllm-version", "newest"), "bad --vllm-version 'newest': use a release"),
        (
            ("size", "llama-3.1-8b", "--engine", "sglang", "--flashinfer-sampler"),
            "--flashinfer-sampler: read only",
        ),
        (
            ("size", "llama-3.1-8b", "--window", "4k", "--vllm-version", "0.11", "--text-only"),
            "--vllm-version, --text-only: read only by kvplan's vLLM memory model",
        ),
        (
            ("size", "llama-3.1-8b", "--engine", "trtllm", "--gpu-memory-utilization", "0.5"),
            "--gpu-memory-utilization",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(args: tuple[str, ...], expect: str) -> None:
    assert expect in fails(*args)


def test_config_json_missing_field(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"num_hidden_layers": 4, "hidden_size": 64, "vocab_size": 9})
    )
    assert "num_attention_heads" in fails("size", str(tmp_path))


def test_traffic_file_bad_row_is_named(tmp_path: Path) -> None:
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("prompt_tokens,output_tokens,timestamp\n100,20,0\n200,x,1\n")
    assert f"{csv_file}:3: output_tokens 'x' is not a number" in fails(
        "plan", "llama-3.1-8b", "--traffic", str(csv_file)
    )
    neg = tmp_path / "n.csv"
    neg.write_text("prompt_tokens,output_tokens\n100,20\n5,6\n-3,2\n")
    assert f"{neg}:4" in fails("plan", "llama-3.1-8b", "--traffic", str(neg), "--rps", "1")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"prompt_tokens": 10, "output_tokens": 5, "timestamp": 0}\n{"prompt_tokens": 10}\n')
    assert f"{jsonl}:2: missing output_tokens" in fails("plan", "llama-3.1-8b", "--traffic", str(jsonl))


def test_plan_from_a_context_mix_writes_a_loadable_pool_plan(tmp_path: Path) -> None:
    r = run("plan", "llama-3.1-8b", "--context-mix", "8k:60,16k:25,32k:15", "--rps", "40", "--json",
            "-o", str(tmp_path / "pools.yaml"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    plan = load_plan(tmp_path / "pools.yaml")
    assert [b.name for b in plan.buckets] == ["8k", "16k", "32k"]
    assert all(b.baseline.kv_format == "bf16" for b in plan.buckets)
    # 40% over 8K -> INT8; 15% over 16K -> INT4 pilot on the 16K bucket only.
    assert [tuple(c.kv_format for c in b.candidates) for b in plan.buckets] == [
        ("int8",),
        ("int8", "int4"),
        ("int8",),
    ]
    assert report["cost_per_hour"]["with_candidates"] < report["cost_per_hour"]["all_bf16"]
    assert report["prices"]["as_of"] == "2026-11-01"


def test_plan_real_traces_follow_the_decision_framework(tmp_path: Path) -> None:
    long = json.loads(run("plan", "llama-3.1-8b", "--traffic", str(MOONCAKE), "--json", "-o",
                          str(tmp_path / "a.yaml")).stdout)  # fmt: skip
    assert long["traffic"]["share_over_8k"] == pytest.approx(0.46, abs=0.01)
    assert long["traffic"]["share_over_16k"] == pytest.approx(0.235, abs=0.01)
    assert long["traffic"]["requests"] == 12_031
    pools = {b["name"]: [p["kv_format"] for p in b["pools"]] for b in long["buckets"]}
    assert pools == {"8k": ["bf16", "int8"], "16k": ["bf16", "int8", "int4"], "32k": ["bf16", "int8"]}
    short = json.loads(run("plan", "llama-3.1-8b", "--traffic", str(AZURE), "--json", "-o",
                           str(tmp_path / "b.yaml")).stdout)  # fmt: skip
    stamps = [line.split(",")[0][:26] for line in AZURE.read_text().splitlines()[1:]]
    span = (datetime.fromisoformat(max(stamps)) - datetime.fromisoformat(min(stamps))).total_seconds()
    assert short["traffic"]["rps"] == pytest.approx(19_366 / span, rel=1e-3)
    assert {p["kv_format"] for b in short["buckets"] for p in b["pools"]} == {"bf16", "fp8_e4m3"}


def test_plan_prices_can_be_overridden(tmp_path: Path) -> None:
    prices = tmp_path / "p.yaml"
    prices.write_text('as_of: "2027-01-01"\nprices: {h100: 1.0}\n')
    mix = ("--context-mix", "8k:100", "--rps", "2")
    r = run("plan", "llama-3.1-8b", *mix, "--prices", str(prices), "--json", "-o", str(tmp_path / "x.yaml"))
    doc = json.loads(r.stdout)
    base = doc["buckets"][0]["pools"][0]
    assert base["cost_per_hour"] == base["gpus"] * 1.0
    assert doc["prices"]["as_of"] == "2027-01-01"


def test_plan_on_a_gpu_without_a_list_price_asks_for_one(tmp_path: Path) -> None:
    mix = ("--context-mix", "8k:100", "--rps", "1", "--gpu", "gb10", "-o", str(tmp_path / "x.yaml"))
    assert "no $/GPU-hour known for gb10" in fails("plan", "llama-3.1-8b", *mix)
    assert not (tmp_path / "x.yaml").exists()
    prices = tmp_path / "p.yaml"
    prices.write_text('as_of: "2027-01-01"\nprices: {gb10: 0.5}\n')
    ok = run("plan", "llama-3.1-8b", *mix, "--prices", str(prices), "--json")
    assert json.loads(ok.stdout)["buckets"][0]["pools"][0]["cost_per_hour"] > 0


def test_size_imports_no_heavy_modules() -> None:
    # The console script's own path: argparse over the typer signature, so not even pydantic.
    code = (
        "import sys\n"
        "from kvplan.cli import main\n"
        "sys.argv = ['kvplan', 'size', 'llama-3.1-8b', '--json']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('torch', 'triton', 'vllm', 'starlette', 'uvicorn', 'httpx', 'numpy', 'pydantic',"
        " 'matplotlib')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "HEAVY []" in r.stderr, r.stderr[-2000:]
    assert json.loads(r.stdout)["schema"] == "kvplan.size/v1"


def test_fast_argument_parsing_matches_typer() -> None:
    # The same command through the fast parser (the console script) and through typer.
    args = ("size", "llama-3.1-8b", "-k", "bf16,int8", "--max-model-len", "16k", "--tp", "2",
            "--gpu", "h100:2", "--enforce-eager", "--json")  # fmt: skip
    fast = json.loads(run(*args).stdout)
    code = (
        "import sys, contextlib, io\n"
        "from kvplan.cli import _app_for\n"
        f"argv = {list(args)!r}\n"
        "try:\n"
        "    _app_for(argv)(argv)\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    typer_run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert fast == json.loads(typer_run.stdout)
    assert fast["memory_per_gpu"]["cuda_graph_bytes"] == 0 and fast["config"]["tensor_parallel"] == 2
    assert run("size", "--help").returncode == 0
    assert run("size", "llama-3.1-8b", "--no-enforce-eager", "--json").returncode == 0
    assert "llama-3.1-70b" in run("size", "--list").stdout
    assert "unrecognized arguments: --bogus" in fails("size", "llama-3.1-8b", "--bogus")


def test_plan_with_measured_kernels_sits_between_byte_bound_and_vllms(tmp_path: Path) -> None:
    """--kernels measured plans with kvplan's H100 figures on an H100: a quantized decode step is slower than
    the byte-bound ideal and faster than with vLLM's own kernels; BF16 is the same in all three."""
    from kvplan.formats import get_format
    from kvplan.kernel_speeds import kv_read_efficiency
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.models import get_model
    from kvplan.planner.roofline import Efficiency, decode_step_seconds

    model, (gpu, _n) = get_model("llama-3.1-8b"), get_gpu("h100")

    def step(kernels: str, fmt: str) -> float:
        eff = Efficiency(kv_read_efficiency=kv_read_efficiency(kernels, "h100"))
        f = get_format(fmt)
        return decode_step_seconds(model, gpu, f, batch=32, context_tokens=32768, efficiency=eff)

    assert step("kvplan", "bf16") == step("measured", "bf16") == step("vllm", "bf16")
    for fmt in ("fp8_e4m3", "int8", "int4"):
        assert step("kvplan", fmt) < step("measured", fmt) < step("vllm", fmt), fmt
    r = run("plan", "llama-3.1-8b", "--context-mix", "8k:60,16k:25,32k:15", "--rps", "40",
            "--kernels", "measured", "-o", str(tmp_path / "pools.yaml"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert load_plan(tmp_path / "pools.yaml").buckets
    assert "kvplan, measured, vllm" in fails("plan", "llama-3.1-8b", "--context-mix", "8k:100",
                                             "--kernels", "fast")  # fmt: skip


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_measured_efficiency_is_that_gpus_speedup_over_the_byte_ratio(gpu: str) -> None:
    from kvplan.formats import get_format
    from kvplan.kernel_speeds import KVPLAN_MEASURED_SPEEDUP, kv_read_efficiency

    eff = kv_read_efficiency("measured", gpu)
    bf16 = get_format("bf16").bytes_per_token_head(128)
    for name, speedup in KVPLAN_MEASURED_SPEEDUP[gpu].items():
        byte_ratio = bf16 / get_format(name).bytes_per_token_head(128)
        assert eff[name] == pytest.approx(speedup / byte_ratio)
        assert 0 < eff[name] < 1  # none of kvplan's quantized kernels reaches its byte ratio yet
    assert kv_read_efficiency("kvplan", gpu) == {}
    with pytest.raises(ValueError, match="kvplan, measured or vllm"):
        kv_read_efficiency("fast", gpu)


def test_measured_kernels_follow_the_gpu_and_refuse_one_never_measured(tmp_path: Path) -> None:
    """H200 plans with the H200 figures (INT4 3.32x, not the H100's 1.81x); a GPU kvplan's kernels
    were never timed on is refused in one line naming what to pass, not planned with another's."""
    from kvplan.formats import get_format
    from kvplan.kernel_speeds import kv_read_efficiency
    from kvplan.planner.gpus import get_gpu
    from kvplan.planner.models import get_model
    from kvplan.planner.roofline import Efficiency, decode_step_seconds

    model, (h200, _n) = get_model("llama-3.1-8b"), get_gpu("h200")

    def step(gpu_table: str) -> float:
        eff = Efficiency(kv_read_efficiency=kv_read_efficiency("measured", gpu_table))
        return decode_step_seconds(
            model, h200, get_format("int4"), batch=32, context_tokens=32768, efficiency=eff
        )

    assert step("h200") < step("h100")
    out = str(tmp_path / "pools.yaml")
    ok = run("plan", "llama-3.1-8b", "--gpu", "h200", "--context-mix", "32k:100", "--rps", "4",
             "--kernels", "measured", "-o", out)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    said = fails("plan", "llama-3.1-8b", "--gpu", "l40s", "--context-mix", "32k:100", "--rps", "4",
                 "--kernels", "measured", "-o", out)  # fmt: skip
    assert "no measured figures on l40s" in said and "--kernels kvplan" in said


def test_size_flashinfer_sampler_frees_activation_and_says_so() -> None:
    args = ("size", "qwen2.5-7b", "--gpu", "a100-80gb", "-k", "bf16", "--max-model-len", "16384",
            "--gpu-memory-utilization", "0.25", "--vllm-version", "0.10", "--json")  # fmt: skip
    plain = json.loads(run(*args).stdout)
    flash = json.loads(run(*args, "--flashinfer-sampler").stdout)
    assert flash["formats"][0]["kv_tokens"] > plain["formats"][0]["kv_tokens"]
    assert any("FlashInfer" in a for a in flash["assumptions"])
    assert not any("FlashInfer" in a for a in plain["assumptions"])


def test_size_names_the_weight_storage_it_priced() -> None:
    """The weights assumption names the --weight-dtype override, not the checkpoint's storage."""
    native = json.loads(run("size", "llama-3.1-8b", "--json").stdout)["assumptions"]
    fp8 = json.loads(run("size", "llama-3.1-8b", "--weight-dtype", "fp8", "--json").stdout)["assumptions"]
    assert "weights: parameters counted from config.json shapes, stored as 16-bit" in native
    assert "weights: parameters counted from config.json shapes, stored as fp8 per tensor" in fp8
