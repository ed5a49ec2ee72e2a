"""The benchmarks refuse bad arguments with one usage line (exit 2) before a backend, a router or
a device starts: the router benches (router_bench, http_layer, robustness, prefix_replay),
capacity_sim, kernels_host, and the GPU ones (kernels_decode, kernels_profile, kernels_write_sweep,
vllm_gpu_startup, the GPU harness's report)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "CUDA_VISIBLE_DEVICES": "",
    }  # no GPU, even on one
    cmd = [sys.executable, str(ROOT / "bench" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("router_bench.py", ["--rounds", "0"], "--rounds must be positive, got 0"),
        ("router_bench.py", ["--seconds", "nan"], "--seconds must be positive, got nan"),
        ("router_bench.py", ["--compare", "no-such-rev"], "unknown git revision 'no-such-rev'"),
        ("http_layer.py", ["--conns", "1", "0"], "--conns must be positive, got 0"),
        ("http_layer.py", ["--probe-cap", "-1"], "--probe-cap must be positive"),
        ("robustness.py", ["--rate", "0"], "--rate must be positive, got 0.0"),
        ("robustness.py", ["--line-mb", "-4"], "--line-mb must be positive, got -4"),
        ("robustness.py", ["--before", "no-such-rev"], "unknown git revision 'no-such-rev'"),
        ("prefix_replay.py", ["--policies", "prefix-cache,nope"], "--policies: unknown nope"),
        ("prefix_replay.py", ["--model", "nosuch"], "unknown model 'nosuch'"),
        ("prefix_replay.py", ["--gpu", "zz"], "unknown GPU 'zz'"),
        ("prefix_replay.py", ["--workers", "0"], "--workers must be positive, got 0"),
        ("prefix_replay.py", ["--time-scale", "nan"], "--time-scale must be positive"),
        ("prefix_replay.py", ["--sweep", "1,x"], "--sweep takes positive load multipliers"),
        ("prefix_replay.py", ["--load-bound", "-1"], "--load-bound must not be negative"),
        ("prefix_replay.py", ["--sections", "hits,bogus"], "--sections: unknown bogus"),
        ("capacity_sim.py", ["--gpu", "l40s", "--kernels", "measured"], "no measured figures on l40s"),
        ("kernels_decode.py", ["--sections", "check,bogus"], "unknown section bogus"),
        ("kernels_decode.py", ["--variants", "triton,nosuch"], "unknown variant nosuch"),
        ("kernels_decode.py", ["--formats", "int3"], "unknown format int3"),
        ("kernels_decode.py", ["--shapes", "32x"], "--shapes takes BATCHxCONTEXT"),
        ("kernels_decode.py", ["--shapes", "0x1024"], "must be positive"),
        ("kernels_decode.py", ["--variants-json", "{nope"], "--variants-json is not JSON"),
        ("kernels_decode.py", ["--variants-json", '{"a": 1}'], "--variants-json takes"),
        ("kernels_decode.py", ["--variants-json", '{"a": {"unrol": 2}}'], "a: unknown setting unrol"),
        ("kernels_decode.py", ["--variants-json", '{"a": {"per_format": "s9"}}'], "per_format is true"),
        (
            "kernels_decode.py",
            ["--variants-json", '{"a": {"combine_pdl": -1}}'],
            "combine_pdl is a whole number",
        ),
        ("kernels_decode.py", ["--variants-json", '{"a": {"swap": 1}}'], "a: swap is true or false, got 1"),
        ("kernels_decode.py", ["--variants-json", '{"a": {"combine_pdl": "on"}}'], "combine_pdl is a whole"),
        (
            "kernels_decode.py",
            ["--variants-json", '{"a": {"unroll": 2, "per_format": "s7"}}'],
            "needs a CUDA GPU",
        ),
        ("kernels_decode.py", [], "needs a CUDA GPU"),  # none visible: refused, not a traceback
        ("kernels_profile.py", ["--out", "p", "--formats", "int4,int3"], "unknown format int3"),
        ("kernels_profile.py", ["--out", "p", "--shapes", "1x"], "--shapes takes BATCHxCONTEXT"),
        ("kernels_profile.py", ["--out", "p"], "needs a CUDA GPU"),
        ("kernels_write_sweep.py", ["--out", "w", "--configs", "16x4,16xa"], "--configs takes BLOCK_TxWARPS"),
        ("kernels_write_sweep.py", ["--out", "w", "--configs", "12x4x0"], "tokens a power of two"),
        ("kernels_write_sweep.py", ["--out", "w"], "needs a CUDA GPU"),
        ("vllm_gpu_startup.py", ["compare", "absent.json"], "no such result file"),
        (
            "vllm_gpu_startup.py",
            ["compare", "pyproject.toml", "absent.json"],
            "no such result file: absent.json",
        ),
        ("vllm_gpu_startup.py", ["run", "--out", "o", "--slots", "0"], "--slots must be 1..8, got 0"),
        ("vllm_gpu_startup.py", ["run", "--out", "o", "--slots", "x"], "invalid int value"),
        ("vllm_gpu/run.py", ["nosuchset", "--out", "o"], "unknown config set"),
        ("vllm_gpu_startup.py", ["run", "--out", "o", "--only", "nosuch"], "unknown case nosuch"),
        ("vllm_gpu_startup.py", ["run", "--out", "o"], "run needs the GPU machine"),
        ("vllm_gpu/report.py", ["absent.json", "--md", "r.md"], "no such result file"),
        ("vllm_gpu/report.py", ["pyproject.toml", "--md", "r.md"], "not a GPU harness result"),
        ("kernels_host.py", ["--baseline", "no-such-rev"], "unknown git revision 'no-such-rev'"),
        ("kernels_host.py", ["--baseline", "HEAD", "--calls", "0"], "--calls must be positive, got 0"),
    ],
)
def test_bad_arguments_are_one_usage_line(script: str, args: list[str], says: str) -> None:
    run = _bench(script, *args)
    assert run.returncode == 2 and says in run.stderr.strip().splitlines()[-1], run.stderr[-800:]
    assert "Traceback" not in run.stderr


def test_prefix_replay_s_default_arguments_pass_the_checks() -> None:
    run = _bench("prefix_replay.py", "--sections", ",", "--no-write")  # no section: checks only
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr[-800:]
